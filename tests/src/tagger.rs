//! A gateway that tags, on a kernel without 8021q: two tiny TC programs on
//! the gateway's interface, written as raw BPF instructions, attached with
//! TCX. Egress pushes an 802.1Q tag on every frame
//! (`bpf_skb_vlan_push`); ingress pops it from frames tagged with that VLAN
//! (`bpf_skb_vlan_pop`) and drops every other frame (untagged or another
//! VLAN), as an interface of one VLAN would.
//!
//! The pushed tag is in `skb->vlan_tci`; whether it crosses the veth in
//! the frame (in band) or beside it (out of band, as a real NIC's rx-vlan
//! offload delivers it) is the interface's tx-vlan offload
//! (`ethtool -K <if> txvlan off|on`): without the offload the kernel
//! writes the tag into the frame before it leaves. [`capture_tags`] shows
//! which one a frame actually got.
//!
//! The programs and their links live as long as the [`Tagger`] (closing
//! the link fds detaches them).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::{
    Netns,
    net::{bound_packet_socket, check, setsockopt},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const HELPER_SKB_VLAN_PUSH: i32 = 18;
const HELPER_SKB_VLAN_POP: i32 = 19;
/// `__sk_buff.vlan_present`, `__sk_buff.vlan_tci`.
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

/// One BPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst | (src << 4)) << 8)
        | (u64::from(off.cast_unsigned()) << 16)
        | (u64::from(imm.cast_unsigned()) << 32)
}

const MOV64_IMM: u8 = 0xb7;
const LDX_W: u8 = 0x61;
const AND64_IMM: u8 = 0x57;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// Egress: `bpf_skb_vlan_push(skb, htons(ETH_P_8021Q), vid); return TC_ACT_OK`.
pub fn push_program(vid: u16) -> Vec<u64> {
    vec![
        insn(MOV64_IMM, 2, 0, 0, i32::from(0x8100u16.to_be())),
        insn(MOV64_IMM, 3, 0, 0, i32::from(vid)),
        insn(CALL, 0, 0, 0, HELPER_SKB_VLAN_PUSH),
        insn(MOV64_IMM, 0, 0, 0, TC_ACT_OK),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Ingress: frames tagged `vid` lose the tag and pass; the rest drop.
pub fn pop_program(vid: u16) -> Vec<u64> {
    vec![
        insn(LDX_W, 2, 1, SKB_VLAN_PRESENT, 0),
        insn(JEQ_IMM, 2, 0, 6, 0), // not tagged: drop
        insn(LDX_W, 2, 1, SKB_VLAN_TCI, 0),
        insn(AND64_IMM, 2, 0, 0, 0x0fff),
        insn(JNE_IMM, 2, 0, 3, i32::from(vid)), // another VLAN: drop
        insn(CALL, 0, 0, 0, HELPER_SKB_VLAN_POP),
        insn(MOV64_IMM, 0, 0, 0, TC_ACT_OK),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV64_IMM, 0, 0, 0, TC_ACT_SHOT),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    pad: u32,
    expected_revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, zero-padded bpf_attr prefix of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    let fd = libc::c_int::try_from(rc).unwrap_or(-1);
    check(fd, "bpf()")?;
    // SAFETY: the kernel returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads a `sched_cls` program; the verifier's log in the error if refused.
fn load(name: &str, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let mut prog_name = [0u8; 16];
    prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: u32::try_from(insns.len()).expect("a handful of instructions"),
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).expect("64 KiB"),
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
        io::Error::new(e.kind(), format!("loading {name}: {e}: {text}"))
    })
}

fn ifindex(dev: &str) -> io::Result<u32> {
    let c = CString::new(dev)?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {dev}"))),
        n => Ok(n),
    }
}

