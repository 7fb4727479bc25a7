//! A local copy of the last policy zone applied (serial, allow entries,
//! denies and lifetime state),
//! so a daemon that starts while the primary is down enforces what it last
//! knew at once, and catches up by IXFR from that serial when the primary
//! answers (what a BIND secondary does with its zone file).
//!
//! # File format (version 5, little endian)
//!
//! ```text
//! magic     8  "RPZGSNAP"
//! version   4  5
//! zone_len  2  then the zone origin (lower case, no final dot)
//! serial    4  SOA serial of the zone copy
//! expire    4  SOA expire in seconds (0: unknown); not in version 2
//! written   8  ms since the Unix epoch
//! count     8  number of entries
//! entries      count × (prefix, classes 4)
//! denies    8  then that many prefixes
//! txts      8  then that many × (prefix, strings 1, strings × (length 1, bytes)):
//!              every TXT record of every owner, foreign ones too, as the
//!              zone holds its bytes (version 5; version 4 kept them as
//!              lossy UTF-8; versions 2 and 3 hold our lifetime records only)
//! crc32     4  CRC-32 (IEEE) of every byte before it
//!
//! prefix    =  family 1 (4|6), prefix length 1, address 4|16
//! ```
//!
//! Versions 4, 3 and 2 (no expire) are still read, version 2's expire
//! unknown. A version-4 foreign TXT that holds U+FFFD may have lost bytes
//! that were not UTF-8: the mirror would name it wrongly in every edit's
//! prerequisite, and an IXFR never sends an unchanged record again, so such
//! a file is refused (a full transfer instead). Version 1
//! (allow entries only) is refused: it was written by a build that ignored
//! denies and TXT, so an IXFR from its serial would never bring them back.
//! The daemon then starts with a full transfer.
//!
//! Written atomically: a temporary file in the same directory, `fsync`,
//! `rename` over the old copy, `fsync` of the directory. A file that is not
//! exactly this (truncated, corrupt, another zone, another version) is
//! refused with a [`SnapshotError`] naming why; callers treat it as absent.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use crate::{
    policy::{AllowSet, Classes, Prefix},
    rpz::meta::{EntryMeta, MetaError, TxtData},
};

/// First bytes of a snapshot file.
pub const MAGIC: &[u8; 8] = b"RPZGSNAP";
/// The format version this build writes (it also reads versions 4, whose
/// foreign TXT strings were lossy UTF-8, 3, whose TXT section holds our
/// records only, and 2, which has no expire field).
pub const VERSION: u32 = 5;

/// U+FFFD in UTF-8: what version 4 wrote for bytes that were not UTF-8.
const LOSSY: &[u8] = "\u{FFFD}".as_bytes();

/// A snapshot as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The zone origin it holds.
    pub zone: String,
    /// The zone's SOA serial.
    pub serial: u32,
    /// The zone's SOA expire in seconds, when known.
    pub expire: Option<u32>,
    /// When it was written, ms since the Unix epoch.
    pub written_ms: u64,
    /// The allow entries.
    pub set: AllowSet,
}

/// Why a snapshot was not read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("not an rpz-guard snapshot (bad magic)")]
    NotASnapshot,
    /// Written by another format version.
    #[error("format version {found}, this build reads versions 2 to {VERSION}")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// A snapshot of another zone.
    #[error("holds zone {found:?}, not {want:?}")]
    Zone {
        /// The zone in the file.
        found: String,
        /// The zone configured.
        want: String,
    },
    /// The file ends early.
    #[error("truncated: ends at byte {len} while reading {what}")]
    Truncated {
        /// File length.
        len: usize,
        /// What was being read.
        what: &'static str,
    },
    /// The checksum does not match the contents.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupt")]
    Checksum {
        /// CRC in the file.
        stored: u32,
        /// CRC of the contents.
        computed: u32,
    },
    /// An entry is not a valid allow entry.
    #[error("entry {index}: {why}")]
    Entry {
        /// Entry number.
        index: u64,
        /// What is wrong.
        why: String,
    },
    /// Bytes after the checksum.
    #[error("{extra} bytes after the end")]
    Trailing {
        /// How many.
        extra: usize,
    },
}

/// Where the snapshot of `zone` lives in `state_dir`.
pub fn path(state_dir: &Path, zone: &str) -> PathBuf {
    let name: String = normalise(zone)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    state_dir.join(format!("{name}.snapshot"))
}

fn normalise(zone: &str) -> String {
    zone.trim_end_matches('.').to_ascii_lowercase()
}

