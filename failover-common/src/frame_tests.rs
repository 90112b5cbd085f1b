extern crate std;

use super::*;
use crate::{GROUP_ACTIVE_MAC_KNOWN, GROUP_REDIRECT_INACTIVE, UPLINK_GATEWAY_MAC_KNOWN};
use proptest::prelude::*;
use std::vec::Vec;

pub const OWN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const OTHER_UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
pub const GW2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x02];
pub const ROGUE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x0e];
pub const GW_IP: [u8; 4] = [192, 0, 2, 1];
pub const PROBE_IP: [u8; 4] = [192, 0, 2, 250];
pub const VM_IP: [u8; 4] = [192, 0, 2, 10];
pub const GW6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const PROBE6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfa];

fn v4(ip: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&ip);
    out
}

pub fn cfg4() -> UplinkConfig {
    UplinkConfig {
        group: 0,
        slot: 0,
        ident: 0,
        own_mac: OWN_MAC,
        gateway_mac: [0; 6],
        gateway_ip: v4(GW_IP),
        probe_source: v4(PROBE_IP),
        vlan: 0,
        family: FAMILY_IPV4,
        flags: 0,
    }
}

fn cfg6() -> UplinkConfig {
    UplinkConfig { gateway_ip: GW6, probe_source: PROBE6, family: FAMILY_IPV6, ..cfg4() }
}

fn arp_reply() -> (EthHeader, Arp) {
    (
        EthHeader { dst: OWN_MAC, src: GW_MAC, vlan: 0 },
        Arp { op: ARP_OP_REPLY, sha: GW_MAC, spa: GW_IP, tha: OWN_MAC, tpa: PROBE_IP },
    )
}

fn arp(eth: EthHeader, a: Arp) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let n = build_arp(&mut buf, &eth, &a).expect("fits");
    buf[..n].to_vec()
}

fn na(eth: EthHeader, n: Ndp) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let len = build_ndp(&mut buf, &eth, &n).expect("fits");
    buf[..len].to_vec()
}

fn na_reply() -> (EthHeader, Ndp) {
    (
        EthHeader { dst: OWN_MAC, src: GW_MAC, vlan: 0 },
        Ndp {
            icmp_type: ICMPV6_NA,
            flags: NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
            src_ip: GW6,
            dst_ip: PROBE6,
            target: GW6,
            lladdr: Some(GW_MAC),
            hop_limit: 255,
        },
    )
}

fn classify(frame: &[u8], cfg: &UplinkConfig) -> Ingress {
    classify_ingress(frame, cfg)
}

const VALID: Ingress = Ingress::ValidReply { gateway_mac: GW_MAC };

#[test]
fn valid_arp_reply_is_counted() {
    let (e, a) = arp_reply();
    assert_eq!(classify(&arp(e, a), &cfg4()), VALID);
}

#[test]
fn valid_arp_reply_with_known_gateway_mac() {
    let (e, a) = arp_reply();
    let mut cfg = cfg4();
    cfg.gateway_mac = GW_MAC;
    cfg.flags = UPLINK_GATEWAY_MAC_KNOWN;
    assert_eq!(classify(&arp(e, a), &cfg), VALID);
    cfg.gateway_mac = GW2_MAC;
    assert_eq!(
        classify(&arp(e, a), &cfg),
        Ingress::Rejected(Reject::SenderMac),
        "a live gateway with another MAC than the known one does not count"
    );
}

#[test]
fn padded_arp_reply_is_valid() {
    let (e, a) = arp_reply();
    let mut frame = arp(e, a);
    frame.resize(60, 0);
    assert_eq!(classify(&frame, &cfg4()), VALID);
}

#[test]
fn vlan_tagged_reply_must_match_uplink_vlan() {
    let (mut e, a) = arp_reply();
    e.vlan = 100;
    let frame = arp(e, a);
    let mut cfg = cfg4();
    assert_eq!(classify(&frame, &cfg), Ingress::Rejected(Reject::Vlan));
    cfg.vlan = 100;
    assert_eq!(classify(&frame, &cfg), VALID);
    cfg.vlan = 101;
    assert_eq!(classify(&frame, &cfg), Ingress::Rejected(Reject::Vlan));
    let (e, a) = arp_reply();
    cfg.vlan = 100;
    assert_eq!(classify(&arp(e, a), &cfg), Ingress::Rejected(Reject::Vlan), "untagged reply on a tagged uplink");
}

/// A frame whose tag the NIC took out (rx-vlan offload): the bytes are
/// untagged, the tag rides beside them, as TC sees it in `skb->vlan_tci`.
struct Offloaded<'a>(&'a [u8], u16);

