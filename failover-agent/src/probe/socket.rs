//! Sending probes: one raw `AF_PACKET` socket per uplink, bound to it, with
//! `SO_MARK` = [`PROBE_MARK`] so the TC program lets the probe leave on the
//! uplink it was sent on, active or not. The sockets only send (protocol 0:
//! nothing is queued for reading).

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use failover_common::PROBE_MARK;

/// Errors sending a probe, naming the interface.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("interface {ifname}: no such interface")]
    NoSuchInterface { ifname: String },
    #[error("interface {ifname}: {what}")]
    Io {
        ifname: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Sends probe frames out of uplinks.
pub trait ProbeTransport {
    fn send(&mut self, ifname: &str, frame: &[u8]) -> Result<(), ProbeError>;
}

/// The raw-socket [`ProbeTransport`], in the calling thread's network namespace.
#[derive(Debug, Default)]
pub struct PacketSockets {
    sockets: HashMap<String, OwnedFd>,
}

fn open(ifname: &str) -> Result<OwnedFd, ProbeError> {
    let io_err = |what| move |source| ProbeError::Io { ifname: ifname.to_string(), what, source };
    let c = CString::new(ifname).map_err(|_| ProbeError::NoSuchInterface { ifname: ifname.to_string() })?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(ProbeError::NoSuchInterface { ifname: ifname.to_string() });
    }
    // SAFETY: plain socket call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if raw < 0 {
        return Err(io_err("opening a packet socket")(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = i32::try_from(ifindex).unwrap_or(i32::MAX);
    // SAFETY: addr is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if rc < 0 {
        return Err(io_err("binding the probe socket")(io::Error::last_os_error()));
    }
    let mark = PROBE_MARK;
    // SAFETY: `mark` is a live u32 of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            std::ptr::from_ref(&mark).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io_err("setting SO_MARK on the probe socket")(io::Error::last_os_error()));
    }
    Ok(fd)
}

impl ProbeTransport for PacketSockets {
    fn send(&mut self, ifname: &str, frame: &[u8]) -> Result<(), ProbeError> {
        if !self.sockets.contains_key(ifname) {
            let fd = open(ifname)?;
            self.sockets.insert(ifname.to_string(), fd);
        }
        let fd = &self.sockets[ifname];
        // SAFETY: `frame` is a valid buffer of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            let source = io::Error::last_os_error();
            // The interface went away or was re-created: open anew next time.
            if matches!(source.raw_os_error(), Some(libc::ENXIO | libc::ENODEV | libc::ENETDOWN)) {
                self.sockets.remove(ifname);
            }
            return Err(ProbeError::Io { ifname: ifname.to_string(), what: "sending a probe", source });
        }
        Ok(())
    }
}
