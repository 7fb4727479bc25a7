//! The live learner (issue 9) on crafted packets: what it enforces and
//! queues, and the bad input that must teach it nothing (wrong ID, wrong
//! port, unasked question, untrusted server, a response to a query never
//! sent, answers to a host that is not the resolver). Same pipeline as the
//! batch learner; these check the live wiring around it.
mod learn_common;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use guard_user::{
    learn::{
        Hints,
        live::{LiveAllow, LiveLearner},
    },
    policy::Classes,
};
use hickory_proto::{op::ResponseCode::NoError, rr::RecordType};
use learn_common::*;

const TLD: &str = "192.5.6.30";
const NS1: &str = "203.0.113.10";
const MAIL: &str = "203.0.113.25";
const MAIL6: &str = "2001:db8::25";
const ROGUE: &str = "198.18.66.6";

type Enforced = Arc<Mutex<Vec<(IpAddr, Classes)>>>;

/// A live learner over a zone holding `zone` (DNS entries), recording what
/// it enforces.
fn learner(zone: &[&str], trust_zone: bool) -> (LiveLearner, Arc<LiveAllow>, Enforced) {
    let live = Arc::new(LiveAllow::new(1000).expect("eventfd"));
    let enforced: Enforced = Arc::default();
    let e = enforced.clone();
    let zone: Vec<IpAddr> = zone.iter().map(|s| ip(s)).collect();
    let l = LiveLearner::new(
        &Hints::root(),
        10_000_000_000,
        trust_zone,
        live.clone(),
        Box::new(move |a| if zone.contains(&a) { Classes::DNS } else { Classes::NONE }),
        Box::new(move |a, c| {
            e.lock().expect("lock").push((a, c));
            Ok(())
        }),
    );
    (l, live, enforced)
}

fn feed(l: &mut LiveLearner, frames: &[(u64, Vec<u8>)]) {
    for (ts, f) in frames {
        l.packet(*ts, f);
    }
    l.batch_done(u64::MAX / 2);
}

/// Root and TLD referrals down to example.com (ns1 with glue).
fn delegation(c: &mut Conv) {
    c.ask(
        ROOT_A,
        1,
        "example.com.",
        RecordType::MX,
        referral(vec![ns("com.", "a.gtld-servers.net.")], vec![a("a.gtld-servers.net.", TLD)]),
    );
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::MX,
        referral(vec![ns("example.com.", "ns1.example.com.")], vec![a("ns1.example.com.", NS1)]),
    );
}

fn mx_answer(id: u16, qname: &str) -> Vec<u8> {
    response(
        id,
        qname,
        RecordType::MX,
        NoError,
        vec![mx(qname, 10, "mail.example.com.")],
        vec![],
        vec![a("mail.example.com.", MAIL), aaaa("mail.example.com.", MAIL6)],
    )
}

#[test]
fn learned_entries_are_enforced_at_once_and_queued() {
    let mut c = Conv::new();
    delegation(&mut c);
    c.exchange(RESOLVER, NS1, query(3, "example.com.", RecordType::MX), mx_answer(3, "example.com."));
    let (mut l, live, enforced) = learner(&[], true);
    feed(&mut l, &c.frames);
    let got = enforced.lock().expect("lock").clone();
    assert_eq!(
        got,
        vec![
            (ip(TLD), Classes::DNS),
            (ip(NS1), Classes::DNS),
            (ip(MAIL), Classes::SMTP),
            (ip(MAIL6), Classes::SMTP)
        ]
    );
    assert_eq!(live.lookup(ip(MAIL)), Classes::SMTP);
    let st = live.stats();
    assert_eq!((st.learned, st.queued, st.unconfirmed, st.matched), (4, 4, 4, 3), "{st:?}");
    assert_eq!(live.next_batch(500).len(), 4);
    assert!(st.lag_enforced.is_some());
}

