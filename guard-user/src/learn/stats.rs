//! Counters of the learning pipeline and the JSON summary.
use std::collections::BTreeMap;

use serde::Serialize;

use super::dns::DnsError;
use crate::frame::FrameError;

/// Why a packet, fragment, segment or message was skipped. Every variant is a
/// counter in [`Summary::malformed`] (or [`Summary::skipped`] for input that
/// is fine but not DNS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Discard {
    /// Link header cut short.
    TruncatedLink,
    /// More VLAN tags than we unwrap.
    TooManyVlanTags,
    /// A link type we do not decode.
    UnknownLinkType,
    /// Not an IP packet (ARP, LLDP, ...).
    NotIp,
    /// IP header cut short or total length beyond the captured bytes.
    TruncatedIp,
    /// Inconsistent IP header fields.
    BadIpHeader,
    /// More IPv6 extension headers than we walk.
    TooManyExtHeaders,
    /// UDP or TCP header cut short.
    TruncatedTransport,
    /// Neither UDP nor TCP, or neither port is 53.
    NotDns,
    /// Fragments that overlap or exceed 64 KiB.
    BadFragment,
    /// Fragments dropped because the reassembly table was full.
    FragmentTableFull,
    /// Datagrams whose fragments did not all arrive in time.
    FragmentTimeout,
    /// TCP data dropped: buffer or out-of-order limit reached, or a gap.
    TcpStreamLoss,
    /// TCP flows dropped because the flow table was full.
    TcpFlowTableFull,
    /// A DNS message that is not a standard query or response (opcode != 0).
    NotQuery,
    /// A query or response without exactly one question.
    NotOneQuestion,
    /// The DNS reader rejected the message.
    Dns(DnsError),
    /// Queries dropped because the pending table was full.
    PendingTableFull,
    /// A capture file that ends inside a block.
    TruncatedCapture,
    /// A capture block that cannot be parsed (the rest of the file is skipped).
    CorruptCapture,
}

impl From<FrameError> for Discard {
    fn from(e: FrameError) -> Discard {
        match e {
            FrameError::TruncatedLink => Discard::TruncatedLink,
            FrameError::TooManyVlanTags => Discard::TooManyVlanTags,
            FrameError::UnknownLinkType => Discard::UnknownLinkType,
            FrameError::NotIp { .. } => Discard::NotIp,
            FrameError::TruncatedIp => Discard::TruncatedIp,
            FrameError::BadIpHeader => Discard::BadIpHeader,
            FrameError::TooManyExtHeaders => Discard::TooManyExtHeaders,
            FrameError::TruncatedTransport => Discard::TruncatedTransport,
        }
    }
}

impl Discard {
    /// The counter name used in the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Discard::TruncatedLink => "truncated_link_header",
            Discard::TooManyVlanTags => "too_many_vlan_tags",
            Discard::UnknownLinkType => "unknown_link_type",
            Discard::NotIp => "not_ip",
            Discard::TruncatedIp => "truncated_ip",
            Discard::BadIpHeader => "bad_ip_header",
            Discard::TooManyExtHeaders => "too_many_ipv6_extension_headers",
            Discard::TruncatedTransport => "truncated_transport_header",
            Discard::NotDns => "not_dns",
            Discard::BadFragment => "bad_fragment",
            Discard::FragmentTableFull => "fragment_table_full",
            Discard::FragmentTimeout => "fragment_timeout",
            Discard::TcpStreamLoss => "tcp_stream_loss",
            Discard::TcpFlowTableFull => "tcp_flow_table_full",
            Discard::NotQuery => "dns_not_query_opcode",
            Discard::NotOneQuestion => "dns_not_one_question",
            Discard::Dns(DnsError::ShortHeader) => "dns_short_header",
            Discard::Dns(DnsError::Truncated) => "dns_truncated",
            Discard::Dns(DnsError::CompressionLoop) => "dns_compression_loop",
            Discard::Dns(DnsError::NameTooLong) => "dns_name_too_long",
            Discard::Dns(DnsError::BadLabel) => "dns_bad_label",
            Discard::Dns(DnsError::AbsurdCounts) => "dns_absurd_counts",
            Discard::Dns(DnsError::BadRdata) => "dns_bad_rdata",
            Discard::PendingTableFull => "pending_table_full",
            Discard::TruncatedCapture => "truncated_capture_file",
            Discard::CorruptCapture => "corrupt_capture_block",
        }
    }

    /// True for input that is well-formed but simply not DNS (not counted as malformed).
    pub fn is_benign(self) -> bool {
        matches!(self, Discard::NotIp | Discard::NotDns)
    }
}

/// Entries per class in the learned allow set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EntryCounts {
    /// Entries holding class DNS.
    pub dns: usize,
    /// Entries holding class SMTP.
    pub smtp: usize,
    /// All entries.
    pub total: usize,
}

/// The JSON summary of one learning run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Input names, in the order read.
    pub inputs: Vec<String>,
    /// Bytes of capture read.
    pub bytes: u64,
    /// Packets read.
    pub packets: u64,
    /// DNS messages parsed (UDP payloads and TCP-framed messages).
    pub dns_messages: u64,
    /// Queries seen.
    pub queries: u64,
    /// Responses seen.
    pub responses: u64,
    /// Responses matched to a pending query.
    pub matched: u64,
    /// Responses with no pending query (never evidence).
    pub unmatched_responses: u64,
    /// Matched responses from servers not trusted (teach nothing).
    pub untrusted_responses: u64,
    /// Queries that expired without a response.
    pub expired_queries: u64,
    /// Queries still pending at the end.
    pub pending_at_end: u64,
    /// Skipped input that is malformed, by reason.
    pub malformed: BTreeMap<&'static str, u64>,
    /// Skipped input that is fine but not DNS, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Entries per class in the result.
    pub entries: EntryCounts,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
    /// Capture megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
}

impl Summary {
    /// Counts one dropped item.
    pub fn count_discard(&mut self, why: Discard) {
        let map = if why.is_benign() { &mut self.skipped } else { &mut self.malformed };
        *map.entry(why.as_str()).or_default() += 1;
    }

    /// Total malformed items.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }
}
