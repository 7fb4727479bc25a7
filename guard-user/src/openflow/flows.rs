//! The flow design: which FLOW_MODs the controller installs (see the module
//! docs of [`crate::openflow`] for the table layout).

use std::net::IpAddr;

use super::{
    ControllerConfig, ProtectedPort,
    codec::{Action, FlowMod, Instruction, NO_BUFFER, OFPP_CONTROLLER, OFPP_NORMAL, flow_cmd, flow_flags},
    oxm::{FRAG_LATER, Match, Oxm, v4_mask, v6_mask},
};
use crate::policy::{Classes, Prefix};

/// Cookie bits shared by every flow this controller installs ("RPG").
pub const COOKIE_TAG: u64 = 0x5250_4700_0000_0000;
/// Mask selecting [`COOKIE_TAG`]: deletes with it remove all our flows.
pub const COOKIE_TAG_MASK: u64 = 0xffff_ff00_0000_0000;
/// Mask selecting tag and kind.
pub const COOKIE_KIND_MASK: u64 = 0xffff_ffff_0000_0000;
/// Kind: static rules (exempt, internal, protected → controller, table-miss).
pub const COOKIE_BASE: u64 = COOKIE_TAG | (1 << 32);
/// Kind: proactive allow flows from the allow set.
pub const COOKIE_PROACTIVE: u64 = COOKIE_TAG | (2 << 32);
/// Kind: reactive verdict flows installed after a packet-in.
pub const COOKIE_VERDICT: u64 = COOKIE_TAG | (3 << 32);

/// Cookie value and mask selecting the two kinds of flows that let
/// traffic through to an allow-set entry, [`COOKIE_PROACTIVE`] (2) and
/// [`COOKIE_VERDICT`] (3), which differ only in the kind's lowest bit; no
/// other kind matches (issue 11: their statistics tell which entries are
/// in use, [`super::hits`]).
pub const COOKIE_ALLOW_KINDS: u64 = COOKIE_PROACTIVE;
/// See [`COOKIE_ALLOW_KINDS`].
pub const COOKIE_ALLOW_KINDS_MASK: u64 = COOKIE_KIND_MASK & !(1 << 32);
const _: () = assert!(
    COOKIE_VERDICT & COOKIE_ALLOW_KINDS_MASK == COOKIE_ALLOW_KINDS
        && COOKIE_BASE & COOKIE_ALLOW_KINDS_MASK != COOKIE_ALLOW_KINDS
);

/// Kind: live learning, the resolvers' DNS sent to the controller (issue 9).
pub const COOKIE_LEARN: u64 = COOKIE_TAG | (4 << 32);
/// A resolver's query: forwarded as its exempt flow would, and copied.
pub const COOKIE_LEARN_QUERY: u64 = COOKIE_LEARN | 1;
/// An answer toward a resolver, held: the controller learns from it,
/// installs the learned flows, then releases it.
pub const COOKIE_LEARN_HELD: u64 = COOKIE_LEARN | 2;
/// An answer toward a resolver, forwarded at once and copied.
pub const COOKIE_LEARN_COPY: u64 = COOKIE_LEARN | 3;

/// Priority of the live-learning flows: above the exempt-source flows they
/// refine (queries) and everything an answer toward a resolver could match.
pub const PRIO_LEARN: u16 = 40_100;
/// Priority of exempt-source rules.
pub const PRIO_EXEMPT: u16 = 40_000;
/// Priority of internal-destination rules.
pub const PRIO_INTERNAL: u16 = 39_000;
/// Priority of deny flows (RPZ `CNAME .`): above every allow flow, below
/// exempt sources and internal networks (the XDP program's order).
pub const PRIO_DENY: u16 = 35_000;
/// Priority of proactive allow flows.
pub const PRIO_ALLOW: u16 = 30_000;
/// Priority of reactive verdict flows (allow or drop).
pub const PRIO_VERDICT: u16 = 20_000;
/// Priority of the non-first-fragment rule.
pub const PRIO_LATER_FRAG: u16 = 15_000;
/// Priority of protected traffic → controller, and of the rules that send
/// the controller what the switch could not parse (see [`unparsed_matches`]).
pub const PRIO_PROTECTED: u16 = 10_000;
/// Priority of the table-miss flow.
pub const PRIO_MISS: u16 = 0;

/// Meter id used to rate-limit packet-ins.
pub const PACKET_IN_METER: u32 = 1;
/// Meter id bounding the held answers sent to the controller (live
/// learning), apart from [`PACKET_IN_METER`] so that neither path starves
/// the other.
pub const LEARN_METER: u32 = 2;
/// The DNS port whose traffic live learning copies.
const DNS_PORT: u16 = 53;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;

