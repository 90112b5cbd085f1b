//! A TAP device as an uplink, so that the lab's uplink looks like a
//! physical NIC to the kernel's linkwatch: a TAP has ifindex == iflink, so
//! its carrier events are not "urgent" and, after another link event, reach
//! user space up to a second late (see `kernel-facts.md`). A veth hides that.
//!
//! ```text
//!  OVS ─ <tap> (tap_ns) ═ tap fd ═ forwarder thread ═ AF_PACKET ─ <wire dev> (wire_ns) ─ veth peer (the gateway)
//! ```
//! [`TapUplink`] owns the tap fd and a forwarder thread that moves frames
//! both ways between the tap fd and an `AF_PACKET` socket bound to a veth
//! end. [`TapUplink::set_carrier`] drops or restores the tap's carrier with
//! `TUNSETCARRIER`, as a cable pulled from a NIC: while it is off the
//! forwarder discards what either side sends (the wire is dead), and the
//! kernel itself stops transmitting on the tap once linkwatch has run.
//!
//! [`LinkMonitor`] listens to `RTNLGRP_LINK` in a namespace, to measure when
//! user space learns of a carrier change without asking (asking for one
//! device's state flushes its pending linkwatch event).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    Netns,
    net::{bound_packet_socket, check, setsockopt},
};

/// How long a forwarder runs at most unless told otherwise.
#[expect(clippy::duration_suboptimal_units, reason = "Duration::from_mins is newer than the workspace's rust-version")]
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// How long the forwarder waits in `poll` before it looks at its stop flag.
const POLL_MS: libc::c_int = 50;

/// At most this many frames per direction per wake-up, so one busy side
/// cannot starve the other.
const BATCH: usize = 64;

fn ifindex_of(name: &str) -> io::Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")));
    }
    Ok(ifindex)
}

/// The ifindex of `dev` inside `ns` (a name lookup: it flushes nothing).
pub fn ifindex_in(ns: &Netns, dev: &str) -> io::Result<u32> {
    ns.run(|| ifindex_of(dev))
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and makes a TAP named `name` (`IFF_TAP | IFF_NO_PI`)
/// in the calling thread's namespace; the device lives while the fd does.
fn open_tap(name: &str) -> io::Result<(OwnedFd, u32)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    // SAFETY: a valid C string literal.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    check(raw, "open /dev/net/tun")?;
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
    check(rc, &format!("TUNSETIFF {name}"))?;
    Ok((fd, ifindex_of(name)?))
}

/// A raw `AF_PACKET` socket on `dev` (calling thread's namespace): all
/// protocols, promiscuous, blind to what it sends itself, non-blocking.
fn open_wire(dev: &str) -> io::Result<(OwnedFd, u32)> {
    let ifindex = ifindex_of(dev)?;
    let fd = bound_packet_socket(ifindex, libc::SOCK_NONBLOCK)?;
    // The kernel leaves our own transmissions out of the socket (the loop
    // also skips PACKET_OUTGOING, in case it does not).
    setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32, "PACKET_IGNORE_OUTGOING")?;
    // SAFETY: packet_mreq is plain data.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = i32::try_from(ifindex).expect("ifindex fits in i32");
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq, "PACKET_ADD_MEMBERSHIP")?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(4i32 << 20), "SO_RCVBUFFORCE")?;
    Ok((fd, ifindex))
}

#[derive(Debug, Default)]
struct Counters {
    to_wire: AtomicU64,
    to_tap: AtomicU64,
    dropped: AtomicU64,
}

/// What a forwarder moved so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Frames the stack sent out of the tap, delivered to the wire.
    pub to_wire: u64,
    /// Frames from the wire, delivered into the tap.
    pub to_tap: u64,
    /// Frames discarded, either way, while the carrier was off.
    pub dropped_no_carrier: u64,
}

/// A TAP device standing in for a physical NIC, wired to a veth end by a
/// forwarder thread. Dropping it stops the forwarder and removes the tap.
#[derive(Debug)]
pub struct TapUplink {
    name: String,
    ifindex: u32,
    tap: Arc<OwnedFd>,
    wire_up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    forwarder: Option<JoinHandle<()>>,
}