/// The file's bytes for a zone copy.
pub fn encode(zone: &str, serial: u32, expire: Option<u32>, written_ms: u64, set: &AllowSet) -> Vec<u8> {
    let zone = normalise(zone);
    let mut out = Vec::with_capacity(40 + zone.len() + set.len() * 22);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let zlen = u16::try_from(zone.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&zlen.to_le_bytes());
    out.extend_from_slice(&zone.as_bytes()[..usize::from(zlen)]);
    out.extend_from_slice(&serial.to_le_bytes());
    out.extend_from_slice(&expire.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&written_ms.to_le_bytes());
    out.extend_from_slice(&(set.len() as u64).to_le_bytes());
    for (p, c) in set.iter() {
        put_prefix(&mut out, p);
        out.extend_from_slice(&c.bits().to_le_bytes());
    }
    out.extend_from_slice(&(set.deny_count() as u64).to_le_bytes());
    for p in set.denies() {
        put_prefix(&mut out, p);
    }
    // Every TXT record of every owner, ours and foreign (the RRset an
    // edit's prerequisite names after a restart).
    let metas: Vec<(&Prefix, TxtData)> =
        set.txt_rrsets().flat_map(|(p, recs)| recs.map(move |s| (p, s))).collect();
    out.extend_from_slice(&(metas.len() as u64).to_le_bytes());
    for (p, strings) in metas {
        put_prefix(&mut out, p);
        out.push(u8::try_from(strings.len()).unwrap_or(u8::MAX));
        for st in strings.iter().take(usize::from(u8::MAX)) {
            let b = &st[..st.len().min(255)];
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn put_prefix(out: &mut Vec<u8>, p: &Prefix) {
    match p.addr() {
        IpAddr::V4(a) => {
            out.extend_from_slice(&[4, p.len()]);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.extend_from_slice(&[6, p.len()]);
            out.extend_from_slice(&a.octets());
        }
    }
}

/// A bounds-checked reader over the file's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(SnapshotError::Truncated { len: self.buf.len(), what })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], SnapshotError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn prefix(&mut self, index: u64) -> Result<Prefix, SnapshotError> {
        let [family, len] = self.array("an entry")?;
        let addr = match family {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("an IPv4 entry")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("an IPv6 entry")?)),
            f => return Err(SnapshotError::Entry { index, why: format!("address family {f}") }),
        };
        Prefix::new(addr, len).map_err(|e| SnapshotError::Entry { index, why: e.to_string() })
    }

    /// A count of items of at least `min` bytes each that the rest of the
    /// file can hold (else truncation, found before allocating).
    fn count(&mut self, min: usize, what: &'static str) -> Result<u64, SnapshotError> {
        let n = u64::from_le_bytes(self.array(what)?);
        let room = (self.buf.len().saturating_sub(self.pos + 4) / min) as u64;
        if n > room {
            return Err(SnapshotError::Truncated { len: self.buf.len(), what });
        }
        Ok(n)
    }
}

