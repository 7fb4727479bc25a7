//! OpenFlow 1.3 messages (OpenFlow Switch Specification 1.3.5, §7).
//!
//! Every message starts with the 8-byte `ofp_header`:
//!
//! ```text
//!  0       1       2               4                               8
//! +-------+-------+---------------+-------------------------------+
//! |version| type  |    length     |              xid              |
//! +-------+-------+---------------+-------------------------------+
//! ```
//!
//! [`Message::encode`] writes a message and back-fills `length`;
//! [`Message::decode`] checks lengths before every read and never panics;
//! [`message_len`] tells the read loop how many bytes the next message needs.
//! Types the controller does not use decode to [`Body::Unknown`].

use std::fmt;

use super::{
    oxm::Match,
    wire::{Put, Reader, len16, pad8},
};

/// The protocol version we speak: OpenFlow 1.3 (`0x04`).
pub const OFP_VERSION: u8 = 0x04;
/// Size of `ofp_header`.
pub const HEADER_LEN: usize = 8;

/// `OFPP_IN_PORT`: send the packet out the port it came in on.
pub const OFPP_IN_PORT: u32 = 0xffff_fff8;
/// `OFPP_TABLE`: submit the packet to the first flow table (packet-out only).
pub const OFPP_TABLE: u32 = 0xffff_fff9;
/// `OFPP_NORMAL`: the switch's traditional L2/L3 processing.
pub const OFPP_NORMAL: u32 = 0xffff_fffa;
/// `OFPP_FLOOD`.
pub const OFPP_FLOOD: u32 = 0xffff_fffb;
/// `OFPP_CONTROLLER`: send to the controller as a packet-in.
pub const OFPP_CONTROLLER: u32 = 0xffff_fffd;
/// `OFPP_ANY`: wildcard port (out_port of flow deletes, in_port of packet-outs).
pub const OFPP_ANY: u32 = 0xffff_ffff;
/// `OFPG_ANY`.
pub const OFPG_ANY: u32 = 0xffff_ffff;
/// `OFP_NO_BUFFER`.
pub const NO_BUFFER: u32 = 0xffff_ffff;
/// `OFPCML_NO_BUFFER`: send the whole packet to the controller.
pub const CML_NO_BUFFER: u16 = 0xffff;
/// `OFPTT_ALL`: every table (flow deletes).
pub const TABLE_ALL: u8 = 0xff;

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

/// Message type numbers (`ofp_type`).
pub mod msg_type {
    #![allow(missing_docs)]
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const EXPERIMENTER: u8 = 4;
    pub const FEATURES_REQUEST: u8 = 5;
    pub const FEATURES_REPLY: u8 = 6;
    pub const GET_CONFIG_REQUEST: u8 = 7;
    pub const GET_CONFIG_REPLY: u8 = 8;
    pub const SET_CONFIG: u8 = 9;
    pub const PACKET_IN: u8 = 10;
    pub const FLOW_REMOVED: u8 = 11;
    pub const PORT_STATUS: u8 = 12;
    pub const PACKET_OUT: u8 = 13;
    pub const FLOW_MOD: u8 = 14;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
    pub const METER_MOD: u8 = 29;
}