impl TapUplink {
    /// Creates the TAP `name` in `tap_ns` (down, with the kernel's MAC:
    /// the caller sets address and state) and a forwarder between it and
    /// `wire_dev` in `wire_ns`, which stops when this drops or `deadline`
    /// after now, whichever comes first.
    pub fn create(tap_ns: &Netns, name: &str, wire_ns: &Netns, wire_dev: &str, deadline: Duration) -> io::Result<Self> {
        let (tap, ifindex) = tap_ns.run(|| open_tap(name))?;
        let (wire, _) = wire_ns.run(|| open_wire(wire_dev))?;
        let tap = Arc::new(tap);
        let wire_up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let forwarder = {
            let (tap, wire_up, stop, counters) = (tap.clone(), wire_up.clone(), stop.clone(), counters.clone());
            let end = Instant::now() + deadline;
            std::thread::Builder::new()
                .name(format!("tap-{name}"))
                .spawn(move || forward(&tap, &wire, &wire_up, &stop, &counters, end))?
        };
        Ok(Self { name: name.to_string(), ifindex, tap, wire_up, stop, counters, forwarder: Some(forwarder) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's ifindex in its namespace.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Drops (`false`) or restores (`true`) the tap's carrier with
    /// `TUNSETCARRIER`. Returns the instant taken right before the ioctl,
    /// once the ioctl has returned.
    pub fn set_carrier(&self, up: bool) -> io::Result<Instant> {
        if !up {
            // The wire dies with the carrier: nothing crosses after it.
            self.wire_up.store(false, Ordering::SeqCst);
        }
        let arg = libc::c_int::from(up);
        let at = Instant::now();
        // SAFETY: TUNSETCARRIER reads an int from the pointer.
        let rc = unsafe { libc::ioctl(self.tap.as_raw_fd(), libc::TUNSETCARRIER, &raw const arg) };
        check(rc, &format!("TUNSETCARRIER {} on {}", arg, self.name))?;
        if up {
            self.wire_up.store(true, Ordering::SeqCst);
        }
        Ok(at)
    }

    /// Whether the carrier is on (as last set with [`TapUplink::set_carrier`]).
    pub fn carrier(&self) -> bool {
        self.wire_up.load(Ordering::SeqCst)
    }

    /// What the forwarder moved so far.
    pub fn forwarded(&self) -> Forwarded {
        Forwarded {
            to_wire: self.counters.to_wire.load(Ordering::Relaxed),
            to_tap: self.counters.to_tap.load(Ordering::Relaxed),
            dropped_no_carrier: self.counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// Whether the forwarder still runs (it ends at its deadline, or if the
    /// tap device goes away).
    pub fn forwarding(&self) -> bool {
        self.forwarder.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for TapUplink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.forwarder.take()
            && h.join().is_err()
        {
            eprintln!("warning: the forwarder of tap {} panicked", self.name);
        }
        // The tap fd closes with the last Arc: the (non-persistent) tap goes.
    }
}

/// Is this error "nothing (more) to read now"?
fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

fn read_tap(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid buffer of its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.unsigned_abs()) }
}

/// Receives one frame from the packet socket; `None` for our own
/// transmissions (`PACKET_OUTGOING`).
fn recv_wire(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: plain data.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and from are valid for the lengths passed.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut from).cast(),
            &raw mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((from.sll_pkttype != libc::PACKET_OUTGOING).then_some(n.unsigned_abs()))
}

/// The forwarder's loop: both fds in one `poll` with a short timeout, at
/// most [`BATCH`] frames per side per wake-up; ends on `stop`, at `end`, or
/// when the tap is gone. Never spins: every pass waits in `poll`, or sleeps
/// when a pass made no progress.
fn forward(tap: &OwnedFd, wire: &OwnedFd, wire_up: &AtomicBool, stop: &AtomicBool, counters: &Counters, end: Instant) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        let mut fds = [
            libc::pollfd { fd: tap.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: wire.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("tap forwarder: poll: {e}");
            return;
        }
        if rc == 0 {
            continue;
        }
        if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
            eprintln!("tap forwarder: a descriptor is gone");
            return;
        }
        let mut progress = false;
        if fds[0].revents & libc::POLLERR != 0 && fds[0].revents & libc::POLLIN == 0 {
            // tun reports POLLERR once its device is gone.
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            for _ in 0..BATCH {
                match read_tap(tap, &mut buf) {
                    Ok(n) => {
                        progress = true;
                        if wire_up.load(Ordering::SeqCst) {
                            // SAFETY: buf holds n bytes of the frame.
                            let sent = unsafe { libc::send(wire.as_raw_fd(), buf.as_ptr().cast(), n, 0) };
                            // A full queue or a downed veth is loss, as on a wire.
                            if sent >= 0 {
                                counters.to_wire.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if would_block(&e) => break,
                    Err(_) => break,
                }
            }
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLERR) != 0 {
            for _ in 0..BATCH {
                match recv_wire(wire, &mut buf) {
                    Ok(Some(n)) => {
                        progress = true;
                        if wire_up.load(Ordering::SeqCst) {
                            // SAFETY: buf holds n bytes of the frame.
                            let written = unsafe { libc::write(tap.as_raw_fd(), buf.as_ptr().cast(), n) };
                            if written >= 0 {
                                counters.to_tap.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => progress = true,
                    // A pending socket error (e.g. ENETDOWN) is consumed by this read.
                    Err(e) if would_block(&e) => break,
                    Err(_) => break,
                }
            }
        }
        if !progress {
            // Woken without anything to move (an error condition that
            // persists): do not spin on it.
            std::thread::sleep(Duration::from_millis(u64::from(POLL_MS.unsigned_abs())));
        }
    }
}

/// One `RTM_NEWLINK`/`RTM_DELLINK` notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    /// When `poll` said it was there.
    pub at: Instant,
    /// `RTM_NEWLINK` or `RTM_DELLINK`.
    pub kind: u16,
    pub ifindex: u32,
    /// `ifi_flags` (`IFF_UP`, `IFF_LOWER_UP`, `IFF_RUNNING`, ...).
    pub flags: u32,
    /// `IFLA_OPERSTATE` (RFC 2863: 2 down, 6 up, 7 lower layer down), if sent.
    pub operstate: Option<u8>,
}

impl LinkEvent {
    /// `IFF_LOWER_UP`: the carrier as the kernel had it when it wrote the message.
    pub fn lower_up(&self) -> bool {
        self.flags & libc::IFF_LOWER_UP.unsigned_abs() != 0
    }
}

/// A netlink socket subscribed to `RTNLGRP_LINK` in one namespace. It only
/// listens: it never asks for a device's state (that would flush the
/// pending linkwatch event it wants to see arrive on its own).
#[derive(Debug)]
pub struct LinkMonitor {
    fd: OwnedFd,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<LinkEvent>,
}

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_OPERSTATE: u16 = 16;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The link notifications in one datagram from the kernel.
fn parse_link_messages(b: &[u8], at: Instant) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= b.len() {
        let len = u32_at(b, off) as usize;
        if len < NLMSG_HDRLEN || off + len > b.len() {
            break;
        }
        let kind = u16_at(b, off + 4);
        let body = &b[off + NLMSG_HDRLEN..off + len];
        if (kind == libc::RTM_NEWLINK || kind == libc::RTM_DELLINK) && body.len() >= IFINFOMSG_LEN {
            let ifindex = u32_at(body, 4);
            let flags = u32_at(body, 8);
            let mut operstate = None;
            let mut a = IFINFOMSG_LEN;
            while a + 4 <= body.len() {
                let alen = usize::from(u16_at(body, a));
                let atype = u16_at(body, a + 2) & 0x3fff;
                if alen < 4 || a + alen > body.len() {
                    break;
                }
                if atype == IFLA_OPERSTATE && alen >= 5 {
                    operstate = Some(body[a + 4]);
                }
                a += align4(alen);
            }
            out.push(LinkEvent { at, kind, ifindex, flags, operstate });
        }
        off += align4(len);
    }
    out
}

impl LinkMonitor {
    /// Subscribes to link notifications inside `ns`.
    pub fn open(ns: &Netns) -> io::Result<Self> {
        let fd = ns.run(|| -> io::Result<OwnedFd> {
            // SAFETY: plain socket call.
            let raw =
                unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
            check(raw, "socket(AF_NETLINK)")?;
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_nl is plain data.
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = libc::RTMGRP_LINK.unsigned_abs();
            // SAFETY: addr is a valid sockaddr_nl.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&addr).cast(),
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            check(rc, "bind(NETLINK_ROUTE, RTMGRP_LINK)")?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(4i32 << 20), "SO_RCVBUFFORCE")?;
            Ok(fd)
        })?;
        Ok(Self { fd, buf: vec![0; 1 << 16], pending: std::collections::VecDeque::new() })
    }

    /// The next notification, waiting at most `timeout`; `None` on timeout.
    /// A lost notification (the socket overran) is an error.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Option<LinkEvent>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            let at = Instant::now();
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                continue;
            }
            // SAFETY: buf is a valid buffer of its length.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if would_block(&e) {
                    continue;
                }
                return Err(io::Error::new(e.kind(), format!("netlink link notifications: {e}")));
            }
            self.pending.extend(parse_link_messages(&self.buf[..n.unsigned_abs()], at));
        }
    }

    /// Waits at most `timeout` for a notification `pred` accepts, passing
    /// over the others.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&LinkEvent) -> bool,
    ) -> io::Result<Option<LinkEvent>> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next(left)? {
                Some(e) if pred(&e) => return Ok(Some(e)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// Discards every notification already queued.
    pub fn drain(&mut self) -> io::Result<usize> {
        let mut n = 0;
        while self.next(Duration::ZERO)?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

/// Whether the device's iflink equals its ifindex (a "physical-like"
/// device for linkwatch), from `ip -j -d link show` inside `ns`. This asks
/// for the device's state, so it flushes its pending linkwatch event: do
/// not call it in the middle of a measurement.
pub fn iflink_is_ifindex(ns: &Netns, dev: &str) -> io::Result<bool> {
    let out =
        std::process::Command::new("ip").args(["-n", ns.name(), "-j", "-d", "link", "show", "dev", dev]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
    // iproute2 prints `link`/`link_index` only when iflink != ifindex.
    Ok(v.get(0)
        .is_some_and(|d| d.get("link").is_none() && d.get("link_index").is_none() && d.get("link_netnsid").is_none()))
}

/// The device's flags as `ip -j link show` prints them (this flushes its
/// pending linkwatch event: see [`iflink_is_ifindex`]).
pub fn link_flags(ns: &Netns, dev: &str) -> io::Result<Vec<String>> {
    let out = std::process::Command::new("ip").args(["-n", ns.name(), "-j", "link", "show", "dev", dev]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
    Ok(v.get(0)
        .and_then(|d| d.get("flags"))
        .and_then(|f| f.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_notification_is_parsed_with_its_flags_and_operstate() {
        // nlmsghdr + ifinfomsg + IFLA_IFNAME "up1" + IFLA_OPERSTATE 2
        let mut m = Vec::new();
        let body_len = IFINFOMSG_LEN + 8 + 8;
        m.extend_from_slice(&((NLMSG_HDRLEN + body_len) as u32).to_ne_bytes());
        m.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 1, 0]); // family, pad, type
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&0x1003u32.to_ne_bytes()); // UP | BROADCAST | MULTICAST
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&3u16.to_ne_bytes());
        m.extend_from_slice(b"up1\0");
        m.extend_from_slice(&5u16.to_ne_bytes());
        m.extend_from_slice(&IFLA_OPERSTATE.to_ne_bytes());
        m.extend_from_slice(&[2, 0, 0, 0]);
        let now = Instant::now();
        let two: Vec<u8> = m.iter().chain(m.iter()).copied().collect();
        let events = parse_link_messages(&two, now);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0],
            LinkEvent { at: now, kind: libc::RTM_NEWLINK, ifindex: 7, flags: 0x1003, operstate: Some(2) }
        );
        assert!(!events[0].lower_up());
        assert!(parse_link_messages(&m[..20], now).is_empty(), "a truncated message is ignored");
    }
}
