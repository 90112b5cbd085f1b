//! The XDP program, run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`).
//!
//! Each test loads the real object, attaches it to veths of a throwaway
//! namespace (so the configuration and counters live in the real maps), and
//! runs a second, unattached copy of the program, sharing the pinned maps,
//! on frames it builds, with `ingress_ifindex` set to the uplink under test.
#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions, Xdp},
};
use failover_agent::datapath::{
    Counters, Datapath, DatapathOptions, EbpfDatapath, IngressMode,
    ebpf::{ifindex, object},
};
use failover_common::{
    FAMILY_IPV4, FAMILY_IPV6, GROUP_ACTIVE_MAC_KNOWN, GroupState, MAP_PROBES, PROG_XDP, ProbeCount,
    UPLINK_GATEWAY_MAC_KNOWN, UplinkConfig,
    frame::{
        ARP_OP_REPLY, ARP_OP_REQUEST, Arp, BROADCAST_MAC, EthHeader, ICMPV6_NA, ICMPV6_NS, Ingress, NA_FLAG_OVERRIDE,
        NA_FLAG_SOLICITED, Ndp, classify_ingress,
    },
};
use failover_tests::{
    Netns, PinDir,
    lab::{GW_IP, GW1_MAC, GW2_MAC, PROBE_IP, UP1_MAC, UP2_MAC, group_state},
    packet::{arp_frame, ndp_frame},
    privileged,
};
use proptest::{prelude::*, test_runner::TestRunner};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const UP3_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x03];
const ROGUE_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0e, 0x0e];
const GW6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const PROBE6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfa];

fn v4(ip: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&ip);
    out
}

/// Two IPv4 uplinks (up1 slot 0, up2 slot 1) in group 0, and an IPv6
/// uplink (up3, slot 2, VLAN 100) alone in group 1.
struct Rig {
    dp: EbpfDatapath,
    runner: Ebpf,
    up1: u32,
    up2: u32,
    up3: u32,
}

fn config(slot: u32, group: u32, own_mac: [u8; 6]) -> UplinkConfig {
    UplinkConfig {
        group,
        slot,
        ident: slot + 1,
        own_mac,
        gateway_mac: [0; 6],
        gateway_ip: v4(GW_IP),
        probe_source: v4(PROBE_IP),
        vlan: 0,
        family: FAMILY_IPV4,
        flags: 0,
    }
}

fn cfg_up3() -> UplinkConfig {
    UplinkConfig { gateway_ip: GW6, probe_source: PROBE6, family: FAMILY_IPV6, vlan: 100, ..config(2, 1, UP3_MAC) }
}

impl Rig {
    /// Must run inside `host`'s namespace.
    fn new(pins: &PinDir) -> Self {
        let opts =
            DatapathOptions { ingress: IngressMode::XdpNative, ..DatapathOptions::new(pins.path().to_path_buf()) };
        let mut dp = EbpfDatapath::open(&opts).expect("open datapath");
        dp.attach_uplink("up1", &config(0, 0, UP1_MAC)).expect("attach up1");
        dp.attach_uplink("up2", &config(1, 0, UP2_MAC)).expect("attach up2");
        dp.attach_uplink("up3", &cfg_up3()).expect("attach up3");
        let (up1, up2, up3) = (ifindex("up1").unwrap(), ifindex("up2").unwrap(), ifindex("up3").unwrap());
        // The lab's group on up1, without redirecting from the inactive uplinks.
        let mut group = group_state(up1, GW1_MAC);
        group.flags = GROUP_ACTIVE_MAC_KNOWN;
        dp.set_group(0, &group).expect("set group 0");
        let mut g1 = GroupState::inactive();
        g1.active_ifindex = up3;
        dp.set_group(1, &g1).expect("set group 1");

        let mut runner = EbpfLoader::new()
            .default_map_pin_directory(pins.path().join("maps"))
            .load(object().expect("eBPF object built"))
            .expect("load a second copy sharing the pinned maps");
        let prog: &mut Xdp = runner.program_mut(PROG_XDP).unwrap().try_into().unwrap();
        prog.load().expect("load XDP program for test runs");
        let mut rig = Self { dp, runner, up1, up2, up3 };
        // These frames are judged without probes going out through TC:
        // credit every slot with plenty of probes sent.
        for slot in 0..3 {
            rig.set_probes(slot, 1_000_000, 0);
        }
        rig
    }

