//! The datapath under real traffic over veth pairs in throwaway namespaces
//! (topology: `failover_tests::lab`).

use std::time::{Duration, Instant};

use failover_agent::datapath::{AttachOutcome, Datapath, DatapathOptions, EbpfDatapath, IngressMode};
use failover_common::{
    PROBE_MARK,
    frame::{ARP_OP_REPLY, ARP_OP_REQUEST, Arp, BROADCAST_MAC, EthHeader},
};
use failover_tests::{
    PacketSocket,
    lab::{
        GW_IP, GW1_MAC, GW2_MAC, PROBE_IP, SETTLE, TwoUplinks, UP1_MAC, UP2_MAC, VM_IP, VM_MAC, arrivals, uplink,
        vm_frame,
    },
    packet::{arp_frame, test_frame},
    privileged,
};

#[test]
fn inactive_uplink_egress_is_redirected_with_the_gateway_mac_rewritten() {
    if !privileged("inactive_uplink_egress_is_redirected_with_the_gateway_mac_rewritten") {
        return;
    }
    let mut t = TwoUplinks::new(IngressMode::XdpNative);
    // up1 is active: the bridge (stale MAC table) sends to the old gateway via up2.
    t.bridge2.send(&vm_frame(GW2_MAC, 1, 1)).unwrap();
    let at_gw1 = arrivals(&t.gw1, 1, SETTLE);
    assert_eq!(at_gw1.len(), 1, "redirected to the active uplink exactly once: {at_gw1:?}");
    assert_eq!(at_gw1[0].dst, GW1_MAC, "readdressed to the active gateway");
    assert!(arrivals(&t.gw2, 1, Duration::from_millis(50)).is_empty(), "nothing leaves the inactive uplink");
    assert_eq!(t.counters(1).egress_redirected, 1);
    assert_eq!(t.counters(1).egress_rewritten, 1);

    // One map update flips the group: now up1's traffic goes out of up2.
    let up2 = t.up2;
    t.flip_to(up2, GW2_MAC);
    t.bridge1.send(&vm_frame(GW1_MAC, 2, 1)).unwrap();
    t.bridge2.send(&vm_frame(GW1_MAC, 2, 2)).unwrap();
    let at_gw2 = arrivals(&t.gw2, 2, SETTLE);
    assert_eq!(at_gw2.len(), 2, "{at_gw2:?}");
    assert!(at_gw2.iter().all(|f| f.dst == GW2_MAC), "{at_gw2:?}");
    assert!(arrivals(&t.gw1, 2, Duration::from_millis(50)).is_empty());

    // Unicast to a MAC that is no gateway is moved but not readdressed.
    t.bridge1.send(&vm_frame(VM_MAC, 3, 1)).unwrap();
    let at_gw2 = arrivals(&t.gw2, 3, SETTLE);
    assert_eq!(at_gw2.len(), 1);
    assert_eq!(at_gw2[0].dst, VM_MAC);

    // Once the bridge's flows follow, the agent stops redirecting: what an
    // inactive uplink still gets (a flood copy) is dropped, not duplicated.
    let mut state = failover_tests::lab::group_state(up2, GW2_MAC);
    state.flags &= !failover_common::GROUP_REDIRECT_INACTIVE;
    t.dp().set_group(0, &state).unwrap();
    let dropped = t.counters(0).egress_dropped;
    send_dropped(&t.bridge1, &vm_frame(GW1_MAC, 14, 1));
    assert!(arrivals(&t.gw2, 14, SETTLE).is_empty());
    assert!(arrivals(&t.gw1, 14, Duration::from_millis(50)).is_empty());
    assert_eq!(t.counters(0).egress_dropped, dropped + 1);
}

fn probe(own: [u8; 6], gw: [u8; 6]) -> Vec<u8> {
    arp_frame(
        EthHeader { dst: gw, src: own, vlan: 0 },
        Arp { op: ARP_OP_REQUEST, sha: own, spa: PROBE_IP, tha: [0; 6], tpa: GW_IP },
    )
}

