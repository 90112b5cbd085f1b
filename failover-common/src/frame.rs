//! Pure frame logic: the probe-reply classifier the XDP program runs, the
//! egress decision the TC program runs, and builders for the frames involved.
//!
//! The classifier reads the frame through [`Frame`], which the kernel side
//! implements over `XdpContext` (every read bounds-checked against
//! `data_end`) and the host side over a byte slice, so the code that the
//! host tests exercise is the code the kernel runs.

use crate::{FAMILY_IPV4, FAMILY_IPV6, GROUP_ACTIVE_MAC_KNOWN, GROUP_REDIRECT_INACTIVE, GroupState, UplinkConfig};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ARP_LEN: usize = 28;
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_NS: u8 = 135;
pub const ICMPV6_NA: u8 = 136;
/// Neighbor Advertisement without options: type, code, checksum, flags, target.
pub const NA_LEN: usize = 24;
/// NA flag: Solicited.
pub const NA_FLAG_SOLICITED: u8 = 0x40;
/// NA flag: Override.
pub const NA_FLAG_OVERRIDE: u8 = 0x20;
/// NDP option: source link-layer address.
pub const NDP_OPT_SLLA: u8 = 1;
/// NDP option: target link-layer address.
pub const NDP_OPT_TLLA: u8 = 2;
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// Read access to a frame. `read` fills `out` with the `N` bytes at `off`
/// and returns true, or returns false (leaving `out` alone) when they run
/// past the end of the frame: that is how truncation is detected.
///
/// (An out-parameter rather than `Option<[u8; N]>`: the payload of a `None`
/// is undefined, and LLVM may fill it from a packet pointer that the eBPF
/// verifier then refuses to see shifted.)
pub trait Frame {
    fn read<const N: usize>(&self, off: usize, out: &mut [u8; N]) -> bool;
    /// The 802.1Q VLAN id the NIC took out of the frame (rx-vlan offload:
    /// TC sees it in `skb->vlan_tci`), or 0 when the tag, if any, is still
    /// in the frame's bytes.
    #[inline(always)]
    fn offloaded_vlan(&self) -> u16 {
        0
    }
}

impl Frame for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize, out: &mut [u8; N]) -> bool {
        match off.checked_add(N).and_then(|end| self.get(off..end)) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// `let x: [u8; N] = read!(frame, offset, N);` or return `Ingress::Malformed`.
macro_rules! read {
    ($f:expr, $off:expr, $n:literal) => {{
        let mut buf = [0u8; $n];
        if !$f.read($off, &mut buf) {
            return Ingress::Malformed;
        }
        buf
    }};
}

/// What the XDP program makes of a frame arriving on an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// Too short or inconsistent to parse: passes, no counter moves.
    Malformed,
    /// A frame that is not a reply to the agent's probes: the bridge's
    /// business (delivered on the active uplink, dropped on the others).
    Other,
    /// A valid probe reply from the uplink's gateway, sent from `gateway_mac`.
    ValidReply { gateway_mac: [u8; 6] },
    /// A reply addressed to the agent (its probe source or the uplink's MAC)
    /// that fails validation: counted as rejected, never as liveness.
    Rejected(Reject),
}

/// Why a reply was rejected (for tests and debugging; the kernel keeps one counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Tagged when the uplink is untagged, untagged when it is tagged, or another VLAN.
    Vlan,
    /// The reply is about another address than the uplink's gateway.
    SenderIp,
    /// The reply comes from another MAC than the gateway's, or the ARP
    /// sender hardware address disagrees with the Ethernet source.
    SenderMac,
    /// The reply is addressed to another IP than the probe source.
    TargetIp,
    /// The reply is addressed to another MAC than the uplink's.
    TargetMac,
    /// An NA without the Solicited flag, or with a bad hop limit or code.
    Unsolicited,
    /// A reply of the other address family than the uplink's gateway.
    Family,
}

#[inline(always)]
pub fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}

#[inline(always)]
fn ip4_eq(a: &[u8; 4], b: &[u8; 16]) -> bool {
    u32::from_ne_bytes(*a) == u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
fn ip6_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let a0 = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let a1 = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let b0 = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let b1 = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    a0 == b0 && a1 == b1
}