    /// Sets a slot's probe/reply balance.
    fn set_probes(&mut self, slot: u32, sent: u64, answered: u64) {
        let mut probes: aya::maps::Array<_, ProbeCount> =
            aya::maps::Array::try_from(self.runner.map_mut(MAP_PROBES).unwrap()).unwrap();
        probes.set(slot, ProbeCount { sent, answered, ..ProbeCount::default() }, 0).unwrap();
    }

    /// Runs the XDP program on `frame` as if it arrived on `ifindex`.
    fn run(&mut self, ifindex: u32, frame: &[u8]) -> Result<u32, String> {
        let prog: &mut Xdp = self.runner.program_mut(PROG_XDP).unwrap().try_into().unwrap();
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        };
        prog.test_run(opts).map(|r| r.return_value).map_err(|e| format!("{e:?}"))
    }

    fn counters(&self, slot: u32) -> Counters {
        self.dp.counters(slot).expect("read counters")
    }

    fn all(&self) -> [Counters; 3] {
        [self.counters(0), self.counters(1), self.counters(2)]
    }
}

/// Sets up host (up1, up2, up3) and peer namespaces and runs `body` in host.
fn with_rig(test: &str, body: impl FnOnce(&mut Rig) + Send) {
    if !privileged(test) {
        return;
    }
    let host = Netns::new("h");
    let peer = Netns::new("p");
    host.veth("up1", UP1_MAC, &peer, "gw1", GW1_MAC);
    host.veth("up2", UP2_MAC, &peer, "gw2", GW2_MAC);
    host.veth("up3", UP3_MAC, &peer, "gw3", GW2_MAC);
    let pins = PinDir::new();
    host.run(|| {
        let mut rig = Rig::new(&pins);
        body(&mut rig);
    });
}

fn reply_to_up1() -> (EthHeader, Arp) {
    (
        EthHeader { dst: UP1_MAC, src: GW1_MAC, vlan: 0 },
        Arp { op: ARP_OP_REPLY, sha: GW1_MAC, spa: GW_IP, tha: UP1_MAC, tpa: PROBE_IP },
    )
}

fn na_to_up3() -> (EthHeader, Ndp) {
    (
        EthHeader { dst: UP3_MAC, src: GW2_MAC, vlan: 100 },
        Ndp {
            icmp_type: ICMPV6_NA,
            flags: NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
            src_ip: GW6,
            dst_ip: PROBE6,
            target: GW6,
            lladdr: Some(GW2_MAC),
            hop_limit: 255,
        },
    )
}

#[test]
fn valid_arp_reply_is_counted_and_consumed() {
    with_rig("valid_arp_reply_is_counted_and_consumed", |rig| {
        let (e, a) = reply_to_up1();
        let before = rig.counters(0);
        assert_eq!(rig.run(rig.up1, &arp_frame(e, a)), Ok(XDP_DROP), "valid replies are consumed");
        let after = rig.counters(0);
        assert_eq!(after.valid_replies, before.valid_replies + 1);
        assert_eq!(after.rejected_replies, before.rejected_replies);
        assert_eq!(after.gateway_mac, Some(GW1_MAC));
        let t = after.last_reply.expect("time of the last reply");
        let now = failover_tests::net::monotonic_now();
        assert!(t <= now && now.saturating_sub(t) < std::time::Duration::from_secs(5), "{t:?} vs now {now:?}");
        // A second one moves the time forward.
        assert_eq!(rig.run(rig.up1, &arp_frame(e, a)), Ok(XDP_DROP));
        let again = rig.counters(0);
        assert_eq!(again.valid_replies, before.valid_replies + 2);
        assert!(again.last_reply.unwrap() >= t);
    });
}

