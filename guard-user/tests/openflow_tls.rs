//! Privileged: the OpenFlow channel over TLS with real Open vSwitch 3.1
//! (`ovs-vsctl set-ssl`, `set-controller ssl:…`) and certificates made in
//! the test with `ovs-pki`, as OVS's documentation sets them up.
//!
//! * a switch with a certificate from the switch CA is served: flows
//!   installed, status shows it as TLS;
//! * a switch whose certificate comes from another CA is refused in the TLS
//!   handshake and gets no flow;
//! * a client with no certificate, and a plain-TCP OpenFlow peer, are refused;
//! * a switch with a valid certificate but a datapath id outside
//!   `allowed_dpids` is refused before any FLOW_MOD.
//!
//! The daemon-level check (the lab's enforcement over `ssl:`) is in
//! `openflow_lab.rs`. Each OVS runs in a namespace of its own (two netdev
//! datapaths cannot share one): the controller listens in the good
//! switch's namespace, which a veth pair joins to the rogue switch's.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use guard_tests::{
    netns::{OwnedNetns, exec_ok_root, run_in_netns},
    ovs::{Ovs, Pki},
};
use guard_user::{
    events::{EventOutput, EventSink},
    metrics::Counters,
    miss::{CacheTtl, MissResolver, SetSource},
    openflow::{
        ControllerConfig, ControllerShared, ControllerStatus, Dpid, TlsConfig,
        codec::{Body, Message},
        serve_listener,
    },
    policy::{AllowSet, Classes, Prefix},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

static SERIAL: Mutex<()> = Mutex::new(());

const GOOD: u64 = 0x0000_0000_00c0_ffee;
const UNLISTED: u64 = 0x0000_0000_0000_0bad;

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn refused(s: &ControllerStatus, why: &str) -> u64 {
    s.refused.iter().find(|(r, _)| r.name() == why).map_or(0, |x| x.1)
}

/// Our flows carry a cookie; a fail-secure bridge without a controller has none.
fn our_flows(ovs: &Ovs, br: &str) -> usize {
    ovs.dump_flows(br).expect("dump-flows").lines().filter(|l| l.contains("cookie=")).count()
}

#[test]
fn ovs_over_tls_is_served_and_unauthenticated_peers_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    let dir = std::env::temp_dir().join(format!("rg-oftls-{}", std::process::id()));
    let pki = Pki::init(dir.join("pki")).expect("ovs-pki init (openvswitch-common)");
    let ctl = pki.sign("ctl", "controller").expect("controller certificate");
    let sw = pki.sign("sw", "switch").expect("switch certificate");
    let other = Pki::init(dir.join("other-pki")).expect("second PKI");
    let rogue = other.sign("rogue", "switch").expect("certificate from another CA");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let set: AllowSet =
        [(Prefix::host("198.51.100.25".parse().expect("ip")), Classes::SMTP)].into_iter().collect();
    let (_tx, rx) = watch::channel(Arc::new(set));
    let resolver = Arc::new(MissResolver::new(Arc::new(SetSource(rx.clone())), CacheTtl::default()));
    let events = Arc::new(EventSink::open(&EventOutput::None).expect("events"));
    let shared = ControllerShared::new(rx, resolver, events, Arc::new(Counters::default()));
    let cfg = ControllerConfig {
        tls: Some(TlsConfig {
            cert: ctl.cert.clone(),
            key: ctl.key.clone(),
            client_ca: pki.ca_cert("switch"),
        }),
        allowed_dpids: vec![Dpid(GOOD)],
        handshake_secs: 3,
        echo_interval_secs: 1,
        dead_peer_secs: 3,
        ..ControllerConfig::default()
    };
    let (a, b) = (OwnedNetns::create("rgtlsa").expect("netns"), OwnedNetns::create("rgtlsb").expect("netns"));
    exec_ok_root(&[
        "link",
        "add",
        "rgtlsa0",
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        "rgtlsb0",
        "netns",
        b.name(),
    ])
    .expect("veth");
    for (ns, ifc, ip) in [(&a, "rgtlsa0", "10.231.0.1/30"), (&b, "rgtlsb0", "10.231.0.2/30")] {
        exec_ok_root(&["-n", ns.name(), "addr", "add", ip, "dev", ifc]).expect("addr");
        exec_ok_root(&["-n", ns.name(), "link", "set", ifc, "up"]).expect("up");
    }
    let std_listener = run_in_netns(a.name(), || std::net::TcpListener::bind("0.0.0.0:0"))
        .expect("namespace")
        .expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let port = std_listener.local_addr().expect("addr").port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = {
        let _enter = rt.enter();
        tokio::net::TcpListener::from_std(std_listener).expect("tokio listener")
    };
    let cancel = CancellationToken::new();
    rt.spawn(serve_listener(listener, cfg, shared.clone(), cancel.clone()));
    let target = format!("ssl:{addr}");

    // The good switch: its certificate is signed by the switch CA, and it
    // trusts the controller CA.
    let good =
        Ovs::start(dir.join("ovs-good"), Some(a.name())).expect("private OVS (install openvswitch-switch)");
    good.set_ssl(&sw.key, &sw.cert, &pki.ca_cert("controller")).expect("set-ssl");
    good.add_secure_bridge("tlsgood", Some(GOOD)).expect("add-br");
    good.vsctl(&["set-controller", "tlsgood", &target]).expect("set-controller");
    good.vsctl(&["set", "controller", "tlsgood", "max_backoff=1000"]).expect("controller options");
    wait_for("TLS switch synchronised", Duration::from_secs(20), || {
        shared.status().switches.iter().any(|s| s.dpid == GOOD && s.tls && s.resyncs >= 1)
    });
    wait_for("flows on the TLS switch", Duration::from_secs(10), || {
        good.dump_flows("tlsgood").is_ok_and(|d| d.contains("nw_dst=198.51.100.25,tp_dst=25 actions=NORMAL"))
    });
    let st = shared.status();
    assert!(st.tls, "status shows TLS on");
    assert_eq!(refused(&st, "tls_failed"), 0, "the good switch was not refused: {st:?}");

    // Same certificate, datapath id not allowed: refused after FEATURES, no flow.
    good.add_secure_bridge("tlsbad", Some(UNLISTED)).expect("add-br");
    good.vsctl(&["set-controller", "tlsbad", &target]).expect("set-controller");
    wait_for("unlisted datapath id refused", Duration::from_secs(15), || {
        refused(&shared.status(), "dpid_not_allowed") >= 1
    });
    assert_eq!(our_flows(&good, "tlsbad"), 0, "no flow for an unlisted datapath id");
    assert!(!shared.status().switches.iter().any(|s| s.dpid == UNLISTED));

    // A switch with a certificate from another CA: refused in the handshake.
    let bad = Ovs::start(dir.join("ovs-rogue"), Some(b.name())).expect("second private OVS");
    bad.set_ssl(&rogue.key, &rogue.cert, &pki.ca_cert("controller")).expect("set-ssl");
    bad.add_secure_bridge("tlsrogue", Some(GOOD)).expect("add-br");
    let before = refused(&shared.status(), "tls_failed");
    bad.vsctl(&["set-controller", "tlsrogue", &format!("ssl:10.231.0.1:{port}")]).expect("set-controller");
    let t = Instant::now();
    while refused(&shared.status(), "tls_failed") <= before {
        let log = std::fs::read_to_string(bad.dir().join("vswitchd.log")).unwrap_or_default();
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "certificate from another CA not refused; status {:?}\nvswitchd.log:\n{log}",
            shared.status()
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_secs(1));
    assert_eq!(our_flows(&bad, "tlsrogue"), 0, "no flow for a switch with a foreign certificate");
    let st = shared.status();
    assert_eq!(st.switches.iter().filter(|s| s.dpid == GOOD).count(), 1, "only the real switch: {st:?}");

    // No certificate at all: a TLS client that trusts our CA but has no key.
    let before = refused(&shared.status(), "tls_failed");
    let no_cert = tls_without_certificate(a.name(), addr);
    assert!(no_cert.is_err(), "a client without a certificate must not get OpenFlow: {no_cert:?}");
    wait_for("no-certificate client refused", Duration::from_secs(5), || {
        refused(&shared.status(), "tls_failed") > before
    });

    // Plain-TCP OpenFlow on the TLS port: the HELLO is not a TLS ClientHello.
    let mut s = run_in_netns(a.name(), || TcpStream::connect(addr)).expect("namespace").expect("connect");
    s.write_all(&Message::new(1, Body::Hello { version: 4, bitmap: Some(1 << 4) }).encode()).expect("hello");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut b = [0u8; 64];
    let n = s.read(&mut b).unwrap_or(0);
    assert!(n == 0 || b[0] != 4, "a plain OpenFlow peer must not get an OpenFlow answer");

    // The real switch is still served.
    assert!(shared.status().switches.iter().any(|s| s.dpid == GOOD && s.tls));
    cancel.cancel();
    drop((bad, good));
    rt.shutdown_timeout(Duration::from_secs(3));
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `openssl s_client` (OpenSSL, like OVS) without a client certificate;
/// returns what it printed. The controller must end the handshake.
fn tls_without_certificate(ns: &str, addr: SocketAddr) -> Result<String, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "openssl",
            "s_client",
            "-connect",
            &addr.to_string(),
            "-quiet",
            "-no_ign_eof",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run openssl: {e}"))?;
    // Keep stdin open for a moment so a successful session could receive the HELLO.
    let stdin = child.stdin.take();
    thread::sleep(Duration::from_secs(2));
    drop(stdin);
    let t = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if t.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.stdout.first() == Some(&4) {
        return Ok("received an OpenFlow message".into());
    }
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}
