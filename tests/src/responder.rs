//! The "internet" side of the lab: listeners that every address of the
//! `inet` namespace answers on (AnyIP routes make the whole ranges local).
//!
//! * SMTP on tcp 25/465/587: a `220` banner naming the address that was
//!   reached, then a minimal RFC 5321 state machine (HELO/EHLO, MAIL, RCPT,
//!   DATA, RSET, NOOP, QUIT). Port 465 speaks plaintext too: enough for
//!   "could the client reach it" checks.
//! * DNS on udp/tcp 53: authoritative fixed answers ([`dns::answer`]).
//! * Echo on tcp/udp 7, for unprotected traffic.
//!
//! Sockets are dual-stack (`[::]`, IPv4-mapped), std only, one thread per
//! listener and per TCP connection.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{LabError, Result, dns, netns};

/// SMTP ports served.
pub const SMTP_PORTS: [u16; 3] = [25, 465, 587];
/// DNS port served (udp and tcp).
pub const DNS_PORT: u16 = 53;
/// Echo port served (udp and tcp).
pub const ECHO_PORT: u16 = 7;
/// Longest command line accepted before the connection is closed.
const MAX_LINE: usize = 4096;
/// Idle time after which a TCP connection is closed.
const IDLE: Duration = Duration::from_secs(30);
/// How often blocked loops look at the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// What the responder has seen; readable while it runs.
#[derive(Debug, Default)]
pub struct ResponderStats {
    /// SMTP connections accepted.
    pub smtp_connections: AtomicU64,
    /// Messages accepted after DATA.
    pub smtp_messages: AtomicU64,
    /// DNS queries answered (udp and tcp).
    pub dns_queries: AtomicU64,
    /// Echo connections and datagrams.
    pub echo: AtomicU64,
}

/// A running responder; stops its listeners on drop.
#[derive(Debug)]
pub struct Responder {
    stop: Arc<AtomicBool>,
    stats: Arc<ResponderStats>,
    threads: Vec<JoinHandle<()>>,
}

struct Sockets {
    smtp: Vec<TcpListener>,
    dns_tcp: TcpListener,
    dns_udp: UdpSocket,
    echo_tcp: TcpListener,
    echo_udp: UdpSocket,
}

fn bind_all() -> std::io::Result<Sockets> {
    let any = |port: u16| SocketAddr::from(([0u16; 8], port));
    let smtp = SMTP_PORTS.iter().map(|&p| TcpListener::bind(any(p))).collect::<std::io::Result<Vec<_>>>()?;
    Ok(Sockets {
        smtp,
        dns_tcp: TcpListener::bind(any(DNS_PORT))?,
        dns_udp: UdpSocket::bind(any(DNS_PORT))?,
        echo_tcp: TcpListener::bind(any(ECHO_PORT))?,
        echo_udp: UdpSocket::bind(any(ECHO_PORT))?,
    })
}

impl Responder {
    /// Binds all listeners inside namespace `ns` (or the current one when
    /// `None`) and serves them from background threads.
    pub fn start(ns: Option<&str>, answers: dns::FixedAnswers) -> Result<Self> {
        let sockets = match ns {
            Some(ns) => netns::run_in_netns(ns, bind_all)?,
            None => bind_all(),
        }
        .map_err(|e| {
            LabError::io(format!("bind responder sockets in {}", ns.unwrap_or("current namespace")), e)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ResponderStats::default());
        let mut threads = Vec::new();
        for listener in sockets.smtp {
            threads.push(accept_loop(listener, stop.clone(), stats.clone(), serve_smtp));
        }
        threads.push(accept_loop(sockets.dns_tcp, stop.clone(), stats.clone(), move |s, st, stop| {
            serve_dns_tcp(s, st, stop, answers)
        }));
        threads.push(accept_loop(sockets.echo_tcp, stop.clone(), stats.clone(), serve_echo_tcp));
        let (st, sp) = (stats.clone(), stop.clone());
        let udp = sockets.dns_udp;
        threads.push(std::thread::spawn(move || {
            udp_loop(udp, sp, |q| {
                let reply = dns::answer(q, &answers);
                if reply.is_some() {
                    st.dns_queries.fetch_add(1, Ordering::Relaxed);
                }
                reply
            })
        }));
        let (st, sp) = (stats.clone(), stop.clone());
        let echo = sockets.echo_udp;
        threads.push(std::thread::spawn(move || {
            udp_loop(echo, sp, |d| {
                st.echo.fetch_add(1, Ordering::Relaxed);
                Some(d.to_vec())
            })
        }));
        Ok(Self { stop, stats, threads })
    }

    /// Counters of what was served.
    pub fn stats(&self) -> &ResponderStats {
        &self.stats
    }

    /// Serves until the process is killed (for a stand-alone responder).
    pub fn wait_forever(self) -> ! {
        loop {
            std::thread::park();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Waits up to [`POLL`] for `fd` to become readable.
fn readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) > 0 }
}

fn accept_loop<F>(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    stats: Arc<ResponderStats>,
    serve: F,
) -> JoinHandle<()>
where
    F: Fn(TcpStream, &ResponderStats, &AtomicBool) -> std::io::Result<()> + Send + Sync + Copy + 'static,
{
    std::thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        while !stop.load(Ordering::Relaxed) {
            if !readable(listener.as_raw_fd()) {
                continue;
            }
            let Ok((stream, _)) = listener.accept() else { continue };
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::spawn(move || {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(IDLE));
                let _ = stream.set_nodelay(true);
                // Peers that vanish are normal here; nothing to report.
                let _ = serve(stream, &stats, &stop);
            });
        }
    })
}

