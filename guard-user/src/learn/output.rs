//! Writing the learned allow set: the zone file (through
//! [`crate::rpz::zonefile::write_zone`]) and the JSON summary.
use std::{
    io::{self, Write},
    path::Path,
};

use super::stats::Summary;
use crate::{policy::AllowSet, rpz::zonefile::write_zone};

/// Writes the zone file to `path` (created or replaced), with `serial` = now
/// in seconds since the epoch.
pub fn write_zone_to_path(set: &AllowSet, origin: &str, path: &Path) -> Result<(), OutputError> {
    let err = |source| OutputError { path: path.display().to_string(), source };
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let mut f = std::fs::File::create(path).map_err(err)?;
    write_zone(set, origin, serial, &mut f).map_err(err)
}

/// Writes the JSON summary to `path`, or to standard output for `-`.
pub fn write_summary(summary: &Summary, path: &Path) -> Result<(), OutputError> {
    let err = |source| OutputError { path: path.display().to_string(), source };
    let mut text = serde_json::to_string_pretty(summary).map_err(|e| err(io::Error::other(e)))?;
    text.push('\n');
    if path.as_os_str() == "-" {
        io::stdout().lock().write_all(text.as_bytes()).map_err(err)
    } else {
        std::fs::write(path, text).map_err(err)
    }
}

/// An output file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OutputError {
    /// The file.
    pub path: String,
    /// The I/O error.
    pub source: io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Classes, Prefix};

    #[test]
    fn zone_and_summary_files() {
        let dir = std::env::temp_dir().join(format!("rpz-learn-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut set = AllowSet::new();
        set.add(Prefix::host("131.112.12.18".parse().expect("ip")), Classes::SMTP);
        let zone = dir.join("z.db");
        write_zone_to_path(&set, "rpz.example.com.", &zone).expect("write zone");
        let text = std::fs::read_to_string(&zone).expect("read");
        assert!(text.contains("131.112.12.18.rpz.example.com."), "{text}");
        assert!(text.contains("IN A 127.0.0.25"), "{text}");
        let json = dir.join("s.json");
        let s = Summary { packets: 3, ..Summary::default() };
        write_summary(&s, &json).expect("write summary");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
        assert_eq!(v["packets"], 3);
        assert!(write_zone_to_path(&set, "rpz.example.com", &dir.join("missing/z.db")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
