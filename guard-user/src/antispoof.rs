//! Anti-spoofing of exempt sources (inside threats).
//!
//! Exemption is by source address, and XDP runs before the kernel's
//! `rp_filter`: without a check, an inside host that writes the resolver's
//! address into its packets bypasses everything. An exempt source is
//! therefore honoured only from where it lives:
//!
//! * XDP mode, `policy.exempt_route_check` (on by default): the router's own
//!   route toward the source must leave by the interface the frame came in
//!   on, and the router's neighbour entry for that hop must hold the frame's
//!   source MAC (the kernel's FIB and neighbour table, read by the program
//!   with `bpf_fib_lookup`). Applied per address family only where the
//!   interface routes (IP forwarding on): elsewhere the kernel cannot answer
//!   and the check would drop the resolvers' traffic.
//! * Both modes, `policy.exempt_macs`: only frames from these source MACs.
//! * OpenFlow mode, `openflow.exempt_in_ports`: only frames arriving on
//!   these switch ports.
//!
//! A packet from an exempt address that fails a check is dropped, counted
//! (`drop_spoofed_exempt`) and reported (reason `spoofed_exempt`, with the
//! sender's MAC). When the route check cannot tell (the router has no
//! neighbour entry for the source yet), the packet is judged like any other
//! host's (`exempt_unverified`): never an exemption by accident. So that
//! this lasts only until the kernel has resolved the host, the daemon asks
//! it for managed entries of the exempt hosts on the enforcement
//! interface's subnets ([`ExemptOrigin::keep_neighbours_resolved`]).

use std::path::Path;

use crate::{
    config::{Config, Mode},
    policy::{MacAddr, Prefix},
};

/// The checks in force for exempt sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExemptOrigin {
    /// XDP: verify IPv4 exempt sources by route and neighbour.
    pub route_v4: bool,
    /// XDP: verify IPv6 exempt sources by route and neighbour.
    pub route_v6: bool,
    /// Honour exempt sources only from these source MACs (empty: any).
    pub macs: Vec<MacAddr>,
    /// OpenFlow: honour exempt sources only on these switch ports (empty: any).
    pub in_ports: Vec<u32>,
    /// Why the route check is not in force for a family it was asked for.
    pub route_off_because: Vec<String>,
}

impl ExemptOrigin {
    /// The checks for `cfg`. In XDP mode the route check is kept only for
    /// the address families the enforcement interface forwards (read from
    /// `/proc/sys/net/ipv{4,6}/conf/<iface>/forwarding` in the daemon's
    /// network namespace).
    pub fn plan(cfg: &Config) -> Self {
        Self::plan_with(cfg, |iface, v6| forwarding(Path::new("/proc/sys/net"), iface, v6))
    }

    /// [`ExemptOrigin::plan`] with the forwarding state from `forwards`.
    pub fn plan_with(cfg: &Config, forwards: impl Fn(&str, bool) -> Option<bool>) -> Self {
        let p = &cfg.policy;
        let mut out = ExemptOrigin { macs: p.exempt_macs.clone(), ..ExemptOrigin::default() };
        match cfg.enforce.mode {
            Mode::Openflow => out.in_ports = cfg.openflow.exempt_in_ports.clone(),
            Mode::Xdp if p.exempt_route_check && !p.exempt_sources.is_empty() => {
                let iface = cfg.enforce.iface.as_deref().unwrap_or_default();
                for (v6, name) in [(false, "IPv4"), (true, "IPv6")] {
                    if !p.exempt_sources.iter().any(|s| s.addr().is_ipv6() == v6) {
                        continue;
                    }
                    let on = match forwards(iface, v6) {
                        Some(true) => true,
                        Some(false) => {
                            out.route_off_because.push(format!(
                                "{name} forwarding is off on {iface} (not a routing interface)"
                            ));
                            false
                        }
                        None => {
                            out.route_off_because
                                .push(format!("{name} forwarding state of {iface} unreadable"));
                            false
                        }
                    };
                    if v6 {
                        out.route_v6 = on;
                    } else {
                        out.route_v4 = on;
                    }
                }
            }
            Mode::Xdp => {}
        }
        out
    }

