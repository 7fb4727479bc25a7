//! Learner benchmarks on a generated capture: the whole pipeline (read,
//! decode, match, learn, write the zone), and DNS parsing alone with the
//! zero-copy reader versus hickory-proto's `Message::from_vec`.
use std::{hint::black_box, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guard_user::frame as decode;
use guard_user::learn::{
    self, Hints, LearnOptions,
    capture::{Input, read_capture},
    dns::Parser,
    synth,
};

const SIZE: u64 = 4_000_000;

fn capture() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("rpz-guard-bench-learn-{}.pcap", std::process::id()));
    let f = std::fs::File::create(&path).expect("create bench capture");
    synth::generate(std::io::BufWriter::new(f), SIZE, 1).expect("generate bench capture");
    path
}

fn dns_payloads(path: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut each = |_ts: u64, link: u32, frame: &[u8]| -> bool {
        if let Ok(ip) = decode::link_payload(link, frame).and_then(decode::ip)
            && ip.proto == decode::PROTO_UDP
            && ip.frag.is_none()
            && let Ok((sp, dp, data)) = decode::udp(ip.payload)
            && (sp == 53 || dp == 53)
        {
            out.push(data.to_vec());
        }
        true
    };
    read_capture(&Input::File(path.to_path_buf()), &mut each, &mut |_| {}, &mut |_| {})
        .expect("read capture");
    out
}

fn bench(c: &mut Criterion) {
    let path = capture();
    let bytes = std::fs::metadata(&path).expect("stat").len();
    let mut g = c.benchmark_group("learn");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("pipeline_4MB_capture_to_zone", |b| {
        b.iter(|| {
            let out = learn::run(&LearnOptions {
                inputs: vec![path.clone()],
                hints: Hints::root(),
                window: Duration::from_secs(10),
                progress: false,
            })
            .expect("learn");
            let mut zone = Vec::with_capacity(1 << 20);
            guard_user::rpz::zonefile::write_zone(&out.allow, "rpz.example.com", 1, &mut zone).expect("zone");
            black_box(zone.len())
        })
    });
    let msgs = dns_payloads(&path);
    let total: usize = msgs.iter().map(Vec::len).sum();
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("dns_parse_zero_copy", |b| {
        let mut p = Parser::new();
        b.iter(|| {
            let mut n = 0usize;
            for m in &msgs {
                if let Ok(msg) = p.parse(m) {
                    n += msg.records().len();
                }
            }
            black_box(n)
        })
    });
    g.bench_function("dns_parse_hickory", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &msgs {
                if let Ok(msg) = hickory_proto::op::Message::from_vec(m) {
                    n += msg.answers().len() + msg.name_servers().len() + msg.additionals().len();
                }
            }
            black_box(n)
        })
    });
    g.finish();
    let _ = std::fs::remove_file(path);
}

criterion_group!(benches, bench);
criterion_main!(benches);
