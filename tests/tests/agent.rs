//! The real agent, end to end, in namespaces (`failover_tests::agent_lab`):
//! faults of each uplink and gateway, recovery, forced switches, restarts,
//! measured with sequence-numbered UDP and kernel receive timestamps.
//!
//! Loss bounds here are generous on purpose (a shared 2-core machine); the
//! benchmark (`cargo xtask bench`, issue 6) measures the real figures.

use std::{process::Command, time::Duration};

use failover_agent::control::Request;
use failover_tests::{
    agent_lab::{AgentLab, LabOptions, active, agent_binary, has_alarm},
    privileged,
};

const RATE: u64 = 2000;
const WAIT: Duration = Duration::from_secs(5);

fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn primary_link_fault_moves_traffic_then_the_repaired_nic_is_the_standby() {
    if !privileged("primary_link_fault_moves_traffic_then_the_repaired_nic_is_the_standby") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let traffic = lab.traffic(1, RATE);
    settle();
    lab.set_link(1, false);
    let s = lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    assert!(has_alarm(&s, "nic", Some("primary")), "{:?}", s.alarms);
    assert!(s.alarms.iter().any(|a| a.message.starts_with("replace NIC of uplink primary (up1)")));
    assert_eq!(s.groups[0].last_switchover.as_ref().unwrap().reason, "nic_fault");
    settle();
    let r = traffic.finish();
    eprintln!("primary link fault: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.lost < RATE / 5, "lost too much: {r}");
    assert!(r.max_gap < Duration::from_millis(200), "{r}");
    assert!(r.per_receiver[1] > 0, "traffic reached the standby gateway: {r}");

    // The NIC is repaired: the alarm clears, it becomes healthy, traffic stays.
    lab.set_link(1, true);
    let s = lab.wait_for("primary healthy again", WAIT, |s| s.groups[0].uplinks[0].healthy);
    assert!(!has_alarm(&s, "nic", Some("primary")), "{:?}", s.alarms);
    settle();
    assert_eq!(active(&lab.status()), Some("standby"), "failback = never");
    // The repaired primary now protects the standby.
    lab.set_link(2, false);
    let s = lab.wait_for("back to the primary", WAIT, |s| active(s) == Some("primary"));
    assert!(has_alarm(&s, "nic", Some("standby")));
}

#[test]
fn standby_link_fault_raises_an_alarm_and_traffic_stays() {
    if !privileged("standby_link_fault_raises_an_alarm_and_traffic_stays") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let traffic = lab.traffic(2, RATE);
    settle();
    lab.set_link(2, false);
    let s = lab.wait_for("standby NIC alarm", WAIT, |s| has_alarm(s, "nic", Some("standby")));
    assert_eq!(active(&s), Some("primary"));
    settle();
    let r = traffic.finish();
    eprintln!("standby link fault: {r}");
    assert_eq!((r.lost, r.duplicates, r.per_receiver[1]), (0, 0, 0), "{r}");
}

#[test]
fn silent_primary_gateway_moves_traffic_and_names_the_gateway() {
    if !privileged("silent_primary_gateway_moves_traffic_and_names_the_gateway") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let traffic = lab.traffic(3, RATE);
    settle();
    lab.silence_gateway(1);
    let s = lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    assert!(has_alarm(&s, "gateway", Some("primary")), "{:?}", s.alarms);
    assert_eq!(s.groups[0].uplinks[0].link, "up", "the link stayed up");
    assert_eq!(s.groups[0].last_switchover.as_ref().unwrap().reason, "gateway_silent");
    settle();
    let r = traffic.finish();
    eprintln!("primary gateway silent (probe interval 20 ms, down after 3): {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.lost < RATE / 2, "{r}");
    assert!(r.max_gap < Duration::from_millis(500), "{r}");

    lab.revive_gateway(1);
    let s = lab.wait_for("gateway alarm cleared", WAIT, |s| !has_alarm(s, "gateway", Some("primary")));
    assert_eq!(active(&s), Some("standby"));
}

#[test]
fn silent_standby_gateway_raises_an_alarm_and_traffic_stays() {
    if !privileged("silent_standby_gateway_raises_an_alarm_and_traffic_stays") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let traffic = lab.traffic(4, RATE);
    settle();
    lab.silence_gateway(2);
    let s = lab.wait_for("standby gateway alarm", WAIT, |s| has_alarm(s, "gateway", Some("standby")));
    assert_eq!(active(&s), Some("primary"));
    settle();
    let r = traffic.finish();
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
}

#[test]
fn both_down_stays_then_the_first_to_recover_takes_the_traffic() {
    if !privileged("both_down_stays_then_the_first_to_recover_takes_the_traffic") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    lab.silence_gateway(2);
    lab.wait_for("standby gateway alarm", WAIT, |s| has_alarm(s, "gateway", Some("standby")));
    lab.set_link(1, false);
    let s = lab.wait_for("no healthy uplink", WAIT, |s| has_alarm(s, "no_healthy_uplink", None));
    assert_eq!(active(&s), Some("primary"), "nowhere to go: traffic stays");
    // The standby's gateway comes back first: it takes the traffic.
    let traffic = lab.traffic(5, RATE);
    lab.revive_gateway(2);
    let s = lab.wait_for("switch to the recovered standby", WAIT, |s| active(s) == Some("standby"));
    assert!(!has_alarm(&s, "no_healthy_uplink", None), "{:?}", s.alarms);
    assert!(has_alarm(&s, "nic", Some("primary")));
    settle();
    let r = traffic.finish();
    assert!(r.per_receiver[1] > RATE / 10, "traffic flows through the recovered uplink: {r}");
}

#[test]
fn forced_switches_lose_nothing_and_unhealthy_targets_need_force() {
    if !privileged("forced_switches_lose_nothing_and_unhealthy_targets_need_force") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let traffic = lab.traffic(6, RATE);
    settle();
    let switch = |uplink: &str, force| Request::Switch { group: "ext".into(), uplink: uplink.into(), force };
    let r = lab.ask(&switch("standby", false));
    assert!(r.ok, "{r:?}");
    assert_eq!(active(&lab.status()), Some("standby"));
    settle();
    assert!(lab.ask(&switch("primary", false)).ok);
    settle();
    let report = traffic.finish();
    eprintln!("two forced switchovers: {report}");
    assert_eq!((report.lost, report.duplicates), (0, 0), "{report}");
    assert!(report.per_receiver[1] > 0, "{report}");

    lab.silence_gateway(2);
    lab.wait_for("standby unhealthy", WAIT, |s| has_alarm(s, "gateway", Some("standby")));
    let refused = lab.ask(&switch("standby", false));
    assert!(!refused.ok);
    let e = refused.error.unwrap();
    assert!(e.contains("not healthy") && e.contains("--force"), "{e}");
    let forced = lab.ask(&switch("standby", true));
    assert!(forced.ok, "{forced:?}");
    let s = lab.status();
    assert_eq!(active(&s), Some("standby"));
    assert!(s.groups[0].operator_hold);
    let bad = lab.ask(&switch("nonesuch", false));
    assert_eq!(bad.error.as_deref(), Some("group \"ext\" has no uplink \"nonesuch\""));
}

#[test]
fn sigkill_and_restart_under_traffic_lose_nothing_and_do_not_flip() {
    if !privileged("sigkill_and_restart_under_traffic_lose_nothing_and_do_not_flip") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let agent = lab.start_agent();
    lab.wait_healthy();
    // Put the group on the standby first, so that a restart that fell back
    // to the primary would show.
    assert!(lab.ask(&Request::Switch { group: "ext".into(), uplink: "standby".into(), force: false }).ok);
    let traffic = lab.traffic(7, RATE);
    settle();
    agent.kill();
    settle();
    let agent = lab.start_agent();
    let s = lab.status();
    assert_eq!(active(&s), Some("standby"), "the decision survived");
    assert!(s.groups[0].last_switchover.is_none(), "no switchover on restart: {s:#?}");
    lab.wait_healthy();
    settle();
    // SIGTERM: the agent stops, the datapath stays and keeps steering.
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    settle();
    let r = traffic.finish();
    eprintln!("SIGKILL, restart, SIGTERM under traffic: {r}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
    assert!(r.per_receiver[1] > 0 && r.per_receiver[0] == 0, "all on the standby: {r}");
    assert!(!lab.socket_path().exists(), "control socket removed on SIGTERM");
}

#[test]
fn ipv6_gateways_are_probed_with_neighbor_solicitations() {
    if !privileged("ipv6_gateways_are_probed_with_neighbor_solicitations") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions { ipv6: true, ..LabOptions::default() });
    let _agent = lab.start_agent();
    let s = lab.wait_healthy();
    let primary = &s.groups[0].uplinks[0];
    assert_eq!(primary.gateway_ip, "2001:db8::1");
    assert_eq!(primary.gateway_mac.as_deref(), Some("02:fa:00:00:0a:01"));
    assert!(primary.replies >= 3);
    lab.silence_gateway(1);
    let s = lab.wait_for("switch on a silent IPv6 gateway", WAIT, |s| active(s) == Some("standby"));
    assert!(has_alarm(&s, "gateway", Some("primary")));
}

#[test]
fn a_missing_interface_is_a_nic_fault_and_is_attached_when_it_appears() {
    if !privileged("a_missing_interface_is_a_nic_fault_and_is_attached_when_it_appears") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    lab.host.ip(&["link", "del", "up2"]);
    let _agent = lab.start_agent();
    let s = lab.wait_for("standby NIC alarm", WAIT, |s| has_alarm(s, "nic", Some("standby")));
    assert_eq!(s.groups[0].uplinks[1].link, "absent");
    assert_eq!(active(&s), Some("primary"));
    lab.host.veth("up2", failover_tests::agent_lab::UP2_MAC, &lab.gw2, "gw2", failover_tests::agent_lab::GW2_MAC);
    lab.host.ip(&["link", "set", "up2", "master", "br0"]);
    lab.gw2.ip(&["addr", "add", "192.0.2.1/24", "dev", "gw2"]);
    let s = lab.wait_for("standby attached and healthy", WAIT, |s| s.groups[0].uplinks[1].healthy);
    assert!(!has_alarm(&s, "nic", Some("standby")));
}

#[test]
fn bad_configs_exit_2_and_attach_nothing() {
    let dir = std::env::temp_dir().join(failover_tests::unique_name("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[agent]\nbpf_pin_dir = \"/sys/fs/bpf/never-made\"\n[[group]]\nname = \"ext\"\nbridge = \"br0\"\n\
         [[group.uplink]]\nname = \"primary\"\ninterface = \"up1\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n",
    )
    .unwrap();
    for sub in ["check-config", "run"] {
        let mut cmd = Command::new(agent_binary());
        cmd.arg(sub);
        if sub == "run" {
            cmd.arg("--config");
        }
        let out = cmd.arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub}: {stderr}");
        assert!(stderr.contains("group \"ext\", uplink: 1 uplink(s) configured"), "{sub}: {stderr}");
    }
    assert!(!std::path::Path::new("/sys/fs/bpf/never-made").exists(), "nothing attached");
    let good = include_str!("../../deploy/failover-agent.example.toml");
    std::fs::write(&path, good).unwrap();
    let out = Command::new(agent_binary()).arg("check-config").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 group(s), 2 uplink(s))"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn events_follow_streams_what_happens() {
    use std::io::BufRead as _;
    if !privileged("events_follow_streams_what_happens") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let mut follower = Command::new(agent_binary())
        .args(["events", "--follow", "--limit", "100", "--config"])
        .arg(lab.config_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The history first: the startup switchover is in it.
    let first: Vec<String> = rx.recv_timeout(Duration::from_secs(5)).into_iter().collect();
    assert!(!first.is_empty(), "history printed");
    lab.set_link(1, false);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !seen.iter().any(|l: &String| l.contains("alarm_raised") && l.contains("replace NIC of uplink primary")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no alarm event streamed ({e}); got {seen:?}"),
        }
    }
    assert!(seen.iter().any(|l| l.contains("switchover") && l.contains("primary -> standby (nic_fault)")), "{seen:?}");
    let _ = follower.kill();
    let _ = follower.wait();
}