/// Why a byte string is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a structure needs.
    #[error("{what}: need {need} bytes, have {have}")]
    Short {
        /// The structure being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The header's length field is impossible for this message.
    #[error("message type {msg_type} with bad length {length} (minimum {min}, buffer {have})")]
    BadLength {
        /// The message type.
        msg_type: u8,
        /// The length field.
        length: usize,
        /// Minimum length of the type.
        min: usize,
        /// Bytes given.
        have: usize,
    },
    /// A version other than 1.3 outside HELLO/ERROR.
    #[error("unsupported OpenFlow version {version:#04x}")]
    BadVersion {
        /// The header's version.
        version: u8,
    },
    /// A field has a value the spec does not allow.
    #[error("{what}: {why}")]
    Malformed {
        /// The structure being read.
        what: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// How many bytes the message starting at `buf` occupies, once its header
/// is in `buf` (`None` while fewer than 8 bytes are buffered). The value may
/// be below [`HEADER_LEN`] for a broken peer; callers must reject that.
pub fn message_len(buf: &[u8]) -> Option<usize> {
    let b = buf.get(2..4)?;
    Some(usize::from(u16::from_be_bytes([b[0], b[1]]))).filter(|_| buf.len() >= HEADER_LEN)
}

/// A whole message: transaction id plus body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `xid`: replies carry the xid of their request.
    pub xid: u32,
    /// The typed body.
    pub body: Body,
}

/// Message bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `OFPT_HELLO`; `version` is the header version, `bitmap` the first
    /// word of a `OFPHET_VERSIONBITMAP` element (bit n = version n).
    Hello {
        /// Header version the peer sent.
        version: u8,
        /// Supported versions 0..31, if the peer sent a bitmap.
        bitmap: Option<u32>,
    },
    /// `OFPT_ERROR`.
    Error(ErrorMsg),
    /// `OFPT_ECHO_REQUEST` with arbitrary data.
    EchoRequest(Vec<u8>),
    /// `OFPT_ECHO_REPLY` with the request's data.
    EchoReply(Vec<u8>),
    /// `OFPT_FEATURES_REQUEST`.
    FeaturesRequest,
    /// `OFPT_FEATURES_REPLY`.
    FeaturesReply(FeaturesReply),
    /// `OFPT_GET_CONFIG_REQUEST`.
    GetConfigRequest,
    /// `OFPT_GET_CONFIG_REPLY`.
    GetConfigReply(SwitchConfig),
    /// `OFPT_SET_CONFIG`.
    SetConfig(SwitchConfig),
    /// `OFPT_PACKET_IN`.
    PacketIn(PacketIn),
    /// `OFPT_FLOW_REMOVED`.
    FlowRemoved(FlowRemoved),
    /// `OFPT_PACKET_OUT`.
    PacketOut(PacketOut),
    /// `OFPT_FLOW_MOD`.
    FlowMod(FlowMod),
    /// `OFPT_MULTIPART_REQUEST`.
    MultipartRequest(MultipartRequest),
    /// `OFPT_MULTIPART_REPLY`.
    MultipartReply(MultipartReply),
    /// `OFPT_BARRIER_REQUEST`.
    BarrierRequest,
    /// `OFPT_BARRIER_REPLY`.
    BarrierReply,
    /// `OFPT_METER_MOD`.
    MeterMod(MeterMod),
    /// Any other type (PORT_STATUS, EXPERIMENTER, ...), body kept raw.
    Unknown {
        /// The `ofp_type`.
        msg_type: u8,
        /// Bytes after the header.
        data: Vec<u8>,
    },
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

/// `ofp_packet_in`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketIn {
    /// Buffer id on the switch, or [`NO_BUFFER`].
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

/// `ofp_packet_out`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketOut {
    /// Buffer to send, or [`NO_BUFFER`] with the frame in `data`.
    pub buffer_id: u32,
    /// Input port for the pipeline (or `OFPP_CONTROLLER`/`OFPP_ANY`).
    pub in_port: u32,
    /// Actions to apply.
    pub actions: Vec<Action>,
    /// The frame when unbuffered.
    pub data: Vec<u8>,
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

/// `OFPMP_*` multipart types we use.
pub mod mp_type {
    /// Switch description.
    pub const DESC: u16 = 0;
    /// Individual flow statistics.
    pub const FLOW: u16 = 1;
    /// Port descriptions.
    pub const PORT_DESC: u16 = 13;
}

/// `OFPMPF_REQ_MORE` / `OFPMPF_REPLY_MORE`.
pub const MP_MORE: u16 = 1;

/// `ofp_multipart_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartRequest {
    /// Flags ([`MP_MORE`]).
    pub flags: u16,
    /// The request.
    pub body: MultipartRequestBody,
}

/// Multipart request bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultipartRequestBody {
    /// `OFPMP_DESC` (empty body).
    Desc,
    /// `OFPMP_FLOW`.
    Flow(FlowStatsRequest),
    /// `OFPMP_PORT_DESC` (empty body).
    PortDesc,
    /// Anything else.
    Unknown {
        /// `OFPMP_*`.
        mp_type: u16,
        /// The body.
        data: Vec<u8>,
    },
}