/// Matches for frames whose headers Open vSwitch could not read, so a port
/// rule cannot see them: without these they would fall to the table-miss
/// NORMAL flow. Each goes to the controller, which applies the same
/// awkward-packet policy as the XDP program ([`crate::frame`]):
///
/// * TCP/UDP with port 0: OVS reads the ports only when the whole
///   transport header is in the packet, so a tiny first fragment (RFC 1858)
///   or a truncated header shows port 0. The controller drops it as
///   malformed (a real port-0 packet would be judged like any other).
/// * IP protocol 0: OVS stops before the protocol field when an IPv4/IPv6
///   header is cut short, has an impossible length or version, or an IPv6
///   extension header is truncated.
/// * Ethertype 802.1Q / 802.1ad: more VLAN tags than the switch parses
///   (`other_config:vlan-limit`, default 1): QinQ is judged on its inner
///   packet, three tags or a cut tag are dropped.
pub fn unparsed_matches() -> Vec<Match> {
    let mut out = Vec::new();
    for et in [ETH_IPV4, ETH_IPV6] {
        out.push(Match::new(vec![Oxm::EthType(et), Oxm::IpProto(6), Oxm::TcpDst(0)]));
        out.push(Match::new(vec![Oxm::EthType(et), Oxm::IpProto(17), Oxm::UdpDst(0)]));
        out.push(Match::new(vec![Oxm::EthType(et), Oxm::IpProto(0)]));
    }
    for tpid in [ETH_VLAN, ETH_QINQ] {
        out.push(Match::new(vec![Oxm::EthType(tpid)]));
    }
    out
}

/// Meter (when configured), then CONTROLLER.
fn to_controller(cfg: &ControllerConfig) -> Vec<Instruction> {
    let mut ins = Vec::with_capacity(2);
    if cfg.packet_in_rate > 0 {
        ins.push(Instruction::Meter(PACKET_IN_METER));
    }
    ins.push(Instruction::ApplyActions(vec![Action::output(OFPP_CONTROLLER)]));
    ins
}

fn normal() -> Vec<Instruction> {
    vec![Instruction::ApplyActions(vec![Action::output(OFPP_NORMAL)])]
}

fn eth_type(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { ETH_IPV4 } else { ETH_IPV6 }
}

/// `eth_type` plus the source or destination prefix.
fn prefix_fields(p: &Prefix, dst: bool) -> Vec<Oxm> {
    let addr = p.addr();
    let mut f = vec![Oxm::EthType(eth_type(&addr))];
    if p.is_empty() {
        return f;
    }
    f.push(match (addr, dst, p.is_host()) {
        (IpAddr::V4(a), false, true) => Oxm::Ipv4Src(a, None),
        (IpAddr::V4(a), false, false) => Oxm::Ipv4Src(a, Some(v4_mask(p.len()))),
        (IpAddr::V4(a), true, true) => Oxm::Ipv4Dst(a, None),
        (IpAddr::V4(a), true, false) => Oxm::Ipv4Dst(a, Some(v4_mask(p.len()))),
        (IpAddr::V6(a), false, true) => Oxm::Ipv6Src(a, None),
        (IpAddr::V6(a), false, false) => Oxm::Ipv6Src(a, Some(v6_mask(p.len()))),
        (IpAddr::V6(a), true, true) => Oxm::Ipv6Dst(a, None),
        (IpAddr::V6(a), true, false) => Oxm::Ipv6Dst(a, Some(v6_mask(p.len()))),
    });
    f
}

fn port_fields(pp: &ProtectedPort) -> [Oxm; 2] {
    let proto = pp.proto.number();
    [Oxm::IpProto(proto), if proto == 6 { Oxm::TcpDst(pp.port) } else { Oxm::UdpDst(pp.port) }]
}

