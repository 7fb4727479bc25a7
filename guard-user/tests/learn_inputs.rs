//! Every input form: file formats, link types, IPv6, fragments, TCP, ordering,
//! stdin, and damaged or foreign files.
mod learn_common;

use std::{io::Write, time::Duration};

use guard_user::{
    frame as decode,
    learn::{self, Hints, LearnOptions, pcapw::PcapNgWriter},
    policy::Classes,
};
use hickory_proto::{op::ResponseCode::NoError, rr::RecordType};
use learn_common::*;

const TLD: &str = "192.5.6.30";

fn referral_pair(id: u16) -> (Vec<u8>, Vec<u8>) {
    (
        query(id, "example.com.", RecordType::A),
        response(
            id,
            "example.com.",
            RecordType::A,
            NoError,
            vec![],
            vec![learn_common::ns("com.", "a.gtld-servers.net.")],
            vec![a("a.gtld-servers.net.", TLD)],
        ),
    )
}

fn learned_tld(frames: Vec<Vec<u8>>, linktype: u32) -> bool {
    let mut c = Conv::new();
    for f in frames {
        c.push(f);
    }
    let (set, s) = c.learn_with(&Hints::root(), linktype);
    assert_eq!(s.malformed_total(), 0, "{:?}", s.malformed);
    set.lookup(ip(TLD)) == Classes::DNS
}

fn run_files(inputs: Vec<std::path::PathBuf>) -> Result<learn::LearnOutcome, learn::LearnError> {
    learn::run(&LearnOptions {
        inputs,
        hints: Hints::root(),
        window: Duration::from_secs(10),
        progress: false,
    })
}

#[test]
fn vlan_tagged_ethernet() {
    for double in [false, true] {
        let (q, r) = referral_pair(1);
        let frames = vec![
            eth_vlan_udp(double, ip(RESOLVER), ip(ROOT_A), 4000, 53, &q),
            eth_vlan_udp(double, ip(ROOT_A), ip(RESOLVER), 53, 4000, &r),
        ];
        assert!(learned_tld(frames, decode::LINKTYPE_ETHERNET), "double={double}");
    }
}

#[test]
fn linux_sll_sll2_and_raw_ip() {
    let (q, r) = referral_pair(1);
    let rq = raw_udp(ip(RESOLVER), ip(ROOT_A), 4000, 53, &q);
    let rr = raw_udp(ip(ROOT_A), ip(RESOLVER), 53, 4000, &r);
    assert!(learned_tld(vec![sll(&rq), sll(&rr)], decode::LINKTYPE_LINUX_SLL));
    assert!(learned_tld(vec![sll2(&rq), sll2(&rr)], decode::LINKTYPE_LINUX_SLL2));
    assert!(learned_tld(vec![rq.clone(), rr.clone()], decode::LINKTYPE_RAW));
    assert!(learned_tld(vec![rq, rr], decode::DLT_RAW_12));
}

#[test]
fn ipv6_transport_raw_and_ethernet() {
    let root6 = "2001:503:ba3e::2:30";
    let res6 = "fd00::53";
    let (q, r) = referral_pair(1);
    let frames = vec![raw_udp(ip(res6), ip(root6), 4000, 53, &q), raw_udp(ip(root6), ip(res6), 53, 4000, &r)];
    assert!(learned_tld(frames, decode::LINKTYPE_IPV6));
    let frames = vec![eth_udp(ip(res6), ip(root6), 4000, 53, &q), eth_udp(ip(root6), ip(res6), 53, 4000, &r)];
    assert!(learned_tld(frames, decode::LINKTYPE_ETHERNET));
}

#[test]
fn unknown_link_type_is_counted() {
    let mut c = Conv::new();
    c.push(vec![0; 60]);
    let (_, s) = c.learn_with(&Hints::root(), 147);
    assert_eq!(s.malformed.get("unknown_link_type"), Some(&1));
}

/// Splits an Ethernet/IPv4 frame's IP payload into fragments of `chunk` bytes.
fn fragment(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let ip_start = 14;
    let ihl = usize::from(frame[ip_start] & 0xf) * 4;
    let payload = &frame[ip_start + ihl..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let more = end < payload.len();
        let mut f = frame[..ip_start + ihl].to_vec();
        let total = (ihl + end - off) as u16;
        f[ip_start + 2..ip_start + 4].copy_from_slice(&total.to_be_bytes());
        f[ip_start + 4..ip_start + 6].copy_from_slice(&0x4242u16.to_be_bytes());
        let ff = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
        f[ip_start + 6..ip_start + 8].copy_from_slice(&ff.to_be_bytes());
        f.extend_from_slice(&payload[off..end]);
        out.push(f);
        off = end;
    }
    out
}

