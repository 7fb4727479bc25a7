//! One test per learning rule, with crafted packets.
mod learn_common;

use guard_user::{frame::LINKTYPE_ETHERNET, learn::Hints, policy::Classes};
use hickory_proto::{op::ResponseCode::*, rr::RecordType};
use learn_common::*;

const DNS: Classes = Classes::DNS;
const SMTP: Classes = Classes::SMTP;
const TLD: &str = "192.5.6.30";
const TLD6: &str = "2001:503:a83e::2:30";

/// Root referral for `qname` delegating com. with glue; then the TLD is trusted.
fn root_referral(c: &mut Conv, id: u16, qname: &str, qtype: RecordType) {
    c.ask(
        ROOT_A,
        id,
        qname,
        qtype,
        referral(
            vec![ns("com.", "a.gtld-servers.net.")],
            vec![a("a.gtld-servers.net.", TLD), aaaa("a.gtld-servers.net.", TLD6)],
        ),
    );
}

#[test]
fn rule1_roots_are_trusted_dns_entries() {
    let (set, s) = Conv::new().learn();
    assert_eq!(set.len(), 26);
    assert_eq!(set.lookup(ip(ROOT_A)), DNS);
    assert_eq!(s.entries.dns, 26);
}

#[test]
fn rule1_hints_file_replaces_roots() {
    let hints = Hints::parse("ns.lab. 3600 A 192.0.2.53\n").expect("hints");
    let mut c = Conv::new();
    root_referral(&mut c, 1, "example.com.", RecordType::A);
    let (set, _) = c.learn_with(&hints, LINKTYPE_ETHERNET);
    assert_eq!(set.len(), 1, "the real root is not trusted with a custom hints file");
    assert_eq!(set.lookup(ip("192.0.2.53")), DNS);
}

#[test]
fn rule2_referral_glue_becomes_dns() {
    let mut c = Conv::new();
    root_referral(&mut c, 1, "www.example.com.", RecordType::A);
    let (set, s) = c.learn();
    assert_eq!(beyond_roots(&set), vec![entry(TLD, DNS), entry(TLD6, DNS)]);
    assert_eq!(s.matched, 1);
}

#[test]
fn rule2_qname_minimisation_referrals_chain() {
    let mut c = Conv::new();
    // Minimised: the root is asked `com. NS`, the TLD `example.com. NS`.
    root_referral(&mut c, 1, "com.", RecordType::NS);
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::NS,
        referral(vec![ns("example.com.", "ns1.example.com.")], vec![a("ns1.example.com.", "203.0.113.10")]),
    );
    let (set, _) = c.learn();
    assert_eq!(set.lookup(ip("203.0.113.10")), DNS);
}

#[test]
fn rule2_ns_in_answer_section_counts() {
    let mut c = Conv::new();
    root_referral(&mut c, 1, "com.", RecordType::NS);
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::NS,
        answer(vec![ns("example.com.", "ns1.example.com.")], vec![aaaa("ns1.example.com.", "2001:db8::10")]),
    );
    let (set, _) = c.learn();
    assert_eq!(set.lookup(ip("2001:db8::10")), DNS);
}

#[test]
fn rule2_out_of_bailiwick_ns_learned_from_later_answer() {
    let mut c = Conv::new();
    root_referral(&mut c, 1, "example.com.", RecordType::MX);
    // Referral without glue: the NS name is elsewhere.
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::MX,
        referral(vec![ns("example.com.", "dns1.hoster.com.")], vec![]),
    );
    // hoster.com's own delegation with glue, then its server answers for dns1.
    c.ask(
        TLD,
        3,
        "dns1.hoster.com.",
        RecordType::A,
        referral(vec![ns("hoster.com.", "ns.hoster.com.")], vec![a("ns.hoster.com.", "203.0.113.1")]),
    );
    let (before, _) = c.learn();
    assert_eq!(before.lookup(ip("203.0.113.2")), Classes::NONE, "no address before the answer");
    c.ask(
        "203.0.113.1",
        4,
        "dns1.hoster.com.",
        RecordType::A,
        answer(vec![a("dns1.hoster.com.", "203.0.113.2")], vec![]),
    );
    let (set, _) = c.learn();
    assert_eq!(set.lookup(ip("203.0.113.1")), DNS);
    assert_eq!(set.lookup(ip("203.0.113.2")), DNS);
}

