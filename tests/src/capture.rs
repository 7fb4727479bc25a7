//! Packet captures in a lab namespace: `tcpdump -w` on one interface, read
//! back as raw frames once stopped (classic pcap, parsed here).
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{Lab, LabChild, LabError, Result, Role};

/// A running capture; [`Capture::frames`] stops it and returns what it saw.
#[derive(Debug)]
pub struct Capture {
    child: Option<LabChild>,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `iface` in `role`'s namespace with the BPF `filter`
    /// and returns once it is listening.
    pub fn start(lab: &Lab, role: Role, iface: &str, filter: &str) -> Result<Capture> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = lab.state_dir().join(format!("capture-{}-{n}.pcap", std::process::id()));
        let file_s = file.to_string_lossy().into_owned();
        // Immediate mode and -U: every packet is written as it arrives, so
        // nothing is lost in a buffer when the capture stops.
        let args = [
            "tcpdump",
            "-i",
            iface,
            "-n",
            "-s",
            "0",
            "--immediate-mode",
            "-U",
            "-Z",
            "root",
            "-w",
            &file_s,
            filter,
        ];
        let child = lab.spawn(role, &args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !child.log().contains("listening on") {
            if Instant::now() > deadline {
                return Err(LabError::Command {
                    command: args.join(" "),
                    status: "not listening after 10 s".into(),
                    stderr: child.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture { child: Some(child), file })
    }

    /// Stops the capture and returns the captured frames, in order.
    pub fn frames(mut self) -> Result<Vec<Vec<u8>>> {
        // Let packets in flight land before stopping.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(c) = self.child.take() {
            c.stop(Duration::from_secs(5))?;
        }
        read_pcap(&self.file)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Reads the frames of a classic pcap file (either byte order, µs or ns).
pub fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(|e| LabError::io(format!("read {}", path.display()), e))?;
    let bad = |why: &str| {
        LabError::io(format!("{}: {why}", path.display()), std::io::ErrorKind::InvalidData.into())
    };
    let magic = bytes.get(..4).ok_or_else(|| bad("no pcap header"))?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(bad("not a classic pcap file")),
    };
    let u32_at = |off: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(off..off + 4)?.try_into().ok()?;
        Some(if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let len = u32_at(off + 8).ok_or_else(|| bad("truncated record header"))? as usize;
        let data = bytes.get(off + 16..off + 16 + len).ok_or_else(|| bad("truncated record"))?;
        frames.push(data.to_vec());
        off += 16 + len;
    }
    Ok(frames)
}
