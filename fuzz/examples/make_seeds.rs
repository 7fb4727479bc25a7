//! Writes the committed seed corpora `fuzz/seeds/<target>/` (small inputs
//! that reach deep into each decoder). Run after changing a decoder's input
//! format: `cd fuzz && cargo +nightly run --release --example make_seeds`.
//! Seeds are deterministic, so regenerating them changes nothing unless the
//! encoders changed.

use std::{fs, net::IpAddr, path::Path, str::FromStr};

use guard_user::{
    frame as decode,
    learn::{
        pcapw::{PcapNgWriter, PcapWriter},
        synth,
    },
    openflow::{
        codec::{
            Action, Body, FeaturesReply, FlowMod, FlowRemoved, Instruction, Message, MeterBand, MeterMod,
            NO_BUFFER, OFPP_NORMAL, PacketIn, PacketOut, SwitchConfig,
        },
        oxm::{Match, Oxm},
    },
    policy::{AllowSet, Classes, Prefix},
    rpz::zonefile::write_zone,
};
use hickory_proto::{
    op::{Message as Dns, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::SOA},
};
use rpz_guard_fuzz::{
    encode_frames,
    learn_common::{self as lc, Conv},
};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    fs::create_dir_all(&dir).expect("create seed dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

/// A small conversation that teaches NS, MX and glue, over UDP and TCP.
fn conversation() -> Conv {
    let mut c = Conv::new();
    let (q, r) = (
        lc::query(1, "example.com.", RecordType::MX),
        lc::response(
            1,
            "example.com.",
            RecordType::MX,
            ResponseCode::NoError,
            vec![lc::mx("example.com.", 10, "mail.example.com.")],
            vec![lc::ns("example.com.", "ns1.example.com.")],
            vec![lc::a("ns1.example.com.", "203.0.113.10"), lc::a("mail.example.com.", "203.0.113.25")],
        ),
    );
    c.exchange(lc::RESOLVER, lc::ROOT_A, q, r);
    let r6 = lc::response(
        2,
        "example.org.",
        RecordType::NS,
        ResponseCode::NoError,
        vec![],
        vec![lc::ns("example.org.", "ns.example.org.")],
        vec![lc::aaaa("ns.example.org.", "2001:db8::53"), lc::cname("www.example.org.", "example.org.")],
    );
    c.exchange(lc::RESOLVER, lc::ROOT_A, lc::query(2, "example.org.", RecordType::NS), r6.clone());
    // The same answer over TCP, split across two segments.
    let (res, root) = (lc::ip(lc::RESOLVER), lc::ip(lc::ROOT_A));
    let mut framed = (r6.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&r6);
    let q = lc::query(3, "example.org.", RecordType::NS);
    let mut qf = (q.len() as u16).to_be_bytes().to_vec();
    qf.extend_from_slice(&q);
    c.push(lc::eth_tcp(res, root, 41000, 53, 100, "S", &[]));
    c.push(lc::eth_tcp(res, root, 41000, 53, 101, "PA", &qf));
    c.push(lc::eth_tcp(root, res, 53, 41000, 500, "S", &[]));
    let (a, b) = framed.split_at(framed.len() / 2);
    c.push(lc::eth_tcp(root, res, 53, 41000, 501, "PA", a));
    c.push(lc::eth_tcp(root, res, 53, 41000, 501 + a.len() as u32, "PA", b));
    c
}

fn dns_and_learner() {
    let c = conversation();
    for (i, (_, f)) in c.frames.iter().enumerate() {
        if let Ok(ip) = decode::link_payload(1, f).and_then(decode::ip)
            && let Ok((_, _, d)) = decode::udp(ip.payload)
        {
            put("dns_diff", &format!("conv-{i}"), d);
        }
    }
    // A slice of a generated border capture: the mix of a real day.
    let mut pcap = Vec::new();
    synth::generate(&mut pcap, 24_000, 5).expect("generate");
    let mut frames = Vec::new();
    let path = std::env::temp_dir().join("rpz-guard-seed.pcap");
    fs::write(&path, &pcap).expect("write");
    let mut n = 0;
    guard_user::learn::capture::read_capture(
        &guard_user::learn::capture::Input::File(path.clone()),
        &mut |_, _, f| {
            frames.push(f.to_vec());
            true
        },
        &mut |_| {},
        &mut |_| {},
    )
    .expect("read the generated capture");
    let _ = fs::remove_file(&path);
    for f in frames.iter().take(40) {
        if let Ok(ip) = decode::link_payload(1, f).and_then(decode::ip)
            && let Ok((_, _, d)) = decode::udp(ip.payload)
            && n < 12
        {
            put("dns_diff", &format!("synth-{n}"), d);
            n += 1;
        }
    }
    put("learn_frames", "conversation", &encode_frames(c.frames.iter().map(|(_, f)| (1u8, f.as_slice()))));
    put("learn_frames", "synth", &encode_frames(frames.iter().take(30).map(|f| (1u8, f.as_slice()))));
    // Raw-IP and SLL link types (index 4 = LINKTYPE_RAW, 6 = SLL).
    let raw: Vec<Vec<u8>> = c.frames.iter().map(|(_, f)| f[14..].to_vec()).collect();
    put("learn_frames", "raw-ip", &encode_frames(raw.iter().map(|f| (4u8, f.as_slice()))));
    let sll: Vec<Vec<u8>> = raw.iter().map(|f| lc::sll(f)).collect();
    put("learn_frames", "sll", &encode_frames(sll.iter().map(|f| (6u8, f.as_slice()))));

    let mut w = PcapWriter::new(Vec::new(), 1, false).expect("pcap");
    for (ts, f) in &c.frames {
        w.packet(*ts, f).expect("packet");
    }
    put("learn_capture", "conversation.pcap", &w.finish().expect("finish"));
    let mut w = PcapWriter::new(Vec::new(), 101, true).expect("pcap");
    for (ts, f) in c.frames.iter().zip(&raw).map(|((ts, _), r)| (ts, r)) {
        w.packet(*ts, f).expect("packet");
    }
    put("learn_capture", "raw-nanos.pcap", &w.finish().expect("finish"));
    let mut w = PcapNgWriter::new(Vec::new(), 1).expect("pcapng");
    for (ts, f) in &c.frames {
        w.packet(*ts, f).expect("packet");
    }
    put("learn_capture", "conversation.pcapng", &w.finish().expect("finish"));
    put("learn_capture", "synth-head.pcap", &pcap[..pcap.len().min(6000)]);
}

fn openflow() {
    let m = |oxms| Match::new(oxms);
    let frame =
        |dst: &str, dport: u16| lc::eth_tcp(lc::ip("10.1.0.10"), lc::ip(dst), 40000, dport, 1, "S", &[]);
    let pin = |xid, dst: &str, dport| {
        Message::new(
            xid,
            Body::PacketIn(PacketIn {
                buffer_id: NO_BUFFER,
                total_len: 54,
                reason: 0,
                table_id: 0,
                cookie: 0,
                r#match: m(vec![Oxm::InPort(1)]),
                data: frame(dst, dport),
            }),
        )
    };
    let messages = vec![
        Message::new(1, Body::Hello { version: 4, bitmap: Some(1 << 4) }),
        Message::new(
            2,
            Body::FeaturesReply(FeaturesReply {
                datapath_id: 0x42,
                n_buffers: 0,
                n_tables: 254,
                auxiliary_id: 0,
                capabilities: 0x4f,
                reserved: 0,
            }),
        ),
        Message::new(3, Body::BarrierReply),
        Message::new(4, Body::EchoRequest(b"ping".to_vec())),
        pin(5, "198.51.100.25", 25),
        pin(6, "198.51.100.99", 25),
        pin(7, "198.51.100.53", 53),
        Message::new(
            8,
            Body::FlowRemoved(FlowRemoved {
                cookie: 0x5250_4700_0000_0003,
                priority: 20_000,
                reason: 0,
                table_id: 0,
                duration_sec: 60,
                duration_nsec: 0,
                idle_timeout: 60,
                hard_timeout: 300,
                packet_count: 3,
                byte_count: 180,
                r#match: m(vec![
                    Oxm::EthType(0x0800),
                    Oxm::Ipv4Dst("198.51.100.99".parse().expect("ip"), None),
                ]),
            }),
        ),
        Message::new(9, Body::GetConfigReply(SwitchConfig { flags: 3, miss_send_len: 0xffff })),
    ];
    let others = vec![
        Message::new(
            10,
            Body::FlowMod(FlowMod::add(
                1,
                30_000,
                m(vec![
                    Oxm::EthType(0x86dd),
                    Oxm::IpProto(6),
                    Oxm::Ipv6Dst("2001:db8::".parse().expect("ip"), Some("ffff:ffff::".parse().expect("ip"))),
                    Oxm::TcpDst(25),
                ]),
                vec![Instruction::ApplyActions(vec![Action::output(OFPP_NORMAL)])],
            )),
        ),
        Message::new(
            11,
            Body::PacketOut(PacketOut {
                buffer_id: NO_BUFFER,
                in_port: 1,
                actions: vec![Action::output(OFPP_NORMAL)],
                data: frame("198.51.100.25", 25),
            }),
        ),
        Message::new(
            12,
            Body::MeterMod(MeterMod {
                command: 0,
                flags: 6,
                meter_id: 1,
                bands: vec![MeterBand::drop(2000, 200)],
            }),
        ),
        Message::new(13, Body::SetConfig(SwitchConfig { flags: 3, miss_send_len: 0xffff })),
    ];
    for (i, msg) in messages.iter().chain(&others).enumerate() {
        put("openflow_decode", &format!("msg-{i}"), &msg.encode());
    }
    // OVS 3.1's own PACKET_IN bytes (openflow_codec.rs).
    let ovs = "040a006400000000ffffffff003a0100ffffffffffffffff0001000c80000004fffffffe00000000\
        000002000000000102000000000208004500002800010000400600000a000005c633641930390019000000000000\
        0000500220000000000000000000";
    let ovs: Vec<u8> =
        (0..ovs.len()).step_by(2).map(|i| u8::from_str_radix(&ovs[i..i + 2], 16).expect("hex")).collect();
    put("openflow_decode", "ovs-packet-in", &ovs);
    // A whole switch session, as one write and cut into small writes.
    let mut session = Vec::new();
    for msg in &messages {
        msg.encode_into(&mut session);
    }
    put("openflow_stream", "session-whole", &[&[0u8][..], &session].concat());
    put("openflow_stream", "session-cut", &[&[3u8, 1, 7, 60][..], &session].concat());
    let mut garbage = session.clone();
    garbage.extend_from_slice(&[4, 14, 0, 4, 0, 0, 0, 0]);
    put("openflow_stream", "session-short-length", &[&[1u8, 5][..], &garbage].concat());
}