/// Whether a MAC is a group (broadcast or multicast) address.
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Classifies a frame that arrived on the uplink described by `cfg`.
///
/// A reply counts only if it is an ARP reply (IPv4 gateway) or a solicited
/// Neighbor Advertisement (IPv6 gateway), with the uplink's VLAN tag (or
/// none), sent by the gateway's address (and MAC, once known), addressed to
/// the probe source and the uplink's own MAC. A reply that is addressed to
/// the agent (probe source IP, or the uplink's MAC) but fails any of that is
/// [`Ingress::Rejected`]; everything else is [`Ingress::Other`], or
/// [`Ingress::Malformed`] when it is cut short.
#[inline(always)]
#[expect(clippy::too_many_lines, reason = "one linear pass over the frame reads best as one function")]
pub fn classify_ingress<F: Frame + ?Sized>(f: &F, cfg: &UplinkConfig) -> Ingress {
    let eth_dst = read!(f, 0, 6);
    let eth_src = read!(f, 6, 6);
    let outer = u16::from_be_bytes(read!(f, 12, 2));
    let offloaded = f.offloaded_vlan() & 0x0fff;
    // At most one 802.1Q tag, in the frame or out of band; anything stacked
    // deeper is not a probe reply.
    let (vlan, ethertype, l3) = if offloaded != 0 {
        if outer == ETH_P_8021Q || outer == ETH_P_8021AD {
            return Ingress::Other;
        }
        (offloaded, outer, ETH_HLEN)
    } else if outer == ETH_P_8021Q {
        let tci = u16::from_be_bytes(read!(f, 14, 2));
        let inner = u16::from_be_bytes(read!(f, 16, 2));
        if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
            return Ingress::Other;
        }
        (tci & 0x0fff, inner, ETH_HLEN + 4)
    } else if outer == ETH_P_8021AD {
        return Ingress::Other;
    } else {
        (0, outer, ETH_HLEN)
    };
    let own_mac = &cfg.own_mac;
    let to_own_mac = mac_eq(&eth_dst, own_mac);

    let sender_mac;
    if ethertype == ETH_P_ARP {
        let fixed = read!(f, l3, 8);
        let htype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ptype = u16::from_be_bytes([fixed[2], fixed[3]]);
        if htype != 1 || ptype != ETH_P_IPV4 || fixed[4] != 6 || fixed[5] != 4 {
            return Ingress::Other;
        }
        if u16::from_be_bytes([fixed[6], fixed[7]]) != ARP_OP_REPLY {
            return Ingress::Other;
        }
        let sha = read!(f, l3 + 8, 6);
        let spa = read!(f, l3 + 14, 4);
        let tha = read!(f, l3 + 18, 6);
        let tpa = read!(f, l3 + 24, 4);
        let to_probe_ip = ip4_eq(&tpa, &cfg.probe_source);
        if !(to_probe_ip || to_own_mac || mac_eq(&tha, own_mac)) {
            return Ingress::Other;
        }
        if cfg.family != FAMILY_IPV4 {
            return Ingress::Rejected(Reject::Family);
        }
        if vlan != cfg.vlan {
            return Ingress::Rejected(Reject::Vlan);
        }
        if !ip4_eq(&spa, &cfg.gateway_ip) {
            return Ingress::Rejected(Reject::SenderIp);
        }
        if !to_probe_ip {
            return Ingress::Rejected(Reject::TargetIp);
        }
        if !to_own_mac || !mac_eq(&tha, own_mac) {
            return Ingress::Rejected(Reject::TargetMac);
        }
        if !mac_eq(&sha, &eth_src) {
            return Ingress::Rejected(Reject::SenderMac);
        }
        sender_mac = sha;
    } else if ethertype == ETH_P_IPV6 {
        let ip_fixed = read!(f, l3, 8);
        if ip_fixed[0] >> 4 != 6 || ip_fixed[6] != IPPROTO_ICMPV6 {
            return Ingress::Other;
        }
        let hop_limit = ip_fixed[7];
        let dst_ip = read!(f, l3 + 24, 16);
        let icmp = l3 + IPV6_HLEN;
        let icmp_head = read!(f, icmp, 8);
        if icmp_head[0] != ICMPV6_NA {
            return Ingress::Other;
        }
        let target = read!(f, icmp + 8, 16);
        let to_probe_ip = ip6_eq(&dst_ip, &cfg.probe_source);
        if !(to_probe_ip || to_own_mac) {
            return Ingress::Other;
        }
        if cfg.family != FAMILY_IPV6 {
            return Ingress::Rejected(Reject::Family);
        }
        if vlan != cfg.vlan {
            return Ingress::Rejected(Reject::Vlan);
        }
        if !ip6_eq(&target, &cfg.gateway_ip) {
            return Ingress::Rejected(Reject::SenderIp);
        }
        if !to_probe_ip {
            return Ingress::Rejected(Reject::TargetIp);
        }
        if !to_own_mac {
            return Ingress::Rejected(Reject::TargetMac);
        }
        if icmp_head[1] != 0 || hop_limit != 255 || icmp_head[4] & NA_FLAG_SOLICITED == 0 {
            return Ingress::Rejected(Reject::Unsolicited);
        }
        // A Target Link-Layer Address option, when present first, must agree
        // with the Ethernet source.
        let mut opt = [0u8; 8];
        if f.read(icmp + NA_LEN, &mut opt)
            && opt[0] == NDP_OPT_TLLA
            && opt[1] == 1
            && !mac_eq(&[opt[2], opt[3], opt[4], opt[5], opt[6], opt[7]], &eth_src)
        {
            return Ingress::Rejected(Reject::SenderMac);
        }
        sender_mac = eth_src;
    } else {
        return Ingress::Other;
    }

    if is_group_mac(&sender_mac) || mac_eq(&sender_mac, &[0; 6]) {
        return Ingress::Rejected(Reject::SenderMac);
    }
    if cfg.gateway_mac_known() && !mac_eq(&sender_mac, &cfg.gateway_mac) {
        return Ingress::Rejected(Reject::SenderMac);
    }
    Ingress::ValidReply { gateway_mac: sender_mac }
}

