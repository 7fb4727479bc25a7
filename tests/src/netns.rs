//! Network namespace primitives: run code or commands inside a named
//! namespace (`/run/netns/<name>`, as made by `ip netns add`).
//!
//! Code runs in a namespace on a short-lived thread that `setns(2)`s itself;
//! sockets keep the namespace they were created in, so a socket made there
//! can be used from any thread afterwards.
use std::{
    fs::File,
    io::Write,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{LabError, Result, dns};

/// Directory where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the handle of namespace `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// Whether namespace `ns` exists.
pub fn exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// Names of all named network namespaces, sorted.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|dir| dir.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `f` on a thread that has entered network namespace `ns`.
///
/// Sockets created by `f` belong to `ns` and may be returned and used from
/// any thread.
pub fn run_in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let handle = File::open(netns_path(ns)).map_err(|e| LabError::io(format!("open namespace {ns}"), e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on a valid fd; CLONE_NEWNET affects only this thread.
                let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(LabError::io(format!("setns into {ns}"), std::io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A command prefixed with `ip netns exec <ns>`.
pub fn command(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Runs `args` in `ns` and returns its output, whatever the exit status.
pub fn exec(ns: &str, args: &[&str]) -> Result<Output> {
    exec_with_input(ns, args, None)
}

/// Runs `args` in `ns` with `input` on standard input; returns its output.
pub fn exec_with_input(ns: &str, args: &[&str], input: Option<&[u8]>) -> Result<Output> {
    let mut cmd = command(ns, args);
    output_of(&mut cmd, input)
}

/// Runs `cmd` to completion, feeding `input` on stdin.
pub(crate) fn output_of(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output> {
    let line = describe(cmd);
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| LabError::io(format!("spawn `{line}`"), e))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data).map_err(|e| LabError::io(format!("write stdin of `{line}`"), e))?;
    }
    child.wait_with_output().map_err(|e| LabError::io(format!("wait for `{line}`"), e))
}

/// Runs `cmd`; a non-zero exit becomes [`LabError::Command`]. Returns stdout.
pub(crate) fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = output_of(cmd, None)?;
    check(cmd, out)
}

/// Turns an unsuccessful `out` of `cmd` into an error; returns stdout.
pub(crate) fn check(cmd: &Command, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `ip <args>` in the current (root) namespace; non-zero exit is an
/// error. Returns stdout.
pub fn exec_ok_root(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_ok(&mut cmd)
}

/// Sends raw Ethernet `frames` (destination MAC first, no FCS) out of
/// `iface` in namespace `ns` through an `AF_PACKET` socket.
pub fn send_frames(ns: &str, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let name = std::ffi::CString::new(iface).map_err(|_| {
        LabError::io(format!("interface name {iface:?}"), std::io::ErrorKind::InvalidInput.into())
    })?;
    run_in_netns(ns, || -> std::io::Result<()> {
        // SAFETY: if_nametoindex reads a NUL-terminated string; socket/sendto get valid buffers.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            for frame in frames {
                addr.sll_addr[..6].copy_from_slice(frame.get(..6).unwrap_or(&[0; 6]));
                // A full device queue (ENOBUFS, seen on a loaded machine) is
                // waited out, frame by frame, for up to a second.
                let mut tries = 0;
                loop {
                    let sent = libc::sendto(
                        fd.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const addr).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    if sent >= 0 {
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOBUFS) || tries >= 1000 {
                        return Err(e);
                    }
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            Ok(())
        }
    })?
    .map_err(|e| LabError::io(format!("send raw frames on {iface} in {ns}"), e))
}

/// The retransmissions TCP_INFO counted on a connected socket (a first
/// SYN that was lost and sent again is one).
pub fn tcp_retransmissions(s: &TcpStream) -> std::io::Result<u32> {
    // SAFETY: zeroed tcp_info is a valid out-parameter of TCP_INFO.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_total_retrans)
}

/// Opens a TCP connection to `addr` from inside namespace `ns`.
pub fn tcp_connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    run_in_netns(ns, || TcpStream::connect_timeout(&addr, timeout))?
        .map_err(|e| LabError::io(format!("connect to {addr} from {ns}"), e))
}

/// Waits until a TCP connection from `ns` to `addr` succeeds.
pub fn wait_for_tcp(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let attempt = Duration::from_millis(300).min(timeout);
        if tcp_connect_in(ns, addr, attempt).is_ok() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout { what: format!("tcp {addr} from {ns}"), waited: start.elapsed() });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the DNS server at `server` answers a UDP query from `ns`
/// (any response code counts: the server is up).
pub fn wait_for_udp_dns(ns: &str, server: SocketAddr, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .map_err(|_| LabError::io("parse wildcard address", std::io::ErrorKind::InvalidInput.into()))?;
    let socket = run_in_netns(ns, || UdpSocket::bind(bind))?
        .map_err(|e| LabError::io(format!("bind udp socket in {ns}"), e))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .map_err(|e| LabError::io("set udp read timeout", e))?;
    let mut id: u16 = 0x4c41;
    let mut buf = [0u8; 1500];
    loop {
        id = id.wrapping_add(1);
        let query = dns::build_query(id, "lab-probe.invalid.", dns::TYPE_A);
        // Send errors (e.g. no route yet) are retried like lost packets.
        let _ = socket.send_to(&query, server);
        let deadline = Instant::now() + Duration::from_millis(250);
        while Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == server && dns::response_id(&buf[..n]) == Some(id) => return Ok(()),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout {
                what: format!("dns on udp {server} from {ns}"),
                waited: start.elapsed(),
            });
        }
    }
}

/// A namespace made for one test, with loopback up; deleted on drop (also
/// after a panic). For tests that need no full [`crate::Lab`].
#[derive(Debug)]
pub struct OwnedNetns {
    name: String,
}

impl OwnedNetns {
    /// `ip netns add <name>` (a stale one of that name is removed first).
    pub fn create(name: &str) -> Result<OwnedNetns> {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        exec_ok_root(&["netns", "add", name])?;
        let ns = OwnedNetns { name: name.to_owned() };
        exec_ok_root(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for OwnedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// A TCP connection from source address `src` (bind before connect, which
/// std lacks), in the calling thread's namespace. Tests use it to stand for
/// many peers with addresses of the loopback range.
pub fn tcp_connect_from(src: std::net::Ipv4Addr, to: std::net::SocketAddrV4) -> std::io::Result<TcpStream> {
    let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket/bind/connect on a fresh descriptor that the returned
    // stream owns (also on the error paths, which drop it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let local = sa(src, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sa(*to.ip(), to.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}

/// An `AF_PACKET` socket receiving every frame that arrives on one
/// interface of a namespace (opened before traffic is sent, so nothing is
/// missed); closed on drop. For namespaces a test made itself, without a
/// [`crate::Lab`] or tcpdump (for those, see [`crate::capture::Capture`]).
#[derive(Debug)]
pub struct PacketTap {
    fd: std::os::fd::OwnedFd,
}

impl PacketTap {
    /// Opens the socket on `iface` inside `ns`.
    pub fn open(ns: &str, iface: &str) -> Result<PacketTap> {
        let name = std::ffi::CString::new(iface).map_err(|_| {
            LabError::io(format!("interface name {iface:?}"), std::io::ErrorKind::InvalidInput.into())
        })?;
        let fd = run_in_netns(ns, || -> std::io::Result<std::os::fd::OwnedFd> {
            // SAFETY: plain socket/bind calls with valid, zero-initialised addresses.
            unsafe {
                let index = libc::if_nametoindex(name.as_ptr());
                if index == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let proto = (libc::ETH_P_ALL as u16).to_be();
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto));
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = index as i32;
                let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                if libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(fd)
            }
        })?
        .map_err(|e| LabError::io(format!("packet socket on {iface} in {ns}"), e))?;
        Ok(PacketTap { fd })
    }

    /// The frames received (not those sent) on the interface during `window`.
    pub fn frames(&self, window: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let end = Instant::now() + window;
        let mut buf = vec![0u8; 65_536];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: poll on one valid descriptor.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: recvfrom into a buffer we own, with a sockaddr_ll of the right size.
            let (n, from) = unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &mut len,
                );
                (n, from)
            };
            if let Ok(n) = usize::try_from(n)
                && from.sll_pkttype != libc::PACKET_OUTGOING
            {
                out.push(buf[..n].to_vec());
            }
        }
        out
    }
}
