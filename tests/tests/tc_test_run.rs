//! The TC egress program's fast rule, run by the kernel on crafted frames
//! (`BPF_PROG_TEST_RUN`), over the real maps of a datapath attached to two
//! veths: the kernel leaves an active uplink whose carrier is lost (read
//! from the device itself) or whose gateway is silent, writes the group's
//! state and reports the switchover on its ring buffer; it stays when the
//! agent stopped probing, when no uplink is healthy, when held or excluded.
#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use failover_agent::datapath::{
    Datapath, DatapathOptions, EbpfDatapath, IngressMode,
    ebpf::{carrier_globals, global_values, ifindex, object},
};
use failover_common::{
    GROUP_ACTIVE_MAC_KNOWN, GROUP_DATA_PLANE, GROUP_HOLD, GROUP_KERNEL_FAILOVER, GROUP_KERNEL_SWITCHED, GroupState,
    MAP_PROBES, Member, PROBE_MARK, PROG_TC_EGRESS, PROG_XDP, ProbeCount, SWITCH_CARRIER, SWITCH_SILENCE,
};
use failover_tests::{
    Netns, PinDir,
    lab::{GW1_MAC, GW2_MAC, UP1_MAC, UP2_MAC, uplink},
    privileged,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const GROUP: u32 = 7;
const MS: u64 = 1_000_000;

struct Rig {
    dp: EbpfDatapath,
    runner: Ebpf,
    up1: u32,
    up2: u32,
}

impl Rig {
    fn new(pins: &PinDir) -> Self {
        let opts =
            DatapathOptions { ingress: IngressMode::XdpGeneric, ..DatapathOptions::new(pins.path().to_path_buf()) };
        let mut dp = EbpfDatapath::open(&opts).expect("open datapath");
        assert_eq!(dp.kernel_carrier(), failover_agent::datapath::KernelCarrier::On);
        for (i, name, mac) in [(0, "up1", UP1_MAC), (1, "up2", UP2_MAC)] {
            let cfg = failover_common::UplinkConfig { group: GROUP, ..uplink(i, mac) };
            dp.attach_uplink(name, &cfg).expect("attach");
        }
        let (up1, up2) = (ifindex("up1").unwrap(), ifindex("up2").unwrap());
        // A second copy of the programs with the same globals, sharing the maps.
        let values = global_values(Some(carrier_globals(true).expect("BTF offsets")));
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pins.path().join("maps"));
        for (name, value) in &values {
            loader.override_global(name, value, true);
        }
        let mut runner = loader.load(object().unwrap()).expect("load a second copy");
        let prog: &mut SchedClassifier = runner.program_mut(PROG_TC_EGRESS).unwrap().try_into().unwrap();
        prog.load().expect("load TC for test runs");
        let xdp: &mut Xdp = runner.program_mut(PROG_XDP).unwrap().try_into().unwrap();
        xdp.load().expect("load XDP for test runs");
        let mut rig = Self { dp, runner, up1, up2 };
        rig.reset();
        rig
    }

    /// Group on up1, both healthy in the agent's view, nothing outstanding.
    fn reset(&mut self) {
        self.dp.set_group(GROUP, &self.group()).unwrap();
        for slot in 0..2 {
            self.set_probes(slot, ProbeCount { sent: 10, answered: 10, acked: 10, last_reply_ns: now_ns() });
        }
        let _ = self.dp.kernel_switches();
    }

    fn group(&self) -> GroupState {
        let mut g = GroupState::inactive();
        g.member_count = 2;
        g.members[0] = Member { ifindex: self.up1, slot: 0 };
        g.members[1] = Member { ifindex: self.up2, slot: 1 };
        g.gateway_macs[0] = GW1_MAC;
        g.gateway_macs[1] = GW2_MAC;
        g.mac_known = 0b11;
        g.active_ifindex = self.up1;
        g.active_gateway_mac = GW1_MAC;
        g.steer_ifindex = self.up1;
        g.flags = GROUP_ACTIVE_MAC_KNOWN | GROUP_KERNEL_FAILOVER;
        g.allowed = 0b11;
        g.preferred = 0b11;
        g.down_after = 3;
        g.silence_ns = 31 * MS;
        g
    }

    fn set_probes(&mut self, slot: u32, p: ProbeCount) {
        let mut probes: Array<_, ProbeCount> = Array::try_from(self.runner.map_mut(MAP_PROBES).unwrap()).unwrap();
        probes.set(slot, p, 0).unwrap();
    }

    fn probes(&self, slot: u32) -> ProbeCount {
        let probes: Array<_, ProbeCount> = Array::try_from(self.runner.map(MAP_PROBES).unwrap()).unwrap();
        probes.get(&slot, 0).unwrap()
    }

    /// Runs TC egress on `frame` leaving `ifindex` with skb mark `mark`.
    fn run_n(&mut self, ifindex: u32, mark: u32, frame: &[u8], repeat: u32) -> (u32, Duration) {
        let prog: &mut SchedClassifier = self.runner.program_mut(PROG_TC_EGRESS).unwrap().try_into().unwrap();
        // struct __sk_buff: len, pkt_type, mark (8), queue_mapping, protocol,
        // vlan_present, vlan_tci, vlan_proto, priority, ingress_ifindex, ifindex (40).
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        };
        let r = prog.test_run(opts).expect("test run");
        (r.return_value, r.duration)
    }

    /// Runs XDP on `frame` arriving on `ifindex`.
    fn run_xdp(&mut self, ifindex: u32, frame: &[u8]) -> u32 {
        let prog: &mut Xdp = self.runner.program_mut(PROG_XDP).unwrap().try_into().unwrap();
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let opts = TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..TestRunOptions::new() };
        prog.test_run(opts).expect("XDP test run").return_value
    }

    fn run(&mut self, ifindex: u32, mark: u32, frame: &[u8]) -> u32 {
        self.run_n(ifindex, mark, frame, 1).0
    }

    fn active(&self) -> u32 {
        self.dp.group(GROUP).unwrap().unwrap().active_ifindex
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec.unsigned_abs() * 1_000_000_000 + ts.tv_nsec.unsigned_abs()
}