/// The static rules: exempt sources and internal destinations → NORMAL,
/// non-first fragments → NORMAL, protected ports and frames the switch
/// could not parse ([`unparsed_matches`]) → meter → CONTROLLER,
/// table-miss → NORMAL.
pub fn base_flows(cfg: &ControllerConfig) -> Vec<FlowMod> {
    let mut out = Vec::new();
    // Anti-spoofing: one flow per prefix × allowed MAC × allowed port; a
    // spoofed packet misses them and meets the rules below like any host's.
    let macs: Vec<Option<Oxm>> = if cfg.exempt_macs.is_empty() {
        vec![None]
    } else {
        cfg.exempt_macs.iter().map(|m| Some(Oxm::eth_src(m.0))).collect()
    };
    let ports: Vec<Option<Oxm>> = if cfg.exempt_in_ports.is_empty() {
        vec![None]
    } else {
        cfg.exempt_in_ports.iter().map(|p| Some(Oxm::InPort(*p))).collect()
    };
    for p in &cfg.exempt_sources {
        for port in &ports {
            for mac in &macs {
                let mut f: Vec<Oxm> = port.iter().chain(mac).cloned().collect();
                f.extend(prefix_fields(p, false));
                out.push(FlowMod::add(COOKIE_BASE, PRIO_EXEMPT, Match::new(f), normal()));
            }
        }
    }
    for p in &cfg.internal_networks {
        out.push(FlowMod::add(COOKIE_BASE, PRIO_INTERNAL, Match::new(prefix_fields(p, true)), normal()));
    }
    for et in [ETH_IPV4, ETH_IPV6] {
        // Later fragments carry no ports; without the first fragment they
        // cannot be reassembled, so they pass (same policy as XDP mode).
        out.push(FlowMod::add(
            COOKIE_BASE,
            PRIO_LATER_FRAG,
            Match::new(vec![Oxm::EthType(et), Oxm::IpFrag(FRAG_LATER, Some(FRAG_LATER))]),
            normal(),
        ));
        for pp in &cfg.protected {
            let mut f = vec![Oxm::EthType(et)];
            f.extend(port_fields(pp));
            out.push(FlowMod::add(COOKIE_BASE, PRIO_PROTECTED, Match::new(f), to_controller(cfg)));
        }
    }
    for m in unparsed_matches() {
        out.push(FlowMod::add(COOKIE_BASE, PRIO_PROTECTED, m, to_controller(cfg)));
    }
    out.push(FlowMod::add(COOKIE_BASE, PRIO_MISS, Match::default(), normal()));
    out
}

/// The protected ports a destination holding `classes` may receive.
pub fn allowed_ports(cfg: &ControllerConfig, classes: Classes) -> impl Iterator<Item = &ProtectedPort> {
    cfg.protected.iter().filter(move |pp| pp.service.allows(classes))
}

/// Proactive flows for one entry of the enforced set (`command` ADD or
/// DELETE_STRICT): allow flows (→ NORMAL) for the ports its classes permit;
/// for a deny ([`Classes::DENY`]), one flow per protected port at
/// [`PRIO_DENY`] sending the packet to the controller (metered), which
/// drops it and reports it (reason `denied`).
pub fn allow_flows(cfg: &ControllerConfig, prefix: &Prefix, classes: Classes, command: u8) -> Vec<FlowMod> {
    let deny = classes.is_deny();
    let ports: Vec<&ProtectedPort> =
        if deny { cfg.protected.iter().collect() } else { allowed_ports(cfg, classes).collect() };
    ports
        .into_iter()
        .map(|pp| {
            let mut f = prefix_fields(prefix, true);
            f.extend(port_fields(pp));
            let mut fm = if deny {
                FlowMod::add(COOKIE_PROACTIVE, PRIO_DENY, Match::new(f), to_controller(cfg))
            } else {
                FlowMod::add(COOKIE_PROACTIVE, PRIO_ALLOW, Match::new(f), normal())
            };
            fm.command = command;
            if command != flow_cmd::ADD {
                fm.cookie_mask = COOKIE_KIND_MASK;
                fm.instructions.clear();
            }
            fm
        })
        .collect()
}

/// Deletes every reactive verdict flow whose destination lies in `prefix`
/// (non-strict delete: matches flows at least as specific).
pub fn delete_verdicts_in(prefix: &Prefix) -> FlowMod {
    FlowMod::delete_by_cookie(COOKIE_VERDICT, COOKIE_KIND_MASK, Match::new(prefix_fields(prefix, true)))
}

/// Deletes every flow carrying our cookie tag (resynchronisation).
pub fn delete_all_ours() -> FlowMod {
    FlowMod::delete_by_cookie(COOKIE_TAG, COOKIE_TAG_MASK, Match::default())
}

