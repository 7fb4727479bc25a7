//! METER_MOD bodies (OpenFlow 1.3.5 §7.3.4.4).

use super::DecodeError;
use crate::openflow::wire::{Put, Reader, len16};

/// `OFPMC_*` meter-mod commands.
pub mod meter_cmd {
    /// New meter.
    pub const ADD: u16 = 0;
    /// Modify a meter.
    pub const MODIFY: u16 = 1;
    /// Delete a meter.
    pub const DELETE: u16 = 2;
}

/// `OFPMF_*` meter flags.
pub mod meter_flags {
    /// Rate in kb/s.
    pub const KBPS: u16 = 1 << 0;
    /// Rate in packets per second.
    pub const PKTPS: u16 = 1 << 1;
    /// Use the burst size.
    pub const BURST: u16 = 1 << 2;
    /// Collect statistics.
    pub const STATS: u16 = 1 << 3;
}

/// `OFPM_ALL`: every meter (meter deletes).
pub const METER_ALL: u32 = 0xffff_ffff;

/// `ofp_meter_mod`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterMod {
    /// See [`meter_cmd`].
    pub command: u16,
    /// See [`meter_flags`].
    pub flags: u16,
    /// Meter id (1..).
    pub meter_id: u32,
    /// Bands.
    pub bands: Vec<MeterBand>,
}

/// `ofp_meter_band_header` and its variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterBand {
    /// `OFPMBT_*`: 1 drop, 2 DSCP remark.
    pub band_type: u16,
    /// Rate (kb/s or packets/s by the meter flags).
    pub rate: u32,
    /// Burst size.
    pub burst_size: u32,
    /// Type-specific bytes after the common part (4 for drop and remark).
    pub extra: Vec<u8>,
}

impl MeterBand {
    /// An `OFPMBT_DROP` band.
    pub fn drop(rate: u32, burst_size: u32) -> Self {
        MeterBand { band_type: 1, rate, burst_size, extra: vec![0; 4] }
    }
}

impl MeterMod {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u16(self.command);
        out.put_u16(self.flags);
        out.put_u32(self.meter_id);
        for b in &self.bands {
            out.put_u16(b.band_type);
            out.put_u16(len16(12 + b.extra.len()));
            out.put_u32(b.rate);
            out.put_u32(b.burst_size);
            out.extend_from_slice(&b.extra);
        }
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let command = r.u16()?;
        let flags = r.u16()?;
        let meter_id = r.u32()?;
        let mut bands = Vec::new();
        while r.remaining() > 0 {
            let band_type = r.u16()?;
            let len = usize::from(r.u16()?);
            if len < 12 {
                return Err(DecodeError::Malformed { what: "meter band", why: "length below 12" });
            }
            let rate = r.u32()?;
            let burst_size = r.u32()?;
            bands.push(MeterBand { band_type, rate, burst_size, extra: r.bytes(len - 12)?.to_vec() });
        }
        Ok(MeterMod { command, flags, meter_id, bands })
    }
}