    /// The exempt-trie value for an entry of the given family (the
    /// `guard_common::EXEMPT_*` bits).
    pub fn trie_flags(&self, v6: bool) -> u32 {
        let mut f = guard_common::EXEMPT_HONOURED;
        if (v6 && self.route_v6) || (!v6 && self.route_v4) {
            f |= guard_common::EXEMPT_VERIFY_ROUTE;
        }
        if !self.macs.is_empty() {
            f |= guard_common::EXEMPT_VERIFY_MAC;
        }
        f
    }

    /// OpenFlow: whether a frame from `mac` on `in_port` is where exempt
    /// sources are honoured.
    pub fn honours(&self, mac: MacAddr, in_port: u32) -> bool {
        (self.macs.is_empty() || self.macs.contains(&mac))
            && (self.in_ports.is_empty() || self.in_ports.contains(&in_port))
    }

    /// True when some check applies to `exempt` (of the mode's kind).
    pub fn protects(&self, exempt: &[Prefix]) -> bool {
        exempt.iter().all(|p| {
            !self.macs.is_empty()
                || !self.in_ports.is_empty()
                || if p.addr().is_ipv6() { self.route_v6 } else { self.route_v4 }
        })
    }

    /// XDP mode, route check in force: asks the kernel to resolve, and keep
    /// resolved, its neighbour entries of the exempt hosts on the
    /// enforcement interface's subnets ([`crate::neighbour`]), so that an
    /// exempt resolver the router has not heard from yet is verified from
    /// its first packet instead of judged like any host's until it happens
    /// to ARP. A failure is logged; the check itself stays as it is.
    pub fn keep_neighbours_resolved(&self, cfg: &Config) {
        if cfg.enforce.mode != Mode::Xdp || !(self.route_v4 || self.route_v6) {
            return;
        }
        let iface = cfg.enforce.iface.as_deref().unwrap_or_default();
        let hosts =
            crate::neighbour::on_link_hosts(iface, &cfg.policy.exempt_sources, self.route_v4, self.route_v6);
        for addr in hosts {
            match crate::neighbour::keep_resolved(iface, addr) {
                Ok(how) => tracing::debug!(%addr, iface, ?how, "exempt host's neighbour entry kept resolved"),
                Err(err) => tracing::warn!(
                    %addr,
                    iface,
                    %err,
                    "cannot ask the kernel to resolve an exempt host's neighbour entry; until the router \
                     has one, that host's packets are judged like any host's (exempt_unverified)"
                ),
            }
        }
    }

    /// One line for the status report and the start-up log.
    pub fn summary(&self, exempt: &[Prefix]) -> String {
        if exempt.is_empty() {
            return "no exempt sources".into();
        }
        let mut on = Vec::new();
        match (self.route_v4, self.route_v6) {
            (true, true) => on.push("route+neighbour check (IPv4, IPv6)".to_owned()),
            (true, false) => on.push("route+neighbour check (IPv4)".to_owned()),
            (false, true) => on.push("route+neighbour check (IPv6)".to_owned()),
            (false, false) => {}
        }
        if !self.macs.is_empty() {
            on.push(format!("{} allowed MAC(s)", self.macs.len()));
        }
        if !self.in_ports.is_empty() {
            on.push(format!("switch port(s) {:?}", self.in_ports));
        }
        let mut s = if on.is_empty() { "OFF".to_owned() } else { on.join(", ") };
        if !self.protects(exempt) {
            if !on.is_empty() {
                s = format!("PARTIAL: {s}");
            }
            s.push_str(": an inside host can spoof an exempt source");
        }
        if !self.route_off_because.is_empty() {
            s.push_str(&format!(" [route check off: {}]", self.route_off_because.join("; ")));
        }
        s
    }

    /// The loud start-up warning when some exempt source is not protected.
    pub fn warning(&self, cfg: &Config) -> Option<String> {
        let exempt = &cfg.policy.exempt_sources;
        if exempt.is_empty() || self.protects(exempt) {
            return None;
        }
        let how = match cfg.enforce.mode {
            Mode::Xdp if !cfg.policy.exempt_route_check => {
                "policy.exempt_route_check = false and no policy.exempt_macs".to_owned()
            }
            Mode::Xdp => format!(
                "the route check cannot run here ({}); set policy.exempt_macs",
                self.route_off_because.join("; ")
            ),
            Mode::Openflow => "set policy.exempt_macs and/or openflow.exempt_in_ports".to_owned(),
        };
        Some(format!(
            "ANTI-SPOOFING OF EXEMPT SOURCES IS OFF for some of {exempt:?}: an inside host that writes their \
             address into its packets bypasses enforcement ({how})"
        ))
    }
}