/// `ofp_flow_stats_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowStatsRequest {
    /// Table or [`TABLE_ALL`].
    pub table_id: u8,
    /// Output port filter or [`OFPP_ANY`].
    pub out_port: u32,
    /// Output group filter or [`OFPG_ANY`].
    pub out_group: u32,
    /// Cookie.
    pub cookie: u64,
    /// Cookie mask.
    pub cookie_mask: u64,
    /// Match filter.
    pub r#match: Match,
}

/// `ofp_multipart_reply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartReply {
    /// Flags ([`MP_MORE`] = more parts follow).
    pub flags: u16,
    /// The reply.
    pub body: MultipartReplyBody,
}

/// Multipart reply bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultipartReplyBody {
    /// `OFPMP_DESC`.
    Desc(SwitchDesc),
    /// `OFPMP_FLOW`.
    Flow(Vec<FlowStats>),
    /// `OFPMP_PORT_DESC`.
    PortDesc(Vec<PortDesc>),
    /// Anything else.
    Unknown {
        /// `OFPMP_*`.
        mp_type: u16,
        /// The body.
        data: Vec<u8>,
    },
}

/// `ofp_desc` (strings are NUL-padded fixed fields on the wire).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchDesc {
    /// Manufacturer (256).
    pub mfr_desc: String,
    /// Hardware (256).
    pub hw_desc: String,
    /// Software (256).
    pub sw_desc: String,
    /// Serial number (32).
    pub serial_num: String,
    /// Datapath description (256).
    pub dp_desc: String,
}

/// `ofp_flow_stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowStats {
    /// Table.
    pub table_id: u8,
    /// Age, seconds.
    pub duration_sec: u32,
    /// Age, nanoseconds.
    pub duration_nsec: u32,
    /// Priority.
    pub priority: u16,
    /// Idle timeout.
    pub idle_timeout: u16,
    /// Hard timeout.
    pub hard_timeout: u16,
    /// `OFPFF_*`.
    pub flags: u16,
    /// Cookie.
    pub cookie: u64,
    /// Packets matched.
    pub packet_count: u64,
    /// Bytes matched.
    pub byte_count: u64,
    /// Match.
    pub r#match: Match,
    /// Instructions.
    pub instructions: Vec<Instruction>,
}

/// `ofp_port` (64 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDesc {
    /// Port number.
    pub port_no: u32,
    /// MAC address.
    pub hw_addr: [u8; 6],
    /// Name (16 bytes NUL-padded on the wire).
    pub name: String,
    /// `OFPPC_*`.
    pub config: u32,
    /// `OFPPS_*`.
    pub state: u32,
    /// Current, advertised, supported, peer features; current and max speed.
    pub features: [u32; 6],
}

const SWITCH_FEATURES_LEN: usize = 32;
const SWITCH_CONFIG_LEN: usize = 12;
const PACKET_IN_MIN: usize = 34;
const FLOW_REMOVED_MIN: usize = 56;
const PACKET_OUT_MIN: usize = 24;
const FLOW_MOD_MIN: usize = 56;
const METER_MOD_MIN: usize = 16;
const MULTIPART_MIN: usize = 16;
const ERROR_MIN: usize = 12;
const DESC_LEN: usize = 1056;
const PORT_LEN: usize = 64;

impl Body {
    /// The `ofp_type` of this body.
    pub fn msg_type(&self) -> u8 {
        use msg_type as t;
        match self {
            Body::Hello { .. } => t::HELLO,
            Body::Error(_) => t::ERROR,
            Body::EchoRequest(_) => t::ECHO_REQUEST,
            Body::EchoReply(_) => t::ECHO_REPLY,
            Body::FeaturesRequest => t::FEATURES_REQUEST,
            Body::FeaturesReply(_) => t::FEATURES_REPLY,
            Body::GetConfigRequest => t::GET_CONFIG_REQUEST,
            Body::GetConfigReply(_) => t::GET_CONFIG_REPLY,
            Body::SetConfig(_) => t::SET_CONFIG,
            Body::PacketIn(_) => t::PACKET_IN,
            Body::FlowRemoved(_) => t::FLOW_REMOVED,
            Body::PacketOut(_) => t::PACKET_OUT,
            Body::FlowMod(_) => t::FLOW_MOD,
            Body::MultipartRequest(_) => t::MULTIPART_REQUEST,
            Body::MultipartReply(_) => t::MULTIPART_REPLY,
            Body::BarrierRequest => t::BARRIER_REQUEST,
            Body::BarrierReply => t::BARRIER_REPLY,
            Body::MeterMod(_) => t::METER_MOD,
            Body::Unknown { msg_type, .. } => *msg_type,
        }
    }

