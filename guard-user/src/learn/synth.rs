//! A generator of realistic border DNS captures with known content.
//!
//! [`generate`] simulates an organisation's recursive resolver with a cache
//! walking a synthetic DNS tree (root → TLDs → domains, some delegated to
//! hosting providers with out-of-bailiwick NS names, some with mail at mail
//! providers or behind CNAMEs), interleaved with noise: client↔resolver
//! traffic, bots querying arbitrary servers, spoofed and unsolicited
//! responses, negative answers, non-DNS packets, TCP DNS (split and
//! pipelined messages), IPv4 fragments, VLAN tags and IPv6 transport.
//!
//! It returns the allow set the learning rules must produce, computed from the
//! generator's own model ("these addresses were handed out as name servers /
//! mail hosts by trusted servers"), not from the learner.
use std::{
    collections::HashSet,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    dns::{TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_MX, TYPE_NS, TYPE_SOA},
    hints::ROOT_SERVERS,
    pcapw::PcapWriter,
};
use crate::policy::{AllowSet, Classes, Prefix};

/// What a generated capture contains.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// The allow set the rules must learn from it.
    pub allow: AllowSet,
    /// Packets written.
    pub packets: u64,
    /// Bytes written (file size).
    pub bytes: u64,
    /// Lookups the simulated clients made.
    pub lookups: u64,
}

/// A small deterministic PRNG (SplitMix64), so captures are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `pct`/100.
    pub fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

const TLDS: [&str; 12] = ["com", "net", "org", "jp", "de", "uk", "io", "info", "biz", "xyz", "edu", "fr"];
const HOSTERS: usize = 20;
const MAIL_PROVIDERS: usize = 10;
const RESOLVER_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 53);
const RESOLVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x53);

#[derive(Debug, Clone)]
struct Server {
    name: String,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mail {
    /// mail.d (and maybe mail2.d) with addresses in the additional section.
    Own,
    /// mx1/mx2 of a mail provider, no additional section.
    Provider(usize),
    /// mx.d is a CNAME for mailhost.d.
    Cname,
    /// No MX: NODATA.
    None,
}

#[derive(Debug, Clone)]
struct Domain {
    name: String,
    tld: usize,
    /// Own servers (in-bailiwick, with glue) or a hoster's.
    own_ns: Vec<Server>,
    hoster: Option<usize>,
    mail: Mail,
    /// Addresses of mail hosts (own or CNAME target).
    mail_hosts: Vec<Server>,
}

/// Generator state: the DNS tree, the resolver cache, the writer.
struct Gen<W: Write> {
    rng: Rng,
    out: PcapWriter<W>,
    ts: u64,
    next_v4: u32,
    next_v6: u128,
    next_bogus: u32,
    tld_servers: Vec<Vec<Server>>,
    domains: Vec<Domain>,
    /// Hosting providers: their domain index and the name servers they lend out.
    hosters: Vec<(usize, Vec<Server>)>,
    /// Mail providers: domain index and MX hosts.
    mail_providers: Vec<(usize, Vec<Server>)>,
    tld_cached: HashSet<usize>,
    dom_cached: HashSet<usize>,
    /// Lent name servers / provider MX hosts whose addresses the resolver knows.
    host_resolved: HashSet<IpAddr>,
    expected: AllowSet,
    packets: u64,
    lookups: u64,
    frame: Vec<u8>,
}

/// Writes a capture of about `target_bytes` (Ethernet, microsecond pcap) to
/// `out`, deterministic for a `seed`, and returns what it contains.
pub fn generate<W: Write>(out: W, target_bytes: u64, seed: u64) -> io::Result<Expected> {
    let mut g = Gen::new(out, target_bytes, seed)?;
    while g.out.written() < target_bytes {
        g.event()?;
    }
    let bytes = g.out.written();
    g.out.finish()?;
    Ok(Expected { allow: g.expected, packets: g.packets, bytes, lookups: g.lookups })
}

/// Canonical wire encoding of a presentation name (no compression).
fn put_name(buf: &mut Vec<u8>, name: &str) {
    for l in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        buf.push(l.len() as u8);
        buf.extend_from_slice(l.as_bytes());
    }
    buf.push(0);
}