fn is_arp(f: &[u8]) -> bool {
    f.len() >= 14 && f[12..14] == [0x08, 0x06]
}

#[test]
fn probes_stay_on_their_uplink() {
    if !privileged("probes_stay_on_their_uplink") {
        return;
    }
    let t = TwoUplinks::new(IngressMode::XdpNative);
    // up1 active; the agent's marked probe out of the standby up2 stays there.
    let probe_socket = t.host.run(|| PacketSocket::open("up2").unwrap());
    probe_socket.set_mark(PROBE_MARK).unwrap();
    probe_socket.send(&probe(UP2_MAC, GW2_MAC)).unwrap();
    let at_gw2 = t.gw2.collect(SETTLE, is_arp);
    assert_eq!(at_gw2.len(), 1, "the probe leaves on the uplink it was sent on");
    assert_eq!(&at_gw2[0].frame[0..6], &GW2_MAC, "not readdressed");
    assert!(t.gw1.collect(Duration::from_millis(50), is_arp).is_empty(), "not redirected");
    assert_eq!(t.counters(1).probes_out, 1);
    assert_eq!(t.counters(1).egress_redirected, 0);
    // The same frame without the mark is VM traffic: moved to the active uplink.
    t.bridge2.send(&probe(UP2_MAC, GW2_MAC)).unwrap();
    assert_eq!(t.gw1.collect(SETTLE, is_arp).len(), 1);
    assert!(t.gw2.collect(Duration::from_millis(50), is_arp).is_empty());
}

/// Sends a frame the TC program is expected to drop: the kernel then
/// answers the sender with ENOBUFS (`NET_XMIT_DROP`), as it would OVS.
fn send_dropped(sock: &PacketSocket, frame: &[u8]) {
    match sock.send(frame) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
        Err(e) => panic!("send: {e}"),
    }
}

#[test]
fn broadcast_leaves_once_through_the_active_uplink() {
    if !privileged("broadcast_leaves_once_through_the_active_uplink") {
        return;
    }
    let t = TwoUplinks::new(IngressMode::XdpNative);
    // The bridge floods a VM's broadcast to both uplinks.
    for seq in 0..5 {
        t.bridge1.send(&vm_frame(BROADCAST_MAC, 4, seq)).unwrap();
        send_dropped(&t.bridge2, &vm_frame(BROADCAST_MAC, 4, seq));
    }
    let at_gw1 = arrivals(&t.gw1, 4, SETTLE);
    let seqs: Vec<u64> = at_gw1.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4], "each broadcast leaves exactly once");
    assert!(arrivals(&t.gw2, 4, Duration::from_millis(50)).is_empty());
    assert_eq!(t.counters(1).egress_dropped, 5);
    // IPv6 multicast too.
    send_dropped(&t.bridge2, &vm_frame([0x33, 0x33, 0, 0, 0, 1], 5, 0));
    assert!(arrivals(&t.gw2, 5, Duration::from_millis(100)).is_empty());
    assert!(arrivals(&t.gw1, 5, Duration::from_millis(50)).is_empty());
}

#[test]
fn inactive_uplink_ingress_is_dropped_and_replies_are_consumed() {
    if !privileged("inactive_uplink_ingress_is_dropped_and_replies_are_consumed") {
        return;
    }
    ingress_is_dropped_and_replies_consumed(IngressMode::XdpNative);
}

#[test]
fn tc_ingress_drops_the_inactive_uplinks_frames_and_consumes_replies() {
    if !privileged("tc_ingress_drops_the_inactive_uplinks_frames_and_consumes_replies") {
        return;
    }
    ingress_is_dropped_and_replies_consumed(IngressMode::Tc);
}

