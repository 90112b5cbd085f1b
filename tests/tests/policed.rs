//! Gateways that police ARP to their CPU (as routers do: `nft ... limit
//! rate over 20/second drop` on their ingress), with VM traffic flowing
//! both ways at 10 000 datagrams/s: the gateway's traffic proves it alive,
//! so the active uplink needs no probes and nothing fails over; with the
//! first agents' fixed-rate probing (`data_plane_liveness = false`) the
//! policer eats the probes and the group fails over for nothing.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use failover_agent::control::Status;
use failover_tests::{
    Netns,
    agent_lab::{AgentLab, LabOptions},
    privileged,
    udp::{self, PORT},
};

const RATE: u64 = 10_000;
/// The routers' policer: ARP requests per second that reach the gateway.
const POLICE_PER_S: u32 = 20;

/// Polices ARP requests arriving on `dev` in `ns` to [`POLICE_PER_S`].
fn police_arp(ns: &Netns, dev: &str) {
    let rules = format!(
        "table netdev police {{\n chain in {{\n  type filter hook ingress device \"{dev}\" priority 0;\n  \
         arp operation request limit rate over {POLICE_PER_S}/second drop\n }}\n}}\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (apt-get install nftables; ./dev test installs it)");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), rules.as_bytes()).expect("rules to nft");
    drop(child.stdin.take());
    assert!(child.wait().expect("nft").success(), "nft refused the policer");
}

/// A count as a float (probe counts are far below 2^52).
fn count(n: u64) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

fn switchovers(s: &Status) -> Option<&str> {
    s.groups[0].last_switchover.as_ref().map(|sw| sw.to.as_str())
}

/// Runs `secs` of traffic both ways through the primary, both gateways
/// policing ARP from the moment it flows; returns (switches seen, primary's probes/s during it, the
/// primary's probes/s without traffic before).
fn policed_run(options: LabOptions, secs: u64) -> (Vec<String>, f64, f64) {
    let mut lab = AgentLab::new(options);
    let _agent = lab.start_agent();
    let start = lab.wait_for("primary active", Duration::from_secs(10), |s| {
        s.groups[0].active.as_deref() == Some("primary") && s.groups[0].uplinks[0].healthy
    });
    let startup = switchovers(&start).map(str::to_string);
    // Quiet: the primary is probed at its interval.
    let quiet_from = lab.status().groups[0].uplinks[0].probes_sent;
    std::thread::sleep(Duration::from_secs(1));
    let quiet = count(lab.status().groups[0].uplinks[0].probes_sent - quiet_from);

    let back_sink = udp::sink(&lab.vm, 91, 0);
    let back = udp::source(&lab.gw1, SocketAddr::from(([192, 0, 2, 10], PORT)), 91, RATE, RATE * (secs + 5));
    let out = lab.traffic(90, RATE);
    std::thread::sleep(Duration::from_secs(1)); // neighbours resolved, traffic flowing
    // The routers start policing (a gateway policing with no traffic at
    // all would be right to read as dead at this probe rate).
    police_arp(&lab.gw1, "gw1");
    police_arp(&lab.gw2, "gw2");
    let from = lab.status().groups[0].uplinks[0].probes_sent;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let mut switches = Vec::new();
    let mut last = startup;
    while Instant::now() < deadline {
        let s = lab.status();
        let now = switchovers(&s).map(str::to_string);
        if now != last {
            switches.push(format!("{now:?} at {:.1} s", t0.elapsed().as_secs_f64()));
            last = now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let busy = count(lab.status().groups[0].uplinks[0].probes_sent - from) / t0.elapsed().as_secs_f64();
    let r = out.finish();
    let sent = back.stop();
    let back_report = udp::report(sent, 1, &back_sink.stop());
    eprintln!("VM -> gateway: {r}\ngateway -> VM: {back_report}");
    (switches, busy, quiet)
}

#[test]
fn policed_arp_under_traffic_fails_nothing_over_but_fixed_rate_probing_does() {
    if !privileged("policed_arp_under_traffic_fails_nothing_over_but_fixed_rate_probing_does") {
        return;
    }
    // The standby carries no traffic: probed at a rate the policer lets through.
    let standby = "standby_probe_interval_ms = 100\n".to_string();
    let options = LabOptions {
        probe_interval_ms: 10,
        standby_extra: standby.clone(),
        group_extra: "data_plane_liveness = true\n".into(),
        ..LabOptions::default()
    };
    let (switches, busy, quiet) = policed_run(options, 60);
    eprintln!(
        "data-plane liveness: {} switchovers in 60 s; primary probes/s: {busy:.2} under traffic, {quiet:.0} quiet",
        switches.len()
    );
    assert!(switches.is_empty(), "false switchovers: {switches:?}");
    assert!(busy <= 1.0, "the active uplink is probed at most once a second under traffic: {busy:.2}/s");
    assert!(quiet >= 50.0, "without traffic it is probed as before (100/s at 10 ms): {quiet}/s");

    // The same with the first agents' fixed rate: the policer eats the probes.
    let options = LabOptions {
        probe_interval_ms: 10,
        standby_extra: standby,
        group_extra: "data_plane_liveness = false\n".into(),
        ..LabOptions::default()
    };
    let (switches, busy, _) = policed_run(options, 15);
    eprintln!("fixed-rate probing: switchovers {switches:?}; primary probes/s {busy:.0}");
    assert!(!switches.is_empty(), "fixed-rate probing against a policer fails over for nothing (the test can fail)");
}