fn udp_loop<F>(socket: UdpSocket, stop: Arc<AtomicBool>, reply: F)
where
    F: Fn(&[u8]) -> Option<Vec<u8>>,
{
    let _ = socket.set_read_timeout(Some(POLL));
    let fd = socket.as_raw_fd();
    // The replies must come from the address the query went to (AnyIP has
    // many), so ask for the destination of each datagram and reuse it.
    let on: libc::c_int = 1;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt with a valid int option value.
    unsafe {
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, (&raw const on).cast(), len);
        libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, (&raw const on).cast(), len);
        // IPv6 only accepts an AnyIP source with freebind.
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, (&raw const on).cast(), len);
    }
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok(datagram) = recv_with_dst(fd, &mut buf) else { continue };
        if let Some(out) = reply(&buf[..datagram.len]) {
            let _ = send_from(fd, &out, &datagram);
        }
    }
}

/// A datagram's length, sender and the control message naming its destination.
struct Datagram {
    len: usize,
    peer: libc::sockaddr_in6,
    /// (level, type, data) of the pktinfo control message.
    pktinfo: Option<(libc::c_int, libc::c_int, Vec<u8>)>,
}

fn recv_with_dst(fd: i32, buf: &mut [u8]) -> std::io::Result<Datagram> {
    let mut control = [0u64; 32];
    // SAFETY: all pointers point into live, correctly sized buffers; the
    // CMSG macros walk only within msg_controllen.
    unsafe {
        let mut peer: libc::sockaddr_in6 = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&raw mut peer).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(fd, &raw mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut pktinfo = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if (level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO)
            {
                let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(cmsg), data_len).to_vec();
                pktinfo = Some((level, kind, data));
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
        Ok(Datagram { len: n as usize, peer, pktinfo })
    }
}