/// A reactive verdict flow for one destination and protected port: allow
/// (→ NORMAL) or drop (no instructions), with timeouts, reporting removal.
pub fn verdict_flow(
    dst: IpAddr,
    pp: &ProtectedPort,
    allow: bool,
    idle_timeout: u16,
    hard_timeout: u16,
    buffer_id: Option<u32>,
) -> FlowMod {
    let mut f = prefix_fields(&Prefix::host(dst), true);
    f.extend(port_fields(pp));
    let mut fm =
        FlowMod::add(COOKIE_VERDICT, PRIO_VERDICT, Match::new(f), if allow { normal() } else { Vec::new() });
    fm.idle_timeout = idle_timeout;
    fm.hard_timeout = hard_timeout;
    fm.flags = flow_flags::SEND_FLOW_REM;
    fm.buffer_id = buffer_id.unwrap_or(NO_BUFFER);
    fm
}

/// Number of proactive flows an entry needs.
pub fn allow_flow_count(cfg: &ControllerConfig, classes: Classes) -> usize {
    if classes.is_deny() { cfg.protected.len() } else { allowed_ports(cfg, classes).count() }
}

/// True for a live-learning cookie ([`COOKIE_LEARN`] kind).
pub fn is_learn_cookie(cookie: u64) -> bool {
    cookie & COOKIE_KIND_MASK == COOKIE_LEARN
}

/// Replaces the source-address field of an exempt flow's match by
/// `resolver` (same family); `None` when the match has no source field.
fn refine_source(m: &Match, resolver: &Prefix) -> Option<Vec<Oxm>> {
    let src = prefix_fields(resolver, false).pop().filter(|_| !resolver.is_empty())?;
    let mut found = false;
    let fields = m
        .fields
        .iter()
        .map(|f| match f {
            Oxm::Ipv4Src(a, mask) if resolver.addr().is_ipv4() => {
                let p = Prefix::new(IpAddr::V4(*a), mask.map_or(32, |m| u32::from(m).count_ones() as u8));
                found = p.is_ok_and(|p| p.len() <= resolver.len() && p.contains(resolver.addr()));
                src.clone()
            }
            Oxm::Ipv6Src(a, mask) if resolver.addr().is_ipv6() => {
                let p = Prefix::new(IpAddr::V6(*a), mask.map_or(128, |m| u128::from(m).count_ones() as u8));
                found = p.is_ok_and(|p| p.len() <= resolver.len() && p.contains(resolver.addr()));
                src.clone()
            }
            other => other.clone(),
        })
        .collect();
    found.then_some(fields)
}