    /// Minimum total length (header included) of a message of type `typ`.
    fn min_len(typ: u8) -> usize {
        use msg_type as t;
        match typ {
            t::ERROR => ERROR_MIN,
            t::FEATURES_REPLY => SWITCH_FEATURES_LEN,
            t::GET_CONFIG_REPLY | t::SET_CONFIG => SWITCH_CONFIG_LEN,
            t::PACKET_IN => PACKET_IN_MIN,
            t::FLOW_REMOVED => FLOW_REMOVED_MIN,
            t::PACKET_OUT => PACKET_OUT_MIN,
            t::FLOW_MOD => FLOW_MOD_MIN,
            t::METER_MOD => METER_MOD_MIN,
            t::MULTIPART_REQUEST | t::MULTIPART_REPLY => MULTIPART_MIN,
            _ => HEADER_LEN,
        }
    }
}

impl Message {
    /// A message with `xid`.
    pub fn new(xid: u32, body: Body) -> Self {
        Message { xid, body }
    }

    /// The wire form, `length` back-filled.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// Appends the wire form to `out` (lets a writer batch messages).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // A HELLO carries the version it was built with (negotiation tests).
        out.put_u8(if let Body::Hello { version, .. } = self.body { version } else { OFP_VERSION });
        out.put_u8(self.body.msg_type());
        out.put_u16(0);
        out.put_u32(self.xid);
        encode_body(&self.body, out);
        let len = out.len() - start;
        out.set_u16(start + 2, len16(len));
    }

    /// Decodes one message; `buf` must hold exactly the header's length
    /// (use [`message_len`] to cut it from a stream).
    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(buf, "ofp_header");
        let version = r.u8()?;
        let typ = r.u8()?;
        let length = usize::from(r.u16()?);
        let xid = r.u32()?;
        let min = Body::min_len(typ);
        if length < min || length != buf.len() {
            return Err(DecodeError::BadLength { msg_type: typ, length, min, have: buf.len() });
        }
        // HELLO and ERROR may come in another version during negotiation.
        if version != OFP_VERSION && typ != msg_type::HELLO && typ != msg_type::ERROR {
            return Err(DecodeError::BadVersion { version });
        }
        let body = decode_body(version, typ, &mut r)?;
        Ok(Message { xid, body })
    }
}