#[expect(clippy::unwrap_used, reason = "the steps of two tests")]
/// What the ingress hook does, in `mode`. (A packet socket sees a frame
/// before TC ingress does: in TC mode the counters tell what was dropped.)
fn ingress_is_dropped_and_replies_consumed(mode: IngressMode) {
    let xdp = mode != IngressMode::Tc;
    let t = TwoUplinks::new(mode);
    let from_gw = |dst: [u8; 6], stream| test_frame(dst, GW1_MAC, GW_IP, VM_IP, stream, 0);
    t.gw2.send(&from_gw(VM_MAC, 6)).unwrap();
    t.gw1.send(&from_gw(VM_MAC, 7)).unwrap();
    if xdp {
        assert!(arrivals(&t.bridge2, 6, SETTLE).is_empty(), "the inactive uplink delivers nothing");
    }
    assert_eq!(arrivals(&t.bridge1, 7, SETTLE).len(), 1, "the active uplink delivers");
    assert_eq!(t.counters(1).ingress_dropped_inactive, 1);
    assert_eq!(t.counters(0).ingress_dropped_inactive, 0);

    // The standby gateway's reply to a probe is counted and consumed.
    let reply = arp_frame(
        EthHeader { dst: UP2_MAC, src: GW2_MAC, vlan: 0 },
        Arp { op: ARP_OP_REPLY, sha: GW2_MAC, spa: GW_IP, tha: UP2_MAC, tpa: PROBE_IP },
    );
    // Unsolicited first: no probe went out, so it does not count.
    t.gw2.send(&reply).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(t.counters(1).valid_replies, 0, "an unsolicited reply is no liveness");
    assert_eq!(t.counters(1).rejected_replies, 1);
    let probe_socket = t.host.run(|| PacketSocket::open("up2").unwrap());
    probe_socket.set_mark(PROBE_MARK).unwrap();
    probe_socket.send(&probe(UP2_MAC, GW2_MAC)).unwrap();
    t.gw2.send(&reply).unwrap();
    if xdp {
        assert!(t.bridge2.collect(SETTLE, is_arp).is_empty(), "consumed by XDP");
    } else {
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = t.counters(1);
    assert_eq!(c.valid_replies, 1);
    assert_eq!(c.gateway_mac, Some(GW2_MAC));
}

/// Sends `count` frames of `stream` at `rate` per second from `sock`.
fn paced_send(sock: &PacketSocket, dst: [u8; 6], stream: u32, count: u64, rate: u64) {
    let start = Instant::now();
    for seq in 0..count {
        let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        sock.send(&vm_frame(dst, stream, seq)).expect("send");
    }
}

#[test]
fn reloading_reuses_the_pins_and_loses_nothing() {
    const COUNT: u64 = 10_000;
    const RATE: u64 = 5_000;
    if !privileged("reloading_reuses_the_pins_and_loses_nothing") {
        return;
    }
    let mut t = TwoUplinks::new(IngressMode::XdpNative);
    let opts = DatapathOptions { ingress: IngressMode::XdpNative, ..DatapathOptions::new(t.pins.path().to_path_buf()) };
    // Traffic through the inactive uplink only arrives while the TC program
    // keeps redirecting it: any gap in the datapath shows as loss.
    let sender = t.host.run(|| PacketSocket::open("up2").unwrap());
    let (up1, gw1) = (t.up1, &t.gw1);
    let received = std::thread::scope(|s| {
        let rx = s.spawn(|| arrivals(gw1, 8, Duration::from_secs(4)));
        let tx = s.spawn(|| paced_send(&sender, GW2_MAC, 8, COUNT, RATE));
        std::thread::sleep(Duration::from_millis(700));
        // The old datapath object goes away (as when the agent exits) and a
        // new one is loaded over the same pins while traffic flows.
        drop(t.dp.take());
        let reloaded = t.host.run(|| {
            let mut dp = EbpfDatapath::open(&opts).expect("reopen");
            let o1 = dp.attach_uplink("up1", &uplink(0, UP1_MAC)).unwrap();
            let o2 = dp.attach_uplink("up2", &uplink(1, UP2_MAC)).unwrap();
            assert_eq!((o1, o2), (AttachOutcome::Reused, AttachOutcome::Reused));
            let state = dp.group(0).unwrap().expect("group state survived");
            assert_eq!(state.active_ifindex, up1);
            dp
        });
        t.dp = Some(reloaded);
        tx.join().unwrap();
        rx.join().unwrap()
    });
    let mut seqs: Vec<u64> = received.iter().map(|f| f.seq).collect();
    let total = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), total, "no duplicates");
    let lost = COUNT - seqs.len() as u64;
    eprintln!("reload under {RATE} frames/s: {} of {COUNT} received, {lost} lost", seqs.len());
    assert_eq!(lost, 0, "reloading lost frames");
    // Counters carried over too (the stats map is pinned).
    assert!(t.counters(1).egress_redirected >= COUNT);
}

