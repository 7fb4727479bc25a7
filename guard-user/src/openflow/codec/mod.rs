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
//!
//! Files by message family: the handshake and switch configuration (HELLO, ERROR, ECHO, FEATURES, CONFIG), flow programming
//! (FLOW_MOD, FLOW_REMOVED, instructions, actions), PACKET_IN/PACKET_OUT,
//! meters and multipart statistics. Every public item is re-exported here,
//! so callers name them `codec::X`.

mod flow;
mod meter;
mod multipart;
mod packet_io;
mod switch;

pub use flow::{Action, FlowMod, FlowRemoved, Instruction, flow_cmd, flow_flags};
pub use meter::{METER_ALL, MeterBand, MeterMod, meter_cmd, meter_flags};
pub use multipart::{
    FlowStats, FlowStatsRequest, MP_MORE, MeterStats, MultipartReply, MultipartReplyBody, MultipartRequest,
    MultipartRequestBody, PortDesc, SwitchDesc, mp_type,
};
pub use packet_io::{PacketIn, PacketOut};
pub use switch::{ErrorMsg, FeaturesReply, SwitchConfig, error_code, error_type, frag};

use super::wire::{Put, Reader, len16};

/// The protocol version we speak: OpenFlow 1.3 (`0x04`).
pub const OFP_VERSION: u8 = 0x04;
/// Size of `ofp_header`.
pub const HEADER_LEN: usize = 8;

/// `OFPP_MAX`: the highest number of a physical or logical switch port.
pub const OFPP_MAX: u32 = 0xffff_ff00;
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

const SWITCH_FEATURES_LEN: usize = 32;
const SWITCH_CONFIG_LEN: usize = 12;
const PACKET_IN_MIN: usize = 34;
const FLOW_REMOVED_MIN: usize = 56;
const PACKET_OUT_MIN: usize = 24;
const FLOW_MOD_MIN: usize = 56;
const METER_MOD_MIN: usize = 16;
const MULTIPART_MIN: usize = 16;
const ERROR_MIN: usize = 12;

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
        Body::Hello { bitmap, .. } => switch::encode_hello(*bitmap, out),
        Body::Error(e) => e.encode_body(out),
        Body::EchoRequest(d) | Body::EchoReply(d) => out.extend_from_slice(d),
        Body::FeaturesRequest | Body::GetConfigRequest | Body::BarrierRequest | Body::BarrierReply => {}
        Body::FeaturesReply(f) => f.encode_body(out),
        Body::GetConfigReply(c) | Body::SetConfig(c) => c.encode_body(out),
        Body::PacketIn(p) => p.encode_body(out),
        Body::FlowRemoved(f) => f.encode_body(out),
        Body::PacketOut(p) => p.encode_body(out),
        Body::FlowMod(f) => f.encode_body(out),
        Body::MeterMod(m) => m.encode_body(out),
        Body::MultipartRequest(m) => m.encode_body(out),
        Body::MultipartReply(m) => m.encode_body(out),
        Body::Unknown { data, .. } => out.extend_from_slice(data),
    }
}

fn decode_body(version: u8, typ: u8, r: &mut Reader<'_>) -> Result<Body, DecodeError> {
    use msg_type as t;
    Ok(match typ {
        t::HELLO => switch::decode_hello(version, r)?,
        t::ERROR => Body::Error(ErrorMsg::decode_body(r)?),
        t::ECHO_REQUEST => Body::EchoRequest(r.rest().to_vec()),
        t::ECHO_REPLY => Body::EchoReply(r.rest().to_vec()),
        t::FEATURES_REQUEST => Body::FeaturesRequest,
        t::GET_CONFIG_REQUEST => Body::GetConfigRequest,
        t::BARRIER_REQUEST => Body::BarrierRequest,
        t::BARRIER_REPLY => Body::BarrierReply,
        t::FEATURES_REPLY => Body::FeaturesReply(FeaturesReply::decode_body(r)?),
        t::GET_CONFIG_REPLY => Body::GetConfigReply(SwitchConfig::decode_body(r)?),
        t::SET_CONFIG => Body::SetConfig(SwitchConfig::decode_body(r)?),
        t::PACKET_IN => Body::PacketIn(PacketIn::decode_body(r)?),
        t::FLOW_REMOVED => Body::FlowRemoved(FlowRemoved::decode_body(r)?),
        t::PACKET_OUT => Body::PacketOut(PacketOut::decode_body(r)?),
        t::FLOW_MOD => Body::FlowMod(FlowMod::decode_body(r)?),
        t::METER_MOD => Body::MeterMod(MeterMod::decode_body(r)?),
        t::MULTIPART_REQUEST => Body::MultipartRequest(MultipartRequest::decode_body(r)?),
        t::MULTIPART_REPLY => Body::MultipartReply(MultipartReply::decode_body(r)?),
        other => Body::Unknown { msg_type: other, data: r.rest().to_vec() },
    })
}
