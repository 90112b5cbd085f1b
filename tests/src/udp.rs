//! Sequence-numbered UDP traffic with kernel receive timestamps: a paced
//! sender and receivers, each on a thread inside a namespace, and the
//! arithmetic of loss and gaps. (Not ping: it sends only every ~16 ms here.)

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{Netns, net::receive_timestamp, packet::MAGIC};

/// Port the receivers listen on.
pub const PORT: u16 = 47_001;

/// One datagram received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub seq: u64,
    /// Kernel receive time (`CLOCK_REALTIME`).
    pub at: Duration,
    /// Which receiver got it.
    pub receiver: usize,
}

/// A receiver running until [`Sink::stop`].
pub struct Sink {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Arrival>>,
}

fn payload(stream: u32, seq: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(MAGIC);
    p[4..8].copy_from_slice(&stream.to_be_bytes());
    p[8..].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Receives datagrams of `stream` on port [`PORT`] inside `ns`, tagging them `receiver`.
pub fn sink(ns: &Netns, stream: u32, receiver: usize) -> Sink {
    sink_on(ns, PORT, stream, receiver)
}

/// Receives datagrams of `stream` on `port` inside `ns`, tagging them `receiver`.
pub fn sink_on(ns: &Netns, port: u16, stream: u32, receiver: usize) -> Sink {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind the receiver");
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let one: libc::c_int = 1;
        // SAFETY: valid option value of the size passed.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                std::ptr::from_ref(&one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            let size: libc::c_int = 8 << 20;
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        ready_tx.send(()).expect("ready");
        let mut out = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            if let Some((data, at)) = recv_timestamped(&sock)
                && data.len() >= 16
                && &data[..4] == MAGIC
                && u32::from_be_bytes(data[4..8].try_into().expect("4 bytes")) == stream
            {
                let seq = u64::from_be_bytes(data[8..16].try_into().expect("8 bytes"));
                out.push(Arrival { seq, at, receiver });
            }
        }
        out
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("receiver started");
    Sink { stop, handle }
}

impl Sink {
    /// Stops receiving and returns what arrived.
    #[must_use]
    pub fn stop(self) -> Vec<Arrival> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("receiver thread")
    }
}

fn recv_timestamped(sock: &UdpSocket) -> Option<(Vec<u8>, Duration)> {
    let mut buf = [0u8; 2048];
    let mut cmsg = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: plain data, filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cmsg);
    // SAFETY: msg points at live buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, 0) };
    if n < 0 {
        return None;
    }
    let at = receive_timestamp(&msg);
    Some((buf[..n.unsigned_abs()].to_vec(), at))
}

/// A paced sender: `rate` datagrams per second to `to` from inside `ns`,
/// until stopped or `max` are sent.
pub struct Source {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

/// Starts sending datagrams of `stream` (sequence numbers from 0).
pub fn source(ns: &Netns, to: SocketAddr, stream: u32, rate: u64, max: u64) -> Source {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = ns.spawn(move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).expect("bind the sender");
        let start = Instant::now();
        let mut seq = 0;
        while seq < max && !flag.load(Ordering::Relaxed) {
            let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // A send can fail while the neighbour is unresolved: that is loss.
            let _ = sock.send_to(&payload(stream, seq), to);
            seq += 1;
        }
        seq
    });
    Source { stop, handle }
}

impl Source {
    /// Stops sending; returns how many were sent.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sender thread")
    }
}

/// Loss and gaps of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Longest silence between two consecutive arrivals (all receivers together).
    pub max_gap: Duration,
    /// Arrivals per receiver.
    pub per_receiver: Vec<u64>,
    /// Runs of consecutive lost sequence numbers: (first, length).
    pub loss_runs: Vec<(u64, u64)>,
}

/// Loss, duplicates and the longest gap, from everything the receivers got.
pub fn report(sent: u64, receivers: usize, arrivals: &[Arrival]) -> Report {
    let mut seen = vec![false; usize::try_from(sent).unwrap_or(0)];
    let mut duplicates = 0;
    let mut per_receiver = vec![0; receivers];
    for a in arrivals {
        if let Some(r) = per_receiver.get_mut(a.receiver) {
            *r += 1;
        }
        match seen.get_mut(usize::try_from(a.seq).unwrap_or(usize::MAX)) {
            Some(s) if *s => duplicates += 1,
            Some(s) => *s = true,
            None => {}
        }
    }
    let received = seen.iter().filter(|s| **s).count() as u64;
    let mut loss_runs: Vec<(u64, u64)> = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        if !*s {
            match loss_runs.last_mut() {
                Some((start, len)) if *start + *len == i as u64 => *len += 1,
                _ => loss_runs.push((i as u64, 1)),
            }
        }
    }
    let mut times: Vec<Duration> = arrivals.iter().map(|a| a.at).collect();
    times.sort_unstable();
    let max_gap = times.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or_default();
    Report { sent, received, lost: sent - received, duplicates, max_gap, per_receiver, loss_runs }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, received {}, lost {}, duplicates {}, longest gap {:.1} ms, per receiver {:?}, lost runs (first, length) {:?}",
            self.sent,
            self.received,
            self.lost,
            self.duplicates,
            self.max_gap.as_secs_f64() * 1e3,
            self.per_receiver,
            &self.loss_runs[..self.loss_runs.len().min(5)]
        )
    }
}

/// A UDP echo responder running until [`Echo::stop`].
pub struct Echo {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// Echoes every datagram received on `port` inside `ns` back to its sender.
pub fn echo(ns: &Netns, port: u16) -> Echo {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind the echo responder");
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("echo started");
    Echo { stop, handle }
}

impl Echo {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

/// Sends `count` numbered datagrams to an [`echo`] responder, one every
/// `interval`, from inside `ns`; the round trips that came back, in µs.
pub fn ping(ns: &Netns, to: SocketAddr, count: u64, interval: Duration) -> Vec<f64> {
    ns.run(move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        for seq in 0..count {
            let sent = Instant::now();
            if sock.send_to(&seq.to_be_bytes(), to).is_err() {
                continue;
            }
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n == 8 && buf[..8] == seq.to_be_bytes() {
                    out.push(sent.elapsed().as_secs_f64() * 1e6);
                    break;
                }
            }
            if let Some(rest) = interval.checked_sub(sent.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_loss_duplicates_and_the_longest_gap() {
        let ms = Duration::from_millis;
        let arrivals = [
            Arrival { seq: 0, at: ms(0), receiver: 0 },
            Arrival { seq: 1, at: ms(1), receiver: 0 },
            Arrival { seq: 3, at: ms(40), receiver: 1 },
            Arrival { seq: 3, at: ms(41), receiver: 1 },
        ];
        let r = report(5, 2, &arrivals);
        assert_eq!(r.received, 3);
        assert_eq!(r.lost, 2);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.max_gap, ms(39));
        assert_eq!(r.per_receiver, vec![2, 2]);
        assert_eq!(r.loss_runs, vec![(2, 1), (4, 1)]);
    }
}