/// The live-learning flows (empty without [`ControllerConfig::learn_resolvers`]):
///
/// * a resolver's queries (UDP and TCP to port 53): every exempt-source
///   flow covering the resolver, refined to the resolver's address and the
///   DNS port — whatever else it matches (e.g. anti-spoofing fields) is
///   kept — forwarding as it does (`NORMAL`) plus a copy to the controller.
///   Not metered: a meter would drop the query itself, not only its copy.
/// * answers toward a resolver (UDP and TCP from port 53) and later
///   fragments toward it: held ([`ControllerConfig::learn_hold_answers`],
///   meter [`LEARN_METER`] → controller only) or forwarded and copied.
pub fn learn_flows(cfg: &ControllerConfig) -> Vec<FlowMod> {
    let mut out = Vec::new();
    if cfg.learn_resolvers.is_empty() {
        return out;
    }
    let copy =
        vec![Instruction::ApplyActions(vec![Action::output(OFPP_NORMAL), Action::output(OFPP_CONTROLLER)])];
    for exempt in base_flows(cfg).iter().filter(|f| f.priority == PRIO_EXEMPT) {
        for r in &cfg.learn_resolvers {
            let Some(fields) = refine_source(&exempt.r#match, r) else { continue };
            for proto in [17, 6] {
                let mut f = fields.clone();
                f.push(Oxm::IpProto(proto));
                f.push(if proto == 6 { Oxm::TcpDst(DNS_PORT) } else { Oxm::UdpDst(DNS_PORT) });
                out.push(FlowMod::add(COOKIE_LEARN_QUERY, PRIO_LEARN, Match::new(f), copy.clone()));
            }
        }
    }
    let (cookie, answer) = if cfg.learn_hold_answers {
        let mut ins = Vec::with_capacity(2);
        if cfg.learn_packet_in_rate > 0 {
            ins.push(Instruction::Meter(LEARN_METER));
        }
        ins.push(Instruction::ApplyActions(vec![Action::output(OFPP_CONTROLLER)]));
        (COOKIE_LEARN_HELD, ins)
    } else {
        (COOKIE_LEARN_COPY, copy)
    };
    for r in cfg.learn_resolvers.iter().filter(|r| !r.is_empty()) {
        for proto in [17, 6] {
            let mut f = prefix_fields(r, true);
            f.push(Oxm::IpProto(proto));
            f.push(if proto == 6 { Oxm::TcpSrc(DNS_PORT) } else { Oxm::UdpSrc(DNS_PORT) });
            out.push(FlowMod::add(cookie, PRIO_LEARN, Match::new(f), answer.clone()));
        }
        // Large answers come in fragments: later ones carry no ports.
        let mut f = prefix_fields(r, true);
        f.push(Oxm::IpFrag(FRAG_LATER, Some(FRAG_LATER)));
        out.push(FlowMod::add(cookie, PRIO_LEARN, Match::new(f), answer.clone()));
    }
    out
}

// -- fail-closed start (issue 17) --

/// Kind: deny-protected rules, in place until the first allow set is loaded.
pub const COOKIE_NOT_LOADED: u64 = COOKIE_TAG | (5 << 32);
/// Priority of the deny-protected rules: below exempt sources, internal
/// destinations and proactive allow flows, above verdict flows and the
/// protected → controller rule.
pub const PRIO_NOT_LOADED: u16 = 25_000;

/// Deny-protected mode (no allow set loaded yet, e.g. the primary down at
/// the first start): every protected port, IPv4 and IPv6, → meter →
/// CONTROLLER, which drops the packet and reports it (reason `not_loaded`)
/// without asking the RPZ. The switch never forwards such a packet on its
/// own, so the mode holds with the controller gone too; `ovs-ofctl
/// dump-flows` shows it (cookie kind 5) and counts every packet.
pub fn not_loaded_flows(cfg: &ControllerConfig) -> Vec<FlowMod> {
    let mut out = Vec::new();
    for et in [ETH_IPV4, ETH_IPV6] {
        for pp in &cfg.protected {
            let mut f = vec![Oxm::EthType(et)];
            f.extend(port_fields(pp));
            out.push(FlowMod::add(COOKIE_NOT_LOADED, PRIO_NOT_LOADED, Match::new(f), to_controller(cfg)));
        }
    }
    out
}

/// Deletes the deny-protected rules (the first allow set is in place).
pub fn delete_not_loaded() -> FlowMod {
    FlowMod::delete_by_cookie(COOKIE_NOT_LOADED, COOKIE_KIND_MASK, Match::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MacAddr;

    fn exempt_matches(cfg: &ControllerConfig) -> Vec<Vec<Oxm>> {
        base_flows(cfg).into_iter().filter(|f| f.priority == PRIO_EXEMPT).map(|f| f.r#match.fields).collect()
    }

    #[test]
    fn exempt_flows_bind_sources_to_macs_and_ports() {
        let mut cfg = ControllerConfig {
            exempt_sources: vec!["10.0.0.53".parse().expect("prefix"), "fd00::/64".parse().expect("prefix")],
            ..ControllerConfig::default()
        };
        // Unbound: the address alone (spoofable; the daemon warns).
        assert_eq!(
            exempt_matches(&cfg)[0],
            vec![Oxm::EthType(ETH_IPV4), Oxm::Ipv4Src("10.0.0.53".parse().expect("ip"), None)]
        );
        let (m1, m2) = (MacAddr([2, 0, 0, 0, 0, 0x53]), MacAddr([2, 0, 0, 0, 0, 0x54]));
        cfg.exempt_macs = vec![m1, m2];
        cfg.exempt_in_ports = vec![7];
        let got = exempt_matches(&cfg);
        assert_eq!(got.len(), 4, "prefixes × MACs × ports");
        assert_eq!(
            got[1],
            vec![
                Oxm::InPort(7),
                Oxm::eth_src(m2.0),
                Oxm::EthType(ETH_IPV4),
                Oxm::Ipv4Src("10.0.0.53".parse().expect("ip"), None)
            ]
        );
        assert!(got.iter().all(|f| f.contains(&Oxm::InPort(7))));
        // eth_src round-trips through the codec as a standard OXM field.
        let m = Match::new(got[3].clone());
        let mut wire = Vec::new();
        m.encode(&mut wire);
        let mut r = crate::openflow::wire::Reader::new(&wire, "test");
        assert_eq!(Match::decode(&mut r).expect("decode"), m);
        assert_eq!(&wire[4..8], &[0x80, 0x00, 0x00, 0x04], "in_port first");
        assert_eq!(&wire[12..16], &[0x80, 0x00, 4 << 1, 6], "then OXM_OF_ETH_SRC, 6 bytes");
    }
}