/// Parses and checks a snapshot of `zone`.
pub fn decode(buf: &[u8], zone: &str) -> Result<Snapshot, SnapshotError> {
    let mut r = Reader { buf, pos: 0 };
    if buf.len() >= MAGIC.len() && &buf[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    r.take(MAGIC.len(), "the magic")?;
    let found = u32::from_le_bytes(r.array("the version")?);
    let version = found;
    if !(2..=VERSION).contains(&version) {
        return Err(SnapshotError::Version { found });
    }
    // The checksum covers everything else: check it before trusting lengths.
    if buf.len() < r.pos + 4 {
        return Err(SnapshotError::Truncated { len: buf.len(), what: "the header" });
    }
    let zlen = usize::from(u16::from_le_bytes(r.array("the zone length")?));
    let name = r.take(zlen, "the zone name")?;
    let found = String::from_utf8_lossy(name).into_owned();
    let serial = u32::from_le_bytes(r.array("the serial")?);
    let expire = if version >= 3 {
        Some(u32::from_le_bytes(r.array("the expire")?)).filter(|e| *e != 0)
    } else {
        None
    };
    let written_ms = u64::from_le_bytes(r.array("the write time")?);
    // Each entry takes at least 10 bytes: a count the file cannot hold is
    // truncation (or corruption), found before allocating for it.
    let count = r.count(10, "the entries")?;
    let mut set = AllowSet::new();
    for index in 0..count {
        let prefix = r.prefix(index)?;
        let bits = u32::from_le_bytes(r.array("an entry's classes")?);
        let classes = Classes::from_bits(bits);
        if classes.is_empty() || classes.bits() != bits {
            return Err(SnapshotError::Entry { index, why: format!("class bits {bits:#x}") });
        }
        set.add(prefix, classes);
    }
    let denies = r.count(6, "the denies")?;
    for index in 0..denies {
        let p = r.prefix(count + index)?;
        if !set.deny(p) {
            return Err(SnapshotError::Entry { index: count + index, why: "duplicate deny".into() });
        }
    }
    let metas = r.count(7, "the lifetime states")?;
    for index in 0..metas {
        let at = count + denies + index;
        let p = r.prefix(at)?;
        let [n] = r.array("a lifetime state")?;
        let mut strings = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let [len] = r.array("a lifetime string")?;
            strings.push(r.take(usize::from(len), "a lifetime string")?);
        }
        // Versions 4 and 5 keep foreign TXT records too; ours must read.
        let m = match EntryMeta::decode(&strings) {
            Ok(m) => Some(m),
            Err(MetaError::NotOurs) if version >= 4 => None,
            Err(e) => return Err(SnapshotError::Entry { index: at, why: e.to_string() }),
        };
        if version == 4 && m.is_none() && strings.iter().any(|s| s.windows(3).any(|w| w == LOSSY)) {
            return Err(SnapshotError::Entry {
                index: at,
                why: "a version-4 foreign TXT holds U+FFFD: bytes that were not UTF-8 may be lost".into(),
            });
        }
        set.add_txt(p, strings.iter().map(|s| s.to_vec()).collect(), m);
    }
    let end = r.pos;
    let stored = u32::from_le_bytes(r.array("the checksum")?);
    let computed = crc32fast::hash(&buf[..end]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    if r.pos != buf.len() {
        return Err(SnapshotError::Trailing { extra: buf.len() - r.pos });
    }
    if found != normalise(zone) {
        return Err(SnapshotError::Zone { found, want: normalise(zone) });
    }
    if set.len() as u64 != count {
        return Err(SnapshotError::Entry { index: count, why: "duplicate entries".into() });
    }
    Ok(Snapshot { zone: found, serial, expire, written_ms, set })
}

/// Reads the snapshot at `path`: `Ok(None)` when there is none.
pub fn read(path: &Path, zone: &str) -> Result<Option<Snapshot>, SnapshotError> {
    match std::fs::read(path) {
        Ok(buf) => decode(&buf, zone).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Io { path: path.to_owned(), source }),
    }
}

