//! The datapath tour (`cargo xtask demo`): loads the real datapath into
//! throwaway namespaces and shows, with real frames, what it does. Everything
//! it creates is removed when it ends, also on failure.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use failover_agent::datapath::{AttachOutcome, Datapath, DatapathOptions, EbpfDatapath, IngressMode};
use failover_tests::{
    PacketSocket,
    lab::{GW_IP, GW1_MAC, GW2_MAC, PROBE_IP, SETTLE, TwoUplinks, UP1_MAC, UP2_MAC, arrivals, uplink, vm_frame},
    net::mac_str,
    packet::{arp_reply, parse_test_frame},
};

fn step(n: u32, text: &str) {
    println!("\n\x1b[1m{n}. {text}\x1b[0m");
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        println!("   ok: {what}");
        Ok(())
    } else {
        Err(format!("unexpected: {what}"))
    }
}

fn probe_reply(own: [u8; 6], gw: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
    arp_reply(own, gw, spa, own, PROBE_IP)
}

/// Sends `count` frames of `stream` at `rate`/s from `sock`; calls `at_half` halfway.
fn stream(sock: &PacketSocket, dst: [u8; 6], id: u32, count: u64, rate: u64, mut at_half: impl FnMut()) {
    let start = Instant::now();
    for seq in 0..count {
        if seq == count / 2 {
            at_half();
        }
        let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // A frame the datapath drops makes send() fail with ENOBUFS: that is loss, counted below.
        let _ = sock.send(&vm_frame(dst, id, seq));
    }
}

