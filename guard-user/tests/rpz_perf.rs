//! Size and speed: AXFR of 1k and 1M entries and an UPDATE push of 10k
//! entries against a real BIND. Prints the timings (run with
//! `--nocapture`, in release for meaningful figures); asserts correctness.
//! `RPZ_PERF_BIG` overrides the big zone's size; `RPZ_PERF_OPTIONS` adds a
//! second big run with that named.conf option (to compare BIND tunings).

mod common;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use common::{Named, NamedConfig, ZONE};
use guard_user::{
    policy::{AllowSet, Classes, Prefix},
    rpz::{
        lookup::{QueryStyle, RpzClient},
        transfer, update, zonefile,
    },
};

/// `n` distinct IPv4 hosts, alternating DNS and SMTP.
fn hosts(n: u32, base: u32) -> AllowSet {
    (0..n)
        .map(|i| {
            let c = if i % 2 == 0 { Classes::DNS } else { Classes::SMTP };
            (Prefix::host(IpAddr::V4((base + i).into())), c)
        })
        .collect()
}

async fn time_axfr(n: u32, options: Vec<String>) -> Duration {
    let initial = hosts(n, 0x0a00_0000);
    let t0 = Instant::now();
    eprintln!("options: {options:?}");
    let named = Named::start(&NamedConfig { initial: initial.clone(), options, ..Default::default() });
    eprintln!("named loaded {n} entries in {:.2?}", t0.elapsed());
    let t = Instant::now();
    let snap = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR");
    let took = t.elapsed();
    assert_eq!(snap.set.len(), initial.len());
    assert_eq!(snap.set, initial);
    let log = named.log();
    let bind_says = log.lines().rev().find(|l| l.contains("AXFR ended")).unwrap_or("no AXFR log line");
    eprintln!(
        "AXFR {n} entries: {took:.2?} ({} messages, {:.0} records/s); BIND: {}",
        snap.messages,
        f64::from(n) / took.as_secs_f64(),
        bind_says.rsplit_once("AXFR ended: ").map_or(bind_says, |(_, r)| r)
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axfr_small_and_big_zones() {
    time_axfr(1_000, Vec::new()).await;
    let big = std::env::var("RPZ_PERF_BIG").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    time_axfr(big, Vec::new()).await;
    // Optional: BIND tuning to compare (e.g. "transfer-message-size 65535;").
    if let Ok(opt) = std::env::var("RPZ_PERF_OPTIONS") {
        time_axfr(big, vec![opt]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_push_10k() {
    let named = Named::start(&NamedConfig::default());
    let wanted = hosts(10_000, 0xc000_0000);
    let t = Instant::now();
    let r = update::push_additions(named.addr, ZONE, &named.key, &wanted).await.expect("UPDATE");
    let took = t.elapsed();
    assert_eq!((r.added, r.batches, r.existing), (10_000, 10, 0));
    eprintln!("UPDATE push 10000 entries: {took:.2?} in {} batches", r.batches);
    let snap = transfer::axfr(named.addr, ZONE, Some(&named.key)).await.expect("AXFR");
    assert_eq!(snap.set, wanted);
}

#[test]
fn zone_file_write_and_parse_1m() {
    let set = hosts(1_000_000, 0x0a00_0000);
    let t = Instant::now();
    let mut text = Vec::with_capacity(64 << 20);
    zonefile::write_zone(&set, ZONE, 1, &mut text).expect("write");
    let wrote = t.elapsed();
    let text = String::from_utf8(text).expect("utf8");
    let t = Instant::now();
    let parsed = zonefile::parse_zone(&text, ZONE).expect("parse");
    let parsed_in = t.elapsed();
    assert_eq!(parsed.set, set);
    eprintln!("zone file 1M entries ({} MB): write {wrote:.2?}, parse {parsed_in:.2?}", text.len() >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_latency() {
    let initial = hosts(10_000, 0x0a00_0000);
    let named = Named::start(&NamedConfig { initial, ..Default::default() });
    for style in [QueryStyle::Zone, QueryStyle::Paper] {
        let client =
            RpzClient::new(named.addr, ZONE, style, Duration::from_millis(500)).await.expect("client");
        let mut times = Vec::with_capacity(2000);
        for i in 0..2000u32 {
            // Alternate registered and unregistered addresses.
            let ip = IpAddr::V4((if i % 2 == 0 { 0x0a00_0000 + i } else { 0xcb00_7100 + i }).into());
            let t = Instant::now();
            let c = client.classes(ip).await.expect("lookup");
            times.push(t.elapsed());
            assert_eq!(c.is_empty(), i % 2 == 1, "{ip}");
        }
        times.sort();
        eprintln!(
            "lookup {style:?}: p50 {:.0?} p99 {:.0?} max {:.0?}",
            times[times.len() / 2],
            times[times.len() * 99 / 100],
            times[times.len() - 1]
        );
    }
}
