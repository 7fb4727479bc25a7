//! Criterion benchmarks of hot userspace pieces: allow-set diffs, RPZ zone
//! file parse/write, owner-name encoding.
#![allow(missing_docs)]

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
};

use criterion::{Criterion, criterion_group, criterion_main};
use guard_user::{
    policy::{AllowSet, Classes, Prefix},
    rpz::{decode_owner, encode_owner, zonefile},
};

const ZONE: &str = "rpz.example.com";

fn set(n: u32, offset: u32) -> AllowSet {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i + offset);
            (Prefix::host(IpAddr::V4(ip)), if i % 2 == 0 { Classes::SMTP } else { Classes::DNS })
        })
        .collect()
}

fn allow_set(c: &mut Criterion) {
    let a = set(100_000, 0);
    let b = set(100_000, 1_000); // 1k removed, 1k added, the rest shifted class
    c.bench_function("allowset_diff_100k", |bch| bch.iter(|| black_box(a.diff(black_box(&b)))));
    let d = a.diff(&b);
    c.bench_function("allowset_apply_diff_100k", |bch| {
        bch.iter_batched(|| a.clone(), |mut s| s.apply(&d), criterion::BatchSize::LargeInput)
    });
}

fn zone_file(c: &mut Criterion) {
    let s = set(10_000, 0);
    let mut text = Vec::new();
    zonefile::write_zone(&s, ZONE, 1, &mut text).expect("write zone");
    let text = String::from_utf8(text).expect("utf-8 zone");
    c.bench_function("zone_write_10k", |bch| {
        bch.iter(|| {
            let mut out = Vec::with_capacity(text.len());
            zonefile::write_zone(black_box(&s), ZONE, 1, &mut out).expect("write zone");
            out
        })
    });
    c.bench_function("zone_parse_10k", |bch| {
        bch.iter(|| zonefile::parse_zone(black_box(&text), ZONE).expect("parse zone"))
    });
}

fn owner(c: &mut Criterion) {
    let v4 = Prefix::host(IpAddr::V4(Ipv4Addr::new(131, 112, 12, 18)));
    let v6: Prefix = "2001:db8:100::25/128".parse().expect("prefix");
    let o4 = encode_owner(&v4, ZONE);
    let o6 = encode_owner(&v6, ZONE);
    c.bench_function("owner_encode_v4", |b| b.iter(|| encode_owner(black_box(&v4), ZONE)));
    c.bench_function("owner_encode_v6", |b| b.iter(|| encode_owner(black_box(&v6), ZONE)));
    c.bench_function("owner_decode_v4", |b| b.iter(|| decode_owner(black_box(&o4), ZONE)));
    c.bench_function("owner_decode_v6", |b| b.iter(|| decode_owner(black_box(&o6), ZONE)));
}

criterion_group!(benches, allow_set, zone_file, owner);
criterion_main!(benches);