fn tour() -> Result<(), String> {
    step(1, "A throwaway lab: one host namespace, two uplinks, two gateways");
    let mut t = TwoUplinks::new(IngressMode::XdpNative);
    println!(
        "   host namespace {}: up1 ({}) -> gateway 1 ({}), up2 ({}) -> gateway 2 ({})",
        t.host.name(),
        mac_str(&UP1_MAC),
        mac_str(&GW1_MAC),
        mac_str(&UP2_MAC),
        mac_str(&GW2_MAC)
    );
    println!("   XDP and TC egress attached to both uplinks (native XDP), pinned under {}", t.pins.path().display());
    println!("   group 0: up1 active, gateway {} (both gateways share 192.0.2.1)", mac_str(&GW1_MAC));

    step(2, "Gateway liveness is measured in the kernel");
    // The agent's probes (marked) go out first: only replies to probes count.
    for (ifname, own) in [("up1", UP1_MAC), ("up2", UP2_MAC)] {
        let sock = t.host.run(|| PacketSocket::open(ifname)).map_err(|e| e.to_string())?;
        sock.set_mark(failover_common::PROBE_MARK).map_err(|e| e.to_string())?;
        let frame = failover_agent::probe::probe_frame(&failover_agent::probe::ProbeSpec {
            own_mac: own,
            source: std::net::IpAddr::from(PROBE_IP),
            gateway: std::net::IpAddr::from(GW_IP),
            gateway_mac: None,
            vlan: None,
        })
        .ok_or("probe frame")?;
        sock.send(&frame).map_err(|e| e.to_string())?;
    }
    t.gw1.send(&probe_reply(UP1_MAC, GW1_MAC, GW_IP)).map_err(|e| e.to_string())?;
    t.gw2.send(&probe_reply(UP2_MAC, GW2_MAC, GW_IP)).map_err(|e| e.to_string())?;
    t.gw2.send(&probe_reply(UP2_MAC, GW2_MAC, [192, 0, 2, 66])).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(50));
    let (c1, c2) = (t.counters(0), t.counters(1));
    println!(
        "   up1: {} valid reply, gateway MAC seen {}; up2: {} valid, {} rejected (a reply from 192.0.2.66)",
        c1.valid_replies,
        c1.gateway_mac.map_or("-".into(), |m| mac_str(&m)),
        c2.valid_replies,
        c2.rejected_replies
    );
    check(
        c1.valid_replies == 1 && c2.valid_replies == 1 && c2.rejected_replies == 1,
        "replies counted per uplink, the spoof rejected",
    )?;

    step(3, "The standby uplink delivers nothing to the bridge");
    let from_gw2 = failover_tests::packet::test_frame(UP2_MAC, GW2_MAC, GW_IP, [192, 0, 2, 10], 20, 0);
    t.gw2.send(&from_gw2).map_err(|e| e.to_string())?;
    let seen = arrivals(&t.bridge2, 20, SETTLE).len();
    check(seen == 0 && t.counters(1).ingress_dropped_inactive == 1, "a frame from gateway 2 was dropped at up2's XDP")?;

    step(4, "Switchover: one map update, under 10 000 frames/s");
    let up2 = t.up2;
    let (bridge1, gw1, gw2) = (&t.bridge1, &t.gw1, &t.gw2);
    let dp = t.dp.as_mut().ok_or("datapath not open")?;
    let count = 10_000;
    let mut flipped_at = None;
    let (at_gw1, at_gw2) = std::thread::scope(|s| {
        let r1 = s.spawn(|| {
            gw1.collect(Duration::from_millis(1600), |f| parse_test_frame(f).is_some_and(|p| p.stream == 21))
        });
        let r2 = s.spawn(|| {
            gw2.collect(Duration::from_millis(1600), |f| parse_test_frame(f).is_some_and(|p| p.stream == 21))
        });
        // The bridge keeps sending through up1 (its flows lag behind); the
        // TC program moves those frames to up2 from the map update on.
        stream(bridge1, GW1_MAC, 21, count, 10_000, || {
            let started = Instant::now();
            dp.set_group(0, &failover_tests::lab::group_state(up2, GW2_MAC)).expect("flip");
            flipped_at = Some(started.elapsed());
        });
        (r1.join().expect("receiver"), r2.join().expect("receiver"))
    });
    let last_old = at_gw1.iter().map(|r| r.at).max().unwrap_or_default();
    let first_new = at_gw2.iter().map(|r| r.at).min().unwrap_or_default();
    let gap = first_new.saturating_sub(last_old);
    let received = at_gw1.len() + at_gw2.len();
    let lost = count as usize - received.min(count as usize);
    let readdressed = at_gw2.iter().all(|r| parse_test_frame(&r.frame).is_some_and(|p| p.dst == GW2_MAC));
    println!(
        "   map update took {:.1} us; {} frames left via up1, {} via up2; gap {:.3} ms; lost {lost} of {count}",
        flipped_at.unwrap_or_default().as_secs_f64() * 1e6,
        at_gw1.len(),
        at_gw2.len(),
        gap.as_secs_f64() * 1e3
    );
    check(lost == 0 && !at_gw2.is_empty() && readdressed, "no frame lost, all readdressed to gateway 2's MAC")?;

    step(5, "The agent restarts: the pinned datapath keeps running");
    let opts = DatapathOptions { ingress: IngressMode::XdpNative, ..DatapathOptions::new(t.pins.path().to_path_buf()) };
    drop(t.dp.take());
    let outcomes = t.host.run(|| {
        let mut dp = EbpfDatapath::open(&opts).expect("reopen");
        let o = [
            dp.attach_uplink("up1", &uplink(0, UP1_MAC)).expect("attach up1"),
            dp.attach_uplink("up2", &uplink(1, UP2_MAC)).expect("attach up2"),
        ];
        (dp, o)
    });
    t.dp = Some(outcomes.0);
    check(
        outcomes.1 == [AttachOutcome::Reused; 2],
        "a second load reused both uplinks' pinned links, detaching nothing",
    )?;
    let active = t.dp().group(0).map_err(|e| e.to_string())?.map(|g| g.active_ifindex);
    check(active == Some(up2), "the group is still on up2")?;
    Ok(())
}

fn main() -> ExitCode {
    if !failover_tests::privileged("datapath tour") {
        return ExitCode::FAILURE;
    }
    let result = tour();
    // The lab's guards have dropped by now: namespaces deleted, links detached, pins removed.
    step(6, "Teardown");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| failover_tests::owner_pid(n) == Some(std::process::id()))
        .collect();
    println!("   namespaces left behind: {}", if left.is_empty() { "none".into() } else { left.join(", ") });
    match result {
        Ok(()) if left.is_empty() => {
            println!("\nThe datapath works. The whole method, with the agent and OVS: cargo xtask demo.");
            ExitCode::SUCCESS
        }
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\n\x1b[1;31mtour failed:\x1b[0m {e}");
            ExitCode::FAILURE
        }
    }
}