/// `<root>/ipv{4,6}/conf/<iface>/forwarding` as a bool (`None`: unreadable).
pub fn forwarding(root: &Path, iface: &str, v6: bool) -> Option<bool> {
    let path = root.join(if v6 { "ipv6" } else { "ipv4" }).join("conf").join(iface).join("forwarding");
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).expect("valid config")
    }

    const XDP: &str = "[enforce]\niface = \"in0\"\n[rpz]\nzone_file = \"z\"\n";

    #[test]
    fn route_check_is_on_by_default_where_the_interface_routes() {
        let c = cfg(&format!("{XDP}[policy]\nexempt_sources = [\"10.0.0.53\", \"fd00::53\"]\n"));
        let o = ExemptOrigin::plan_with(&c, |_, v6| Some(!v6));
        assert!(o.route_v4 && !o.route_v6);
        assert_eq!(o.trie_flags(false), guard_common::EXEMPT_HONOURED | guard_common::EXEMPT_VERIFY_ROUTE);
        assert_eq!(o.trie_flags(true), guard_common::EXEMPT_HONOURED);
        assert!(!o.protects(&c.policy.exempt_sources));
        let w = o.warning(&c).expect("IPv6 unprotected");
        assert!(w.contains("IPv6 forwarding is off on in0"), "{w}");
        assert!(o.summary(&c.policy.exempt_sources).starts_with("PARTIAL: route+neighbour check (IPv4)"));
        let both = ExemptOrigin::plan_with(&c, |_, _| Some(true));
        assert!(both.protects(&c.policy.exempt_sources) && both.warning(&c).is_none());
    }

    #[test]
    fn off_by_config_and_macs_alone() {
        let c =
            cfg(&format!("{XDP}[policy]\nexempt_sources = [\"10.0.0.53\"]\nexempt_route_check = false\n"));
        let o = ExemptOrigin::plan_with(&c, |_, _| Some(true));
        assert_eq!(o.trie_flags(false), guard_common::EXEMPT_HONOURED);
        assert!(o.warning(&c).expect("off").contains("exempt_route_check = false"));
        let c = cfg(&format!(
            "{XDP}[policy]\nexempt_sources = [\"10.0.0.53\"]\nexempt_route_check = false\nexempt_macs = [\"02:00:00:00:00:53\"]\n"
        ));
        let o = ExemptOrigin::plan_with(&c, |_, _| Some(true));
        assert_eq!(o.trie_flags(false), guard_common::EXEMPT_HONOURED | guard_common::EXEMPT_VERIFY_MAC);
        assert!(o.warning(&c).is_none());
    }

    #[test]
    fn openflow_honours_by_mac_and_port() {
        let base = "[enforce]\nmode = \"openflow\"\n[rpz]\nzone_file = \"z\"\n[policy]\nexempt_sources = [\"10.0.0.53\"]\n";
        let c = cfg(base);
        let o = ExemptOrigin::plan_with(&c, |_, _| Some(true));
        assert!(!o.route_v4, "no route check in OpenFlow mode");
        assert!(o.warning(&c).expect("unprotected").contains("openflow.exempt_in_ports"));
        let c =
            cfg(&format!("{base}exempt_macs = [\"02:00:00:00:00:53\"]\n[openflow]\nexempt_in_ports = [3]\n"));
        let o = ExemptOrigin::plan_with(&c, |_, _| None);
        let mac: MacAddr = "02:00:00:00:00:53".parse().expect("mac");
        let other: MacAddr = "02:00:00:00:00:66".parse().expect("mac");
        assert!(o.honours(mac, 3));
        assert!(!o.honours(other, 3));
        assert!(!o.honours(mac, 4));
        assert!(o.warning(&c).is_none());
    }

    #[test]
    fn forwarding_reads_proc_layout() {
        let dir = std::env::temp_dir().join(format!("rpzg-fwd-{}", std::process::id()));
        let conf = dir.join("ipv4/conf/in0");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join("forwarding"), "1\n").expect("write");
        assert_eq!(forwarding(&dir, "in0", false), Some(true));
        std::fs::write(conf.join("forwarding"), "0\n").expect("write");
        assert_eq!(forwarding(&dir, "in0", false), Some(false));
        assert_eq!(forwarding(&dir, "in0", true), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