/// What the TC egress program does with a frame leaving an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Leave as it is.
    Pass,
    /// Leave on this uplink with the destination MAC set to the given one.
    Rewrite([u8; 6]),
    /// Drop: broadcast/multicast on an inactive uplink (the bridge floods it
    /// to the active one too), and unicast there when not redirecting.
    Drop,
    /// Move to the active uplink, with the destination MAC rewritten if set.
    Redirect { ifindex: u32, new_dst: Option<[u8; 6]> },
}

/// The egress decision for a non-probe frame with destination `dst` leaving
/// uplink `ifindex` of a group in state `group`. Unicast leaving an inactive
/// uplink is redirected only from the uplink the bridge's rules point at
/// (`steer_ifindex`, when known): a copy the bridge flooded to another
/// inactive uplink is dropped, so nothing arrives twice.
#[inline(always)]
pub fn egress_action(ifindex: u32, dst: &[u8; 6], group: &GroupState) -> Egress {
    if group.active_ifindex == 0 {
        return Egress::Pass;
    }
    let active = group.active_ifindex == ifindex;
    if is_group_mac(dst) {
        return if active { Egress::Pass } else { Egress::Drop };
    }
    let new_dst = if group.flags & GROUP_ACTIVE_MAC_KNOWN != 0
        && !mac_eq(dst, &group.active_gateway_mac)
        && group.is_gateway_mac(dst)
    {
        Some(group.active_gateway_mac)
    } else {
        None
    };
    match (active, new_dst) {
        (true, None) => Egress::Pass,
        (true, Some(mac)) => Egress::Rewrite(mac),
        (false, new_dst)
            if group.flags & GROUP_REDIRECT_INACTIVE != 0
                && (group.steer_ifindex == 0 || group.steer_ifindex == ifindex) =>
        {
            Egress::Redirect { ifindex: group.active_ifindex, new_dst }
        }
        (false, _) => Egress::Drop,
    }
}

/// Fields of an Ethernet + optional 802.1Q header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHeader {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// 802.1Q VLAN id; 0 = untagged.
    pub vlan: u16,
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) -> Option<()> {
    buf.get_mut(off..off + bytes.len())?.copy_from_slice(bytes);
    Some(())
}