fn name(s: &str) -> Name {
    Name::from_str(s).expect("name")
}

fn soa(serial: u32) -> Record {
    let z = name("rpz.example.com.");
    Record::from_rdata(
        z.clone(),
        60,
        RData::SOA(SOA::new(
            name("localhost."),
            name("hostmaster.localhost."),
            serial,
            3600,
            600,
            86_400,
            60,
        )),
    )
}

fn entry(ip: &str, class: [u8; 4]) -> Record {
    let owner =
        guard_user::rpz::encode_owner(&Prefix::host(ip.parse::<IpAddr>().expect("ip")), "rpz.example.com");
    Record::from_rdata(name(&owner), 60, RData::A(std::net::Ipv4Addr::from(class).into()))
}

fn framed(msgs: &[Vec<Record>]) -> Vec<u8> {
    let mut out = Vec::new();
    for rs in msgs {
        let mut m = Dns::new();
        m.set_id(0)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true);
        m.add_query(Query::query(name("rpz.example.com."), RecordType::AXFR));
        m.add_answers(rs.clone());
        let b = m.to_vec().expect("encode");
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(&b);
    }
    out
}

fn rpz() {
    let set: AllowSet = [
        (Prefix::host("198.51.100.53".parse().expect("ip")), Classes::DNS),
        (Prefix::host("198.51.100.25".parse().expect("ip")), Classes::SMTP),
        ("203.0.113.0/24".parse().expect("p"), Classes::SMTP),
        ("2001:db8::/32".parse().expect("p"), Classes::DNS.union(Classes::SMTP)),
    ]
    .into_iter()
    .collect();
    let mut z = Vec::new();
    write_zone(&set, "rpz.example.com", 42, &mut z).expect("zone");
    put("zonefile", "written", &[&[0u8][..], &z].concat());
    let hand = "$ORIGIN rpz.example.com.\n$TTL 1h\n@ IN SOA ns hostmaster ( 7 ; serial\n 3600 600 86400 60 )\n  NS ns\n\
        25.100.51.198 A 127.0.0.25\n32.1.0.0.0.0.0.8b.d.0.1.0.0.2.rpz-ip 300 IN A 127.0.0.1\n\
        24.0.113.203.rpz-ip IN 60 A 127.0.0.25\n; comment\nbad TXT \"quoted ; text\"\n";
    put("zonefile", "hand", &[&[1u8][..], hand.as_bytes()].concat());
    put(
        "zonefile",
        "prefixes",
        &[0x80, 24, 198, 51, 100, 0, 0x80 | 48, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );

    let e = |ip, c| entry(ip, c);
    let axfr = framed(&[
        vec![soa(10), e("198.51.100.53", [127, 0, 0, 1])],
        vec![e("198.51.100.25", [127, 0, 0, 25]), soa(10)],
    ]);
    put("rpz_xfr", "axfr", &[&[0u8][..], &axfr].concat());
    let ixfr = framed(&[vec![
        soa(12),
        soa(100),
        e("198.51.100.25", [127, 0, 0, 25]),
        soa(11),
        e("192.0.2.7", [127, 0, 0, 1]),
        soa(11),
        soa(12),
        e("192.0.2.8", [127, 0, 0, 25]),
        soa(12),
    ]]);
    put("rpz_xfr", "ixfr", &[&[1u8][..], &ixfr].concat());
    put("rpz_xfr", "ixfr-up-to-date", &[&[1u8][..], &framed(&[vec![soa(100)]])].concat());
    put("rpz_xfr", "soa", &[&[2u8][..], &framed(&[vec![soa(100)]])].concat());
    put("rpz_xfr", "axfr-signed", &[&[0x40u8][..], &axfr].concat());

    let mut n = Dns::new();
    n.set_id(4242).set_op_code(OpCode::Notify).set_authoritative(true);
    n.add_query(Query::query(name("rpz.example.com."), RecordType::SOA));
    n.add_answer(soa(13));
    put("rpz_udp", "notify", &[&[0u8][..], &n.to_vec().expect("encode")].concat());
    let qname = name("99.100.51.198.rpz.example.com.");
    let mut a = Dns::new();
    a.set_id(0).set_message_type(MessageType::Response).set_authoritative(true);
    a.add_query(Query::query(qname.clone(), RecordType::A));
    a.add_answer(Record::from_rdata(
        qname.clone(),
        60,
        RData::A(std::net::Ipv4Addr::new(127, 0, 0, 25).into()),
    ));
    put("rpz_udp", "lookup-smtp", &[&[1u8][..], &a.to_vec().expect("encode")].concat());
    let mut nx = Dns::new();
    nx.set_id(0).set_message_type(MessageType::Response).set_response_code(ResponseCode::NXDomain);
    nx.add_query(Query::query(qname, RecordType::A));
    nx.add_name_server(soa(13));
    put("rpz_udp", "lookup-nxdomain", &[&[1u8][..], &nx.to_vec().expect("encode")].concat());

    put(
        "tsig_keyfile",
        "bind",
        b"# tsig-keygen\nkey \"rpz-update\" {\n\talgorithm hmac-sha256;\n\tsecret \"n0t4r3alk3ybutV4lidBase64ZZZZZZZZZZZZZZZZZZ=\";\n};\n\
          key other. { algorithm hmac-sha512; secret \"YWJj\"; }; // two keys\n",
    );
    let example = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpz-guard.example.toml"))
        .expect("example config");
    put("config", "example", &example);
    put(
        "config",
        "small",
        b"[rpz]\nzone = \"rpz.example.com\"\nzone_file = \"/tmp/x.zone\"\n[enforce]\niface = \"eth1\"\n",
    );
}

fn xdp() {
    let v4 = |src: &str, dst: &str, dport| lc::eth_tcp(lc::ip(src), lc::ip(dst), 40000, dport, 1, "S", &[]);
    put("xdp_verdict", "smtp-unknown", &[&[0u8][..], &v4("10.1.0.10", "198.51.100.99", 25)].concat());
    put("xdp_verdict", "smtp-mx", &[&[0u8][..], &v4("10.1.0.10", "198.51.100.25", 25)].concat());
    put("xdp_verdict", "smtp-ns", &[&[0u8][..], &v4("10.1.0.10", "198.51.100.53", 587)].concat());
    let dns = lc::eth_udp(lc::ip("fd00:1::10"), lc::ip("2001:db8:100::53"), 40000, 53, b"\x00\x01");
    put("xdp_verdict", "dns-v6", &[&[0u8][..], &dns].concat());
    let vlan = lc::eth_vlan_udp(true, lc::ip("10.1.0.10"), lc::ip("198.51.100.99"), 40000, 53, b"q");
    put("xdp_verdict", "dns-qinq", &[&[0u8][..], &vlan].concat());
    put("xdp_verdict", "generated", &[1u8, 0, 2, 1, 0, 0, 1, 1, 0, 0, 0, 0]);
}

fn main() {
    dns_and_learner();
    openflow();
    rpz();
    xdp();
    println!("seeds written to {}", Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").display());
}