#[test]
fn forged_and_misdirected_responses_teach_nothing() {
    let mut c = Conv::new();
    delegation(&mut c);
    let server = ip(NS1);
    let resolver = ip(RESOLVER);
    // The resolver's query: id 3 from port 5353 about example.com MX.
    c.push(eth_udp(resolver, server, 5353, 53, &query(3, "example.com.", RecordType::MX)));
    // Wrong ID, wrong port, other question: no match.
    c.push(eth_udp(server, resolver, 53, 5353, &mx_answer(4, "example.com.")));
    c.push(eth_udp(server, resolver, 53, 5354, &mx_answer(3, "example.com.")));
    c.push(eth_udp(server, resolver, 53, 5353, &mx_answer(3, "example.net.")));
    // From another address (spoofing a server that was not asked).
    c.push(eth_udp(ip(TLD), resolver, 53, 5353, &mx_answer(3, "example.com.")));
    // A response to a query never sent.
    c.push(eth_udp(server, resolver, 53, 6000, &mx_answer(9, "example.com.")));
    // The resolver asks a server nobody delegated to: matched, untrusted.
    c.exchange(RESOLVER, ROGUE, query(5, "example.com.", RecordType::MX), mx_answer(5, "example.com."));
    // A client (not the resolver) asked the rogue directly.
    c.exchange("10.1.0.66", ROGUE, query(6, "example.com.", RecordType::MX), mx_answer(6, "example.com."));
    let (mut l, live, enforced) = learner(&[], true);
    feed(&mut l, &c.frames);
    let got = enforced.lock().expect("lock").clone();
    assert_eq!(got, vec![(ip(TLD), Classes::DNS), (ip(NS1), Classes::DNS)], "only the delegation");
    assert_eq!(live.lookup(ip(MAIL)), Classes::NONE);
    let st = live.stats();
    assert_eq!(st.unmatched, 5, "{st:?}");
    assert_eq!(st.untrusted, 2, "{st:?}");
}

#[test]
fn zone_name_servers_are_trusted_after_a_restart() {
    // A restarted learner: the resolver has the TLD cached and asks it
    // directly. The zone already holds the TLD server as a name server.
    let mut c = Conv::new();
    c.ask(
        TLD,
        2,
        "example.com.",
        RecordType::MX,
        referral(vec![ns("example.com.", "ns1.example.com.")], vec![a("ns1.example.com.", NS1)]),
    );
    let (mut strict, _, none) = learner(&[TLD], false);
    feed(&mut strict, &c.frames);
    assert!(none.lock().expect("lock").is_empty(), "without trust_zone the TLD is not trusted");
    let (mut l, live, enforced) = learner(&[TLD], true);
    feed(&mut l, &c.frames);
    assert_eq!(enforced.lock().expect("lock").clone(), vec![(ip(NS1), Classes::DNS)]);
    assert_eq!(live.stats().already_known, 0);
}

#[test]
fn entries_the_zone_has_are_not_enforced_again() {
    let mut c = Conv::new();
    delegation(&mut c);
    let (mut l, live, enforced) = learner(&[TLD, NS1], true);
    feed(&mut l, &c.frames);
    assert!(enforced.lock().expect("lock").is_empty());
    assert_eq!(live.stats().already_known, 2);
    assert_eq!(live.stats().queued, 0);
}

/// Issue 11: an address a deny of the zone covers is neither enforced nor
/// queued for the primary, and the refusal is counted.
#[test]
fn denied_addresses_are_not_learned() {
    let mut c = Conv::new();
    delegation(&mut c);
    c.exchange(RESOLVER, NS1, query(3, "example.com.", RecordType::MX), mx_answer(3, "example.com."));
    let live = Arc::new(LiveAllow::new(1000).expect("eventfd"));
    let enforced: Enforced = Arc::default();
    let e = enforced.clone();
    let denied = ip(MAIL);
    let mut l = LiveLearner::new(
        &Hints::root(),
        10_000_000_000,
        true,
        live.clone(),
        Box::new(move |a| if a == denied { Classes::DENY } else { Classes::NONE }),
        Box::new(move |a, c| {
            e.lock().expect("lock").push((a, c));
            Ok(())
        }),
    );
    feed(&mut l, &c.frames);
    let got = enforced.lock().expect("lock").clone();
    assert!(got.iter().all(|(a, _)| *a != denied), "{got:?}");
    assert!(got.iter().any(|(a, _)| *a == ip(MAIL6)), "the rest is learned: {got:?}");
    assert_eq!(live.lookup(denied), Classes::NONE);
    assert!(live.next_batch(500).iter().all(|(p, _)| p.addr() != denied));
    assert_eq!(live.stats().learn_denied, 1);
}