/// A VM's unicast frame to gateway 1.
fn vm_frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&GW1_MAC);
    f[6..12].copy_from_slice(&[0x02, 0xfa, 0, 0, 0x0c, 0x01]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn with_rig(test: &str, body: impl FnOnce(&mut Rig, &Netns) + Send) {
    if !privileged(test) {
        return;
    }
    let host = Netns::new("h");
    let peer = Netns::new("p");
    host.veth("up1", UP1_MAC, &peer, "gw1", GW1_MAC);
    host.veth("up2", UP2_MAC, &peer, "gw2", GW2_MAC);
    let pins = PinDir::new();
    host.run(|| {
        let mut rig = Rig::new(&pins);
        body(&mut rig, &peer);
    });
}

#[test]
fn a_lost_carrier_read_from_the_device_moves_the_next_frame() {
    with_rig("a_lost_carrier_read_from_the_device_moves_the_next_frame", |rig, peer| {
        let frame = vm_frame();
        // A probe leaving each uplink records where the kernel keeps its device.
        for ifindex in [rig.up1, rig.up2] {
            assert_eq!(rig.run(ifindex, PROBE_MARK, &frame), TC_ACT_OK);
        }
        let dev = rig.dp.device(0).unwrap();
        assert!(dev.addr != 0 && dev.ifindex == rig.up1, "{dev:?}");
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK, "healthy active: passes");
        assert_eq!(rig.active(), rig.up1);
        // The peer goes down: up1 has no carrier (nothing told user space yet).
        peer.ip(&["link", "set", "gw1", "down"]);
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_REDIRECT, "the very frame goes to up2");
        let g = rig.dp.group(GROUP).unwrap().unwrap();
        assert_eq!(g.active_ifindex, rig.up2);
        assert_eq!(g.active_gateway_mac, GW2_MAC);
        assert_ne!(g.flags & GROUP_KERNEL_SWITCHED, 0);
        let reports = rig.dp.kernel_switches();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(
            (reports[0].group, reports[0].from_ifindex, reports[0].to_ifindex, reports[0].reason),
            (GROUP, rig.up1, rig.up2, SWITCH_CARRIER)
        );
        // Back up: the kernel does not fail back (that is the agent's call).
        peer.ip(&["link", "set", "gw1", "up"]);
        assert_eq!(rig.run(rig.up2, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up2);
    });
}