impl Frame for Offloaded<'_> {
    fn read<const N: usize>(&self, off: usize, out: &mut [u8; N]) -> bool {
        self.0.read(off, out)
    }
    fn offloaded_vlan(&self) -> u16 {
        self.1
    }
}

#[test]
fn an_offloaded_tag_counts_as_the_frames_tag() {
    let (e, a) = arp_reply();
    let frame = arp(e, a);
    let mut cfg = cfg4();
    cfg.vlan = 100;
    // Priority bits in the TCI are not part of the VLAN id.
    assert_eq!(classify_ingress(&Offloaded(&frame, 0x2000 + 100), &cfg), VALID);
    assert_eq!(classify_ingress(&Offloaded(&frame, 101), &cfg), Ingress::Rejected(Reject::Vlan));
    cfg.vlan = 0;
    assert_eq!(classify_ingress(&Offloaded(&frame, 100), &cfg), Ingress::Rejected(Reject::Vlan));
    assert_eq!(classify_ingress(&Offloaded(&frame, 0), &cfg), VALID, "no tag at all");
    // An offloaded outer tag and one more in the frame: stacked, not a reply.
    let (mut e, a) = arp_reply();
    e.vlan = 100;
    cfg.vlan = 100;
    assert_eq!(classify_ingress(&Offloaded(&arp(e, a), 100), &cfg), Ingress::Other);
}

#[test]
fn double_tagged_frames_are_not_replies() {
    let (mut e, a) = arp_reply();
    e.vlan = 100;
    let mut frame = arp(e, a);
    // Insert a second tag: outer 802.1Q, then 802.1Q again.
    frame.splice(16..16, [0x81, 0x00, 0x00, 0x07]);
    let mut cfg = cfg4();
    cfg.vlan = 100;
    assert_eq!(classify(&frame, &cfg), Ingress::Other);
    frame[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
    assert_eq!(classify(&frame, &cfg), Ingress::Other);
}

#[test]
fn wrong_sender_ip_is_rejected() {
    let (e, mut a) = arp_reply();
    a.spa = [192, 0, 2, 2];
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Rejected(Reject::SenderIp));
}

#[test]
fn sender_hardware_address_must_match_ethernet_source() {
    let (mut e, a) = arp_reply();
    e.src = ROGUE_MAC;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Rejected(Reject::SenderMac));
}

#[test]
fn wrong_target_ip_or_mac_is_rejected() {
    let (e, mut a) = arp_reply();
    a.tpa = [192, 0, 2, 251];
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Rejected(Reject::TargetIp));

    let (mut e, a) = arp_reply();
    e.dst = OTHER_UPLINK_MAC;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Rejected(Reject::TargetMac));

    let (e, mut a) = arp_reply();
    a.tha = OTHER_UPLINK_MAC;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Rejected(Reject::TargetMac));
}

#[test]
fn reply_meant_for_the_other_uplink_is_rejected() {
    // Both uplinks share gateway IP and probe source; the reply to uplink 2's
    // probe is addressed to uplink 2's MAC, so on uplink 1 it does not count.
    let (mut e, mut a) = arp_reply();
    e.dst = OTHER_UPLINK_MAC;
    a.tha = OTHER_UPLINK_MAC;
    e.src = GW2_MAC;
    a.sha = GW2_MAC;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Rejected(Reject::TargetMac));
}

#[test]
fn gateway_replies_to_vms_are_other_traffic() {
    let (mut e, mut a) = arp_reply();
    e.dst = [0x02, 0, 0, 0, 0x0b, 0x01];
    a.tha = e.dst;
    a.tpa = VM_IP;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Other);
}

#[test]
fn arp_requests_and_gratuitous_arp_are_not_replies() {
    let (mut e, mut a) = arp_reply();
    a.op = ARP_OP_REQUEST;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Other);
    // Gratuitous ARP, as request and as reply: broadcast, sender = target = gateway.
    e.dst = BROADCAST_MAC;
    a.tha = [0; 6];
    a.tpa = GW_IP;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Other);
    a.op = ARP_OP_REPLY;
    a.tha = BROADCAST_MAC;
    assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Other);
}