/// Runs `frame` on `ifindex` and checks the verdict and that only the
/// `rejected` counter of `slot` moved, by exactly `rejected`.
fn expect_only_rejected(
    rig: &mut Rig,
    what: &str,
    ifindex: u32,
    slot: usize,
    frame: &[u8],
    verdict: u32,
    rejected: u64,
) {
    let before = rig.all();
    assert_eq!(rig.run(ifindex, frame), Ok(verdict), "{what}: verdict");
    let after = rig.all();
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        let expect_rejected = if i == slot { b.rejected_replies + rejected } else { b.rejected_replies };
        assert_eq!(a.rejected_replies, expect_rejected, "{what}: rejected counter of slot {i}");
        assert_eq!(a.valid_replies, b.valid_replies, "{what}: valid counter of slot {i}");
        assert_eq!(a.last_reply, b.last_reply, "{what}: last reply time of slot {i}");
    }
}

#[test]
fn no_more_replies_count_than_probes_left() {
    with_rig("no_more_replies_count_than_probes_left", |rig| {
        let (e, a) = reply_to_up1();
        let reply = arp_frame(e, a);
        rig.set_probes(0, 2, 0);
        let up1 = rig.up1;
        let before = rig.counters(0);
        assert_eq!(rig.run(up1, &reply), Ok(XDP_DROP));
        assert_eq!(rig.run(up1, &reply), Ok(XDP_DROP));
        // Two probes, two answers; a third reply is unsolicited: rejected.
        assert_eq!(rig.run(up1, &reply), Ok(XDP_PASS));
        let after = rig.counters(0);
        assert_eq!(after.valid_replies, before.valid_replies + 2);
        assert_eq!(after.rejected_replies, before.rejected_replies + 1);
        rig.set_probes(0, 3, 2);
        assert_eq!(rig.run(up1, &reply), Ok(XDP_DROP), "a new probe, a new answer");
    });
}

#[test]
fn invalid_arp_replies_are_rejected_not_counted() {
    with_rig("invalid_arp_replies_are_rejected_not_counted", |rig| {
        let up1 = rig.up1;
        let (e, mut a) = reply_to_up1();
        a.spa = [192, 0, 2, 2];
        expect_only_rejected(rig, "wrong sender IP", up1, 0, &arp_frame(e, a), XDP_PASS, 1);

        let (mut e, mut a) = reply_to_up1();
        e.src = ROGUE_MAC;
        a.sha = ROGUE_MAC;
        let rogue = arp_frame(e, a);
        // Not yet known: any unicast sender MAC is taken; once the gateway's
        // MAC is known, another MAC is rejected.
        let mut cfg = config(0, 0, UP1_MAC);
        cfg.gateway_mac = GW1_MAC;
        cfg.flags = UPLINK_GATEWAY_MAC_KNOWN;
        rig.dp.update_uplink("up1", &cfg).unwrap();
        expect_only_rejected(rig, "wrong sender MAC", up1, 0, &rogue, XDP_PASS, 1);
        let (e, a) = reply_to_up1();
        assert_eq!(rig.run(up1, &arp_frame(e, a)), Ok(XDP_DROP), "the known gateway MAC still counts");

        let (e, mut a) = reply_to_up1();
        a.tpa = [192, 0, 2, 251];
        expect_only_rejected(rig, "wrong target IP", up1, 0, &arp_frame(e, a), XDP_PASS, 1);
        let (mut e, mut a) = reply_to_up1();
        e.dst = UP2_MAC;
        a.tha = UP2_MAC;
        expect_only_rejected(rig, "wrong target MAC", up1, 0, &arp_frame(e, a), XDP_PASS, 1);

        let (mut e, a) = reply_to_up1();
        e.vlan = 100;
        expect_only_rejected(rig, "tagged reply on an untagged uplink", up1, 0, &arp_frame(e, a), XDP_PASS, 1);
    });
}

#[test]
fn reply_on_the_other_uplink_is_rejected_and_dropped_there() {
    with_rig("reply_on_the_other_uplink_is_rejected_and_dropped_there", |rig| {
        let (e, a) = reply_to_up1();
        // up2 is inactive: the frame is rejected (counted on up2 only) and dropped.
        let up2 = rig.up2;
        expect_only_rejected(rig, "up1's reply arriving on up2", up2, 1, &arp_frame(e, a), XDP_DROP, 1);
    });
}

