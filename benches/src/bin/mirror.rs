//! Allow-set mirror: how long it takes to write N entries into the XDP
//! allow maps with `BPF_MAP_UPDATE_BATCH` on one thread and on the
//! daemon's thread count (what the daemon does) against one
//! `BPF_MAP_UPDATE_ELEM` per entry (the path before batching), side by side
//! on fresh program loads in the same run. Also a 10k-change diff (half
//! removals, half upserts) on a full map. Needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};
use guard_benches::{Chart, Opts, Section, Summary, Table, write_section};
use guard_common::{STATE_LOADED, Settings};
use guard_user::{
    policy::{AllowDiff, AllowSet, Classes, Prefix},
    xdp::{Enforcer, ProgramConfig},
};

/// Aim from issue 17: 1M entries mirrored in at most this many seconds.
const AIM_1M_SECS: f64 = 0.5;

/// `n` hosts: IPv4 in 100.64.0.0/10 with one in 16 IPv6, half SMTP, half DNS.
fn set(n: usize) -> AllowSet {
    (0..n as u32)
        .map(|i| {
            let ip = if i % 16 == 15 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, (i >> 16) as u16, i as u16))
            } else {
                IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i))
            };
            (Prefix::host(ip), if i % 2 == 0 { Classes::SMTP } else { Classes::DNS })
        })
        .collect()
}

fn fresh() -> Result<Enforcer> {
    let mut e = Enforcer::load(None).context("load the XDP program (needs root)")?;
    e.configure(&ProgramConfig {
        ports: guard_user::config::Policy::default().protected_ports(),
        settings: Settings { state: STATE_LOADED, ..Settings::default() },
        ..ProgramConfig::default()
    })
    .context("configure")?;
    Ok(e)
}

/// CPU seconds (user + system, all threads) this process has used.
fn cpu_secs() -> f64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; RUSAGE_SELF always exists.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// One fill: wall seconds, CPU seconds, and the program load time.
struct Fill {
    wall: f64,
    cpu: f64,
    load: f64,
}

/// Applies `diff` to a fresh program: batched on `threads` threads, or one
/// by one (`threads` = 0).
fn fill(diff: &AllowDiff, threads: usize) -> Result<(Fill, Enforcer)> {
    let (e, load) = guard_benches::timed(fresh);
    let mut e = e?;
    let cpu0 = cpu_secs();
    let (r, took) = guard_benches::timed(|| match threads {
        0 => e.apply_diff_one_by_one(diff),
        n => e.apply_diff_threads(diff, n),
    });
    let cpu = cpu_secs() - cpu0;
    r.context("fill the allow maps")?;
    Ok((Fill { wall: took.as_secs_f64(), cpu, load: load.as_secs_f64() }, e))
}