/// A DNS message under construction.
struct Msg {
    buf: Vec<u8>,
    qname: String,
    counts: [u16; 3],
    rrs: [Vec<u8>; 3],
}

#[derive(Clone, Copy)]
enum Sec {
    An = 0,
    Ns = 1,
    Ar = 2,
}

impl Msg {
    fn new(id: u16, flags: u16, qname: &str, qtype: u16) -> Msg {
        let mut buf = Vec::with_capacity(512);
        buf.extend(id.to_be_bytes());
        buf.extend(flags.to_be_bytes());
        buf.extend([0, 1, 0, 0, 0, 0, 0, 0]);
        put_name(&mut buf, qname);
        buf.extend(qtype.to_be_bytes());
        buf.extend(1u16.to_be_bytes());
        Msg { buf, qname: qname.to_owned(), counts: [0; 3], rrs: [Vec::new(), Vec::new(), Vec::new()] }
    }

    fn owner(&mut self, s: Sec, name: &str) {
        let b = &mut self.rrs[s as usize];
        if name.eq_ignore_ascii_case(&self.qname) {
            // Pointer to the question name, as real servers compress.
            b.extend([0xc0, 0x0c]);
        } else {
            put_name(b, name);
        }
    }

    fn rr(&mut self, s: Sec, name: &str, rtype: u16, rdata: &[u8]) {
        self.owner(s, name);
        let b = &mut self.rrs[s as usize];
        b.extend(rtype.to_be_bytes());
        b.extend(1u16.to_be_bytes());
        b.extend(3600u32.to_be_bytes());
        b.extend((rdata.len() as u16).to_be_bytes());
        b.extend_from_slice(rdata);
        self.counts[s as usize] += 1;
    }

    fn name_rr(&mut self, s: Sec, name: &str, rtype: u16, target: &str) {
        let mut d = Vec::with_capacity(32);
        put_name(&mut d, target);
        self.rr(s, name, rtype, &d);
    }

    fn mx(&mut self, name: &str, pref: u16, target: &str) {
        let mut d = pref.to_be_bytes().to_vec();
        put_name(&mut d, target);
        self.rr(Sec::An, name, TYPE_MX, &d);
    }

    fn addr(&mut self, s: Sec, name: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.rr(s, name, TYPE_A, &a.octets()),
            IpAddr::V6(a) => self.rr(s, name, TYPE_AAAA, &a.octets()),
        }
    }

    fn soa(&mut self, zone: &str) {
        let mut d = Vec::with_capacity(64);
        put_name(&mut d, &format!("ns1.{zone}"));
        put_name(&mut d, &format!("hostmaster.{zone}"));
        for v in [1u32, 7200, 3600, 1_209_600, 300] {
            d.extend(v.to_be_bytes());
        }
        self.rr(Sec::Ns, zone, TYPE_SOA, &d);
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf[6..8].copy_from_slice(&self.counts[0].to_be_bytes());
        self.buf[8..10].copy_from_slice(&self.counts[1].to_be_bytes());
        self.buf[10..12].copy_from_slice(&self.counts[2].to_be_bytes());
        for r in &self.rrs {
            self.buf.extend_from_slice(r);
        }
        self.buf
    }
}

