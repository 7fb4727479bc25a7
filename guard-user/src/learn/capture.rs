//! Capture input: pcap and pcapng files (through `pcap-parser`), several files
//! or directories taken in time order, `-` for standard input.
//!
//! Files are ordered by the timestamp of their first packet (ties by name);
//! a directory contributes every regular file in it. A file that is neither
//! pcap nor pcapng is an error naming it. A file that ends inside a block is
//! counted (`truncated_capture_file`) and reading goes on with the next input.
use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use pcap_parser::{PcapBlockOwned, PcapError, create_reader, pcapng::Block};

use super::stats::Discard;

/// Reader buffer; grows for larger blocks up to [`MAX_BLOCK`].
const BUFFER: usize = 1 << 20;
/// Largest block accepted (pcapng allows more; no packet needs it).
const MAX_BLOCK: usize = 16 << 20;

/// Errors reading the inputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The input could not be opened or read.
    #[error("{name}: {source}")]
    Io {
        /// File name (`-` for stdin).
        name: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The input is neither pcap nor pcapng.
    #[error("{name}: not a pcap or pcapng capture (unrecognised file header)")]
    NotACapture {
        /// File name.
        name: String,
    },
    /// The input is empty.
    #[error("{name}: empty file, not a capture")]
    Empty {
        /// File name.
        name: String,
    },
}

/// One input to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input.
    Stdin,
    /// A file.
    File(PathBuf),
}

impl Input {
    /// The name used in messages.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "-".to_owned(),
            Input::File(p) => p.display().to_string(),
        }
    }

    fn open(&self) -> Result<Box<dyn Read>, CaptureError> {
        match self {
            Input::Stdin => Ok(Box::new(io::stdin().lock())),
            Input::File(p) => File::open(p)
                .map(|f| Box::new(f) as Box<dyn Read>)
                .map_err(|source| CaptureError::Io { name: self.name(), source }),
        }
    }

    /// Size in bytes when known (files).
    pub fn size(&self) -> Option<u64> {
        match self {
            Input::Stdin => None,
            Input::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
        }
    }
}

/// Expands arguments (`-`, files, directories) into inputs in time order.
pub fn resolve_inputs(args: &[PathBuf]) -> Result<Vec<Input>, CaptureError> {
    let mut files = Vec::new();
    let mut stdin = false;
    for a in args {
        if a.as_os_str() == "-" {
            stdin = true;
            continue;
        }
        let io_err = |source| CaptureError::Io { name: a.display().to_string(), source };
        let meta = std::fs::metadata(a).map_err(io_err)?;
        if meta.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(a)
                .map_err(io_err)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(a.clone());
        }
    }
    let mut keyed = Vec::with_capacity(files.len());
    for f in files {
        let t = first_timestamp(&f)?;
        keyed.push((t, f));
    }
    keyed.sort();
    let mut out: Vec<Input> = keyed.into_iter().map(|(_, f)| Input::File(f)).collect();
    if stdin {
        out.push(Input::Stdin);
    }
    Ok(out)
}

/// Timestamp (ns) of the first packet of a capture file; `u64::MAX` for a
/// capture without packets. Errors when the file is not a capture.
fn first_timestamp(path: &Path) -> Result<u64, CaptureError> {
    let input = Input::File(path.to_path_buf());
    let mut first = u64::MAX;
    let mut probe = |ts: u64, _: u32, _: &[u8]| -> bool {
        first = ts;
        false
    };
    read_capture(&input, &mut probe, &mut |_| {}, &mut |_| {})?;
    Ok(first)
}

/// Per-interface state of a pcapng section.
#[derive(Debug, Clone, Copy)]
struct Iface {
    linktype: u32,
    /// Units per second of the timestamps.
    resolution: u64,
    offset_s: i64,
}

