//! Privileged: the private-OVS harness starts both daemons inside a
//! namespace, survives a vswitchd restart and leaves nothing behind (needs
//! root and `openvswitch-switch`).
use std::process::Command;

use guard_tests::{netns, ovs::Ovs};

/// A namespace for the test, deleted on drop.
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn alive(pid: u32) -> bool {
    // Zombies are reaped by `Child::wait` in the harness; a live pid has a /proc entry.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn private_ovs_in_a_namespace_restarts_and_cleans_up() {
    let ns = Ns(format!("rgovsh{}", std::process::id() % 100_000));
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
    let st = Command::new("ip").args(["netns", "add", &ns.0]).status().expect("ip netns add");
    assert!(st.success(), "ip netns add {}", ns.0);
    let dir = std::env::temp_dir().join(format!("rg-ovsh-{}", std::process::id()));
    let mut ovs = Ovs::start(&dir, Some(&ns.0)).unwrap_or_else(|e| panic!("private OVS: {e}"));
    let pids = ovs.pids();
    assert_eq!(pids.len(), 2);
    ovs.vsctl(&["add-br", "hbr", "--", "set", "bridge", "hbr", "datapath_type=netdev", "fail_mode=secure"])
        .expect("add-br");
    // The bridge's internal port lives in the namespace, not in the root one.
    let links = netns::exec(&ns.0, &["ip", "link", "show", "hbr"]).expect("ip link");
    assert!(links.status.success(), "hbr not in {}", ns.0);
    ovs.ofctl(&["add-flow", &ovs.mgmt("hbr"), "priority=7,ip,actions=drop"]).expect("add-flow");
    assert!(ovs.dump_flows("hbr").expect("dump-flows").contains("priority=7,ip actions=drop"));

    // A restart keeps the database (bridge) and loses the flows.
    ovs.restart_vswitchd().expect("restart");
    assert!(!alive(pids[1]), "old ovs-vswitchd ended");
    assert!(ovs.vsctl(&["list-br"]).expect("list-br").contains("hbr"));
    let flows = ovs.dump_flows("hbr").expect("dump-flows after restart");
    assert!(!flows.contains("priority=7"), "flows are not persistent: {flows}");

    let all = ovs.pids();
    drop(ovs);
    for pid in all {
        assert!(!alive(pid), "pid {pid} still running after drop");
    }
    assert!(!dir.exists(), "{} removed", dir.display());
    let links = netns::exec(&ns.0, &["ip", "link", "show", "hbr"]).expect("ip link");
    assert!(!links.status.success(), "bridge port removed on drop");
}
