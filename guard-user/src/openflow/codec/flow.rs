//! Flow programming: FLOW_MOD and FLOW_REMOVED bodies, instructions and
//! actions (OpenFlow 1.3.5 §7.3.4, §7.2.4, §7.2.5, §7.4.2).

use super::{CML_NO_BUFFER, DecodeError, NO_BUFFER, OFPG_ANY, OFPP_ANY, TABLE_ALL};
use crate::openflow::{
    oxm::Match,
    wire::{Put, Reader, len16},
};

/// `OFPFC_*` flow-mod commands.
pub mod flow_cmd {
    /// New flow.
    pub const ADD: u8 = 0;
    /// Modify matching flows.
    pub const MODIFY: u8 = 1;
    /// Modify the flow matching strictly (match and priority).
    pub const MODIFY_STRICT: u8 = 2;
    /// Delete matching flows.
    pub const DELETE: u8 = 3;
    /// Delete the flow matching strictly (match and priority).
    pub const DELETE_STRICT: u8 = 4;
}

/// `OFPFF_*` flow-mod flags.
pub mod flow_flags {
    /// Send FLOW_REMOVED when the flow expires or is deleted.
    pub const SEND_FLOW_REM: u16 = 1 << 0;
    /// Check for overlapping entries first.
    pub const CHECK_OVERLAP: u16 = 1 << 1;
}

/// `ofp_flow_removed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRemoved {
    /// Cookie of the flow.
    pub cookie: u64,
    /// Its priority.
    pub priority: u16,
    /// `OFPRR_*`: 0 idle timeout, 1 hard timeout, 2 delete, 3 group delete, 4 meter delete.
    pub reason: u8,
    /// Table.
    pub table_id: u8,
    /// Age, seconds.
    pub duration_sec: u32,
    /// Age, nanoseconds beyond seconds.
    pub duration_nsec: u32,
    /// Its idle timeout.
    pub idle_timeout: u16,
    /// Its hard timeout.
    pub hard_timeout: u16,
    /// Packets it matched.
    pub packet_count: u64,
    /// Bytes it matched.
    pub byte_count: u64,
    /// Its match.
    pub r#match: Match,
}

/// `ofp_flow_mod`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowMod {
    /// Opaque cookie.
    pub cookie: u64,
    /// Cookie bits that must match (modify/delete).
    pub cookie_mask: u64,
    /// Table, or [`TABLE_ALL`] for deletes.
    pub table_id: u8,
    /// See [`flow_cmd`].
    pub command: u8,
    /// Idle timeout, seconds (0 = none).
    pub idle_timeout: u16,
    /// Hard timeout, seconds (0 = none).
    pub hard_timeout: u16,
    /// Priority.
    pub priority: u16,
    /// Buffered packet to apply to, or [`NO_BUFFER`].
    pub buffer_id: u32,
    /// Delete filter: output port, or [`OFPP_ANY`].
    pub out_port: u32,
    /// Delete filter: output group, or [`OFPG_ANY`].
    pub out_group: u32,
    /// See [`flow_flags`].
    pub flags: u16,
    /// The match.
    pub r#match: Match,
    /// Instructions.
    pub instructions: Vec<Instruction>,
}

impl FlowMod {
    /// An `ADD` into table 0 with no timeouts and no buffer.
    pub fn add(cookie: u64, priority: u16, r#match: Match, instructions: Vec<Instruction>) -> Self {
        FlowMod {
            cookie,
            cookie_mask: 0,
            table_id: 0,
            command: flow_cmd::ADD,
            idle_timeout: 0,
            hard_timeout: 0,
            priority,
            buffer_id: NO_BUFFER,
            out_port: OFPP_ANY,
            out_group: OFPG_ANY,
            flags: 0,
            r#match,
            instructions,
        }
    }

    /// A `DELETE` over every table of flows whose cookie matches under `mask`.
    pub fn delete_by_cookie(cookie: u64, mask: u64, r#match: Match) -> Self {
        FlowMod {
            cookie,
            cookie_mask: mask,
            table_id: TABLE_ALL,
            command: flow_cmd::DELETE,
            ..FlowMod::add(0, 0, r#match, Vec::new())
        }
    }
}

/// `ofp_instruction` variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// `OFPIT_GOTO_TABLE`.
    GotoTable(u8),
    /// `OFPIT_WRITE_ACTIONS`.
    WriteActions(Vec<Action>),
    /// `OFPIT_APPLY_ACTIONS`.
    ApplyActions(Vec<Action>),
    /// `OFPIT_CLEAR_ACTIONS`.
    ClearActions,
    /// `OFPIT_METER`.
    Meter(u32),
    /// Anything else, body after type/len kept raw.
    Unknown {
        /// `OFPIT_*`.
        typ: u16,
        /// Bytes after type and length.
        data: Vec<u8>,
    },
}

/// `ofp_action` variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `OFPAT_OUTPUT`: port and bytes to send to the controller.
    Output {
        /// Output port or reserved port (`OFPP_*`).
        port: u32,
        /// Bytes for `OFPP_CONTROLLER` ([`CML_NO_BUFFER`] = all).
        max_len: u16,
    },
    /// Anything else, body after type/len kept raw.
    Unknown {
        /// `OFPAT_*`.
        typ: u16,
        /// Bytes after type and length.
        data: Vec<u8>,
    },
}

impl Action {
    /// Output to `port` (whole packet when it is the controller).
    pub fn output(port: u32) -> Action {
        Action::Output { port, max_len: CML_NO_BUFFER }
    }
}

