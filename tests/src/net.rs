//! Namespaces, veths, pin directories and packet sockets for tests.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::Once,
    time::{Duration, Instant},
};

use crate::{owner_pid, pid_alive, unique_name};

/// Runs `ip` with `args`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

static CLEAN_STALE: Once = Once::new();

/// Removes namespaces and pin directories left by test processes that no
/// longer exist (a run that was killed before its guards dropped).
pub fn clean_stale() {
    CLEAN_STALE.call_once(|| {
        if let Ok(entries) = fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if owner_pid(&name).is_some_and(|pid| !pid_alive(pid)) {
                    eprintln!("removing namespace {name} left by a dead test run");
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        // Labs of dead test runs: their OVS daemons first (by their pid files).
        if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if owner_pid(&name).is_some_and(|pid| !pid_alive(pid)) && e.path().join("conf.db").exists() {
                    eprintln!("removing lab {name} left by a dead test run");
                    crate::ovs_lab::down(&crate::ovs_lab::LabSpec {
                        dir: e.path(),
                        ..crate::ovs_lab::LabSpec::named(&name)
                    });
                }
            }
        }
        if let Ok(entries) = fs::read_dir("/sys/fs/bpf") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if owner_pid(&name).is_some_and(|pid| !pid_alive(pid)) {
                    eprintln!("removing pin directory {name} left by a dead test run");
                    let _ = failover_agent::datapath::EbpfDatapath::uninstall(&e.path());
                }
            }
        }
    });
}

/// A network namespace that exists while this guard lives.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fa-t<pid>-<kind><n>` with its loopback up.
    pub fn new(kind: &str) -> Self {
        clean_stale();
        let name = unique_name(kind);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Creates the namespace `name` (the caller made sure it is free).
    pub fn named(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let ns = Self { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this> args...`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    fn enter_current_thread(&self) {
        let path = format!("/run/netns/{}", self.name);
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: a valid namespace fd; affects only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {}: {}", self.name, io::Error::last_os_error());
    }

    /// Sets a sysctl of this namespace (`key` as in `net.ipv6.conf.all.forwarding`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}")));
    }

    /// Keeps the kernel's own IPv6 chatter (router solicitations, MLD) off
    /// interfaces created after this call.
    pub fn disable_ipv6(&self) {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    }

    /// Runs `f` on a thread inside this namespace (network namespaces are
    /// per thread) and returns its result; a panic in `f` is re-raised here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                self.enter_current_thread();
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let ns = Self { name: self.name.clone() };
        std::thread::spawn(move || {
            ns.enter_current_thread();
            // The clone must not delete the namespace when it drops.
            std::mem::forget(ns);
            f()
        })
    }

    /// Adds a veth pair: `here` in this namespace, `there` in `peer`, both
    /// up, with the given MACs.
    pub fn veth(&self, here: &str, here_mac: [u8; 6], peer: &Self, there: &str, there_mac: [u8; 6]) {
        self.ip(&["link", "add", here, "type", "veth", "peer", "name", there, "netns", &peer.name]);
        self.ip(&["link", "set", here, "address", &mac_str(&here_mac), "up"]);
        peer.ip(&["link", "set", there, "address", &mac_str(&there_mac), "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip").args(["netns", "del", &self.name]).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete namespace {}", self.name);
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A bpffs directory for one test's pins, removed (links detached) on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        clean_stale();
        ensure_bpffs();
        Self { path: Path::new("/sys/fs/bpf").join(unique_name("pin")) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = failover_agent::datapath::EbpfDatapath::uninstall(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// Mounts a bpffs at /sys/fs/bpf if none is there.
pub fn ensure_bpffs() {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")) {
        return;
    }
    let status = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status().expect("running mount");
    assert!(status.success(), "mount -t bpf bpf /sys/fs/bpf failed");
}

/// A `timespec` of a clock that never runs before its epoch, as a [`Duration`].
pub fn timespec_to_duration(ts: &libc::timespec) -> Duration {
    Duration::new(ts.tv_sec.unsigned_abs(), ts.tv_nsec.unsigned_abs() as u32)
}

/// The `SO_TIMESTAMPNS` receive time in a message `recvmsg` filled
/// (zero if there is none).
pub fn receive_timestamp(msg: &libc::msghdr) -> Duration {
    let mut at = Duration::ZERO;
    // SAFETY: walking the control messages the kernel wrote into `msg`,
    // whose control buffer is still alive (it is borrowed with `msg`).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at = timespec_to_duration(&ts);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    at
}

/// Now, on `CLOCK_MONOTONIC` (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    timespec_to_duration(&ts)
}

/// A frame received by a [`PacketSocket`].
#[derive(Clone, Debug)]
pub struct Received {
    pub frame: Vec<u8>,
    /// Kernel receive timestamp (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`).
    pub at: Duration,
    /// The frame was sent by this host (`PACKET_OUTGOING`), not received.
    pub outgoing: bool,
}

/// A raw `AF_PACKET` socket bound to one interface of the calling thread's
/// namespace: sends whole frames and receives them with kernel timestamps.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

/// `rc`, or the OS error of a failed call, named by `what`.
pub(crate) fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

/// `setsockopt(2)` of a plain value.
pub(crate) fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, what)
}

/// A raw `AF_PACKET` socket of every protocol bound to `ifindex` (in the
/// calling thread's namespace); `flags` go to `socket(2)` with `SOCK_RAW |
/// SOCK_CLOEXEC` (e.g. `SOCK_NONBLOCK`).
pub(crate) fn bound_packet_socket(ifindex: u32, flags: libc::c_int) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags, i32::from(proto)) };
    check(raw, "socket(AF_PACKET)")?;
    // SAFETY: `raw` is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex fits in i32");
    // SAFETY: addr is a valid sockaddr_ll.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    check(rc, &format!("bind(AF_PACKET) to ifindex {ifindex}"))?;
    Ok(fd)
}

impl PacketSocket {
    /// Opens a socket on `ifname` (in the calling thread's namespace).
    pub fn open(ifname: &str) -> io::Result<Self> {
        let c = CString::new(ifname)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {ifname}")));
        }
        let fd = bound_packet_socket(ifindex, 0)?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &1i32, "SO_TIMESTAMPNS")?;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(8i32 << 20), "SO_RCVBUFFORCE")?;
        Ok(Self { fd, ifindex })
    }

    /// Marks every frame this socket sends (`SO_MARK`).
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        setsockopt(&self.fd, libc::SOL_SOCKET, libc::SO_MARK, &mark, "SO_MARK")
    }

    /// Sends one whole frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame, waiting at most `timeout`; `None` on timeout.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<Received>> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        check(rc, "poll")?;
        if rc == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        let mut cmsg = [0u64; 16];
        // SAFETY: plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: plain data, filled below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut from).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&cmsg);
        // SAFETY: msg points at live buffers.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
        }
        buf.truncate(n.unsigned_abs());
        let at = receive_timestamp(&msg);
        Ok(Some(Received { frame: buf, at, outgoing: from.sll_pkttype == libc::PACKET_OUTGOING }))
    }

    /// Collects incoming frames that `keep` accepts until `window` passes.
    pub fn collect(&self, window: Duration, mut keep: impl FnMut(&[u8]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv(left) {
                Ok(Some(r)) if !r.outgoing && keep(&r.frame) => out.push(r),
                Ok(_) => {}
                Err(e) => panic!("receiving on ifindex {}: {e}", self.ifindex),
            }
        }
    }
}