#[test]
fn a_silent_gateway_is_left_only_with_probes_unanswered() {
    with_rig("a_silent_gateway_is_left_only_with_probes_unanswered", |rig, _| {
        let frame = vm_frame();
        // The agent stopped: no probes out since the last reply, long ago.
        rig.set_probes(0, ProbeCount { sent: 10, answered: 10, acked: 10, last_reply_ns: now_ns() - 5_000 * MS });
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "a stalled agent never reads as a dead gateway");
        // Two unanswered: not yet.
        rig.set_probes(0, ProbeCount { sent: 12, answered: 10, acked: 10, last_reply_ns: now_ns() - 5_000 * MS });
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        // Three unanswered, but the last reply is recent: not yet.
        rig.set_probes(0, ProbeCount { sent: 13, answered: 10, acked: 10, last_reply_ns: now_ns() });
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1);
        // Three unanswered and the detection time passed: gone.
        rig.set_probes(0, ProbeCount { sent: 13, answered: 10, acked: 10, last_reply_ns: now_ns() - 40 * MS });
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_REDIRECT);
        assert_eq!(rig.active(), rig.up2);
        let reports = rig.dp.kernel_switches();
        assert_eq!(reports.iter().map(|r| r.reason).collect::<Vec<_>>(), vec![SWITCH_SILENCE]);
    });
}

#[test]
fn a_gateway_frame_is_a_proof_of_life_and_the_quiet_round_a_miss() {
    with_rig("a_gateway_frame_is_a_proof_of_life_and_the_quiet_round_a_miss", |rig, _| {
        const XDP_PASS: u32 = 2;
        let frame = vm_frame();
        // up1's gateway MAC known: its frames are proofs of life.
        let cfg = failover_common::UplinkConfig {
            group: GROUP,
            gateway_mac: GW1_MAC,
            flags: failover_common::UPLINK_GATEWAY_MAC_KNOWN,
            ..uplink(0, UP1_MAC)
        };
        rig.dp.update_uplink("up1", &cfg).unwrap();
        let mut from_gw = vm_frame();
        from_gw[..6].copy_from_slice(&UP1_MAC);
        from_gw[6..12].copy_from_slice(&GW1_MAC);

        // No probe out, the last proof long ago: the frame's time is recorded.
        let old = now_ns() - 5_000 * MS;
        rig.set_probes(0, ProbeCount { sent: 10, answered: 10, acked: 10, last_reply_ns: old });
        let before = now_ns();
        assert_eq!(rig.run_xdp(rig.up1, &from_gw), XDP_PASS);
        let p = rig.probes(0);
        assert!(p.last_reply_ns >= before && p.last_reply_ns <= now_ns(), "frame time recorded: {p:?}");
        assert_eq!((p.sent, p.acked, p.answered), (10, 10, 10), "counts untouched");
        // Within the grain of the recorded time: not written again.
        let ahead = now_ns() + 100 * MS;
        rig.set_probes(0, ProbeCount { last_reply_ns: ahead, ..p });
        assert_eq!(rig.run_xdp(rig.up1, &from_gw), XDP_PASS);
        assert_eq!(rig.probes(0).last_reply_ns, ahead, "one write per grain, not per frame");

        // Data-plane liveness: two probes unanswered and the detection time
        // passed since the last proof are enough (the quiet round before
        // the first probe was the first miss); without it, not.
        let two_out = ProbeCount { sent: 12, answered: 10, acked: 10, last_reply_ns: now_ns() - 40 * MS };
        rig.set_probes(0, two_out);
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "fixed-rate probing: three needed");
        let mut g = rig.group();
        g.flags |= GROUP_DATA_PLANE;
        rig.dp.set_group(GROUP, &g).unwrap();
        // A frame from the gateway acknowledges them: alive.
        assert_eq!(rig.run_xdp(rig.up1, &from_gw), XDP_PASS);
        let p = rig.probes(0);
        assert_eq!(p.acked, 12, "outstanding probes acknowledged by the frame");
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "alive by its frame");
        // Recent frame, two probes out since: not yet.
        rig.set_probes(0, ProbeCount { sent: 14, acked: 12, last_reply_ns: now_ns() - 10 * MS, ..p });
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "silent for less than the detection time");
        // One probe out: never (a stalled agent, or the first probe).
        rig.set_probes(0, ProbeCount { sent: 13, acked: 12, last_reply_ns: now_ns() - 5_000 * MS, ..p });
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "one probe out is not enough");
        // Two out and nothing for 40 ms: gone.
        rig.set_probes(0, ProbeCount { sent: 14, acked: 12, last_reply_ns: now_ns() - 40 * MS, ..p });
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_REDIRECT);
        assert_eq!(rig.active(), rig.up2);
        let reports = rig.dp.kernel_switches();
        assert_eq!(reports.iter().map(|r| r.reason).collect::<Vec<_>>(), vec![SWITCH_SILENCE]);
    });
}