fn attach(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: u32::try_from(prog.as_raw_fd()).expect("an fd"),
        target_ifindex: ifindex,
        attach_type,
        ..LinkCreateAttr::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// The tagging programs on one interface, attached while this lives.
#[derive(Debug)]
pub struct Tagger {
    pub dev: String,
    pub vid: u16,
    /// Ingress and egress links (and their programs).
    _links: Vec<OwnedFd>,
}

impl Tagger {
    /// Attaches the tagging programs for `vid` to `dev` in `ns`, and sets
    /// its tx-vlan offload: on, the tag crosses the veth out of band; off,
    /// in the frame.
    pub fn attach(ns: &Netns, dev: &str, vid: u16, out_of_band: bool) -> io::Result<Self> {
        set_txvlan(ns, dev, out_of_band)?;
        let links = ns.run(|| -> io::Result<Vec<OwnedFd>> {
            let index = ifindex(dev)?;
            let push = load("fa_vlan_push", &push_program(vid))?;
            let pop = load("fa_vlan_pop", &pop_program(vid))?;
            let egress = attach(&push, index, BPF_TCX_EGRESS)?;
            let ingress = attach(&pop, index, BPF_TCX_INGRESS)?;
            Ok(vec![egress, ingress, push, pop])
        })?;
        Ok(Self { dev: dev.to_string(), vid, _links: links })
    }
}

/// Sets `dev`'s tx-vlan offload in `ns` (`ethtool -K dev txvlan on|off`).
pub fn set_txvlan(ns: &Netns, dev: &str, on: bool) -> io::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "ethtool", "-K", dev, "txvlan", if on { "on" } else { "off" }])
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ethtool -K {dev} txvlan: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// How the frames a capture saw carried their 802.1Q tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagCount {
    /// The tag in the frame (ethertype 0x8100 after the MACs).
    pub in_band: u64,
    /// The tag beside the frame (`skb->vlan_tci`, reported by
    /// `PACKET_AUXDATA`).
    pub out_of_band: u64,
    /// No tag at all.
    pub untagged: u64,
}

/// `struct tpacket_auxdata`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AuxData {
    status: u32,
    len: u32,
    snaplen: u32,
    mac: u16,
    net: u16,
    vlan_tci: u16,
    vlan_tpid: u16,
}

const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_OUTGOING: u8 = 4;

/// Captures the frames leaving `dev` in `ns` for `window` (a packet
/// socket sees them after the kernel wrote a tag into the frame, if it
/// did) and counts how they carried their tag.
pub fn capture_tags(ns: &Netns, dev: &str, window: Duration) -> io::Result<TagCount> {
    ns.run(|| {
        let fd = bound_packet_socket(ifindex(dev)?, 0)?;
        setsockopt(&fd, libc::SOL_PACKET, PACKET_AUXDATA, &1i32, "PACKET_AUXDATA")?;
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 20_000 };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout, "SO_RCVTIMEO")?;
        let mut count = TagCount::default();
        let end = Instant::now() + window;
        while Instant::now() < end {
            let mut buf = [0u8; 2048];
            let mut cmsg = [0u64; 16];
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            // SAFETY: plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            // SAFETY: plain data, filled below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = std::ptr::from_mut(&mut from).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&cmsg);
            // SAFETY: msg points at live buffers.
            let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) };
            if n < 14 || from.sll_pkttype != PACKET_OUTGOING {
                continue;
            }
            let mut aux = AuxData::default();
            // SAFETY: walking the control messages the kernel filled in.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                        aux = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<AuxData>());
                    }
                    c = libc::CMSG_NXTHDR(&raw const msg, c);
                }
            }
            if aux.status & TP_STATUS_VLAN_VALID != 0 {
                count.out_of_band += 1;
            } else if buf[12..14] == [0x81, 0x00] {
                count.in_band += 1;
            } else {
                count.untagged += 1;
            }
        }
        Ok(count)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r2 = *(u32 *)(r1 + 20): code 0x61, dst 2, src 1, off 20.
        assert_eq!(insn(LDX_W, 2, 1, 20, 0), 0x0000_0000_0014_1261);
        // if r2 != 100 goto +3
        assert_eq!(insn(JNE_IMM, 2, 0, 3, 100), 0x0000_0064_0003_0255);
        assert_eq!(push_program(100)[0] >> 32, 0x0081, "htons(0x8100) on a little-endian host");
        let pop = pop_program(7);
        assert_eq!(pop.len(), 10);
        // Both jumps (instructions 1 and 4) land on the drop.
        let target = |at: usize| at + 1 + usize::from((pop[at] >> 16) as u16);
        assert_eq!((target(1), target(4)), (8, 8));
        assert_eq!(pop[8], insn(MOV64_IMM, 0, 0, 0, TC_ACT_SHOT));
    }
}
