//! Writing the learned allow set.
//!
//! [`write_zone_file_interim`] is a stand-in with the signature planned for
//! `rpz::zonefile::write_zone(&AllowSet, zone_origin, serial, out)`, which the
//! rpz module will own; swap the call in [`super::run`] when it lands.
use std::{
    io::{self, Write},
    path::Path,
};

use super::stats::Summary;
use crate::{policy::AllowSet, rpz::encode_owner};

/// Writes `set` as a complete RPZ zone file for `origin`: SOA and NS at the
/// apex, then one `A 127.0.0.1` (DNS) and/or `A 127.0.0.25` (SMTP) per entry,
/// owners encoded by [`encode_owner`] (paper form for IPv4 hosts, `rpz-ip`
/// otherwise). Loadable by `named-checkzone`.
pub fn write_zone_file_interim(
    set: &AllowSet,
    origin: &str,
    serial: u32,
    out: &mut impl Write,
) -> io::Result<()> {
    let origin = origin.trim_end_matches('.').to_ascii_lowercase();
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    writeln!(w, "; RPZ allow set written by rpz-guard learn")?;
    writeln!(w, "$TTL 300")?;
    writeln!(w, "$ORIGIN {origin}.")?;
    writeln!(w, "@ IN SOA localhost. hostmaster.localhost. {serial} 3600 600 604800 300")?;
    writeln!(w, "@ IN NS localhost.")?;
    for (prefix, classes) in set.iter() {
        let owner = encode_owner(prefix, &origin);
        for a in classes.rpz_answers() {
            writeln!(w, "{owner} IN A {a}")?;
        }
    }
    w.flush()
}

/// Writes the zone file to `path` (created or replaced), with `serial` = now
/// in seconds since the epoch.
pub fn write_zone_to_path(set: &AllowSet, origin: &str, path: &Path) -> Result<(), OutputError> {
    let err = |source| OutputError { path: path.display().to_string(), source };
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let mut f = std::fs::File::create(path).map_err(err)?;
    write_zone_file_interim(set, origin, serial, &mut f).map_err(err)
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
    fn writes_paper_and_rpz_ip_owners() {
        let mut set = AllowSet::new();
        set.add(Prefix::host("131.112.12.18".parse().expect("ip")), Classes::SMTP);
        set.add(Prefix::host("2001:db8::1".parse().expect("ip")), Classes::DNS);
        let mut out = Vec::new();
        write_zone_file_interim(&set, "rpz.example.com.", 7, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("131.112.12.18.rpz.example.com. IN A 127.0.0.25\n"), "{text}");
        assert!(text.contains("rpz-ip.rpz.example.com. IN A 127.0.0.1\n"), "{text}");
        assert!(text.contains(" 7 3600 600 604800 300"));
    }
}