#[test]
fn multicast_or_zero_sender_mac_is_rejected() {
    for mac in [BROADCAST_MAC, [0; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
        let (mut e, mut a) = arp_reply();
        e.src = mac;
        a.sha = mac;
        assert_eq!(classify(&arp(e, a), &cfg4()), Ingress::Rejected(Reject::SenderMac));
    }
}

#[test]
fn arp_reply_on_an_ipv6_uplink_is_rejected() {
    let (e, a) = arp_reply();
    let mut cfg = cfg6();
    cfg.probe_source = v4(PROBE_IP);
    assert_eq!(classify(&arp(e, a), &cfg), Ingress::Rejected(Reject::Family));
}

#[test]
fn non_ethernet_arp_is_other() {
    let (e, a) = arp_reply();
    let mut frame = arp(e, a);
    frame[ETH_HLEN + 1] = 6; // htype 6 (IEEE 802)
    assert_eq!(classify(&frame, &cfg4()), Ingress::Other);
}

#[test]
fn valid_solicited_na_is_counted() {
    let (e, n) = na_reply();
    assert_eq!(classify(&na(e, n), &cfg6()), VALID);
    let (e, mut n) = na_reply();
    n.lladdr = None;
    assert_eq!(classify(&na(e, n), &cfg6()), VALID, "TLLA option is optional");
    let (mut e, n) = na_reply();
    e.vlan = 7;
    let mut cfg = cfg6();
    cfg.vlan = 7;
    assert_eq!(classify(&na(e, n), &cfg), VALID);
}

#[test]
fn invalid_nas_are_rejected() {
    let cfg = cfg6();
    let (e, mut n) = na_reply();
    n.flags = NA_FLAG_OVERRIDE;
    assert_eq!(classify(&na(e, n), &cfg), Ingress::Rejected(Reject::Unsolicited));
    let (e, mut n) = na_reply();
    n.hop_limit = 64;
    assert_eq!(classify(&na(e, n), &cfg), Ingress::Rejected(Reject::Unsolicited));
    let (e, mut n) = na_reply();
    n.target[15] = 2;
    assert_eq!(classify(&na(e, n), &cfg), Ingress::Rejected(Reject::SenderIp));
    let (e, mut n) = na_reply();
    n.lladdr = Some(ROGUE_MAC);
    assert_eq!(classify(&na(e, n), &cfg), Ingress::Rejected(Reject::SenderMac));
    let (mut e, n) = na_reply();
    e.dst = OTHER_UPLINK_MAC;
    assert_eq!(classify(&na(e, n), &cfg), Ingress::Rejected(Reject::TargetMac));
    let (e, mut n) = na_reply();
    n.dst_ip[15] = 0xfb;
    assert_eq!(classify(&na(e, n), &cfg), Ingress::Rejected(Reject::TargetIp));
    let (e, n) = na_reply();
    assert_eq!(
        classify(&na(e, n), &cfg4()),
        Ingress::Rejected(Reject::Family),
        "an NA to the uplink's MAC on an IPv4 uplink"
    );
    let (mut e, n) = na_reply();
    e.dst = [0x02, 0, 0, 0, 0x0b, 0x01];
    let mut frame = na(e, n);
    frame[ETH_HLEN + 24..ETH_HLEN + 40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
    assert_eq!(classify(&frame, &cfg6()), Ingress::Other, "an NA for a VM is VM traffic");
}

#[test]
fn neighbor_solicitations_are_other() {
    let (e, mut n) = na_reply();
    n.icmp_type = ICMPV6_NS;
    assert_eq!(classify(&na(e, n), &cfg6()), Ingress::Other);
}

#[test]
fn ndp_checksum_matches_reference() {
    // Reference value computed independently for this exact NS.
    let ns = Ndp {
        icmp_type: ICMPV6_NS,
        flags: 0,
        src_ip: PROBE6,
        dst_ip: solicited_node(&GW6),
        target: GW6,
        lladdr: Some(OWN_MAC),
        hop_limit: 255,
    };
    let eth = EthHeader { dst: ipv6_multicast_mac(&solicited_node(&GW6)), src: OWN_MAC, vlan: 0 };
    let frame = na(eth, ns);
    let icmp = &frame[ETH_HLEN + IPV6_HLEN..];
    // Summing a packet with its checksum in place gives 0xffff (complement 0).
    let src: [u8; 16] = frame[ETH_HLEN + 8..ETH_HLEN + 24].try_into().unwrap();
    let dst: [u8; 16] = frame[ETH_HLEN + 24..ETH_HLEN + 40].try_into().unwrap();
    assert_eq!(icmpv6_checksum(&src, &dst, icmp), 0);
    assert_eq!(eth.dst, [0x33, 0x33, 0xff, 0, 0, 1]);
    assert_eq!(&dst[..], &[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1]);
}

#[test]
fn every_truncation_of_a_valid_reply_is_malformed_or_ignored() {
    let (e, a) = arp_reply();
    let arp_frame = arp(e, a);
    let (e, mut n) = na_reply();
    n.lladdr = None;
    let na_frame = na(e, n);
    for (frame, cfg) in [(arp_frame, cfg4()), (na_frame, cfg6())] {
        for len in 0..frame.len() {
            let got = classify(&frame[..len], &cfg);
            assert!(matches!(got, Ingress::Malformed | Ingress::Other), "length {len}: {got:?}");
            if len < ETH_HLEN {
                assert_eq!(got, Ingress::Malformed, "length {len}");
            }
        }
        assert_eq!(classify(&frame, &cfg), VALID);
    }
}

fn group(active: u32) -> GroupState {
    let mut g = GroupState::inactive();
    g.active_ifindex = active;
    g.member_count = 2;
    g.members[0].ifindex = 1;
    g.members[1].ifindex = 2;
    g.mac_known = 0b11;
    g.gateway_macs[0] = GW_MAC;
    g.gateway_macs[1] = GW2_MAC;
    g.active_gateway_mac = if active == 1 { GW_MAC } else { GW2_MAC };
    g.flags = GROUP_ACTIVE_MAC_KNOWN | GROUP_REDIRECT_INACTIVE;
    g
}

#[test]
fn egress_on_active_uplink_passes_or_rewrites() {
    let g = group(1);
    assert_eq!(egress_action(1, &GW_MAC, &g), Egress::Pass);
    assert_eq!(egress_action(1, &GW2_MAC, &g), Egress::Rewrite(GW_MAC));
    assert_eq!(egress_action(1, &ROGUE_MAC, &g), Egress::Pass);
    assert_eq!(egress_action(1, &BROADCAST_MAC, &g), Egress::Pass);
}

#[test]
fn egress_on_inactive_uplink_redirects_or_drops() {
    let g = group(2);
    assert_eq!(egress_action(1, &GW_MAC, &g), Egress::Redirect { ifindex: 2, new_dst: Some(GW2_MAC) });
    assert_eq!(egress_action(1, &ROGUE_MAC, &g), Egress::Redirect { ifindex: 2, new_dst: None });
    assert_eq!(egress_action(1, &BROADCAST_MAC, &g), Egress::Drop);
    assert_eq!(egress_action(1, &[0x33, 0x33, 0, 0, 0, 1], &g), Egress::Drop);
}

#[test]
fn egress_on_inactive_uplink_drops_unicast_when_not_redirecting() {
    let mut g = group(2);
    g.flags &= !GROUP_REDIRECT_INACTIVE;
    assert_eq!(egress_action(1, &GW_MAC, &g), Egress::Drop);
    assert_eq!(egress_action(1, &ROGUE_MAC, &g), Egress::Drop);
    assert_eq!(egress_action(2, &GW_MAC, &g), Egress::Rewrite(GW2_MAC), "the active uplink still readdresses");
}

#[test]
fn egress_without_active_uplink_or_mac_passes() {
    assert_eq!(egress_action(1, &GW2_MAC, &GroupState::inactive()), Egress::Pass);
    let mut g = group(1);
    g.flags = GROUP_REDIRECT_INACTIVE;
    assert_eq!(egress_action(1, &GW2_MAC, &g), Egress::Pass, "unknown active MAC: no rewrite");
}

proptest! {
    #[test]
    fn random_frames_never_count(frame in proptest::collection::vec(any::<u8>(), 0..128)) {
        // A random frame is a valid reply only if it happens to be one; make
        // sure no counter-moving verdict arises from anything that is not.
        for cfg in [cfg4(), cfg6()] {
            if let Ingress::ValidReply { gateway_mac } = classify(&frame, &cfg) {
                prop_assert_eq!(&frame[0..6], &OWN_MAC[..]);
                prop_assert_eq!(&frame[6..12], &gateway_mac[..]);
            }
        }
    }

    #[test]
    fn mutated_replies_are_valid_only_if_fields_still_match(
        pos in 0usize..42, byte in any::<u8>()
    ) {
        let (e, a) = arp_reply();
        let mut frame = arp(e, a);
        let original = frame[pos];
        frame[pos] = byte;
        let got = classify(&frame, &cfg4());
        if byte == original {
            prop_assert_eq!(got, VALID);
        } else {
            // Changing any byte of a minimal valid reply stops it counting.
            prop_assert!(!matches!(got, Ingress::ValidReply { .. }), "pos {} byte {}: {:?}", pos, byte, got);
        }
    }
}

#[test]
fn only_the_uplink_the_rules_point_at_redirects() {
    // Three uplinks; the bridge's rules still point at 1, the kernel moved to 2.
    let mut g = group(2);
    g.member_count = 3;
    g.members[2].ifindex = 3;
    g.steer_ifindex = 1;
    assert!(matches!(egress_action(1, &GW_MAC, &g), Egress::Redirect { ifindex: 2, .. }));
    assert_eq!(egress_action(3, &GW_MAC, &g), Egress::Drop, "a flooded copy leaving another inactive uplink");
    g.steer_ifindex = 0;
    assert!(matches!(egress_action(3, &GW_MAC, &g), Egress::Redirect { ifindex: 2, .. }), "steering unknown");
}
