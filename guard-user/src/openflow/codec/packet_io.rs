//! PACKET_IN and PACKET_OUT bodies (OpenFlow 1.3.5 §7.4.1, §7.3.7).

use super::{
    Action, DecodeError,
    flow::{decode_actions, encode_actions},
};
use crate::openflow::{
    oxm::Match,
    wire::{Put, Reader, len16},
};

/// `ofp_packet_in`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketIn {
    /// Buffer id on the switch, or [`NO_BUFFER`](super::NO_BUFFER).
    pub buffer_id: u32,
    /// Full length of the frame.
    pub total_len: u16,
    /// `OFPR_*`: 0 no match, 1 action, 2 invalid TTL.
    pub reason: u8,
    /// Table that sent it.
    pub table_id: u8,
    /// Cookie of the flow that sent it.
    pub cookie: u64,
    /// Pipeline fields (in_port, ...).
    pub r#match: Match,
    /// The frame (maybe truncated).
    pub data: Vec<u8>,
}

/// `ofp_packet_out`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketOut {
    /// Buffer to send, or [`NO_BUFFER`](super::NO_BUFFER) with the frame in `data`.
    pub buffer_id: u32,
    /// Input port for the pipeline (or `OFPP_CONTROLLER`/`OFPP_ANY`).
    pub in_port: u32,
    /// Actions to apply.
    pub actions: Vec<Action>,
    /// The frame when unbuffered.
    pub data: Vec<u8>,
}

impl PacketIn {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u32(self.buffer_id);
        out.put_u16(self.total_len);
        out.put_u8(self.reason);
        out.put_u8(self.table_id);
        out.put_u64(self.cookie);
        self.r#match.encode(out);
        out.put_zeros(2);
        out.extend_from_slice(&self.data);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let buffer_id = r.u32()?;
        let total_len = r.u16()?;
        let reason = r.u8()?;
        let table_id = r.u8()?;
        let cookie = r.u64()?;
        let m = Match::decode(r)?;
        r.skip(2)?;
        Ok(PacketIn { buffer_id, total_len, reason, table_id, cookie, r#match: m, data: r.rest().to_vec() })
    }
}

impl PacketOut {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u32(self.buffer_id);
        out.put_u32(self.in_port);
        let at = out.len();
        out.put_u16(0);
        out.put_zeros(6);
        let start = out.len();
        encode_actions(&self.actions, out);
        out.set_u16(at, len16(out.len() - start));
        out.extend_from_slice(&self.data);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let buffer_id = r.u32()?;
        let in_port = r.u32()?;
        let alen = usize::from(r.u16()?);
        r.skip(6)?;
        let actions = decode_actions(r.bytes(alen)?)?;
        Ok(PacketOut { buffer_id, in_port, actions, data: r.rest().to_vec() })
    }
}