#[test]
fn requests_and_gratuitous_arp_move_no_counter() {
    with_rig("requests_and_gratuitous_arp_move_no_counter", |rig| {
        let up1 = rig.up1;
        let (mut e, mut a) = reply_to_up1();
        a.op = ARP_OP_REQUEST;
        expect_only_rejected(rig, "ARP request to the probe source", up1, 0, &arp_frame(e, a), XDP_PASS, 0);
        e.dst = BROADCAST_MAC;
        a.tha = [0; 6];
        a.tpa = GW_IP;
        expect_only_rejected(rig, "gratuitous ARP request", up1, 0, &arp_frame(e, a), XDP_PASS, 0);
        a.op = ARP_OP_REPLY;
        a.tha = BROADCAST_MAC;
        expect_only_rejected(rig, "gratuitous ARP reply", up1, 0, &arp_frame(e, a), XDP_PASS, 0);
        // On the inactive uplink, the same is VM-bound traffic: dropped, no reply counter.
        let before = rig.counters(1).ingress_dropped_inactive;
        let up2 = rig.up2;
        expect_only_rejected(rig, "gratuitous ARP on the inactive uplink", up2, 1, &arp_frame(e, a), XDP_DROP, 0);
        assert_eq!(rig.counters(1).ingress_dropped_inactive, before + 1);
    });
}

#[test]
fn tagged_solicited_na_is_counted_and_invalid_nas_are_rejected() {
    with_rig("tagged_solicited_na_is_counted_and_invalid_nas_are_rejected", |rig| {
        let up3 = rig.up3;
        let (e, n) = na_to_up3();
        let before = rig.counters(2);
        assert_eq!(rig.run(up3, &ndp_frame(e, n)), Ok(XDP_DROP));
        let after = rig.counters(2);
        assert_eq!(after.valid_replies, before.valid_replies + 1);
        assert_eq!(after.gateway_mac, Some(GW2_MAC));

        let (e, mut n) = na_to_up3();
        n.flags = NA_FLAG_OVERRIDE;
        expect_only_rejected(rig, "unsolicited NA", up3, 2, &ndp_frame(e, n), XDP_PASS, 1);
        let (e, mut n) = na_to_up3();
        n.target[15] = 9;
        expect_only_rejected(rig, "NA for another target", up3, 2, &ndp_frame(e, n), XDP_PASS, 1);
        let (e, mut n) = na_to_up3();
        n.hop_limit = 1;
        expect_only_rejected(rig, "NA with a routed hop limit", up3, 2, &ndp_frame(e, n), XDP_PASS, 1);
        let (mut e, n) = na_to_up3();
        e.vlan = 0;
        expect_only_rejected(rig, "untagged NA on a VLAN uplink", up3, 2, &ndp_frame(e, n), XDP_PASS, 1);
        let (e, mut n) = na_to_up3();
        n.icmp_type = ICMPV6_NS;
        expect_only_rejected(rig, "a solicitation", up3, 2, &ndp_frame(e, n), XDP_PASS, 0);
    });
}

#[test]
fn every_truncated_length_passes_and_moves_nothing() {
    with_rig("every_truncated_length_passes_and_moves_nothing", |rig| {
        let (e, a) = reply_to_up1();
        let mut full = arp_frame(e, a);
        full.resize(64, 0);
        let up1 = rig.up1;
        for len in 0..=64 {
            let frame = &full[..len];
            let before = rig.all();
            let got = rig.run(up1, frame);
            let after = rig.all();
            if len < 14 {
                // The kernel refuses to run XDP on less than an Ethernet header.
                assert!(got.is_err(), "length {len}: kernel ran the program: {got:?}");
                assert_eq!(before, after, "length {len}");
            } else if len < 42 {
                assert_eq!(got, Ok(XDP_PASS), "length {len}");
                assert_eq!(before, after, "length {len}: no counter moves");
            } else {
                assert_eq!(got, Ok(XDP_DROP), "length {len}: a whole (padded) reply");
                assert_eq!(after[0].valid_replies, before[0].valid_replies + 1, "length {len}");
            }
        }
        // The same on an inactive uplink: truncated frames still pass (fail open).
        let mut cfg = config(1, 0, UP2_MAC);
        cfg.own_mac = UP1_MAC;
        rig.dp.update_uplink("up2", &cfg).unwrap();
        let up2 = rig.up2;
        for len in 14..42 {
            let before = rig.all();
            assert_eq!(rig.run(up2, &full[..len]), Ok(XDP_PASS), "inactive, length {len}");
            assert_eq!(before, rig.all(), "inactive, length {len}");
        }
    });
}