fn to_ns(units: u64, resolution: u64, offset_s: i64) -> u64 {
    let ns = match (units.checked_div(resolution), units.checked_rem(resolution)) {
        _ if resolution == 1_000_000_000 => units,
        (Some(whole), Some(frac)) => whole.saturating_mul(1_000_000_000).saturating_add(
            u64::try_from(u128::from(frac) * 1_000_000_000 / u128::from(resolution)).unwrap_or(0),
        ),
        _ => 0,
    };
    ns.saturating_add_signed(offset_s.saturating_mul(1_000_000_000))
}

/// Reads one input, calling `packet(ts_ns, linktype, frame)` for every packet
/// until it returns false. `problem` is told about truncation or corruption
/// (the rest of that input is skipped); `progress` gets consumed byte counts.
pub fn read_capture(
    input: &Input,
    packet: &mut dyn FnMut(u64, u32, &[u8]) -> bool,
    problem: &mut dyn FnMut(Discard),
    progress: &mut dyn FnMut(u64),
) -> Result<(), CaptureError> {
    let name = input.name();
    let r = input.open()?;
    let mut reader = match create_reader(BUFFER, r) {
        Ok(r) => r,
        Err(PcapError::Eof) => return Err(CaptureError::Empty { name }),
        Err(PcapError::ReadError) => {
            return Err(CaptureError::Io { name, source: io::Error::other("read failed") });
        }
        Err(_) => return Err(CaptureError::NotACapture { name }),
    };
    let mut legacy_link = None::<(u32, bool)>;
    let mut ifaces: Vec<Iface> = Vec::new();
    let mut capacity = BUFFER;
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                let go_on = match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        // The upper bits may carry FCS information (pcap spec, LinkType field).
                        legacy_link = Some((h.network.0 as u32 & 0x0fff_ffff, h.is_nanosecond_precision()));
                        true
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let (link, nanos) = legacy_link.unwrap_or((1, false));
                        let frac = u64::from(b.ts_usec) * if nanos { 1 } else { 1000 };
                        let ts = u64::from(b.ts_sec) * 1_000_000_000 + frac;
                        let len = (b.caplen as usize).min(b.data.len());
                        packet(ts, link, &b.data[..len])
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        ifaces.clear();
                        true
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        ifaces.push(Iface {
                            linktype: idb.linktype.0 as u32,
                            resolution: idb.ts_resolution().unwrap_or(1_000_000),
                            offset_s: idb.ts_offset(),
                        });
                        true
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => match ifaces.get(epb.if_id as usize) {
                        Some(i) => {
                            let units = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                            let ts = to_ns(units, i.resolution, i.offset_s);
                            let len = (epb.caplen as usize).min(epb.data.len());
                            packet(ts, i.linktype, &epb.data[..len])
                        }
                        None => {
                            problem(Discard::CorruptCapture);
                            true
                        }
                    },
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => match ifaces.first() {
                        Some(i) => {
                            let len = (spb.origlen as usize).min(spb.data.len());
                            packet(0, i.linktype, &spb.data[..len])
                        }
                        None => {
                            problem(Discard::CorruptCapture);
                            true
                        }
                    },
                    PcapBlockOwned::NG(_) => true,
                };
                reader.consume(offset);
                progress(offset as u64);
                if !go_on {
                    return Ok(());
                }
            }
            Err(PcapError::Eof) => return Ok(()),
            Err(PcapError::Incomplete(_)) => {
                if reader.refill().is_err() {
                    return Err(CaptureError::Io { name, source: io::Error::other("read failed") });
                }
            }
            Err(PcapError::BufferTooSmall) => {
                capacity *= 2;
                if capacity > MAX_BLOCK || !reader.grow(capacity) {
                    problem(Discard::CorruptCapture);
                    return Ok(());
                }
                if reader.refill().is_err() {
                    return Err(CaptureError::Io { name, source: io::Error::other("read failed") });
                }
            }
            Err(PcapError::UnexpectedEof) => {
                problem(Discard::TruncatedCapture);
                return Ok(());
            }
            Err(PcapError::ReadError) => {
                return Err(CaptureError::Io { name, source: io::Error::other("read failed") });
            }
            Err(_) => {
                problem(Discard::CorruptCapture);
                return Ok(());
            }
        }
    }
}