#[test]
fn rule2_ns_outside_the_question_is_ignored() {
    let mut c = Conv::new();
    root_referral(&mut c, 1, "example.com.", RecordType::A);
    // The TLD server, asked about example.com, slips in a delegation of bank.org.
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::A,
        referral(vec![ns("bank.org.", "ns.evil.net.")], vec![a("ns.evil.net.", "203.0.113.66")]),
    );
    let (set, _) = c.learn();
    assert_eq!(set.lookup(ip("203.0.113.66")), Classes::NONE);
}

fn delegated_example(c: &mut Conv) {
    root_referral(c, 1, "example.com.", RecordType::MX);
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::MX,
        referral(vec![ns("example.com.", "ns1.example.com.")], vec![a("ns1.example.com.", "203.0.113.10")]),
    );
}

#[test]
fn rule3_mx_with_additional_addresses_becomes_smtp() {
    let mut c = Conv::new();
    delegated_example(&mut c);
    c.ask(
        "203.0.113.10",
        3,
        "example.com.",
        RecordType::MX,
        answer(
            vec![mx("example.com.", 10, "mail.example.com."), mx("example.com.", 20, "mail2.example.com.")],
            vec![a("mail.example.com.", "203.0.113.25"), aaaa("mail2.example.com.", "2001:db8::25")],
        ),
    );
    let (set, s) = c.learn();
    assert_eq!(set.lookup(ip("203.0.113.25")), SMTP);
    assert_eq!(set.lookup(ip("2001:db8::25")), SMTP);
    assert_eq!(s.entries.smtp, 2);
}

#[test]
fn rule3_mx_host_address_from_later_answer_following_cnames() {
    let mut c = Conv::new();
    delegated_example(&mut c);
    c.ask(
        "203.0.113.10",
        3,
        "example.com.",
        RecordType::MX,
        answer(vec![mx("example.com.", 10, "mx.example.com.")], vec![]),
    );
    c.ask(
        "203.0.113.10",
        4,
        "mx.example.com.",
        RecordType::A,
        answer(
            vec![cname("mx.example.com.", "host.example.com."), a("host.example.com.", "203.0.113.26")],
            vec![],
        ),
    );
    // The resolver may also ask for the CNAME target separately.
    c.ask(
        "203.0.113.10",
        5,
        "host.example.com.",
        RecordType::AAAA,
        answer(vec![aaaa("host.example.com.", "2001:db8::26")], vec![]),
    );
    let (set, _) = c.learn();
    assert_eq!(set.lookup(ip("203.0.113.26")), SMTP);
    assert_eq!(set.lookup(ip("2001:db8::26")), SMTP);
}

#[test]
fn rule3_mx_answered_through_cname_chain() {
    let mut c = Conv::new();
    delegated_example(&mut c);
    c.ask(
        "203.0.113.10",
        3,
        "alias.example.com.",
        RecordType::MX,
        answer(
            vec![cname("alias.example.com.", "example.com."), mx("example.com.", 10, "mail.example.com.")],
            vec![a("mail.example.com.", "203.0.113.27")],
        ),
    );
    let (set, _) = c.learn();
    assert_eq!(set.lookup(ip("203.0.113.27")), SMTP);
}