/// The machine's load while measuring (other work shares the CPUs).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<()> {
    let opts = Opts::from_env();
    let sizes: Vec<usize> = if opts.quick { vec![10_000, 100_000] } else { vec![10_000, 100_000, 1_000_000] };
    let trials = if opts.quick { 2 } else { 5 };
    let threads = guard_user::xdp::mirror_threads();
    let load_before = loadavg();
    let mut table = Table {
        caption: format!(
            "Seconds to mirror N entries into empty allow maps, median (min–max) of {trials} trials, each \
             on a freshly loaded program; the paths alternate within a trial"
        ),
        header: vec![
            "entries".into(),
            "one by one (s)".into(),
            "batched, 1 thread (s)".into(),
            format!("batched, {threads} threads (s)"),
            "speed-up vs one by one".into(),
            "entries/s".into(),
            "CPU s: one by one / batched 1 thread".into(),
        ],
        rows: Vec::new(),
    };
    let mut chart = Chart { title: "Mirror time, largest size".into(), unit: "s".into(), bars: vec![] };
    let mut verdict = String::new();
    let mut diff_rows = Vec::new();
    let mut loads = Vec::new();
    for &n in &sizes {
        let target = set(n);
        let diff = AllowSet::new().diff(&target);
        let (mut one, mut single, mut multi) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_one, mut cpu_single) = (Vec::new(), Vec::new());
        for _ in 0..trials {
            let (t1, e1) = fill(&diff, 0)?;
            drop(e1);
            let (ts, es) = fill(&diff, 1)?;
            drop(es);
            let (tm, em) = fill(&diff, threads)?;
            if em.read_allow().context("read back")?.len() != n {
                bail!("batched mirror of {n} entries read back a different set");
            }
            one.push(t1.wall);
            single.push(ts.wall);
            multi.push(tm.wall);
            cpu_one.push(t1.cpu);
            cpu_single.push(ts.cpu);
            loads.extend([t1.load, ts.load, tm.load]);
            if n == *sizes.last().unwrap_or(&0) && diff_rows.is_empty() {
                diff_rows = diff_bench(&target, em)?;
            }
        }
        let (so, ss, sm) = (Summary::of(&one), Summary::of(&single), Summary::of(&multi));
        let best = ss.median.min(sm.median);
        table.rows.push(vec![
            n.to_string(),
            so.fmt(3),
            ss.fmt(3),
            sm.fmt(3),
            format!("{:.1}×", so.median / best),
            format!("{:.0}", n as f64 / best),
            format!("{:.3} / {:.3}", Summary::of(&cpu_one).median, Summary::of(&cpu_single).median),
        ]);
        if n == *sizes.last().unwrap_or(&0) {
            chart.bars = vec![so.bar("one by one"), ss.bar("batched, 1 thread"), sm.bar("batched, threads")];
            chart.title = format!("Mirror time, {n} entries");
            if n == 1_000_000 {
                let (min, med) = (sm.min.min(ss.min), best);
                verdict = format!(
                    "1M entries mirrored in {med:.2} s (median; best {min:.2} s) {} aim {AIM_1M_SECS} s — {}.",
                    if med <= AIM_1M_SECS { "≤" } else { ">" },
                    if med <= AIM_1M_SECS { "met" } else { "missed" }
                );
            }
        }
    }
    let section = Section {
        name: "mirror".into(),
        title: "Allow-set mirror into the XDP maps: batched (1 and N threads) vs one by one".into(),
        notes: vec![
            format!(
                "Enforcer::apply_diff_threads (BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH in chunks of 16k \
                 entries, falling back per map where the kernel lacks the batch op; {threads} threads is what \
                 the daemon uses here) against Enforcer::apply_diff_one_by_one (one BPF_MAP_UPDATE_ELEM per \
                 entry, the path before), on the same entries: IPv4 hosts with one in 16 IPv6, the host allow \
                 maps being preallocated hash maps. Includes building the key buffers and flushing the \
                 verdict cache. Load average at start {load_before}, at end {}.",
                loadavg()
            ),
            if verdict.is_empty() { "Quick run: the 1M size was not measured.".into() } else { verdict },
            format!(
                "CPU s is user + system time of the whole process during the fill (getrusage): on a loaded \
                 machine it is the better guide to the time on an idle core. Loading and configuring a fresh \
                 program (not in the times above; the preallocated maps are filled with free elements then) \
                 took {} s, median (min–max).",
                Summary::of(&loads).fmt(3)
            ),
        ],
        tables: vec![
            table,
            Table {
                caption: "A diff of 10k changes (5k removals, 5k new entries) applied to the full map".into(),
                header: vec!["path".into(), "seconds".into()],
                rows: diff_rows,
            },
        ],
        charts: vec![chart],
    };
    write_section(&opts.out, &section)
}

/// Times a 10k-change diff on a full map, batched then one by one (and back).
fn diff_bench(base: &AllowSet, mut e: Enforcer) -> Result<Vec<Vec<String>>> {
    let mut changed = base.clone();
    let mut diff = AllowDiff::default();
    for (p, _) in base.iter().take(5_000) {
        diff.remove.push(*p);
    }
    for i in 0..5_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 96, 0, 0)) + i));
        diff.upsert.push((Prefix::host(ip), Classes::SMTP));
    }
    changed.apply(&diff);
    let back = changed.diff(base);
    let (r, tb) = guard_benches::timed(|| e.apply_diff(&diff));
    r.context("batched diff")?;
    let (r, _) = guard_benches::timed(|| e.apply_diff(&back));
    r.context("undo")?;
    let (r, t1) = guard_benches::timed(|| e.apply_diff_one_by_one(&diff));
    r.context("one-by-one diff")?;
    Ok(vec![
        vec!["batched".into(), format!("{:.4}", tb.as_secs_f64())],
        vec!["one by one".into(), format!("{:.4}", t1.as_secs_f64())],
    ])
}
