//! A small datapath lab: one host namespace with two uplinks, each a veth
//! to its own gateway namespace, the datapath attached to both, group 0
//! active on up1. Used by the traffic tests and the datapath tour.
//!
//! ```text
//!   ns host                         ns gw1 / ns gw2
//!   up1 (02:fa:..:01:01) <-veth->   gw1 (02:fa:..:0a:01)
//!   up2 (02:fa:..:01:02) <-veth->   gw2 (02:fa:..:0a:02)
//! ```
//! A raw socket on an uplink in `host` stands in for the bridge (it sends
//! what OVS would send out of that port); raw sockets on gw1/gw2 see what
//! leaves each uplink.

use std::time::Duration;

use failover_agent::datapath::{
    AttachOutcome, Counters, Datapath, DatapathOptions, EbpfDatapath, IngressMode, ebpf::ifindex,
};
use failover_common::{FAMILY_IPV4, GROUP_ACTIVE_MAC_KNOWN, GROUP_REDIRECT_INACTIVE, GroupState, UplinkConfig};

use crate::{
    Netns, PacketSocket, PinDir,
    packet::{TestFrame, parse_test_frame, test_frame},
};

pub const UP1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x01];
pub const UP2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x02];
pub const GW1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x01];
pub const GW2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x02];
pub const VM_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0b, 0x01];
pub const VM_IP: [u8; 4] = [192, 0, 2, 10];
pub const GW_IP: [u8; 4] = [192, 0, 2, 1];
pub const PROBE_IP: [u8; 4] = [192, 0, 2, 250];
pub const SETTLE: Duration = Duration::from_millis(300);

pub struct TwoUplinks {
    pub host: Netns,
    /// The gateway namespaces (alive as long as the topology).
    pub gw1_ns: Netns,
    pub gw2_ns: Netns,
    pub pins: PinDir,
    pub dp: Option<EbpfDatapath>,
    pub up1: u32,
    pub up2: u32,
    /// Sockets in `host` on up1 / up2 (the bridge's side).
    pub bridge1: PacketSocket,
    pub bridge2: PacketSocket,
    /// Sockets on the gateways' ends.
    pub gw1: PacketSocket,
    pub gw2: PacketSocket,
}

pub fn uplink(slot: u32, own_mac: [u8; 6]) -> UplinkConfig {
    let mut gateway_ip = [0; 16];
    gateway_ip[..4].copy_from_slice(&GW_IP);
    let mut probe_source = [0; 16];
    probe_source[..4].copy_from_slice(&PROBE_IP);
    UplinkConfig {
        group: 0,
        slot,
        ident: slot + 1,
        own_mac,
        gateway_mac: [0; 6],
        gateway_ip,
        probe_source,
        vlan: 0,
        family: FAMILY_IPV4,
        flags: 0,
    }
}

pub fn group_state(active_ifindex: u32, active_mac: [u8; 6]) -> GroupState {
    let mut g = GroupState::inactive();
    g.active_ifindex = active_ifindex;
    g.member_count = 2;
    g.mac_known = 0b11;
    g.gateway_macs[0] = GW1_MAC;
    g.gateway_macs[1] = GW2_MAC;
    g.active_gateway_mac = active_mac;
    g.flags = GROUP_ACTIVE_MAC_KNOWN | GROUP_REDIRECT_INACTIVE;
    g
}

impl TwoUplinks {
    pub fn new(mode: IngressMode) -> Self {
        let host = Netns::new("h");
        let gw1_ns = Netns::new("g");
        let gw2_ns = Netns::new("g");
        // The kernel's own IPv6 multicast (RS, MLD) would show in the counters.
        for ns in [&host, &gw1_ns, &gw2_ns] {
            ns.disable_ipv6();
        }
        host.veth("up1", UP1_MAC, &gw1_ns, "gw1", GW1_MAC);
        host.veth("up2", UP2_MAC, &gw2_ns, "gw2", GW2_MAC);
        let pins = PinDir::new();
        let opts = DatapathOptions { ingress: mode, ..DatapathOptions::new(pins.path()) };
        let (dp, up1, up2, bridge1, bridge2) = host.run(|| {
            let mut dp = EbpfDatapath::open(&opts).expect("open datapath");
            assert_eq!(
                dp.attach_uplink("up1", &uplink(0, UP1_MAC)).expect("setting up the lab"),
                AttachOutcome::Attached
            );
            assert_eq!(
                dp.attach_uplink("up2", &uplink(1, UP2_MAC)).expect("setting up the lab"),
                AttachOutcome::Attached
            );
            let (up1, up2) = (ifindex("up1").expect("setting up the lab"), ifindex("up2").expect("setting up the lab"));
            dp.set_group(0, &group_state(up1, GW1_MAC)).expect("setting up the lab");
            (
                dp,
                up1,
                up2,
                PacketSocket::open("up1").expect("setting up the lab"),
                PacketSocket::open("up2").expect("setting up the lab"),
            )
        });
        let gw1 = gw1_ns.run(|| PacketSocket::open("gw1").expect("setting up the lab"));
        let gw2 = gw2_ns.run(|| PacketSocket::open("gw2").expect("setting up the lab"));
        Self { host, gw1_ns, gw2_ns, pins, dp: Some(dp), up1, up2, bridge1, bridge2, gw1, gw2 }
    }

    pub fn dp(&mut self) -> &mut EbpfDatapath {
        self.dp.as_mut().expect("datapath open")
    }

    pub fn flip_to(&mut self, ifindex: u32, mac: [u8; 6]) {
        self.dp().set_group(0, &group_state(ifindex, mac)).expect("one map update");
    }

    pub fn counters(&self, slot: u32) -> Counters {
        self.dp.as_ref().expect("datapath open").counters(slot).expect("reading counters")
    }
}

/// A test frame from the VM to `dst`.
pub fn vm_frame(dst: [u8; 6], stream: u32, seq: u64) -> Vec<u8> {
    test_frame(dst, VM_MAC, VM_IP, GW_IP, stream, seq)
}

/// The test frames of `stream` that reach `sock` within `window`.
pub fn arrivals(sock: &PacketSocket, stream: u32, window: Duration) -> Vec<TestFrame> {
    sock.collect(window, |f| parse_test_frame(f).is_some_and(|t| t.stream == stream))
        .iter()
        .filter_map(|r| parse_test_frame(&r.frame))
        .collect()
}