/// Writes a snapshot atomically (temporary file, fsync, rename, fsync of
/// the directory): a crash leaves the old copy or the new one, never a mix.
pub fn write(
    path: &Path,
    zone: &str,
    serial: u32,
    expire: Option<u32>,
    written_ms: u64,
    set: &AllowSet,
) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(zone, serial, expire, written_ms, set))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "rpz.example.com";

    fn sample() -> AllowSet {
        [
            (Prefix::host("198.51.100.25".parse().expect("ip")), Classes::SMTP),
            (Prefix::host("198.51.100.53".parse().expect("ip")), Classes::DNS.union(Classes::SMTP)),
            ("203.0.113.0/24".parse().expect("prefix"), Classes::DNS),
            (Prefix::host("2001:db8::25".parse().expect("ip")), Classes::SMTP),
            ("2001:db8:100::/48".parse().expect("prefix"), Classes::DNS),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn round_trip_and_zone_case() {
        let bytes = encode("RPZ.Example.COM.", 2026, Some(86400), 1234, &sample());
        let s = decode(&bytes, Z).expect("decode");
        assert_eq!((s.serial, s.expire, s.written_ms, s.zone.as_str()), (2026, Some(86400), 1234, Z));
        assert_eq!(s.set, sample());
        let empty = decode(&encode(Z, 1, None, 0, &AllowSet::new()), Z).expect("empty");
        assert!(empty.set.is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(Z, 7, None, 0, &sample());
        for n in 0..bytes.len() {
            let e = decode(&bytes[..n], Z).expect_err("truncated");
            assert!(
                matches!(e, SnapshotError::Truncated { .. } | SnapshotError::Checksum { .. }),
                "cut at {n}: {e}"
            );
        }
    }

    #[test]
    fn denies_and_lifetime_state_round_trip() {
        use crate::rpz::meta::Evidence;
        let mut set = sample();
        set.deny(Prefix::host("203.0.113.66".parse().expect("ip")));
        set.deny("2001:db8:bad::/48".parse().expect("prefix"));
        let ev = Evidence {
            server: "192.0.2.53".parse().expect("ip"),
            qname: "mx.example.net.".into(),
            qtype: "MX".into(),
        };
        set.set_meta(
            Prefix::host("198.51.100.25".parse().expect("ip")),
            EntryMeta::learned(1_796_601_600, 3600, Some(ev)),
        );
        set.set_meta(
            "203.0.113.0/24".parse().expect("prefix"),
            EntryMeta::manual(5, Some(9), Some("ops \"x\"".into())),
        );
        // Two of our records and a foreign one at one owner: all kept.
        let q = Prefix::host("198.51.100.26".parse().expect("ip"));
        let (a, b) = (EntryMeta::learned(1, 60, None), EntryMeta::learned(2, 60, None));
        set.add_txt(q, a.encode_txt().expect("a"), Some(a));
        set.add_txt(q, vec!["v=spf1 -all".into()], None);
        set.add_txt(q, b.encode_txt().expect("b"), Some(b.clone()));
        // A foreign record that is not UTF-8 keeps its bytes (issue 11).
        set.add_txt(q, vec![vec![0xff, 0xfe], b"x".to_vec()], None);
        let s = decode(&encode(Z, 9, None, 1, &set), Z).expect("decode");
        assert_eq!(s.set, set);
        assert!(!s.set.state_differs(&set));
        assert_eq!((s.set.txt(&q).len(), s.set.meta(&q)), (4, Some(&b)));
        assert!(s.set.txt(&q).contains(&vec![vec![0xff, 0xfe], b"x".to_vec()]));
    }

    /// A version-4 file (same layout, foreign TXT strings lossy UTF-8) is
    /// read, unless a foreign record holds U+FFFD: its lost bytes would
    /// make every edit's prerequisite fail, so it is refused (full transfer).
    #[test]
    fn version_4_is_read_unless_a_foreign_txt_lost_bytes() {
        let as_v4 = |set: &AllowSet| {
            let mut b = encode(Z, 7, None, 0, set);
            b.truncate(b.len() - 4);
            b[8..12].copy_from_slice(&4u32.to_le_bytes());
            let crc = crc32fast::hash(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            b
        };
        let q = Prefix::host("198.51.100.26".parse().expect("ip"));
        let mut set = sample();
        let m = EntryMeta::learned(1, 60, None);
        set.add_txt(q, m.encode_txt().expect("txt"), Some(m));
        set.add_txt(q, vec!["v=spf1 -all".into()], None);
        assert_eq!(decode(&as_v4(&set), Z).expect("version 4").set, set);
        let lossy = String::from_utf8_lossy(&[0xff, b'x']).into_owned().into_bytes();
        set.add_txt(q, vec![lossy], None);
        let e = decode(&as_v4(&set), Z).expect_err("lossy foreign TXT");
        assert!(matches!(&e, SnapshotError::Entry { why, .. } if why.contains("U+FFFD")), "{e}");
        assert_eq!(decode(&encode(Z, 7, None, 0, &set), Z).expect("version 5").set, set);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode(Z, 7, None, 0, &sample());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x41;
            assert!(decode(&b, Z).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn foreign_files_are_refused_by_name() {
        let bytes = encode(Z, 7, None, 0, &sample());
        assert!(matches!(decode(&bytes, "other.zone"), Err(SnapshotError::Zone { .. })));
        for other in [1u32, 6] {
            // Version 1 lacks the denies and lifetime state: refused, so the
            // daemon transfers the whole zone instead of IXFR from it.
            let mut b = bytes.clone();
            b[8..12].copy_from_slice(&other.to_le_bytes());
            assert!(matches!(decode(&b, Z), Err(SnapshotError::Version { found }) if found == other));
        }
        assert!(matches!(decode(b"$ORIGIN rpz.example.com.\n", Z), Err(SnapshotError::NotASnapshot)));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode(&extra, Z), Err(SnapshotError::Trailing { extra: 1 })));
    }

    /// Version 2 (before the expire field) is still read, expire unknown.
    #[test]
    fn version_2_is_still_read() {
        let v3 = encode(Z, 7, Some(86400), 99, &sample());
        let expire_at = 8 + 4 + 2 + Z.len() + 4;
        let mut v2 = v3[..expire_at].to_vec();
        v2.extend_from_slice(&v3[expire_at + 4..v3.len() - 4]);
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        let s = decode(&v2, Z).expect("version 2");
        assert_eq!((s.serial, s.expire, s.written_ms, s.set), (7, None, 99, sample()));
    }

    #[test]
    fn huge_count_fails_before_allocating() {
        let mut b = encode(Z, 7, None, 0, &AllowSet::new());
        let at = 8 + 4 + 2 + Z.len() + 4 + 4 + 8;
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&b, Z), Err(SnapshotError::Truncated { .. })));
    }

    #[test]
    fn write_is_atomic_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path(dir.path(), Z);
        assert!(read(&p, Z).expect("absent is fine").is_none());
        write(&p, Z, 1, None, 10, &sample()).expect("write");
        write(&p, Z, 2, Some(600), 20, &AllowSet::new()).expect("overwrite");
        let s = read(&p, Z).expect("read").expect("present");
        assert_eq!((s.serial, s.expire, s.set.len()), (2, Some(600), 0));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }
}