#[test]
fn generated_frames_get_the_specified_verdict() {
    with_rig("generated_frames_get_the_specified_verdict", |rig| {
        let (e, a) = reply_to_up1();
        let valid = arp_frame(e, a);
        let cfg1 = config(0, 0, UP1_MAC);
        // A bounded run here; `FAILOVER_FUZZ_CASES=200000 cargo test -p
        // failover-tests --test xdp_test_run generated` runs a long one.
        let cases = std::env::var("FAILOVER_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(600);
        let mut runner = TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
        // Random bytes, and valid replies with random bytes changed: the
        // kernel's verdict and counters must match the specification.
        let strategy = prop_oneof![
            proptest::collection::vec(any::<u8>(), 14..200),
            (proptest::collection::vec((0usize..42, any::<u8>()), 1..4)).prop_map(move |edits| {
                let mut f = valid.clone();
                for (pos, byte) in edits {
                    f[pos] = byte;
                }
                f
            }),
        ];
        let rig = std::cell::RefCell::new(rig);
        runner
            .run(&strategy, |frame| {
                let mut rig = rig.borrow_mut();
                let up1 = rig.up1;
                let before = rig.counters(0);
                let verdict = rig.run(up1, &frame).expect("test run");
                let after = rig.counters(0);
                let spec = classify_ingress(frame.as_slice(), &cfg1);
                let (want_verdict, valid_delta, rejected_delta) = match spec {
                    Ingress::ValidReply { .. } => (XDP_DROP, 1, 0),
                    Ingress::Rejected(_) => (XDP_PASS, 0, 1),
                    Ingress::Other | Ingress::Malformed => (XDP_PASS, 0, 0),
                };
                prop_assert_eq!(verdict, want_verdict, "{:?}", spec);
                prop_assert_eq!(after.valid_replies, before.valid_replies + valid_delta);
                prop_assert_eq!(after.rejected_replies, before.rejected_replies + rejected_delta);
                if valid_delta == 1 {
                    // Only a real reply to up1's probe from the gateway's address counts.
                    prop_assert_eq!(&frame[0..6], &UP1_MAC[..]);
                    prop_assert_eq!(&frame[12..14], &[0x08, 0x06][..]);
                    prop_assert_eq!(&frame[28..32], &GW_IP[..]);
                    prop_assert_eq!(&frame[38..42], &PROBE_IP[..]);
                }
                Ok(())
            })
            .unwrap();
    });
}

#[test]
fn inactive_uplink_drops_everything_but_probe_replies() {
    with_rig("inactive_uplink_drops_everything_but_probe_replies", |rig| {
        let udp = failover_tests::packet::test_frame(UP2_MAC, GW2_MAC, GW_IP, [192, 0, 2, 10], 0, 1);
        let up2 = rig.up2;
        let up1 = rig.up1;
        let before = rig.counters(1);
        assert_eq!(rig.run(up2, &udp), Ok(XDP_DROP));
        assert_eq!(rig.counters(1).ingress_dropped_inactive, before.ingress_dropped_inactive + 1);
        assert_eq!(rig.run(up1, &udp), Ok(XDP_PASS), "the active uplink passes it");
        // A valid reply on the inactive uplink still counts (standby gateways are watched).
        let (mut e, mut a) = reply_to_up1();
        e.dst = UP2_MAC;
        a.tha = UP2_MAC;
        e.src = GW2_MAC;
        a.sha = GW2_MAC;
        assert_eq!(rig.run(up2, &arp_frame(e, a)), Ok(XDP_DROP));
        assert_eq!(rig.counters(1).valid_replies, before.valid_replies + 1);
        assert_eq!(rig.counters(1).gateway_mac, Some(GW2_MAC));
    });
}