#[test]
fn ipv4_fragments_reassembled_in_any_order() {
    let (q, r) = referral_pair(1);
    let mut frags = fragment(&eth_udp(ip(ROOT_A), ip(RESOLVER), 53, 4000, &r), 24);
    assert!(frags.len() >= 3);
    frags.reverse();
    let mut frames = vec![eth_udp(ip(RESOLVER), ip(ROOT_A), 4000, 53, &q)];
    frames.extend(frags);
    assert!(learned_tld(frames, decode::LINKTYPE_ETHERNET));
}

#[test]
fn ipv4_fragment_missing_piece_teaches_nothing() {
    let (q, r) = referral_pair(1);
    let mut frags = fragment(&eth_udp(ip(ROOT_A), ip(RESOLVER), 53, 4000, &r), 24);
    frags.remove(1);
    let mut frames = vec![eth_udp(ip(RESOLVER), ip(ROOT_A), 4000, 53, &q)];
    frames.extend(frags);
    assert!(!learned_tld(frames, decode::LINKTYPE_ETHERNET));
}

fn framed(m: &[u8]) -> Vec<u8> {
    let mut v = (m.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(m);
    v
}

#[test]
fn tcp_dns_split_and_pipelined_messages() {
    let (res, root) = (ip(RESOLVER), ip(ROOT_A));
    let (q1, r1) = referral_pair(1);
    let q2 = query(2, "www.example.com.", RecordType::AAAA);
    let r2 = response(
        2,
        "www.example.com.",
        RecordType::AAAA,
        NoError,
        vec![],
        vec![learn_common::ns("com.", "b.gtld-servers.net.")],
        vec![a("b.gtld-servers.net.", "192.33.14.30")],
    );
    // Two queries in one segment; the two responses split across three segments.
    let mut qs = framed(&q1);
    qs.extend(framed(&q2));
    let mut rs = framed(&r1);
    rs.extend(framed(&r2));
    let (c1, c2) = (1 + rs.len() / 3, 1 + 2 * rs.len() / 3);
    let frames = vec![
        eth_tcp(res, root, 5000, 53, 100, "S", &[]),
        eth_tcp(root, res, 53, 5000, 900, "SA", &[]),
        eth_tcp(res, root, 5000, 53, 101, "PA", &qs),
        eth_tcp(root, res, 53, 5000, 901, "A", &rs[..c1]),
        // The third piece arrives before the second.
        eth_tcp(root, res, 53, 5000, 901 + c2 as u32, "PA", &rs[c2..]),
        eth_tcp(root, res, 53, 5000, 901 + c1 as u32, "A", &rs[c1..c2]),
        eth_tcp(root, res, 53, 5000, 901 + rs.len() as u32, "FA", &[]),
    ];
    let mut c = Conv::new();
    for f in frames {
        c.push(f);
    }
    let (set, s) = c.learn();
    assert_eq!(s.matched, 2, "{s:?}");
    assert_eq!(set.lookup(ip(TLD)), Classes::DNS);
    assert_eq!(set.lookup(ip("192.33.14.30")), Classes::DNS);
}

fn two_part_capture() -> (Conv, Conv) {
    // Part 1: root referral; part 2 (later): the TLD delegates example.com.
    let mut first = Conv::new();
    let (q, r) = referral_pair(1);
    first.exchange(RESOLVER, ROOT_A, q, r);
    let mut b = Conv::new();
    b.ts = 5_000_000_000;
    b.ask(
        TLD,
        2,
        "example.com.",
        RecordType::NS,
        referral(
            vec![learn_common::ns("example.com.", "ns1.example.com.")],
            vec![a("ns1.example.com.", "203.0.113.10")],
        ),
    );
    (first, b)
}

#[test]
fn files_are_read_in_time_order_pcap_and_pcapng() {
    let dir = tempdir("order");
    let (early, late) = two_part_capture();
    // Names sort the wrong way round on purpose; the late part is pcapng.
    early.write_pcap(&dir.join("b-early.pcap"), decode::LINKTYPE_ETHERNET, true);
    let f = std::fs::File::create(dir.join("a-late.pcapng")).expect("create");
    let mut w = PcapNgWriter::new(f, 1).expect("pcapng header");
    for (ts, fr) in &late.frames {
        w.packet(*ts, fr).expect("packet");
    }
    w.finish().expect("flush");
    let out = run_files(vec![dir.clone()]).expect("learn directory");
    assert_eq!(out.allow.lookup(ip("203.0.113.10")), Classes::DNS, "{:?}", out.summary);
    assert!(out.summary.inputs[0].ends_with("b-early.pcap"));
    // The same through explicit file arguments, microsecond pcap.
    late.write_pcap(&dir.join("a-late.pcapng"), decode::LINKTYPE_ETHERNET, false);
    let out = run_files(vec![dir.join("a-late.pcapng"), dir.join("b-early.pcap")]).expect("learn files");
    assert_eq!(out.allow.lookup(ip("203.0.113.10")), Classes::DNS);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stdin_input_through_the_binary() {
    let dir = tempdir("stdin");
    let (early, _) = two_part_capture();
    let pcap = dir.join("in.pcap");
    early.write_pcap(&pcap, decode::LINKTYPE_ETHERNET, false);
    let zone = dir.join("out.zone");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
        .args(["learn", "-", "--summary-json", "-", "--zone-file"])
        .arg(&zone)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rpz-guard");
    child.stdin.take().expect("stdin").write_all(&std::fs::read(&pcap).expect("read")).expect("pipe");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary JSON on stdout");
    assert_eq!(json["matched"], 1);
    assert_eq!(json["entries"]["dns"], 27);
    let zone_text = std::fs::read_to_string(&zone).expect("zone");
    assert!(
        zone_text
            .lines()
            .any(|l| l.starts_with(&format!("{TLD}.rpz.example.com. ")) && l.ends_with(" IN A 127.0.0.1")),
        "{zone_text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn not_a_capture_is_an_error_naming_the_file() {
    let dir = tempdir("notcap");
    let p = dir.join("notes.txt");
    std::fs::write(&p, "this is not a capture file at all, just some text\n").expect("write");
    let e = run_files(vec![p.clone()]).expect_err("must fail");
    assert!(e.to_string().contains("notes.txt"), "{e}");
    assert!(e.to_string().contains("not a pcap"), "{e}");
    let empty = dir.join("empty.pcap");
    std::fs::write(&empty, b"").expect("write");
    let e = run_files(vec![empty]).expect_err("must fail");
    assert!(e.to_string().contains("empty.pcap"), "{e}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
        .arg("learn")
        .arg(&p)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("notes.txt"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn truncated_file_is_counted_and_earlier_packets_count() {
    let dir = tempdir("trunc");
    let (early, _) = two_part_capture();
    let p = dir.join("cut.pcap");
    early.write_pcap(&p, decode::LINKTYPE_ETHERNET, false);
    let mut bytes = std::fs::read(&p).expect("read");
    let record_header = bytes[24..40].to_vec();
    bytes.extend_from_slice(&record_header);
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&p, &bytes).expect("write");
    let out = run_files(vec![p]).expect("learn");
    assert_eq!(out.summary.malformed.get("truncated_capture_file"), Some(&1));
    assert_eq!(out.allow.lookup(ip(TLD)), Classes::DNS);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_documents_the_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
        .args(["learn", "--help"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in ["--zone-file", "--zone", "--summary-json", "--root-hints", "--trust-initial", "--window"] {
        assert!(text.contains(opt), "help lacks {opt}:\n{text}");
    }
}

#[test]
fn ipv6_fragments_reassembled() {
    let root6 = "2001:503:ba3e::2:30";
    let res6 = "fd00::53";
    let (q, r) = referral_pair(1);
    // The response's UDP datagram in two IPv6 fragments (fragment header 44).
    let whole = raw_udp(ip(root6), ip(res6), 53, 4000, &r);
    let l4 = &whole[40..];
    let cut = (l4.len() / 2) & !7;
    let frag = |off: usize, data: &[u8], more: bool| {
        let mut p = whole[..40].to_vec();
        p[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        p[6] = 44;
        let off_m = ((off / 8) as u16) << 3 | u16::from(more);
        p.extend([17, 0]);
        p.extend(off_m.to_be_bytes());
        p.extend(0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(data);
        p
    };
    let frames = vec![
        raw_udp(ip(res6), ip(root6), 4000, 53, &q),
        frag(cut, &l4[cut..], false),
        frag(0, &l4[..cut], true),
    ];
    assert!(learned_tld(frames, decode::LINKTYPE_IPV6));
}

#[test]
fn tcp_stream_joined_mid_way_still_frames_from_a_message_start() {
    // No SYN seen: the first segment starts a message.
    let (res, root) = (ip(RESOLVER), ip(ROOT_A));
    let (q, r) = referral_pair(1);
    let frames = vec![
        eth_tcp(res, root, 5001, 53, 7000, "PA", &framed(&q)),
        eth_tcp(root, res, 53, 5001, 9000, "PA", &framed(&r)),
    ];
    assert!(learned_tld(frames, decode::LINKTYPE_ETHERNET));
}

#[test]
fn bad_window_values_are_clear_errors() {
    for w in ["0", "-1", "1e30", "nan"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rpz-guard"))
            .args(["learn", &format!("--window={w}"), "-"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--window"), "{w}");
    }
}
