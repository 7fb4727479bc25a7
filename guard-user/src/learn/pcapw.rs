//! Minimal capture writers (classic pcap, microsecond or nanosecond; pcapng
//! with one interface) for the generator and the tests.
use std::io::{self, Write};

/// Writes a classic pcap file (little-endian).
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    nanos: bool,
    written: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header for `linktype` (snaplen 262144).
    pub fn new(mut out: W, linktype: u32, nanos: bool) -> io::Result<Self> {
        let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        out.write_all(&magic.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&262_144u32.to_le_bytes())?;
        out.write_all(&linktype.to_le_bytes())?;
        Ok(PcapWriter { out, nanos, written: 24 })
    }

    /// Appends one packet with timestamp `ts_ns`.
    pub fn packet(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        let sec = u32::try_from(ts_ns / 1_000_000_000).unwrap_or(u32::MAX);
        let sub = ts_ns % 1_000_000_000;
        let frac = if self.nanos { sub } else { sub / 1000 } as u32;
        let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&sec.to_le_bytes());
        h[4..8].copy_from_slice(&frac.to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(frame)?;
        self.written += 16 + u64::from(len);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes a pcapng file with one section and one interface (microsecond
/// timestamps), little-endian.
#[derive(Debug)]
pub struct PcapNgWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapNgWriter<W> {
    /// Writes the section header and one interface description for `linktype`.
    pub fn new(mut out: W, linktype: u16) -> io::Result<Self> {
        // Section header block: type, len, byte-order magic, version 1.0, section length -1.
        let mut shb = Vec::new();
        shb.extend(0x0a0d_0d0au32.to_le_bytes());
        shb.extend(28u32.to_le_bytes());
        shb.extend(0x1a2b_3c4du32.to_le_bytes());
        shb.extend(1u16.to_le_bytes());
        shb.extend(0u16.to_le_bytes());
        shb.extend((-1i64).to_le_bytes());
        shb.extend(28u32.to_le_bytes());
        out.write_all(&shb)?;
        let mut idb = Vec::new();
        idb.extend(1u32.to_le_bytes());
        idb.extend(20u32.to_le_bytes());
        idb.extend(linktype.to_le_bytes());
        idb.extend(0u16.to_le_bytes());
        idb.extend(262_144u32.to_le_bytes());
        idb.extend(20u32.to_le_bytes());
        out.write_all(&idb)?;
        Ok(PcapNgWriter { out })
    }

    /// Appends one enhanced packet block.
    pub fn packet(&mut self, ts_ns: u64, frame: &[u8]) -> io::Result<()> {
        let us = ts_ns / 1000;
        let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
        let pad = (4 - frame.len() % 4) % 4;
        let total = 32 + frame.len() + pad;
        let total = u32::try_from(total).map_err(io::Error::other)?;
        let mut b = Vec::with_capacity(total as usize);
        b.extend(6u32.to_le_bytes());
        b.extend(total.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(((us >> 32) as u32).to_le_bytes());
        b.extend((us as u32).to_le_bytes());
        b.extend(len.to_le_bytes());
        b.extend(len.to_le_bytes());
        b.extend_from_slice(frame);
        b.extend(std::iter::repeat_n(0u8, pad));
        b.extend(total.to_le_bytes());
        self.out.write_all(&b)
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