#[test]
fn rule4_untrusted_server_teaches_nothing() {
    let mut c = Conv::new();
    // A bot asks an arbitrary server that claims everything.
    c.exchange(
        "10.1.9.9",
        "198.18.0.1",
        query(1, "example.com.", RecordType::MX),
        response(
            1,
            "example.com.",
            RecordType::MX,
            NoError,
            vec![mx("example.com.", 10, "mail.example.com.")],
            vec![ns("example.com.", "ns.example.com.")],
            vec![a("mail.example.com.", "198.18.0.25"), a("ns.example.com.", "198.18.0.53")],
        ),
    );
    let (set, s) = c.learn();
    assert!(beyond_roots(&set).is_empty());
    assert_eq!(s.untrusted_responses, 1);
}

#[test]
fn rule4_unmatched_responses_teach_nothing() {
    let mut c = Conv::new();
    let r = response(
        7,
        "example.com.",
        RecordType::A,
        NoError,
        vec![],
        vec![ns("com.", "a.gtld-servers.net.")],
        vec![a("a.gtld-servers.net.", TLD)],
    );
    // No query at all.
    c.unsolicited(RESOLVER, ROOT_A, r.clone());
    // A query for another name (same id and ports would not be enough).
    c.exchange(RESOLVER, ROOT_A, query(7, "other.com.", RecordType::A), r.clone());
    // A query with another ID.
    c.exchange(RESOLVER, ROOT_A, query(8, "example.com.", RecordType::A), r);
    let (set, s) = c.learn();
    assert!(beyond_roots(&set).is_empty());
    assert_eq!(s.unmatched_responses, 3);
    assert_eq!(s.matched, 0);
}

#[test]
fn rule4_late_responses_are_unmatched() {
    let mut c = Conv::new();
    root_referral(&mut c, 1, "example.com.", RecordType::A);
    let (q, r) = c.frames.split_at_mut(1);
    r[0].0 = q[0].0 + 11_000_000_000;
    let (set, s) = c.learn();
    assert!(beyond_roots(&set).is_empty());
    assert_eq!(s.unmatched_responses, 1);
}

#[test]
fn rule4_negative_answers_teach_nothing() {
    let mut c = Conv::new();
    delegated_example(&mut c);
    let (base, _) = c.learn();
    // NXDOMAIN with SOA, even with stray records.
    c.exchange(
        RESOLVER,
        "203.0.113.10",
        query(3, "nx.example.com.", RecordType::MX),
        response(
            3,
            "nx.example.com.",
            RecordType::MX,
            NXDomain,
            vec![mx("nx.example.com.", 10, "mail.example.com.")],
            vec![soa("example.com.")],
            vec![a("mail.example.com.", "203.0.113.99")],
        ),
    );
    // NODATA: NOERROR, empty answer, SOA in authority.
    c.exchange(
        RESOLVER,
        "203.0.113.10",
        query(4, "example.com.", RecordType::MX),
        response(4, "example.com.", RecordType::MX, NoError, vec![], vec![soa("example.com.")], vec![]),
    );
    let (set, s) = c.learn();
    assert_eq!(set, base);
    assert_eq!(s.matched, 4);
}

#[test]
fn rule4_additional_records_for_unrelated_names_are_ignored() {
    let mut c = Conv::new();
    delegated_example(&mut c);
    c.ask(
        "203.0.113.10",
        3,
        "www.example.com.",
        RecordType::A,
        answer(
            vec![a("www.example.com.", "203.0.113.80")],
            vec![a("smtp.other.org.", "203.0.113.81"), a("loop.example.com.", "127.0.0.1")],
        ),
    );
    let (set, _) = c.learn();
    assert_eq!(set.lookup(ip("203.0.113.80")), Classes::NONE);
    assert_eq!(set.lookup(ip("203.0.113.81")), Classes::NONE);
}

#[test]
fn rule4_loopback_glue_is_never_an_entry() {
    let mut c = Conv::new();
    root_referral(&mut c, 1, "com.", RecordType::NS);
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::NS,
        referral(
            vec![ns("example.com.", "ns1.example.com.")],
            vec![a("ns1.example.com.", "127.0.0.1"), a("ns1.example.com.", "0.0.0.0")],
        ),
    );
    let (set, _) = c.learn();
    assert_eq!(beyond_roots(&set), vec![entry(TLD, DNS), entry(TLD6, DNS)]);
}

