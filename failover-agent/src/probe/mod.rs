//! Probes: the ARP requests and Neighbor Solicitations the agent sends to
//! each gateway through each uplink ([`frame`], pure), and the raw socket
//! that sends them ([`socket`], the only code that touches it).
//!
//! Replies are not read here: the XDP program counts them in the kernel.

pub mod socket;

use std::net::IpAddr;

use failover_common::frame::{
    ARP_OP_REQUEST, Arp, BROADCAST_MAC, EthHeader, ICMPV6_NS, Ndp, build_arp, build_ndp, ipv6_multicast_mac,
    solicited_node,
};

pub use socket::{PacketSockets, ProbeError, ProbeTransport};

/// What a probe is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The uplink's own MAC (the probe's source).
    pub own_mac: [u8; 6],
    /// The address the probe is sent from (replies come back to it).
    pub source: IpAddr,
    pub gateway: IpAddr,
    /// Unicast to this MAC when known; broadcast/multicast otherwise.
    pub gateway_mac: Option<[u8; 6]>,
    pub vlan: Option<u16>,
}

/// The probe frame: an ARP request for an IPv4 gateway, a Neighbor
/// Solicitation for an IPv6 one. `None` if source and gateway are of
/// different families (configuration forbids that).
pub fn probe_frame(spec: &ProbeSpec) -> Option<Vec<u8>> {
    let mut buf = [0u8; 128];
    let vlan = spec.vlan.unwrap_or(0);
    let len = match (spec.source, spec.gateway) {
        (IpAddr::V4(src), IpAddr::V4(gw)) => build_arp(
            &mut buf,
            &EthHeader { dst: spec.gateway_mac.unwrap_or(BROADCAST_MAC), src: spec.own_mac, vlan },
            &Arp {
                op: ARP_OP_REQUEST,
                sha: spec.own_mac,
                spa: src.octets(),
                tha: spec.gateway_mac.unwrap_or([0; 6]),
                tpa: gw.octets(),
            },
        )?,
        (IpAddr::V6(src), IpAddr::V6(gw)) => {
            let target = gw.octets();
            // Unicast NS (as neighbour unreachability detection does) once
            // the MAC is known; to the solicited-node group until then.
            let (dst_ip, dst_mac) = if let Some(mac) = spec.gateway_mac {
                (target, mac)
            } else {
                let group = solicited_node(&target);
                (group, ipv6_multicast_mac(&group))
            };
            build_ndp(
                &mut buf,
                &EthHeader { dst: dst_mac, src: spec.own_mac, vlan },
                &Ndp {
                    icmp_type: ICMPV6_NS,
                    flags: 0,
                    src_ip: src.octets(),
                    dst_ip,
                    target,
                    lladdr: Some(spec.own_mac),
                    hop_limit: 255,
                },
            )?
        }
        _ => return None,
    };
    Some(buf[..len].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use failover_common::frame::icmpv6_checksum;

    const OWN: [u8; 6] = [2, 0, 0, 0, 1, 1];
    const GW: [u8; 6] = [2, 0, 0, 0, 0xa, 1];

    fn v4(gateway_mac: Option<[u8; 6]>, vlan: Option<u16>) -> ProbeSpec {
        ProbeSpec {
            own_mac: OWN,
            source: "192.0.2.250".parse().unwrap(),
            gateway: "192.0.2.1".parse().unwrap(),
            gateway_mac,
            vlan,
        }
    }

    #[test]
    fn arp_probe_is_broadcast_until_the_mac_is_known() {
        let f = probe_frame(&v4(None, None)).unwrap();
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &BROADCAST_MAC);
        assert_eq!(&f[6..12], &OWN);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &OWN, "sender hardware address");
        assert_eq!(&f[28..32], &[192, 0, 2, 250]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[192, 0, 2, 1]);
    }

    #[test]
    fn arp_probe_is_unicast_and_tagged_when_asked() {
        let f = probe_frame(&v4(Some(GW), Some(100))).unwrap();
        assert_eq!(&f[0..6], &GW);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(&f[16..18], &[0x08, 0x06]);
        assert_eq!(&f[36..42], &GW, "target hardware address");
    }

    #[test]
    fn ns_probe_goes_to_the_solicited_node_group_then_unicast() {
        let spec = ProbeSpec {
            own_mac: OWN,
            source: "2001:db8::fa".parse().unwrap(),
            gateway: "2001:db8::1:2".parse().unwrap(),
            gateway_mac: None,
            vlan: None,
        };
        let f = probe_frame(&spec).unwrap();
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0x01, 0, 0x02]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14 + 7], 255, "hop limit");
        let dst: [u8; 16] = f[38..54].try_into().unwrap();
        assert_eq!(dst, "ff02::1:ff01:2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(f[54], ICMPV6_NS);
        let src: [u8; 16] = f[22..38].try_into().unwrap();
        assert_eq!(icmpv6_checksum(&src, &dst, &f[54..]), 0, "checksum verifies");
        assert_eq!(&f[54 + 24..54 + 26], &[1, 1], "source link-layer address option");
        assert_eq!(&f[54 + 26..54 + 32], &OWN);

        let f = probe_frame(&ProbeSpec { gateway_mac: Some(GW), ..spec }).unwrap();
        assert_eq!(&f[0..6], &GW);
        assert_eq!(&f[38..54], &spec_gateway(&spec));
    }

    fn spec_gateway(spec: &ProbeSpec) -> [u8; 16] {
        match spec.gateway {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!(),
        }
    }

    proptest::proptest! {
        /// Any probe the agent can be configured to send is a well-formed
        /// frame: the right length and type, its addresses where they belong,
        /// and (IPv6) a checksum that verifies.
        #[test]
        fn every_probe_is_well_formed(
            own in proptest::array::uniform6(proptest::num::u8::ANY),
            mac in proptest::option::of(proptest::array::uniform6(proptest::num::u8::ANY)),
            vlan in proptest::option::of(1u16..4095),
            v4 in proptest::bool::ANY,
            a in proptest::array::uniform16(proptest::num::u8::ANY),
            b in proptest::array::uniform16(proptest::num::u8::ANY),
        ) {
            let (source, gateway): (IpAddr, IpAddr) = if v4 {
                ([a[0], a[1], a[2], a[3]].into(), [b[0], b[1], b[2], b[3]].into())
            } else {
                (a.into(), b.into())
            };
            let f = probe_frame(&ProbeSpec { own_mac: own, source, gateway, gateway_mac: mac, vlan }).unwrap();
            let l3 = if vlan.is_some() { 18 } else { 14 };
            proptest::prop_assert_eq!(&f[6..12], &own[..]);
            if let Some(v) = vlan {
                proptest::prop_assert_eq!(&f[12..16], &[0x81, 0x00, (v >> 8) as u8, v as u8][..]);
            }
            if v4 {
                proptest::prop_assert_eq!(f.len(), l3 + 28);
                proptest::prop_assert_eq!(&f[l3 + 14..l3 + 18], &a[..4]);
                proptest::prop_assert_eq!(&f[l3 + 24..l3 + 28], &b[..4]);
            } else {
                let icmp = l3 + 40;
                let src: [u8; 16] = f[l3 + 8..l3 + 24].try_into().unwrap();
                let dst: [u8; 16] = f[l3 + 24..l3 + 40].try_into().unwrap();
                proptest::prop_assert_eq!(src, a);
                proptest::prop_assert_eq!(icmpv6_checksum(&src, &dst, &f[icmp..]), 0);
                proptest::prop_assert_eq!(&f[icmp + 8..icmp + 24], &b[..]);
            }
        }
    }

    #[test]
    fn mixed_families_make_no_probe() {
        let mut spec = v4(None, None);
        spec.gateway = "2001:db8::1".parse().unwrap();
        assert_eq!(probe_frame(&spec), None);
    }
}