fn encode_body(body: &Body, out: &mut Vec<u8>) {
    match body {
        Body::Hello { bitmap, .. } => {
            if let Some(b) = bitmap {
                out.put_u16(1); // OFPHET_VERSIONBITMAP
                out.put_u16(8);
                out.put_u32(*b);
            }
        }
        Body::Error(e) => {
            out.put_u16(e.err_type);
            out.put_u16(e.code);
            out.extend_from_slice(&e.data);
        }
        Body::EchoRequest(d) | Body::EchoReply(d) => out.extend_from_slice(d),
        Body::FeaturesRequest | Body::GetConfigRequest | Body::BarrierRequest | Body::BarrierReply => {}
        Body::FeaturesReply(f) => {
            out.put_u64(f.datapath_id);
            out.put_u32(f.n_buffers);
            out.put_u8(f.n_tables);
            out.put_u8(f.auxiliary_id);
            out.put_zeros(2);
            out.put_u32(f.capabilities);
            out.put_u32(f.reserved);
        }
        Body::GetConfigReply(c) | Body::SetConfig(c) => {
            out.put_u16(c.flags);
            out.put_u16(c.miss_send_len);
        }
        Body::PacketIn(p) => {
            out.put_u32(p.buffer_id);
            out.put_u16(p.total_len);
            out.put_u8(p.reason);
            out.put_u8(p.table_id);
            out.put_u64(p.cookie);
            p.r#match.encode(out);
            out.put_zeros(2);
            out.extend_from_slice(&p.data);
        }
        Body::FlowRemoved(f) => {
            out.put_u64(f.cookie);
            out.put_u16(f.priority);
            out.put_u8(f.reason);
            out.put_u8(f.table_id);
            out.put_u32(f.duration_sec);
            out.put_u32(f.duration_nsec);
            out.put_u16(f.idle_timeout);
            out.put_u16(f.hard_timeout);
            out.put_u64(f.packet_count);
            out.put_u64(f.byte_count);
            f.r#match.encode(out);
        }
        Body::PacketOut(p) => {
            out.put_u32(p.buffer_id);
            out.put_u32(p.in_port);
            let at = out.len();
            out.put_u16(0);
            out.put_zeros(6);
            let start = out.len();
            encode_actions(&p.actions, out);
            out.set_u16(at, len16(out.len() - start));
            out.extend_from_slice(&p.data);
        }
        Body::FlowMod(f) => {
            out.put_u64(f.cookie);
            out.put_u64(f.cookie_mask);
            out.put_u8(f.table_id);
            out.put_u8(f.command);
            out.put_u16(f.idle_timeout);
            out.put_u16(f.hard_timeout);
            out.put_u16(f.priority);
            out.put_u32(f.buffer_id);
            out.put_u32(f.out_port);
            out.put_u32(f.out_group);
            out.put_u16(f.flags);
            out.put_zeros(2);
            f.r#match.encode(out);
            encode_instructions(&f.instructions, out);
        }
        Body::MeterMod(m) => {
            out.put_u16(m.command);
            out.put_u16(m.flags);
            out.put_u32(m.meter_id);
            for b in &m.bands {
                out.put_u16(b.band_type);
                out.put_u16(len16(12 + b.extra.len()));
                out.put_u32(b.rate);
                out.put_u32(b.burst_size);
                out.extend_from_slice(&b.extra);
            }
        }
        Body::MultipartRequest(m) => {
            let (typ, data) = match &m.body {
                MultipartRequestBody::Desc => (mp_type::DESC, Vec::new()),
                MultipartRequestBody::PortDesc => (mp_type::PORT_DESC, Vec::new()),
                MultipartRequestBody::Flow(f) => {
                    let mut d = Vec::with_capacity(40);
                    d.put_u8(f.table_id);
                    d.put_zeros(3);
                    d.put_u32(f.out_port);
                    d.put_u32(f.out_group);
                    d.put_zeros(4);
                    d.put_u64(f.cookie);
                    d.put_u64(f.cookie_mask);
                    f.r#match.encode(&mut d);
                    (mp_type::FLOW, d)
                }
                MultipartRequestBody::Unknown { mp_type, data } => (*mp_type, data.clone()),
            };
            out.put_u16(typ);
            out.put_u16(m.flags);
            out.put_zeros(4);
            out.extend_from_slice(&data);
        }
        Body::MultipartReply(m) => {
            let typ = match &m.body {
                MultipartReplyBody::Desc(_) => mp_type::DESC,
                MultipartReplyBody::Flow(_) => mp_type::FLOW,
                MultipartReplyBody::PortDesc(_) => mp_type::PORT_DESC,
                MultipartReplyBody::Unknown { mp_type, .. } => *mp_type,
            };
            out.put_u16(typ);
            out.put_u16(m.flags);
            out.put_zeros(4);
            match &m.body {
                MultipartReplyBody::Desc(d) => {
                    for (s, n) in [
                        (&d.mfr_desc, 256),
                        (&d.hw_desc, 256),
                        (&d.sw_desc, 256),
                        (&d.serial_num, 32),
                        (&d.dp_desc, 256),
                    ] {
                        put_str(out, s, n);
                    }
                }
                MultipartReplyBody::Flow(fs) => {
                    for f in fs {
                        let start = out.len();
                        out.put_u16(0);
                        out.put_u8(f.table_id);
                        out.put_u8(0);
                        out.put_u32(f.duration_sec);
                        out.put_u32(f.duration_nsec);
                        out.put_u16(f.priority);
                        out.put_u16(f.idle_timeout);
                        out.put_u16(f.hard_timeout);
                        out.put_u16(f.flags);
                        out.put_zeros(4);
                        out.put_u64(f.cookie);
                        out.put_u64(f.packet_count);
                        out.put_u64(f.byte_count);
                        f.r#match.encode(out);
                        encode_instructions(&f.instructions, out);
                        let len = out.len() - start;
                        out.set_u16(start, len16(len));
                    }
                }
                MultipartReplyBody::PortDesc(ps) => {
                    for p in ps {
                        out.put_u32(p.port_no);
                        out.put_zeros(4);
                        out.extend_from_slice(&p.hw_addr);
                        out.put_zeros(2);
                        put_str(out, &p.name, 16);
                        out.put_u32(p.config);
                        out.put_u32(p.state);
                        for f in p.features {
                            out.put_u32(f);
                        }
                    }
                }
                MultipartReplyBody::Unknown { data, .. } => out.extend_from_slice(data),
            }
        }
        Body::Unknown { data, .. } => out.extend_from_slice(data),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str, n: usize) {
    let b = s.as_bytes();
    let take = b.len().min(n);
    out.extend_from_slice(&b[..take]);
    out.put_zeros(n - take);
}

fn get_str(r: &mut Reader<'_>, n: usize) -> Result<String, DecodeError> {
    let b = r.bytes(n)?;
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    // One char per byte, so the string re-encodes to the same length.
    Ok(b[..end].iter().map(|c| if c.is_ascii() { char::from(*c) } else { '?' }).collect())
}

fn decode_body(version: u8, typ: u8, r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    use msg_type as t;
    Ok(match typ {
        t::HELLO => {
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
            Body::Hello { version, bitmap }
        }
        t::ERROR => Body::Error(ErrorMsg { err_type: r.u16()?, code: r.u16()?, data: r.rest().to_vec() }),
        t::ECHO_REQUEST => Body::EchoRequest(r.rest().to_vec()),
        t::ECHO_REPLY => Body::EchoReply(r.rest().to_vec()),
        t::FEATURES_REQUEST => Body::FeaturesRequest,
        t::GET_CONFIG_REQUEST => Body::GetConfigRequest,
        t::BARRIER_REQUEST => Body::BarrierRequest,
        t::BARRIER_REPLY => Body::BarrierReply,
        t::FEATURES_REPLY => {
            let datapath_id = r.u64()?;
            let n_buffers = r.u32()?;
            let n_tables = r.u8()?;
            let auxiliary_id = r.u8()?;
            r.skip(2)?;
            Body::FeaturesReply(FeaturesReply {
                datapath_id,
                n_buffers,
                n_tables,
                auxiliary_id,
                capabilities: r.u32()?,
                reserved: r.u32()?,
            })
        }
        t::GET_CONFIG_REPLY | t::SET_CONFIG => {
            let c = SwitchConfig { flags: r.u16()?, miss_send_len: r.u16()? };
            if typ == t::SET_CONFIG { Body::SetConfig(c) } else { Body::GetConfigReply(c) }
        }
        t::PACKET_IN => {
            let buffer_id = r.u32()?;
            let total_len = r.u16()?;
            let reason = r.u8()?;
            let table_id = r.u8()?;
            let cookie = r.u64()?;
            let m = Match::decode(r)?;
            r.skip(2)?;
            Body::PacketIn(PacketIn {
                buffer_id,
                total_len,
                reason,
                table_id,
                cookie,
                r#match: m,
                data: r.rest().to_vec(),
            })
        }
        t::FLOW_REMOVED => Body::FlowRemoved(FlowRemoved {
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
        }),
        t::PACKET_OUT => {
            let buffer_id = r.u32()?;
            let in_port = r.u32()?;
            let alen = usize::from(r.u16()?);
            r.skip(6)?;
            let actions = decode_actions(r.bytes(alen)?)?;
            Body::PacketOut(PacketOut { buffer_id, in_port, actions, data: r.rest().to_vec() })
        }
        t::FLOW_MOD => {
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
            Body::FlowMod(FlowMod {
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
        t::METER_MOD => {
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
            Body::MeterMod(MeterMod { command, flags, meter_id, bands })
        }
        t::MULTIPART_REQUEST => {
            let mp = r.u16()?;
            let flags = r.u16()?;
            r.skip(4)?;
            let body = match mp {
                mp_type::DESC if r.remaining() == 0 => MultipartRequestBody::Desc,
                mp_type::PORT_DESC if r.remaining() == 0 => MultipartRequestBody::PortDesc,
                mp_type::FLOW => {
                    let table_id = r.u8()?;
                    r.skip(3)?;
                    let out_port = r.u32()?;
                    let out_group = r.u32()?;
                    r.skip(4)?;
                    let cookie = r.u64()?;
                    let cookie_mask = r.u64()?;
                    let m = Match::decode(r)?;
                    if r.remaining() != 0 {
                        return Err(DecodeError::Malformed {
                            what: "flow stats request",
                            why: "trailing bytes",
                        });
                    }
                    MultipartRequestBody::Flow(FlowStatsRequest {
                        table_id,
                        out_port,
                        out_group,
                        cookie,
                        cookie_mask,
                        r#match: m,
                    })
                }
                other => MultipartRequestBody::Unknown { mp_type: other, data: r.rest().to_vec() },
            };
            Body::MultipartRequest(MultipartRequest { flags, body })
        }
        t::MULTIPART_REPLY => {
            let mp = r.u16()?;
            let flags = r.u16()?;
            r.skip(4)?;
            let body = match mp {
                mp_type::DESC if r.remaining() == DESC_LEN => MultipartReplyBody::Desc(SwitchDesc {
                    mfr_desc: get_str(r, 256)?,
                    hw_desc: get_str(r, 256)?,
                    sw_desc: get_str(r, 256)?,
                    serial_num: get_str(r, 32)?,
                    dp_desc: get_str(r, 256)?,
                }),
                mp_type::FLOW => MultipartReplyBody::Flow(decode_flow_stats(r)?),
                mp_type::PORT_DESC if r.remaining().is_multiple_of(PORT_LEN) => {
                    let mut ps = Vec::new();
                    while r.remaining() > 0 {
                        let port_no = r.u32()?;
                        r.skip(4)?;
                        let hw_addr = r.array::<6>()?;
                        r.skip(2)?;
                        let name = get_str(r, 16)?;
                        let config = r.u32()?;
                        let state = r.u32()?;
                        let mut features = [0u32; 6];
                        for f in &mut features {
                            *f = r.u32()?;
                        }
                        ps.push(PortDesc { port_no, hw_addr, name, config, state, features });
                    }
                    MultipartReplyBody::PortDesc(ps)
                }
                other => MultipartReplyBody::Unknown { mp_type: other, data: r.rest().to_vec() },
            };
            Body::MultipartReply(MultipartReply { flags, body })
        }
        other => Body::Unknown { msg_type: other, data: r.rest().to_vec() },
    })
}

fn decode_flow_stats(r: &mut Reader<'_>) -> Result<Vec<FlowStats>, DecodeError> {
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let len = usize::from(r.u16()?);
        if len < 56 {
            return Err(DecodeError::Malformed { what: "flow stats", why: "length below 56" });
        }
        let mut e = Reader::new(r.bytes(len - 2)?, "flow stats");
        let table_id = e.u8()?;
        e.skip(1)?;
        let duration_sec = e.u32()?;
        let duration_nsec = e.u32()?;
        let priority = e.u16()?;
        let idle_timeout = e.u16()?;
        let hard_timeout = e.u16()?;
        let flags = e.u16()?;
        e.skip(4)?;
        let cookie = e.u64()?;
        let packet_count = e.u64()?;
        let byte_count = e.u64()?;
        let m = Match::decode(&mut e)?;
        let instructions = decode_instructions(e.rest())?;
        out.push(FlowStats {
            table_id,
            duration_sec,
            duration_nsec,
            priority,
            idle_timeout,
            hard_timeout,
            flags,
            cookie,
            packet_count,
            byte_count,
            r#match: m,
            instructions,
        });
    }
    Ok(out)
}

fn encode_instructions(ins: &[Instruction], out: &mut Vec<u8>) {
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

fn decode_instructions(buf: &[u8]) -> Result<Vec<Instruction>, DecodeError> {
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

fn encode_actions(actions: &[Action], out: &mut Vec<u8>) {
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

fn decode_actions(buf: &[u8]) -> Result<Vec<Action>, DecodeError> {
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