#[test]
fn mid_stream_capture_needs_trust_initial() {
    // The resolver already knew the TLD server: no root referral in the capture.
    let mut c = Conv::new();
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::NS,
        referral(vec![ns("example.com.", "ns1.example.com.")], vec![a("ns1.example.com.", "203.0.113.10")]),
    );
    let (strict, s) = c.learn();
    assert!(beyond_roots(&strict).is_empty(), "never-delegated servers teach nothing");
    assert_eq!(s.untrusted_responses, 1);
    let mut hints = Hints::root();
    hints.extend(Hints::parse(&format!("a.gtld-servers.net. 172800 A {TLD}\n")).expect("hints"));
    let (set, _) = c.learn_with(&hints, LINKTYPE_ETHERNET);
    assert_eq!(set.lookup(ip("203.0.113.10")), DNS);
}

#[test]
fn internal_client_resolver_traffic_teaches_nothing() {
    let mut c = Conv::new();
    c.exchange(
        "10.1.1.7",
        RESOLVER,
        query(9, "example.com.", RecordType::MX),
        response(
            9,
            "example.com.",
            RecordType::MX,
            NoError,
            vec![mx("example.com.", 10, "mail.example.com.")],
            vec![],
            vec![a("mail.example.com.", "203.0.113.25")],
        ),
    );
    let (set, s) = c.learn();
    assert!(beyond_roots(&set).is_empty());
    assert_eq!((s.matched, s.untrusted_responses), (1, 1));
}

#[test]
fn new_entries_stream_out_incrementally() {
    let mut c = Conv::new();
    root_referral(&mut c, 1, "example.com.", RecordType::A);
    let mut p = guard_user::learn::Pipeline::new(&Hints::root(), 10_000_000_000);
    p.learner_mut().record_new_entries(true);
    let (ts, q) = &c.frames[0];
    p.packet(*ts, LINKTYPE_ETHERNET, q);
    assert!(p.take_new_entries().is_empty());
    let (ts, r) = &c.frames[1];
    p.packet(*ts, LINKTYPE_ETHERNET, r);
    assert_eq!(p.take_new_entries(), vec![entry(TLD, DNS), entry(TLD6, DNS)]);
    assert!(p.take_new_entries().is_empty());
}

#[test]
fn unanswered_queries_expire_so_memory_stays_bounded() {
    // 20,000 unanswered queries over 200 s of capture time, window 10 s.
    let mut p = guard_user::learn::Pipeline::new(&Hints::root(), 10_000_000_000);
    for i in 0..20_000u32 {
        let q = query(i as u16, &format!("q{i}.example.com."), RecordType::A);
        let f = eth_udp(ip(RESOLVER), ip(ROOT_A), 1024 + (i % 60000) as u16, 53, &q);
        p.packet(u64::from(i) * 10_000_000, LINKTYPE_ETHERNET, &f);
    }
    let (_, s) = p.finish();
    assert_eq!(s.queries, 20_000);
    assert!(s.pending_at_end <= 1_600, "pending {}", s.pending_at_end);
    assert!(s.expired_queries >= 18_000, "expired {}", s.expired_queries);
}

#[test]
fn a_response_names_at_most_64_servers() {
    let mut c = Conv::new();
    let names: Vec<String> = (0..100).map(|i| format!("ns{i}.nic.com.")).collect();
    let auth = names.iter().map(|n| ns("com.", n)).collect();
    let glue = names.iter().enumerate().map(|(i, n)| a(n, &format!("203.0.113.{}", i + 1))).collect();
    c.exchange(
        RESOLVER,
        ROOT_A,
        query(1, "com.", RecordType::NS),
        response(1, "com.", RecordType::NS, NoError, vec![], auth, glue),
    );
    let (set, _) = c.learn();
    assert_eq!(beyond_roots(&set).len(), 64);
}