const FLAGS_QUERY: u16 = 0x0000;
const FLAGS_QUERY_RD: u16 = 0x0100;
const FLAGS_REFERRAL: u16 = 0x8000;
const FLAGS_AUTH: u16 = 0x8400;
const FLAGS_NXDOMAIN: u16 = 0x8403;
const FLAGS_RECURSIVE: u16 = 0x8180;

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl<W: Write> Gen<W> {
    fn new(out: W, target: u64, seed: u64) -> io::Result<Gen<W>> {
        let out = PcapWriter::new(out, crate::frame::LINKTYPE_ETHERNET, false)?;
        let mut g = Gen {
            rng: Rng::new(seed),
            out,
            ts: 1_700_000_000_000_000_000,
            next_v4: u32::from(Ipv4Addr::new(20, 0, 0, 1)),
            next_v6: u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            next_bogus: u32::from(Ipv4Addr::new(198, 18, 0, 1)),
            tld_servers: Vec::new(),
            domains: Vec::new(),
            hosters: Vec::new(),
            mail_providers: Vec::new(),
            tld_cached: HashSet::new(),
            dom_cached: HashSet::new(),
            host_resolved: HashSet::new(),
            expected: AllowSet::new(),
            packets: 0,
            lookups: 0,
            frame: Vec::with_capacity(2048),
        };
        for (_, v4, v6) in ROOT_SERVERS {
            for a in [v4, v6] {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    g.expected.add(Prefix::host(ip), Classes::DNS);
                }
            }
        }
        for tld in TLDS {
            let s = (0..2).map(|i| g.server(&format!("{}.nic.{tld}", ["a", "b"][i]), true)).collect();
            g.tld_servers.push(s);
        }
        // About one domain per 3 KB of capture, within limits.
        let n = (target / 3000).clamp(40, 300_000) as usize;
        for i in 0..HOSTERS {
            let d = g.own_domain(format!("host{i}.net"), 1, Mail::None);
            let lent = (0..4).map(|j| g.server(&format!("dns{j}.host{i}.net"), false)).collect();
            g.hosters.push((d, lent));
        }
        for i in 0..MAIL_PROVIDERS {
            let d = g.own_domain(format!("mail{i}.com"), 0, Mail::None);
            let mx = (1..=2).map(|j| g.server(&format!("mx{j}.mail{i}.com"), true)).collect();
            g.mail_providers.push((d, mx));
        }
        for i in 0..n {
            let tld = g.rng.below(TLDS.len() as u64) as usize;
            let name = format!("d{i}.{}", TLDS[tld]);
            let mail = match g.rng.below(10) {
                0..=4 => Mail::Own,
                5..=7 => Mail::Provider(g.rng.below(MAIL_PROVIDERS as u64) as usize),
                8 => Mail::Cname,
                _ => Mail::None,
            };
            if g.rng.pct(60) {
                g.own_domain(name, tld, mail);
            } else {
                let h = g.rng.below(HOSTERS as u64) as usize;
                let hosts = g.mail_hosts(&name, mail);
                g.domains.push(Domain {
                    name,
                    tld,
                    own_ns: Vec::new(),
                    hoster: Some(h),
                    mail,
                    mail_hosts: hosts,
                });
            }
        }
        Ok(g)
    }

    fn mail_hosts(&mut self, name: &str, mail: Mail) -> Vec<Server> {
        match mail {
            Mail::Own => {
                let k = 1 + self.rng.below(2) as usize;
                (0..k).map(|i| self.server(&format!("{}.{name}", ["mail", "mail2"][i]), true)).collect()
            }
            Mail::Cname => vec![self.server(&format!("mailhost.{name}"), true)],
            Mail::Provider(_) | Mail::None => Vec::new(),
        }
    }

    fn own_domain(&mut self, name: String, tld: usize, mail: Mail) -> usize {
        let v6 = self.rng.pct(50);
        let ns = (1..=2).map(|i| self.server(&format!("ns{i}.{name}"), v6)).collect();
        let hosts = self.mail_hosts(&name, mail);
        self.domains.push(Domain { name, tld, own_ns: ns, hoster: None, mail, mail_hosts: hosts });
        self.domains.len() - 1
    }

    fn server(&mut self, name: &str, v6: bool) -> Server {
        let v4 = Ipv4Addr::from(self.next_v4);
        self.next_v4 += 1;
        let v6 = v6.then(|| {
            self.next_v6 += 1;
            Ipv6Addr::from(self.next_v6)
        });
        Server { name: name.to_owned(), v4, v6 }
    }

    fn bogus(&mut self) -> Ipv4Addr {
        self.next_bogus = self.next_bogus.wrapping_add(1);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
        Ipv4Addr::from(base + self.next_bogus % (1 << 17))
    }

    fn tick(&mut self, max_us: u64) {
        self.ts += 1000 * (1 + self.rng.below(max_us));
    }

    fn expect(&mut self, ip: IpAddr, c: Classes) {
        self.expected.add(Prefix::host(ip), c);
    }

    // ---- frames ----

    fn write_frame(&mut self) -> io::Result<()> {
        self.packets += 1;
        let f = std::mem::take(&mut self.frame);
        let r = self.out.packet(self.ts, &f);
        self.frame = f;
        r
    }

    fn eth(&mut self, ethertype: u16) {
        self.frame.clear();
        self.frame.extend([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        if self.rng.pct(10) {
            self.frame.extend(0x8100u16.to_be_bytes());
            self.frame.extend(((self.rng.below(4000) + 1) as u16).to_be_bytes());
        }
        self.frame.extend(ethertype.to_be_bytes());
    }

    fn ipv4_header(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize, id: u16, frag: u16) {
        let start = self.frame.len();
        self.frame.extend([0x45, 0]);
        self.frame.extend(((20 + len) as u16).to_be_bytes());
        self.frame.extend(id.to_be_bytes());
        self.frame.extend(frag.to_be_bytes());
        self.frame.extend([64, proto, 0, 0]);
        self.frame.extend(src.octets());
        self.frame.extend(dst.octets());
        let c = ip_checksum(&self.frame[start..start + 20]);
        self.frame[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
    }

    /// Sends an IP packet carrying `l4` (already built transport header + data).
    fn ip(&mut self, src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> io::Result<()> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let id = self.rng.next_u64() as u16;
                // Some large datagrams go out in two fragments.
                if l4.len() > 200 && self.rng.pct(20) {
                    let cut = (l4.len() / 2) & !7;
                    self.eth(0x0800);
                    self.ipv4_header(s, d, proto, cut, id, 0x2000);
                    self.frame.extend_from_slice(&l4[..cut]);
                    self.write_frame()?;
                    self.tick(50);
                    self.eth(0x0800);
                    self.ipv4_header(s, d, proto, l4.len() - cut, id, (cut / 8) as u16);
                    self.frame.extend_from_slice(&l4[cut..]);
                    return self.write_frame();
                }
                self.eth(0x0800);
                self.ipv4_header(s, d, proto, l4.len(), id, 0x4000);
                self.frame.extend_from_slice(l4);
                self.write_frame()
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                self.eth(0x86dd);
                self.frame.extend([0x60, 0, 0, 0]);
                self.frame.extend((l4.len() as u16).to_be_bytes());
                self.frame.extend([proto, 64]);
                self.frame.extend(s.octets());
                self.frame.extend(d.octets());
                self.frame.extend_from_slice(l4);
                self.write_frame()
            }
            _ => Ok(()),
        }
    }

    fn udp(&mut self, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, data: &[u8]) -> io::Result<()> {
        let mut l4 = Vec::with_capacity(8 + data.len());
        l4.extend(sport.to_be_bytes());
        l4.extend(dport.to_be_bytes());
        l4.extend(((8 + data.len()) as u16).to_be_bytes());
        l4.extend([0, 0]);
        l4.extend_from_slice(data);
        self.ip(src, dst, 17, &l4)
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        seq: u32,
        flags: u8,
        data: &[u8],
    ) -> io::Result<()> {
        let mut l4 = Vec::with_capacity(20 + data.len());
        l4.extend(sport.to_be_bytes());
        l4.extend(dport.to_be_bytes());
        l4.extend(seq.to_be_bytes());
        l4.extend(0u32.to_be_bytes());
        l4.extend([0x50, flags]);
        l4.extend(65535u16.to_be_bytes());
        l4.extend([0, 0, 0, 0]);
        l4.extend_from_slice(data);
        self.ip(src, dst, 6, &l4)
    }

    // ---- exchanges ----

    /// One query and its response between `client` and `server`, over UDP or
    /// (sometimes) TCP; occasionally preceded by a spoofed response.
    fn exchange(
        &mut self,
        client: IpAddr,
        server: IpAddr,
        query: Vec<u8>,
        response: Vec<u8>,
    ) -> io::Result<()> {
        let cport = 1024 + self.rng.below(60000) as u16;
        self.tick(400);
        if self.rng.pct(4) {
            return self.tcp_exchange(client, server, cport, &query, &response);
        }
        self.udp(client, server, cport, 53, &query)?;
        if self.rng.pct(2) {
            // A spoofed answer (wrong ID, bogus address) arrives first.
            let mut fake = query.clone();
            fake[0] ^= 0x5a;
            fake[2] |= 0x84;
            fake[6..8].copy_from_slice(&1u16.to_be_bytes());
            fake.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
            fake.extend(self.bogus().octets());
            self.tick(100);
            self.udp(server, client, 53, cport, &fake)?;
        }
        self.tick(3000);
        self.udp(server, client, 53, cport, &response)
    }

    fn tcp_exchange(
        &mut self,
        client: IpAddr,
        server: IpAddr,
        cport: u16,
        q: &[u8],
        r: &[u8],
    ) -> io::Result<()> {
        let cseq = self.rng.next_u64() as u32;
        let sseq = self.rng.next_u64() as u32;
        self.tcp(client, server, cport, 53, cseq, 0x02, &[])?;
        self.tick(100);
        self.tcp(server, client, 53, cport, sseq, 0x12, &[])?;
        self.tick(100);
        self.tcp(client, server, cport, 53, cseq + 1, 0x10, &[])?;
        let mut qf = (q.len() as u16).to_be_bytes().to_vec();
        qf.extend_from_slice(q);
        self.tcp(client, server, cport, 53, cseq.wrapping_add(1), 0x18, &qf)?;
        self.tick(2000);
        let mut rf = (r.len() as u16).to_be_bytes().to_vec();
        rf.extend_from_slice(r);
        // The response in two segments, cut anywhere (even inside the prefix).
        let cut = 1 + self.rng.below(rf.len() as u64 - 1) as usize;
        self.tcp(server, client, 53, cport, sseq.wrapping_add(1), 0x10, &rf[..cut])?;
        self.tick(50);
        self.tcp(server, client, 53, cport, sseq.wrapping_add(1 + cut as u32), 0x18, &rf[cut..])?;
        self.tick(50);
        let end = sseq.wrapping_add(1 + rf.len() as u32);
        self.tcp(server, client, 53, cport, end, 0x11, &[])?;
        self.tcp(client, server, cport, 53, cseq.wrapping_add(1 + qf.len() as u32), 0x11, &[])
    }

    fn resolver_to(&mut self, s: &Server) -> (IpAddr, IpAddr) {
        match s.v6 {
            Some(v6) if self.rng.pct(25) => (RESOLVER_V6.into(), v6.into()),
            _ => (RESOLVER_V4.into(), s.v4.into()),
        }
    }

    fn ask(&mut self, s: &Server, qname: &str, qtype: u16, build: impl FnOnce(&mut Msg)) -> io::Result<()> {
        let id = self.rng.next_u64() as u16;
        let q = Msg::new(id, FLAGS_QUERY, qname, qtype).finish();
        let mut r = Msg::new(id, FLAGS_AUTH, qname, qtype);
        build(&mut r);
        let r = r.finish();
        let (c, srv) = self.resolver_to(s);
        self.exchange(c, srv, q, r)
    }

    fn referral(
        &mut self,
        s: &Server,
        qname: &str,
        qtype: u16,
        zone: &str,
        ns: &[Server],
        glue: bool,
    ) -> io::Result<()> {
        let id = self.rng.next_u64() as u16;
        let q = Msg::new(id, FLAGS_QUERY, qname, qtype).finish();
        let mut r = Msg::new(id, FLAGS_REFERRAL, qname, qtype);
        for n in ns {
            r.name_rr(Sec::Ns, zone, TYPE_NS, &n.name);
        }
        if glue {
            for n in ns {
                r.addr(Sec::Ar, &n.name, n.v4.into());
                if let Some(v6) = n.v6 {
                    r.addr(Sec::Ar, &n.name, v6.into());
                }
            }
        }
        let r = r.finish();
        let (c, srv) = self.resolver_to(s);
        self.exchange(c, srv, q, r)
    }

    /// Makes sure the resolver knows the TLD's servers (root referral).
    fn ensure_tld(&mut self, tld: usize, qname: &str, qtype: u16) -> io::Result<()> {
        if self.tld_cached.contains(&tld) {
            return Ok(());
        }
        let (rname, v4, v6) = ROOT_SERVERS[self.rng.below(13) as usize];
        let root = Server {
            name: rname.to_owned(),
            v4: v4.parse().unwrap_or(Ipv4Addr::LOCALHOST),
            v6: v6.parse().ok(),
        };
        let ns = self.tld_servers[tld].clone();
        // QNAME minimisation half of the time.
        let (q, t) =
            if self.rng.pct(50) { (TLDS[tld].to_owned(), TYPE_NS) } else { (qname.to_owned(), qtype) };
        self.referral(&root, &q, t, TLDS[tld], &ns, true)?;
        for n in &ns {
            self.expect(n.v4.into(), Classes::DNS);
            if let Some(v6) = n.v6 {
                self.expect(v6.into(), Classes::DNS);
            }
        }
        self.tld_cached.insert(tld);
        Ok(())
    }

    /// Makes sure the resolver knows the domain's servers; returns one to ask.
    fn ensure_domain(&mut self, d: usize, qname: &str, qtype: u16) -> io::Result<Server> {
        let dom = self.domains[d].clone();
        if !self.dom_cached.contains(&d) {
            self.ensure_tld(dom.tld, qname, qtype)?;
            let tld_srv = self.tld_servers[dom.tld][self.rng.below(2) as usize].clone();
            let (q, t) =
                if self.rng.pct(50) { (dom.name.clone(), TYPE_NS) } else { (qname.to_owned(), qtype) };
            match dom.hoster {
                None => {
                    self.referral(&tld_srv, &q, t, &dom.name, &dom.own_ns, true)?;
                    for n in &dom.own_ns {
                        self.expect(n.v4.into(), Classes::DNS);
                        if let Some(v6) = n.v6 {
                            self.expect(v6.into(), Classes::DNS);
                        }
                    }
                }
                Some(h) => {
                    let lent: Vec<Server> = self.hosters[h].1[..2].to_vec();
                    // Out-of-bailiwick NS: no glue.
                    self.referral(&tld_srv, &q, t, &dom.name, &lent, false)?;
                }
            }
            self.dom_cached.insert(d);
        }
        match dom.hoster {
            None => Ok(dom.own_ns[self.rng.below(2) as usize].clone()),
            Some(h) => {
                let lent = self.hosters[h].1[self.rng.below(2) as usize].clone();
                self.resolve_host(self.hosters[h].0, &lent, Classes::DNS)?;
                Ok(lent)
            }
        }
    }

    /// Resolves the address of a lent name server or provider mail host at
    /// its own domain's servers.
    fn resolve_host(&mut self, home: usize, host: &Server, class: Classes) -> io::Result<()> {
        if self.host_resolved.contains(&IpAddr::V4(host.v4)) {
            return Ok(());
        }
        let srv = self.ensure_domain(home, &host.name, TYPE_A)?;
        let name = host.name.clone();
        let v4 = host.v4;
        self.ask(&srv, &name, TYPE_A, |m| m.addr(Sec::An, &name, v4.into()))?;
        self.expect(v4.into(), class);
        if let Some(v6) = host.v6 {
            self.ask(&srv, &name, TYPE_AAAA, |m| m.addr(Sec::An, &name, v6.into()))?;
            self.expect(v6.into(), class);
        }
        self.host_resolved.insert(IpAddr::V4(host.v4));
        Ok(())
    }

    /// A client lookup through the resolver.
    fn lookup(&mut self) -> io::Result<()> {
        self.lookups += 1;
        let d = self.rng.below(self.domains.len() as u64) as usize;
        let dom = self.domains[d].clone();
        let kind = self.rng.below(10);
        let (qname, qtype) = match kind {
            0..=3 => (dom.name.clone(), TYPE_MX),
            4..=7 => (format!("www.{}", dom.name), TYPE_A),
            8 => (format!("www.{}", dom.name), TYPE_AAAA),
            _ => (format!("nx{}.{}", self.rng.below(1000), dom.name), TYPE_A),
        };
        let srv = self.ensure_domain(d, &qname, qtype)?;
        let web = Ipv4Addr::from(0x6440_0000 | (d as u32 & 0x3f_ffff));
        match (kind, dom.mail) {
            (0..=3, Mail::Own) => {
                let hosts = dom.mail_hosts.clone();
                self.ask(&srv, &qname, TYPE_MX, |m| {
                    for (i, h) in hosts.iter().enumerate() {
                        m.mx(&qname, 10 * (i as u16 + 1), &h.name);
                    }
                    for h in &hosts {
                        m.addr(Sec::Ar, &h.name, h.v4.into());
                        if let Some(v6) = h.v6 {
                            m.addr(Sec::Ar, &h.name, v6.into());
                        }
                    }
                })?;
                for h in &dom.mail_hosts {
                    self.expect(h.v4.into(), Classes::SMTP);
                    if let Some(v6) = h.v6 {
                        self.expect(v6.into(), Classes::SMTP);
                    }
                }
            }
            (0..=3, Mail::Provider(p)) => {
                let (home, hosts) = self.mail_providers[p].clone();
                self.ask(&srv, &qname, TYPE_MX, |m| {
                    for (i, h) in hosts.iter().enumerate() {
                        m.mx(&qname, 10 * (i as u16 + 1), &h.name);
                    }
                })?;
                for h in &hosts {
                    self.resolve_host(home, h, Classes::SMTP)?;
                }
            }
            (0..=3, Mail::Cname) => {
                let mx = format!("mx.{}", dom.name);
                let target = dom.mail_hosts[0].clone();
                self.ask(&srv, &qname, TYPE_MX, |m| m.mx(&qname, 10, &mx))?;
                self.ask(&srv, &mx, TYPE_A, |m| {
                    m.name_rr(Sec::An, &mx, TYPE_CNAME, &target.name);
                    m.addr(Sec::An, &target.name, target.v4.into());
                })?;
                self.expect(target.v4.into(), Classes::SMTP);
            }
            (0..=3, Mail::None) => {
                let zone = dom.name.clone();
                self.ask(&srv, &qname, TYPE_MX, |m| m.soa(&zone))?;
            }
            (4..=7, _) => {
                let cname = self.rng.pct(30);
                let apex = dom.name.clone();
                self.ask(&srv, &qname, TYPE_A, |m| {
                    if cname {
                        m.name_rr(Sec::An, &qname, TYPE_CNAME, &apex);
                        m.addr(Sec::An, &apex, web.into());
                    } else {
                        m.addr(Sec::An, &qname, web.into());
                    }
                })?;
            }
            (8, _) => {
                let zone = dom.name.clone();
                self.ask(&srv, &qname, TYPE_AAAA, |m| m.soa(&zone))?;
            }
            _ => {
                // NXDOMAIN: flags carry rcode 3.
                let id = self.rng.next_u64() as u16;
                let q = Msg::new(id, FLAGS_QUERY, &qname, qtype).finish();
                let mut r = Msg::new(id, FLAGS_NXDOMAIN, &qname, qtype);
                r.soa(&dom.name);
                let r = r.finish();
                let (c, s) = self.resolver_to(&srv);
                self.exchange(c, s, q, r)?;
            }
        }
        // The resolver answers the internal client (teaches nothing).
        let client =
            IpAddr::V4(Ipv4Addr::new(10, 1, 1 + self.rng.below(8) as u8, 1 + self.rng.below(250) as u8));
        let id = self.rng.next_u64() as u16;
        let q = Msg::new(id, FLAGS_QUERY_RD, &qname, qtype).finish();
        let mut r = Msg::new(id, FLAGS_RECURSIVE, &qname, qtype);
        if qtype == TYPE_MX {
            let fake = self.bogus();
            r.mx(&qname, 10, &format!("mail.{}", dom.name));
            r.addr(Sec::Ar, &format!("mail.{}", dom.name), fake.into());
        } else {
            r.addr(Sec::An, &qname, web.into());
        }
        let r = r.finish();
        self.exchange(client, RESOLVER_V4.into(), q, r)
    }

    /// A bot asks an arbitrary server directly; the "answer" is untrusted.
    fn bot(&mut self) -> io::Result<()> {
        let bot = IpAddr::V4(Ipv4Addr::new(10, 1, 9, 1 + self.rng.below(250) as u8));
        let server = IpAddr::V4(self.bogus());
        let d = self.rng.below(self.domains.len() as u64) as usize;
        let name = self.domains[d].name.clone();
        let id = self.rng.next_u64() as u16;
        let q = Msg::new(id, FLAGS_QUERY, &name, TYPE_MX).finish();
        let mut r = Msg::new(id, FLAGS_AUTH, &name, TYPE_MX);
        let mx = format!("smtp.{name}");
        r.mx(&name, 10, &mx);
        r.name_rr(Sec::Ns, &name, TYPE_NS, &format!("ns.{name}"));
        let fake = self.bogus();
        r.addr(Sec::Ar, &mx, fake.into());
        let fake = self.bogus();
        r.addr(Sec::Ar, &format!("ns.{name}"), fake.into());
        let r = r.finish();
        self.exchange(bot, server, q, r)
    }

    /// An unsolicited referral "from" a TLD server with bogus glue.
    fn unsolicited(&mut self) -> io::Result<()> {
        let tld = self.rng.below(TLDS.len() as u64) as usize;
        let srv = self.tld_servers[tld][0].clone();
        let name = format!("evil{}.{}", self.rng.below(100), TLDS[tld]);
        let mut r = Msg::new(self.rng.next_u64() as u16, FLAGS_REFERRAL, &name, TYPE_A);
        r.name_rr(Sec::Ns, &name, TYPE_NS, &format!("ns1.{name}"));
        let fake = self.bogus();
        r.addr(Sec::Ar, &format!("ns1.{name}"), fake.into());
        let r = r.finish();
        self.tick(300);
        let port = 1024 + self.rng.below(60000) as u16;
        self.udp(srv.v4.into(), RESOLVER_V4.into(), 53, port, &r)
    }

    /// Web, NTP and ARP traffic.
    fn non_dns(&mut self) -> io::Result<()> {
        self.tick(200);
        match self.rng.below(3) {
            0 => {
                let data = vec![0x17; 200 + self.rng.below(1000) as usize];
                let c = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
                let s = IpAddr::V4(Ipv4Addr::new(100, 64, 1, 1));
                let seq = self.rng.next_u64() as u32;
                self.tcp(s, c, 443, 50000, seq, 0x18, &data)
            }
            1 => {
                let c = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4));
                let s = IpAddr::V4(Ipv4Addr::new(100, 64, 1, 2));
                self.udp(c, s, 123, 123, &[0x23; 48])
            }
            _ => {
                self.eth(0x0806);
                self.frame.extend([0, 1, 8, 0, 6, 4, 0, 1]);
                self.frame.extend([0; 20]);
                self.write_frame()
            }
        }
    }

    fn event(&mut self) -> io::Result<()> {
        // Caches expire now and then, so referrals repeat.
        if self.rng.pct(1) && self.rng.pct(5) {
            self.tld_cached.clear();
            self.dom_cached.clear();
        }
        match self.rng.below(100) {
            0..=79 => self.lookup(),
            80..=87 => self.bot(),
            88..=91 => self.unsolicited(),
            _ => self.non_dns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let ea = generate(&mut a, 50_000, 7).expect("generate");
        let eb = generate(&mut b, 50_000, 7).expect("generate");
        assert_eq!(a, b);
        assert_eq!(ea.allow, eb.allow);
        assert!(ea.bytes >= 50_000);
        assert!(ea.allow.len() > 26);
    }
}
