//! Handshake and switch configuration: HELLO, ERROR, FEATURES and
//! GET/SET_CONFIG bodies (OpenFlow 1.3.5 §7.3.1, §7.4, §7.5).

use std::fmt;

use super::{Body, DecodeError};
use crate::openflow::wire::{Put, Reader, pad8};

/// `OFPC_FRAG_*` values of `ofp_switch_config.flags`.
pub mod frag {
    /// No special handling (OVS: ports read as 0 on every fragment).
    pub const NORMAL: u16 = 0;
    /// Drop fragments.
    pub const DROP: u16 = 1;
    /// Reassemble (not supported by OVS).
    pub const REASM: u16 = 2;
    /// The mask; OVS treats this value as "nx-match": first fragments keep
    /// their L4 ports, later fragments match `nw_frag=later` with ports 0.
    pub const NX_MATCH: u16 = 3;
}

/// `OFPET_*` error types we emit or interpret.
pub mod error_type {
    /// `OFPET_HELLO_FAILED`.
    pub const HELLO_FAILED: u16 = 0;
    /// `OFPET_BAD_REQUEST`.
    pub const BAD_REQUEST: u16 = 1;
    /// `OFPET_FLOW_MOD_FAILED`.
    pub const FLOW_MOD_FAILED: u16 = 5;
    /// `OFPET_METER_MOD_FAILED`.
    pub const METER_MOD_FAILED: u16 = 12;
}

/// Error codes used with [`error_type`].
pub mod error_code {
    /// `OFPHFC_INCOMPATIBLE`: no common version.
    pub const HELLO_INCOMPATIBLE: u16 = 0;
    /// `OFPBRC_BAD_VERSION`.
    pub const BAD_VERSION: u16 = 0;
    /// `OFPBRC_BAD_TYPE`.
    pub const BAD_TYPE: u16 = 1;
    /// `OFPBRC_BAD_LEN`.
    pub const BAD_LEN: u16 = 6;
}

/// `ofp_error_msg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    /// `OFPET_*`.
    pub err_type: u16,
    /// Type-specific code.
    pub code: u16,
    /// At least 64 bytes of the failed request (or ASCII for HELLO_FAILED).
    pub data: Vec<u8>,
}

impl ErrorMsg {
    /// The xid of the failed request, when `data` holds its header.
    pub fn failed_type(&self) -> Option<u8> {
        self.data.get(1).copied()
    }
}

impl fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type {} code {}", self.err_type, self.code)?;
        if let Some(t) = self.failed_type() {
            write!(f, " (request type {t})")?;
        }
        Ok(())
    }
}

/// `ofp_switch_features`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeaturesReply {
    /// Datapath id (lower 48 bits: MAC; upper 16: implementer-defined).
    pub datapath_id: u64,
    /// Packets the switch can buffer.
    pub n_buffers: u32,
    /// Number of tables.
    pub n_tables: u8,
    /// Auxiliary connection id (0 = main).
    pub auxiliary_id: u8,
    /// `OFPC_*` capability bits.
    pub capabilities: u32,
    /// Reserved.
    pub reserved: u32,
}

/// `ofp_switch_config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// `OFPC_FRAG_*` (see [`frag`]).
    pub flags: u16,
    /// Bytes of a packet sent to the controller on a table miss.
    pub miss_send_len: u16,
}

/// `OFPT_HELLO` elements: only `OFPHET_VERSIONBITMAP` is written.
pub(super) fn encode_hello(bitmap: Option<u32>, out: &mut Vec<u8>) {
    if let Some(b) = bitmap {
        out.put_u16(1); // OFPHET_VERSIONBITMAP
        out.put_u16(8);
        out.put_u32(b);
    }
}

pub(super) fn decode_hello(version: u8, r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    let mut bitmap = None;
    // Elements: type(2) length(2) body, each padded to 8.
    while r.remaining() >= 4 {
        let et = r.u16()?;
        let el = usize::from(r.u16()?);
        if el < 4 {
            return Err(DecodeError::Malformed { what: "hello element", why: "length below 4" });
        }
        let body = r.bytes(el - 4)?;
        // The last element's padding may be missing on the wire.
        r.skip(pad8(el).min(r.remaining()))?;
        if et == 1 && bitmap.is_none() && body.len() >= 4 {
            bitmap = Some(u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
        }
    }
    Ok(Body::Hello { version, bitmap })
}

impl ErrorMsg {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u16(self.err_type);
        out.put_u16(self.code);
        out.extend_from_slice(&self.data);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ErrorMsg { err_type: r.u16()?, code: r.u16()?, data: r.rest().to_vec() })
    }
}

impl FeaturesReply {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.datapath_id);
        out.put_u32(self.n_buffers);
        out.put_u8(self.n_tables);
        out.put_u8(self.auxiliary_id);
        out.put_zeros(2);
        out.put_u32(self.capabilities);
        out.put_u32(self.reserved);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let datapath_id = r.u64()?;
        let n_buffers = r.u32()?;
        let n_tables = r.u8()?;
        let auxiliary_id = r.u8()?;
        r.skip(2)?;
        Ok(FeaturesReply {
            datapath_id,
            n_buffers,
            n_tables,
            auxiliary_id,
            capabilities: r.u32()?,
            reserved: r.u32()?,
        })
    }
}

impl SwitchConfig {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u16(self.flags);
        out.put_u16(self.miss_send_len);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(SwitchConfig { flags: r.u16()?, miss_send_len: r.u16()? })
    }
}
