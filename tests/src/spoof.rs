//! A spoofing host: raw frames that carry another host's source address (an
//! inside attacker posing as the organisation's resolver), with valid
//! headers and checksums, so a router forwards them unless something stops
//! them. Plus an nftables counter of what arrives where they are aimed.
//!
//! ```no_run
//! use std::net::{IpAddr, SocketAddr};
//! use guard_tests::{Lab, LabConfig, Role, spoof};
//! let lab = Lab::up(LabConfig::for_test("spoof")).expect("lab");
//! let resolver = IpAddr::V4(lab.addrs().dns_v4);
//! let target: SocketAddr = "203.0.113.120:25".parse().expect("addr");
//! let sp = spoof::Spoofer {
//!     src_mac: lab.mac(Role::Bot, "eth0").expect("mac"),
//!     dst_mac: lab.mac(Role::Router, "in0").expect("mac"),
//!     src: resolver,
//! };
//! let counter = spoof::Counter::install(&lab.ns(Role::Inet), resolver, "203.0.113.0/24").expect("nft");
//! lab.send_frames(Role::Bot, "eth0", &sp.frames(&[target], 0)).expect("send");
//! let through = counter.packets().expect("read");
//! ```

use std::net::{IpAddr, SocketAddr};

use crate::{Result, netns};

/// The mark of spoofed frames: IPv4 identification and IPv6 flow label.
pub const MARK: u16 = 0x5bad;

/// Who the frames claim to be, and where they go on the link.
#[derive(Debug, Clone, Copy)]
pub struct Spoofer {
    /// The spoofer's own MAC (what a switch or the router sees).
    pub src_mac: [u8; 6],
    /// The router's MAC on the link.
    pub dst_mac: [u8; 6],
    /// The borrowed source address.
    pub src: IpAddr,
}

impl Spoofer {
    /// A TCP SYN per target, plus a UDP DNS query toward port 53 targets,
    /// of the target's family (targets of the other family are skipped);
    /// `seq` varies the source port between batches. Every frame carries
    /// [`MARK`] (IPv4 id, IPv6 flow label), which [`Counter`] counts.
    pub fn frames(&self, targets: &[SocketAddr], seq: u16) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            if t.is_ipv4() != self.src.is_ipv4() {
                continue;
            }
            let sport = 40_000u16.wrapping_add(seq.wrapping_mul(64)).wrapping_add(i as u16);
            out.push(self.frame(t, 6, &tcp_syn(sport, t.port())));
            if t.port() == 53 {
                out.push(self.frame(t, 17, &udp_query(sport, t.port())));
            }
        }
        out
    }

    fn frame(&self, to: &SocketAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = self.dst_mac.to_vec();
        f.extend_from_slice(&self.src_mac);
        let mut l4 = l4.to_vec();
        let csum_at = if proto == 6 { 16 } else { 6 };
        match (self.src, to.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = (20 + l4.len()) as u16;
                let mut h = vec![0x45, 0];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&MARK.to_be_bytes());
                h.extend_from_slice(&[0, 0, 64, proto, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                let c = checksum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                let mut pseudo = s.octets().to_vec();
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                let c = checksum(&l4, sum(&pseudo));
                l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut h = vec![0x60, 0];
                h.extend_from_slice(&MARK.to_be_bytes());
                h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                h.extend_from_slice(&[proto, 64]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                let mut pseudo = s.octets().to_vec();
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, proto]);
                let c = checksum(&l4, sum(&pseudo));
                l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            // Mixed families: `frames` never asks for one.
            _ => return Vec::new(),
        }
        f.extend_from_slice(&l4);
        f
    }
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0x5b, 0xad, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

fn udp_query(sport: u16, dport: u16) -> Vec<u8> {
    let q = crate::dns::build_query(sport, "spoofed.example.", 1);
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + q.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&q);
    h
}

pub(crate) fn sum(b: &[u8]) -> u32 {
    b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// The Internet checksum of `b` with `init` (a pseudo-header's sum) added.
fn checksum(b: &[u8], init: u32) -> u16 {
    let mut s = sum(b) + init;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// nftables table holding a counter, one per family (`rgspoof4`, `rgspoof6`).
fn table(src: IpAddr) -> &'static str {
    if src.is_ipv4() { "rgspoof4" } else { "rgspoof6" }
}

/// Counts spoofed packets ([`MARK`]) from one source toward one prefix
/// arriving in a namespace (prerouting, before anything else), not the
/// real host's own reactions to their answers; removed on drop.
pub struct Counter {
    ns: String,
    table: &'static str,
}

impl Counter {
    /// Installs the counter in `ns` for marked packets from `src` to `dst_prefix`.
    pub fn install(ns: &str, src: IpAddr, dst_prefix: &str) -> Result<Counter> {
        let (family, mark) = if src.is_ipv4() { ("ip", "ip id") } else { ("ip6", "ip6 flowlabel") };
        let table = table(src);
        let script = format!(
            "table inet {table} {{\n  chain pre {{\n    type filter hook prerouting priority -310; policy accept;\n    \
             {family} saddr {src} {family} daddr {dst_prefix} {mark} {MARK} counter\n  }}\n}}\n"
        );
        let _ = netns::exec(ns, &["nft", "delete", "table", "inet", table]);
        let out = netns::exec_with_input(ns, &["nft", "-f", "-"], Some(script.as_bytes()))?;
        if !out.status.success() {
            return Err(crate::LabError::Command {
                command: format!("nft -f - (in {ns}): {script}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(Counter { ns: ns.to_owned(), table })
    }

    /// Packets counted so far.
    pub fn packets(&self) -> Result<u64> {
        let out = netns::exec(&self.ns, &["nft", "list", "chain", "inet", self.table, "pre"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| crate::LabError::Command {
                command: format!("nft list chain inet {} pre (in {})", self.table, self.ns),
                status: out.status.to_string(),
                stderr: format!("no packet counter in {text:?}"),
            })
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = netns::exec(&self.ns, &["nft", "delete", "table", "inet", self.table]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums() {
        let sp = Spoofer {
            src_mac: [2, 0, 0, 0, 0, 0x66],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: "10.1.0.53".parse().expect("address"),
        };
        let t: SocketAddr = "203.0.113.7:53".parse().expect("address");
        let six: SocketAddr = "[2001:db8::7]:53".parse().expect("address");
        let f = sp.frames(&[t, six], 3);
        assert_eq!(f.len(), 2, "IPv6 target skipped for an IPv4 source");
        for frame in &f {
            assert_eq!(&frame[6..12], &sp.src_mac);
            let ip = &frame[14..34];
            assert_eq!(checksum(ip, 0), 0, "IPv4 header checksum");
            let l4 = &frame[34..];
            let mut pseudo = ip[12..20].to_vec();
            pseudo.extend_from_slice(&[0, ip[9]]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            assert_eq!(checksum(l4, sum(&pseudo)), 0, "transport checksum");
        }
        let sp6 = Spoofer { src: "fd00::53".parse().expect("address"), ..sp };
        let f = sp6.frames(&[t, six], 0);
        assert_eq!(f.len(), 2);
        assert_eq!(
            sp6.frames(&["[2001:db8::7]:25".parse().expect("address")], 0).len(),
            1,
            "no UDP to port 25"
        );
        let l4 = &f[0][54..];
        let mut pseudo = f[0][22..54].to_vec();
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        assert_eq!(checksum(l4, sum(&pseudo)), 0, "TCP over IPv6 checksum");
    }
}