/// Issue 11: the pipeline reports an address once, the first time it
/// learns it. When the zone later loses the entry (aged out) an answer
/// naming it again learns it again (enforced, queued); when a deny covers
/// it by then, that answer is counted as denied and changes nothing.
#[test]
fn an_entry_the_zone_lost_is_learned_again_unless_denied() {
    let zone: Arc<Mutex<std::collections::HashMap<IpAddr, Classes>>> = Arc::default();
    let live = Arc::new(LiveAllow::new(1000).expect("eventfd"));
    let enforced: Enforced = Arc::default();
    let (z, e) = (zone.clone(), enforced.clone());
    let mut l = LiveLearner::new(
        &Hints::root(),
        10_000_000_000,
        true,
        live.clone(),
        Box::new(move |a| z.lock().expect("lock").get(&a).copied().unwrap_or(Classes::NONE)),
        Box::new(move |a, c| {
            e.lock().expect("lock").push((a, c));
            Ok(())
        }),
    );
    let mail = ip(MAIL);
    let enforced_mail = || enforced.lock().expect("lock").iter().filter(|(a, _)| *a == mail).count();
    let mut c = Conv::new();
    delegation(&mut c);
    c.exchange(RESOLVER, NS1, query(3, "example.com.", RecordType::MX), mx_answer(3, "example.com."));
    feed(&mut l, &c.frames);
    assert_eq!(enforced_mail(), 1);
    // The zone takes it (the push went through), then ages it out.
    zone.lock().expect("lock").insert(mail, Classes::SMTP);
    live.prune_confirmed(|a| zone.lock().expect("lock").get(&a).copied().unwrap_or(Classes::NONE));
    assert_eq!(live.lookup(mail), Classes::NONE);
    let mut again = Conv::new();
    again.exchange(RESOLVER, NS1, query(4, "example.com.", RecordType::MX), mx_answer(4, "example.com."));
    feed(&mut l, &again.frames);
    assert_eq!(enforced_mail(), 1, "the zone holds it: only confirmed");
    assert_eq!(live.take_confirmed().get(&mail).map(|c| c.classes), Some(Classes::SMTP));
    zone.lock().expect("lock").remove(&mail);
    let mut third = Conv::new();
    third.exchange(RESOLVER, NS1, query(5, "example.com.", RecordType::MX), mx_answer(5, "example.com."));
    feed(&mut l, &third.frames);
    assert_eq!(enforced_mail(), 2, "aged out, answered again: learned again");
    assert_eq!(live.lookup(mail), Classes::SMTP);
    assert!(live.next_batch(500).iter().any(|(p, _)| p.addr() == mail), "queued for the primary");
    // Pushed and taken by the zone, then denied: an answer changes nothing.
    zone.lock().expect("lock").insert(mail, Classes::DENY);
    let mut diff = guard_user::policy::AllowDiff::default();
    live.drop_denied(|a| a == mail, &mut diff);
    let denied_before = live.stats().learn_denied;
    live.take_confirmed();
    let mut fourth = Conv::new();
    fourth.exchange(RESOLVER, NS1, query(6, "example.com.", RecordType::MX), mx_answer(6, "example.com."));
    feed(&mut l, &fourth.frames);
    assert_eq!(enforced_mail(), 2, "denied: not enforced");
    assert_eq!(live.lookup(mail), Classes::NONE);
    assert_eq!(live.stats().learn_denied, denied_before + 1);
    assert!(!live.take_confirmed().contains_key(&mail), "a denied address is not refreshed");
}