fn send_from(fd: i32, data: &[u8], to: &Datagram) -> std::io::Result<()> {
    let mut control = [0u64; 16];
    // SAFETY: as in recv_with_dst; the control message is built in a
    // zeroed, aligned buffer large enough for one pktinfo.
    unsafe {
        let mut peer = to.peer;
        let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&raw mut peer).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        if let Some((level, kind, info)) = &to.pktinfo {
            let mut info = info.clone();
            if *kind == libc::IP_PKTINFO && info.len() >= std::mem::size_of::<libc::in_pktinfo>() {
                // Source = the address the query was sent to; any interface.
                let mut p: libc::in_pktinfo = std::ptr::read_unaligned(info.as_ptr().cast());
                p.ipi_spec_dst = p.ipi_addr;
                p.ipi_ifindex = 0;
                std::ptr::write_unaligned(info.as_mut_ptr().cast(), p);
            } else if *kind == libc::IPV6_PKTINFO && info.len() >= std::mem::size_of::<libc::in6_pktinfo>() {
                let mut p: libc::in6_pktinfo = std::ptr::read_unaligned(info.as_ptr().cast());
                p.ipi6_ifindex = 0;
                std::ptr::write_unaligned(info.as_mut_ptr().cast(), p);
            }
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(info.len() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = *level;
            (*cmsg).cmsg_type = *kind;
            (*cmsg).cmsg_len = libc::CMSG_LEN(info.len() as u32) as usize;
            std::ptr::copy_nonoverlapping(info.as_ptr(), libc::CMSG_DATA(cmsg), info.len());
        }
        if libc::sendmsg(fd, &raw const msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads one line (up to `\n`) of at most [`MAX_LINE`] bytes; `None` at EOF
/// or when the line is too long.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<()>> {
    line.clear();
    let n = reader.take(MAX_LINE as u64 + 1).read_until(b'\n', line)?;
    if n == 0 || n > MAX_LINE {
        return Ok(None);
    }
    Ok(Some(()))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Smtp {
    Connected,
    Greeted,
    HaveMail,
    HaveRcpt,
}

fn serve_smtp(stream: TcpStream, stats: &ResponderStats, stop: &AtomicBool) -> std::io::Result<()> {
    stats.smtp_connections.fetch_add(1, Ordering::Relaxed);
    let local = stream.local_addr()?;
    let ip = match local {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().map_or(v6.ip().to_string(), |v4| v4.to_string()),
        SocketAddr::V4(v4) => v4.ip().to_string(),
    };
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    write!(out, "220 {ip} ESMTP lab-responder\r\n")?;
    let mut state = Smtp::Connected;
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if read_line(&mut reader, &mut line)?.is_none() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let verb = text.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let reply: &str = match (verb.as_str(), state) {
            ("HELO", _) => {
                state = Smtp::Greeted;
                "250 lab-responder\r\n"
            }
            ("EHLO", _) => {
                state = Smtp::Greeted;
                "250-lab-responder\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
            }
            ("MAIL", Smtp::Greeted) => {
                state = Smtp::HaveMail;
                "250 2.1.0 Ok\r\n"
            }
            ("RCPT", Smtp::HaveMail | Smtp::HaveRcpt) => {
                state = Smtp::HaveRcpt;
                "250 2.1.5 Ok\r\n"
            }
            ("DATA", Smtp::HaveRcpt) => {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                loop {
                    if read_line(&mut reader, &mut line)?.is_none() {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                }
                stats.smtp_messages.fetch_add(1, Ordering::Relaxed);
                state = Smtp::Greeted;
                "250 2.0.0 Ok: queued\r\n"
            }
            ("RSET", _) => {
                if state != Smtp::Connected {
                    state = Smtp::Greeted;
                }
                "250 2.0.0 Ok\r\n"
            }
            ("NOOP", _) => "250 2.0.0 Ok\r\n",
            ("QUIT", _) => {
                out.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            ("MAIL" | "RCPT" | "DATA", _) => "503 5.5.1 Bad sequence of commands\r\n",
            _ => "502 5.5.2 Command not recognized\r\n",
        };
        out.write_all(reply.as_bytes())?;
    }
    Ok(())
}

fn serve_dns_tcp(
    mut stream: TcpStream,
    stats: &ResponderStats,
    stop: &AtomicBool,
    answers: dns::FixedAnswers,
) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    let mut msg = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if stream.read_exact(&mut len).is_err() {
            return Ok(());
        }
        msg.resize(usize::from(u16::from_be_bytes(len)), 0);
        stream.read_exact(&mut msg)?;
        let Some(reply) = dns::answer(&msg, &answers) else { return Ok(()) };
        stats.dns_queries.fetch_add(1, Ordering::Relaxed);
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        stream.write_all(&framed)?;
    }
    Ok(())
}

fn serve_echo_tcp(mut stream: TcpStream, stats: &ResponderStats, stop: &AtomicBool) -> std::io::Result<()> {
    stats.echo.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 16384];
    while !stop.load(Ordering::Relaxed) {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_reader_limits_length() {
        let long = vec![b'a'; MAX_LINE + 10];
        let mut r = BufReader::new(&long[..]);
        let mut line = Vec::new();
        assert_eq!(read_line(&mut r, &mut line).expect("in-memory read"), None);
        let mut r = BufReader::new(&b"HELO x\r\n"[..]);
        assert_eq!(read_line(&mut r, &mut line).expect("in-memory read"), Some(()));
        assert_eq!(line, b"HELO x\r\n");
    }
}
