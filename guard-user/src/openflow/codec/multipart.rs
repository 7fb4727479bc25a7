//! MULTIPART_REQUEST and MULTIPART_REPLY bodies: switch description, flow
//! statistics, port descriptions and meter statistics (OpenFlow 1.3.5 §7.3.5).

use super::{
    DecodeError, Instruction,
    flow::{decode_instructions, encode_instructions},
};
use crate::openflow::{
    oxm::Match,
    wire::{Put, Reader, len16},
};

const DESC_LEN: usize = 1056;
const PORT_LEN: usize = 64;

/// `OFPMP_*` multipart types we use.
pub mod mp_type {
    /// Switch description.
    pub const DESC: u16 = 0;
    /// Individual flow statistics.
    pub const FLOW: u16 = 1;
    /// Port descriptions.
    pub const PORT_DESC: u16 = 13;
    /// Meter statistics.
    pub const METER: u16 = 9;
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
    /// `OFPMP_METER`: statistics of one meter, or [`METER_ALL`](super::METER_ALL).
    Meter(u32),
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
    /// Table or [`TABLE_ALL`](super::TABLE_ALL).
    pub table_id: u8,
    /// Output port filter or [`OFPP_ANY`](super::OFPP_ANY).
    pub out_port: u32,
    /// Output group filter or [`OFPG_ANY`](super::OFPG_ANY).
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
    /// `OFPMP_METER`.
    Meter(Vec<MeterStats>),
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

impl MultipartRequest {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        let (typ, data) = match &self.body {
            MultipartRequestBody::Desc => (mp_type::DESC, Vec::new()),
            MultipartRequestBody::PortDesc => (mp_type::PORT_DESC, Vec::new()),
            MultipartRequestBody::Meter(id) => {
                let mut d = Vec::with_capacity(8);
                d.put_u32(*id);
                d.put_zeros(4);
                (mp_type::METER, d)
            }
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
        out.put_u16(self.flags);
        out.put_zeros(4);
        out.extend_from_slice(&data);
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mp = r.u16()?;
        let flags = r.u16()?;
        r.skip(4)?;
        let body = match mp {
            mp_type::DESC if r.remaining() == 0 => MultipartRequestBody::Desc,
            mp_type::PORT_DESC if r.remaining() == 0 => MultipartRequestBody::PortDesc,
            mp_type::METER if r.remaining() == 8 => {
                let id = r.u32()?;
                r.skip(4)?;
                MultipartRequestBody::Meter(id)
            }
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
                    return Err(DecodeError::Malformed { what: "flow stats request", why: "trailing bytes" });
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
        Ok(MultipartRequest { flags, body })
    }
}

impl MultipartReply {
    pub(super) fn encode_body(&self, out: &mut Vec<u8>) {
        let typ = match &self.body {
            MultipartReplyBody::Desc(_) => mp_type::DESC,
            MultipartReplyBody::Flow(_) => mp_type::FLOW,
            MultipartReplyBody::PortDesc(_) => mp_type::PORT_DESC,
            MultipartReplyBody::Meter(_) => mp_type::METER,
            MultipartReplyBody::Unknown { mp_type, .. } => *mp_type,
        };
        out.put_u16(typ);
        out.put_u16(self.flags);
        out.put_zeros(4);
        match &self.body {
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
            MultipartReplyBody::Meter(ms) => encode_meter_stats(ms, out),
            MultipartReplyBody::Unknown { data, .. } => out.extend_from_slice(data),
        }
    }

    pub(super) fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
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
            mp_type::METER => MultipartReplyBody::Meter(decode_meter_stats(r)?),
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
        Ok(MultipartReply { flags, body })
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

/// `ofp_meter_stats` (OpenFlow 1.3.5 §7.3.5.12): 40 bytes, then 16 per band.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterStats {
    /// Meter id.
    pub meter_id: u32,
    /// Flows bound to the meter.
    pub flow_count: u32,
    /// Packets that entered the meter.
    pub packet_in_count: u64,
    /// Bytes that entered the meter.
    pub byte_in_count: u64,
    /// Age, seconds.
    pub duration_sec: u32,
    /// Age, nanoseconds.
    pub duration_nsec: u32,
    /// Per band, in band order: (packets, bytes) the band applied to (for
    /// a drop band: dropped).
    pub bands: Vec<(u64, u64)>,
}

const METER_STATS_LEN: usize = 40;
const METER_BAND_STATS_LEN: usize = 16;

fn encode_meter_stats(ms: &[MeterStats], out: &mut Vec<u8>) {
    for m in ms {
        out.put_u32(m.meter_id);
        out.put_u16(len16(METER_STATS_LEN + METER_BAND_STATS_LEN * m.bands.len()));
        out.put_zeros(6);
        out.put_u32(m.flow_count);
        out.put_u64(m.packet_in_count);
        out.put_u64(m.byte_in_count);
        out.put_u32(m.duration_sec);
        out.put_u32(m.duration_nsec);
        for (p, b) in &m.bands {
            out.put_u64(*p);
            out.put_u64(*b);
        }
    }
}

fn decode_meter_stats(r: &mut Reader<'_>) -> Result<Vec<MeterStats>, DecodeError> {
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let meter_id = r.u32()?;
        let len = usize::from(r.u16()?);
        if len < METER_STATS_LEN || !(len - METER_STATS_LEN).is_multiple_of(METER_BAND_STATS_LEN) {
            return Err(DecodeError::Malformed { what: "meter stats", why: "length not 40 + 16 per band" });
        }
        let mut e = Reader::new(r.bytes(len - 6)?, "meter stats");
        e.skip(6)?;
        let flow_count = e.u32()?;
        let packet_in_count = e.u64()?;
        let byte_in_count = e.u64()?;
        let duration_sec = e.u32()?;
        let duration_nsec = e.u32()?;
        let mut bands = Vec::new();
        while e.remaining() > 0 {
            bands.push((e.u64()?, e.u64()?));
        }
        out.push(MeterStats {
            meter_id,
            flow_count,
            packet_in_count,
            byte_in_count,
            duration_sec,
            duration_nsec,
            bands,
        });
    }
    Ok(out)
}