#[test]
fn skb_mode_works_the_same() {
    if !privileged("skb_mode_works_the_same") {
        return;
    }
    let mut t = TwoUplinks::new(IngressMode::XdpGeneric);
    t.bridge2.send(&vm_frame(GW2_MAC, 9, 1)).unwrap();
    let at_gw1 = arrivals(&t.gw1, 9, SETTLE);
    assert_eq!(at_gw1.len(), 1);
    assert_eq!(at_gw1[0].dst, GW1_MAC);
    t.gw2.send(&test_frame(VM_MAC, GW2_MAC, GW_IP, VM_IP, 10, 0)).unwrap();
    assert!(arrivals(&t.bridge2, 10, SETTLE).is_empty());
    let up2 = t.up2;
    t.flip_to(up2, GW2_MAC);
    t.gw2.send(&test_frame(VM_MAC, GW2_MAC, GW_IP, VM_IP, 11, 0)).unwrap();
    assert_eq!(arrivals(&t.bridge2, 11, SETTLE).len(), 1, "after the flip up2 delivers");
}

#[test]
fn uninstall_detaches_everything() {
    if !privileged("uninstall_detaches_everything") {
        return;
    }
    let mut t = TwoUplinks::new(IngressMode::XdpGeneric);
    let link_details = |t: &TwoUplinks| {
        let out =
            std::process::Command::new("ip").args(["-n", t.host.name(), "-d", "link", "show", "up2"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(link_details(&t).contains("xdp"), "attached: {}", link_details(&t));
    drop(t.dp.take());
    // In the uplinks' namespace, as the agent runs (a tc filter of the
    // legacy path is found by its interface there).
    let removed = t.host.run(|| EbpfDatapath::uninstall(t.pins.path()).map_err(|e| e.to_string())).unwrap();
    assert_eq!(removed.len(), 4, "two links per uplink: {removed:?}");
    assert!(!t.pins.path().exists());
    assert!(!link_details(&t).contains("xdp"), "detached: {}", link_details(&t));
    // Without the programs, up2 is a plain port again: no redirect, no drop.
    t.bridge2.send(&vm_frame(GW2_MAC, 12, 0)).unwrap();
    assert_eq!(arrivals(&t.gw2, 12, SETTLE).len(), 1);
    t.gw2.send(&test_frame(VM_MAC, GW2_MAC, GW_IP, VM_IP, 13, 0)).unwrap();
    assert_eq!(arrivals(&t.bridge2, 13, SETTLE).len(), 1);
}

#[test]
fn attaching_to_a_missing_interface_names_it_and_leaves_nothing() {
    if !privileged("attaching_to_a_missing_interface_names_it_and_leaves_nothing") {
        return;
    }
    let t = TwoUplinks::new(IngressMode::XdpGeneric);
    let opts =
        DatapathOptions { ingress: IngressMode::XdpGeneric, ..DatapathOptions::new(t.pins.path().to_path_buf()) };
    t.host.run(|| {
        let mut dp = EbpfDatapath::open(&opts).unwrap();
        let err = dp.attach_uplink("eth9", &uplink(5, UP1_MAC)).unwrap_err();
        assert_eq!(err.to_string(), "interface eth9: no such interface");
        let err = dp.attach_uplink("up1", &uplink(999, UP1_MAC)).unwrap_err();
        assert!(err.to_string().contains("interface up1: uplink slot 999"), "{err}");
    });
    // Native XDP on loopback fails after the configuration was written and
    // before TC is attached: all of it must be undone.
    let native = DatapathOptions { ingress: IngressMode::XdpNative, ..opts.clone() };
    t.host.run(|| {
        let mut dp = EbpfDatapath::open(&native).unwrap();
        let err = dp.attach_uplink("lo", &uplink(7, UP1_MAC)).unwrap_err();
        assert!(err.to_string().starts_with("interface lo: attaching failover_xdp"), "{err}");
        assert_eq!(dp.uplink("lo").unwrap(), None, "the configuration was taken back");
    });
    let links: Vec<_> =
        std::fs::read_dir(t.pins.path().join("links")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(links.len(), 4, "only the lab's own links: {links:?}");
}

/// A test frame padded to `size` bytes on the wire (Ethernet header included).
fn jumbo_frame(size: usize, stream: u32) -> Vec<u8> {
    let mut f = test_frame(VM_MAC, GW1_MAC, GW_IP, VM_IP, stream, 1);
    f.resize(size, 0xab);
    let ip_len = u16::try_from(size - 14).expect("fits");
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let csum = failover_tests::packet::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

#[test]
fn native_xdp_attaches_on_a_jumbo_mtu_and_a_9000_byte_frame_passes() {
    if !privileged("native_xdp_attaches_on_a_jumbo_mtu_and_a_9000_byte_frame_passes") {
        return;
    }
    let mut t = TwoUplinks::new(IngressMode::Tc);
    t.host.ip(&["link", "set", "up1", "mtu", "9000"]);
    t.gw1_ns.ip(&["link", "set", "gw1", "mtu", "9000"]);
    // What the first agents attached (no frags support) is refused here.
    let other = failover_tests::PinDir::new();
    std::fs::create_dir_all(other.path()).unwrap();
    let refused = t.host.run(|| {
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(other.path())
            .load(failover_agent::datapath::ebpf::object().unwrap())
            .unwrap();
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(failover_common::PROG_XDP).unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach("up1", aya::programs::XdpMode::Driver).map(|_| ()).map_err(|e| format!("{e:#}"))
    });
    assert!(refused.is_err(), "native XDP without frags attached on MTU 9000");
    // The agent's native mode attaches, over the pins of the TC mode.
    drop(t.dp.take());
    let opts = DatapathOptions { ingress: IngressMode::XdpNative, ..DatapathOptions::new(t.pins.path()) };
    let dp = t.host.run(|| {
        let mut dp = EbpfDatapath::open(&opts).expect("open");
        assert_eq!(
            dp.attach_uplink("up1", &uplink(0, UP1_MAC)).expect("native XDP on MTU 9000"),
            AttachOutcome::Attached
        );
        dp
    });
    t.dp = Some(dp);
    let pins: Vec<String> = std::fs::read_dir(t.pins.path().join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pins.iter().any(|p| p.starts_with("xdpn-up1-")), "{pins:?}");
    assert!(!pins.iter().any(|p| p.starts_with("tci-up1-")), "TC ingress detached after the switch: {pins:?}");
    // A 9000-byte packet from the gateway passes the active uplink whole.
    let frame = jumbo_frame(9014, 30);
    t.gw1.send(&frame).unwrap();
    let got = t.bridge1.collect(SETTLE, |f| parse(f).is_some_and(|p| p.stream == 30));
    assert_eq!(got.len(), 1, "the jumbo frame arrived");
    assert_eq!(got[0].frame.len(), 9014, "whole");
}

fn parse(f: &[u8]) -> Option<failover_tests::packet::TestFrame> {
    failover_tests::packet::parse_test_frame(f)
}

/// The program id the hook pinned at `pin` runs: a pinned link's, or for
/// a netlink filter (legacy TC path) the one `tc` shows for up1's egress.
fn linked_prog(t: &TwoUplinks, pin: &std::path::Path) -> u32 {
    if !pin.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tcnl-")) {
        let link = aya::programs::links::PinnedLink::from_pin(pin).expect("pinned link");
        return aya::programs::links::FdLink::from(link).info().expect("link info").program_id();
    }
    let out = std::process::Command::new("tc")
        .args(["-n", t.host.name(), "filter", "show", "dev", "up1", "egress"])
        .output()
        .expect("tc");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("handle 0xfa11")).expect("our filter");
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "id").expect("an id");
    words[at + 1].parse().expect("a number")
}

#[test]
fn an_older_map_layout_is_replaced_in_place_under_traffic() {
    const COUNT: u64 = 6_000;
    const RATE: u64 = 3_000;
    if !privileged("an_older_map_layout_is_replaced_in_place_under_traffic") {
        return;
    }
    let mut t = TwoUplinks::new(IngressMode::Tc);
    let layout = t.pins.path().join(format!("layout-v{}", failover_common::LAYOUT_VERSION));
    // What the first agents left: maps and links, no layout directory.
    std::fs::remove_dir(&layout).unwrap();
    let egress_pin = std::fs::read_dir(t.pins.path().join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("tc-up1-") || name.starts_with("tcnl-up1-")
        })
        .unwrap();
    let old_prog = linked_prog(&t, &egress_pin);
    let opts = DatapathOptions::new(t.pins.path());
    let (up1, gw1) = (t.up1, &t.gw1);
    let sender = t.host.run(|| PacketSocket::open("up1").unwrap());
    let received = std::thread::scope(|s| {
        let rx = s.spawn(|| arrivals(gw1, 40, Duration::from_secs(3)));
        let tx = s.spawn(|| paced_send(&sender, GW1_MAC, 40, COUNT, RATE));
        std::thread::sleep(Duration::from_millis(500));
        drop(t.dp.take());
        let reopened = t.host.run(|| {
            let mut dp = EbpfDatapath::open(&opts).expect("reopen over layout 1");
            assert_eq!(dp.group(0).unwrap(), None, "new maps: the old layout's state is not read");
            let o1 = dp.attach_uplink("up1", &uplink(0, UP1_MAC)).unwrap();
            let o2 = dp.attach_uplink("up2", &uplink(1, UP2_MAC)).unwrap();
            assert_eq!((o1, o2), (AttachOutcome::Reused, AttachOutcome::Reused), "the same links, new programs");
            dp.set_group(0, &failover_tests::lab::group_state(up1, GW1_MAC)).unwrap();
            dp
        });
        t.dp = Some(reopened);
        tx.join().unwrap();
        rx.join().unwrap()
    });
    let lost = COUNT - received.len() as u64;
    eprintln!("layout 1 -> {} under {RATE} frames/s: {lost} of {COUNT} lost", failover_common::LAYOUT_VERSION);
    assert_eq!(lost, 0);
    assert!(layout.is_dir(), "this layout marked");
    assert_ne!(linked_prog(&t, &egress_pin), old_prog, "the link runs the new program");
}

#[test]
fn a_newer_map_layout_is_refused_and_left_alone() {
    if !privileged("a_newer_map_layout_is_refused_and_left_alone") {
        return;
    }
    let mut t = TwoUplinks::new(IngressMode::Tc);
    let mine = t.pins.path().join(format!("layout-v{}", failover_common::LAYOUT_VERSION));
    std::fs::remove_dir(&mine).unwrap();
    std::fs::create_dir(t.pins.path().join("layout-v99")).unwrap();
    drop(t.dp.take());
    let opts = DatapathOptions::new(t.pins.path());
    let err = t.host.run(|| EbpfDatapath::open(&opts).unwrap_err());
    let text = err.to_string();
    assert!(text.contains("layout 99, newer than this agent's"), "{text}");
    assert!(text.contains("refusing to downgrade"), "{text}");
    // Nothing touched: the newer agent's maps and links are all there.
    assert!(t.pins.path().join("maps/GROUPS").exists());
    assert_eq!(std::fs::read_dir(t.pins.path().join("links")).unwrap().count(), 4);
}