/// Writes the Ethernet header; returns the offset of the payload.
fn write_eth(buf: &mut [u8], eth: &EthHeader, ethertype: u16) -> Option<usize> {
    put(buf, 0, &eth.dst)?;
    put(buf, 6, &eth.src)?;
    if eth.vlan == 0 {
        put(buf, 12, &ethertype.to_be_bytes())?;
        Some(ETH_HLEN)
    } else {
        put(buf, 12, &ETH_P_8021Q.to_be_bytes())?;
        put(buf, 14, &(eth.vlan & 0x0fff).to_be_bytes())?;
        put(buf, 16, &ethertype.to_be_bytes())?;
        Some(ETH_HLEN + 4)
    }
}

/// An ARP packet for Ethernet/IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// Writes an ARP frame into `buf`; returns its length, or `None` if `buf` is too small.
pub fn build_arp(buf: &mut [u8], eth: &EthHeader, arp: &Arp) -> Option<usize> {
    let l3 = write_eth(buf, eth, ETH_P_ARP)?;
    put(buf, l3, &[0, 1, 0x08, 0x00, 6, 4])?;
    put(buf, l3 + 6, &arp.op.to_be_bytes())?;
    put(buf, l3 + 8, &arp.sha)?;
    put(buf, l3 + 14, &arp.spa)?;
    put(buf, l3 + 18, &arp.tha)?;
    put(buf, l3 + 24, &arp.tpa)?;
    Some(l3 + ARP_LEN)
}

/// A Neighbor Solicitation or Advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ndp {
    /// [`ICMPV6_NS`] or [`ICMPV6_NA`].
    pub icmp_type: u8,
    /// NA flags byte (`NA_FLAG_*`); 0 for NS.
    pub flags: u8,
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub target: [u8; 16],
    /// Link-layer address option: source (NS) or target (NA); `None` omits it.
    pub lladdr: Option<[u8; 6]>,
    pub hop_limit: u8,
}

/// The `ICMPv6` checksum over the IPv6 pseudo-header and `icmp`.
pub fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(src);
    add(dst);
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes an NS or NA frame (with a correct checksum) into `buf`; returns
/// its length, or `None` if `buf` is too small.
pub fn build_ndp(buf: &mut [u8], eth: &EthHeader, ndp: &Ndp) -> Option<usize> {
    let l3 = write_eth(buf, eth, ETH_P_IPV6)?;
    let icmp_len = NA_LEN + if ndp.lladdr.is_some() { 8 } else { 0 };
    put(buf, l3, &[0x60, 0, 0, 0])?;
    put(buf, l3 + 4, &(icmp_len as u16).to_be_bytes())?;
    put(buf, l3 + 6, &[IPPROTO_ICMPV6, ndp.hop_limit])?;
    put(buf, l3 + 8, &ndp.src_ip)?;
    put(buf, l3 + 24, &ndp.dst_ip)?;
    let icmp = l3 + IPV6_HLEN;
    put(buf, icmp, &[ndp.icmp_type, 0, 0, 0, ndp.flags, 0, 0, 0])?;
    put(buf, icmp + 8, &ndp.target)?;
    if let Some(mac) = ndp.lladdr {
        let opt = if ndp.icmp_type == ICMPV6_NS { NDP_OPT_SLLA } else { NDP_OPT_TLLA };
        put(buf, icmp + NA_LEN, &[opt, 1])?;
        put(buf, icmp + NA_LEN + 2, &mac)?;
    }
    let csum = icmpv6_checksum(&ndp.src_ip, &ndp.dst_ip, buf.get(icmp..icmp + icmp_len)?);
    put(buf, icmp + 2, &csum.to_be_bytes())?;
    Some(icmp + icmp_len)
}

/// The solicited-node multicast address of `ip` (`ff02::1:ffXX:XXXX`).
pub fn solicited_node(ip: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = 0xff;
    out[1] = 0x02;
    out[11] = 0x01;
    out[12] = 0xff;
    out[13] = ip[13];
    out[14] = ip[14];
    out[15] = ip[15];
    out
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33:XX:XX:XX:XX).
pub fn ipv6_multicast_mac(ip: &[u8; 16]) -> [u8; 6] {
    [0x33, 0x33, ip[12], ip[13], ip[14], ip[15]]
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
