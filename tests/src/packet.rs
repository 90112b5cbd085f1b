//! Sequence-numbered test frames (Ethernet/IPv4/UDP) and their parser, and
//! ARP / NDP frames as bytes.

use failover_common::frame::{ARP_OP_REPLY, Arp, EthHeader, Ndp, build_arp, build_ndp};

/// An ARP frame as bytes.
pub fn arp_frame(eth: EthHeader, arp: Arp) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = build_arp(&mut buf, &eth, &arp).expect("an ARP frame fits 64 bytes");
    buf[..n].to_vec()
}

/// An untagged ARP reply from `src` (also its sender hardware address).
pub fn arp_reply(dst: [u8; 6], src: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    arp_frame(EthHeader { dst, src, vlan: 0 }, Arp { op: ARP_OP_REPLY, sha: src, spa, tha, tpa })
}

/// A Neighbor Solicitation or Advertisement frame as bytes.
pub fn ndp_frame(eth: EthHeader, ndp: Ndp) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = build_ndp(&mut buf, &eth, &ndp).expect("an NDP frame fits 128 bytes");
    buf[..n].to_vec()
}

/// Marks the payload of a test frame.
pub const MAGIC: &[u8; 4] = b"FATS";
/// UDP destination port of test frames.
pub const TEST_PORT: u16 = 47_001;

/// Builds an Ethernet/IPv4/UDP frame carrying `MAGIC`, `stream` and `seq`.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4], stream: u32, seq: u64) -> Vec<u8> {
    let payload_len = 4 + 4 + 8;
    let udp_len = 8 + payload_len;
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    iph[8] = 64;
    iph[9] = 17;
    iph[12..16].copy_from_slice(&src_ip);
    iph[16..20].copy_from_slice(&dst_ip);
    let csum = ipv4_checksum(&iph);
    iph[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&47_000u16.to_be_bytes());
    f.extend_from_slice(&TEST_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f
}

/// The one's-complement checksum of an IPv4 header.
pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A parsed test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestFrame {
    pub dst: [u8; 6],
    pub stream: u32,
    pub seq: u64,
}

/// Parses a test frame; `None` for anything else.
pub fn parse_test_frame(f: &[u8]) -> Option<TestFrame> {
    if f.len() < 14 + 20 + 8 + 16 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
        return None;
    }
    let udp = 14 + usize::from(f[14] & 0x0f) * 4;
    let payload = f.get(udp + 8..udp + 24)?;
    if u16::from_be_bytes([f[udp + 2], f[udp + 3]]) != TEST_PORT || &payload[..4] != MAGIC {
        return None;
    }
    Some(TestFrame {
        dst: f[0..6].try_into().ok()?,
        stream: u32::from_be_bytes(payload[4..8].try_into().ok()?),
        seq: u64::from_be_bytes(payload[8..16].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frames_round_trip() {
        let f = test_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], [192, 0, 2, 10], [192, 0, 2, 1], 3, 77);
        assert_eq!(parse_test_frame(&f), Some(TestFrame { dst: [2, 0, 0, 0, 0, 1], stream: 3, seq: 77 }));
        assert_eq!(ipv4_checksum(&f[14..34]), 0, "header checksum verifies");
        assert_eq!(parse_test_frame(&f[..f.len() - 1]), None);
        let mut other = f.clone();
        other[14 + 20 + 3] ^= 1; // another port
        assert_eq!(parse_test_frame(&other), None);
    }
}