#[test]
fn the_kernel_stays_when_nothing_is_better_held_or_excluded() {
    with_rig("the_kernel_stays_when_nothing_is_better_held_or_excluded", |rig, _| {
        let frame = vm_frame();
        let silent = ProbeCount { sent: 13, answered: 10, acked: 10, last_reply_ns: now_ns() - 40 * MS };
        // Both silent: stay.
        rig.set_probes(0, silent);
        rig.set_probes(1, silent);
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "no healthy uplink: traffic stays");
        rig.reset();
        rig.set_probes(0, silent);
        // Held by an operator.
        let mut g = rig.group();
        g.flags |= GROUP_HOLD;
        rig.dp.set_group(GROUP, &g).unwrap();
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "held");
        // The standby excluded by the agent (flapping, say, and not allowed).
        let mut g = rig.group();
        g.allowed = 0b01;
        rig.dp.set_group(GROUP, &g).unwrap();
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "excluded");
        // The rule off (`kernel_failover = false`).
        let mut g = rig.group();
        g.flags &= !GROUP_KERNEL_FAILOVER;
        rig.dp.set_group(GROUP, &g).unwrap();
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_OK);
        assert_eq!(rig.active(), rig.up1, "off");
        assert!(rig.dp.kernel_switches().is_empty());
        // Allowed again: now it goes.
        rig.dp.set_group(GROUP, &rig.group()).unwrap();
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_REDIRECT);
        assert_eq!(rig.active(), rig.up2);
    });
}

#[test]
fn only_the_uplink_the_rules_point_at_redirects_after_a_kernel_switch() {
    with_rig("only_the_uplink_the_rules_point_at_redirects_after_a_kernel_switch", |rig, _| {
        let frame = vm_frame();
        let mut g = rig.group().switched_to(1);
        g.steer_ifindex = rig.up1;
        rig.dp.set_group(GROUP, &g).unwrap();
        assert_eq!(rig.run(rig.up1, 0, &frame), TC_ACT_REDIRECT, "the rules still send to up1: moved to up2");
        // Broadcast leaving the old uplink is dropped (the bridge floods it to up2 too).
        let mut bcast = frame.clone();
        bcast[..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(rig.run(rig.up1, 0, &bcast), 2, "TC_ACT_SHOT");
    });
}

#[test]
fn a_frame_from_the_standby_gateway_moves_the_group_when_the_active_is_dead() {
    with_rig("a_frame_from_the_standby_gateway_moves_the_group_when_the_active_is_dead", |rig, peer| {
        const XDP_DROP: u32 = 1;
        const XDP_PASS: u32 = 2;
        let frame = vm_frame();
        for ifindex in [rig.up1, rig.up2] {
            rig.run(ifindex, PROBE_MARK, &frame);
        }
        // A frame from the gateway side arriving on the standby: dropped
        // while the active is healthy (active-backup).
        let mut from_gw = vm_frame();
        from_gw[..6].copy_from_slice(&[0x02, 0xfa, 0, 0, 0x0c, 0x01]);
        from_gw[6..12].copy_from_slice(&GW2_MAC);
        assert_eq!(rig.run_xdp(rig.up2, &from_gw), XDP_DROP);
        // The active loses its carrier and no VM frame leaves to notice:
        // the standby's next frame moves the group and passes.
        peer.ip(&["link", "set", "gw1", "down"]);
        assert_eq!(rig.run_xdp(rig.up2, &from_gw), XDP_PASS);
        assert_eq!(rig.active(), rig.up2);
        assert_eq!(rig.dp.kernel_switches().len(), 1);
        peer.ip(&["link", "set", "gw1", "up"]);
    });
}