impl FlowRemoved {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.cookie);
        out.put_u16(self.priority);
        out.put_u8(self.reason);
        out.put_u8(self.table_id);
        out.put_u32(self.duration_sec);
        out.put_u32(self.duration_nsec);
        out.put_u16(self.idle_timeout);
        out.put_u16(self.hard_timeout);
        out.put_u64(self.packet_count);
        out.put_u64(self.byte_count);
        self.r#match.encode(out);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(FlowRemoved {
            cookie: r.u64()?,
            priority: r.u16()?,
            reason: r.u8()?,
            table_id: r.u8()?,
            duration_sec: r.u32()?,
            duration_nsec: r.u32()?,
            idle_timeout: r.u16()?,
            hard_timeout: r.u16()?,
            packet_count: r.u64()?,
            byte_count: r.u64()?,
            r#match: Match::decode(r)?,
        })
    }
}

impl FlowMod {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.cookie);
        out.put_u64(self.cookie_mask);
        out.put_u8(self.table_id);
        out.put_u8(self.command);
        out.put_u16(self.idle_timeout);
        out.put_u16(self.hard_timeout);
        out.put_u16(self.priority);
        out.put_u32(self.buffer_id);
        out.put_u32(self.out_port);
        out.put_u32(self.out_group);
        out.put_u16(self.flags);
        out.put_zeros(2);
        self.r#match.encode(out);
        encode_instructions(&self.instructions, out);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let cookie = r.u64()?;
        let cookie_mask = r.u64()?;
        let table_id = r.u8()?;
        let command = r.u8()?;
        let idle_timeout = r.u16()?;
        let hard_timeout = r.u16()?;
        let priority = r.u16()?;
        let buffer_id = r.u32()?;
        let out_port = r.u32()?;
        let out_group = r.u32()?;
        let flags = r.u16()?;
        r.skip(2)?;
        let m = Match::decode(r)?;
        let instructions = decode_instructions(r.rest())?;
        Ok(FlowMod {
            cookie,
            cookie_mask,
            table_id,
            command,
            idle_timeout,
            hard_timeout,
            priority,
            buffer_id,
            out_port,
            out_group,
            flags,
            r#match: m,
            instructions,
        })
    }
}

pub(super) fn encode_instructions(ins: &[Instruction], out: &mut Vec<u8>) {
    for i in ins {
        let start = out.len();
        match i {
            Instruction::GotoTable(t) => {
                out.put_u16(1);
                out.put_u16(8);
                out.put_u8(*t);
                out.put_zeros(3);
            }
            Instruction::WriteActions(a) | Instruction::ApplyActions(a) => {
                out.put_u16(if matches!(i, Instruction::WriteActions(_)) { 3 } else { 4 });
                out.put_u16(0);
                out.put_zeros(4);
                encode_actions(a, out);
                let len = out.len() - start;
                out.set_u16(start + 2, len16(len));
            }
            Instruction::ClearActions => {
                out.put_u16(5);
                out.put_u16(8);
                out.put_zeros(4);
            }
            Instruction::Meter(id) => {
                out.put_u16(6);
                out.put_u16(8);
                out.put_u32(*id);
            }
            Instruction::Unknown { typ, data } => {
                out.put_u16(*typ);
                out.put_u16(len16(4 + data.len()));
                out.extend_from_slice(data);
            }
        }
    }
}

pub(super) fn decode_instructions(buf: &[u8]) -> Result<Vec<Instruction>, DecodeError> {
    let mut r = Reader::new(buf, "instruction");
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let typ = r.u16()?;
        let len = usize::from(r.u16()?);
        if len < 8 {
            return Err(DecodeError::Malformed { what: "instruction", why: "length below 8" });
        }
        let mut b = Reader::new(r.bytes(len - 4)?, "instruction");
        out.push(match typ {
            1 if len == 8 => Instruction::GotoTable(b.u8()?),
            3 | 4 => {
                b.skip(4)?;
                let a = decode_actions(b.rest())?;
                if typ == 3 { Instruction::WriteActions(a) } else { Instruction::ApplyActions(a) }
            }
            5 if len == 8 => Instruction::ClearActions,
            6 if len == 8 => Instruction::Meter(b.u32()?),
            _ => Instruction::Unknown { typ, data: b.rest().to_vec() },
        });
    }
    Ok(out)
}

pub(super) fn encode_actions(actions: &[Action], out: &mut Vec<u8>) {
    for a in actions {
        match a {
            Action::Output { port, max_len } => {
                out.put_u16(0);
                out.put_u16(16);
                out.put_u32(*port);
                out.put_u16(*max_len);
                out.put_zeros(6);
            }
            Action::Unknown { typ, data } => {
                out.put_u16(*typ);
                out.put_u16(len16(4 + data.len()));
                out.extend_from_slice(data);
            }
        }
    }
}

pub(super) fn decode_actions(buf: &[u8]) -> Result<Vec<Action>, DecodeError> {
    let mut r = Reader::new(buf, "action");
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let typ = r.u16()?;
        let len = usize::from(r.u16()?);
        if len < 8 || len % 8 != 0 {
            return Err(DecodeError::Malformed { what: "action", why: "length not a multiple of 8" });
        }
        let mut b = Reader::new(r.bytes(len - 4)?, "action");
        out.push(match typ {
            0 if len == 16 => {
                let port = b.u32()?;
                let max_len = b.u16()?;
                Action::Output { port, max_len }
            }
            _ => Action::Unknown { typ, data: b.rest().to_vec() },
        });
    }
    Ok(out)
}
