//! The datapath fails over by itself (the fast rule in the kernel), and the
//! agent ratifies: end to end in the OVS lab, with the agent stopped
//! (SIGSTOP) when the fault comes, stopped with no fault, and with both
//! gateways' liveness read by the kernel. Traffic is measured by sequence
//! numbers and receive timestamps.

use std::time::Duration;

use failover_agent::control::Decider;
use failover_tests::{
    agent_lab::{AgentProcess, active, has_alarm},
    ovs_lab::{LabSpec, OvsLab},
    privileged, unique_name,
};

const RATE: u64 = 2000;
const WAIT: Duration = Duration::from_secs(5);

fn lab_with_agent() -> (OvsLab, AgentProcess) {
    let name = unique_name("kern");
    let spec = LabSpec { dir: std::env::temp_dir().join(&name), ..LabSpec::named(&name) };
    let mut lab = OvsLab::up(spec).expect("lab up");
    let agent = lab.start_agent();
    lab.wait_ready();
    (lab, agent)
}

/// Stops or continues the agent (its own pid: the test started it).
fn signal(agent: &AgentProcess, sig: i32) {
    // SAFETY: signalling the agent this test started, by its pid.
    let rc = unsafe { libc::kill(i32::try_from(agent.pid()).expect("pid"), sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", agent.pid());
}

#[test]
fn a_stopped_agent_still_fails_over_on_a_link_fault_and_ratifies_after() {
    if !privileged("a_stopped_agent_still_fails_over_on_a_link_fault_and_ratifies_after") {
        return;
    }
    let (lab, agent) = lab_with_agent();
    let t = lab.gateway_traffic(1, RATE);
    std::thread::sleep(Duration::from_millis(500));
    signal(&agent, libc::SIGSTOP);
    lab.set_link(1, false);
    std::thread::sleep(Duration::from_millis(1500));
    // Traffic moved while the agent was stopped: the kernel did it.
    let r = t.finish();
    eprintln!("agent stopped, primary NIC fault: {r}");
    signal(&agent, libc::SIGCONT);
    let s = lab.wait_for("ratified: standby active, NIC alarm", Duration::from_secs(1), |s| {
        active(s) == Some("standby") && has_alarm(s, "nic", Some("primary"))
    });
    let sw = s.groups[0].last_switchover.clone().expect("a switchover");
    assert!(sw.reason == "nic_fault" && sw.decided_by == Decider::Kernel, "{sw:?}");
    lab.wait_for("OVS rules follow the standby", Duration::from_secs(1), |s| {
        s.groups[0].ovs.as_ref().is_some_and(|o| o.rules_in_place)
    });
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.per_receiver[1] > RATE / 2, "traffic flows through the standby while the agent is stopped: {r}");
    assert!(r.max_gap < Duration::from_millis(100), "the kernel moved traffic at once: {r}");
}

#[test]
fn a_stopped_agent_without_a_fault_flips_nothing_and_loses_nothing() {
    if !privileged("a_stopped_agent_without_a_fault_flips_nothing_and_loses_nothing") {
        return;
    }
    let (lab, agent) = lab_with_agent();
    let before = lab.status();
    let t = lab.gateway_traffic(2, RATE);
    std::thread::sleep(Duration::from_millis(300));
    signal(&agent, libc::SIGSTOP);
    // No probes leave for 3 s: the gateways must not read as silent.
    std::thread::sleep(Duration::from_secs(3));
    signal(&agent, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let r = t.finish();
    eprintln!("agent stopped for 3 s, no fault: {r}");
    let s = lab.status();
    assert_eq!(active(&s), Some("primary"));
    assert_eq!(s.groups[0].last_switchover, before.groups[0].last_switchover, "no switchover");
    assert!(s.alarms.is_empty(), "{:?}", s.alarms);
    assert_eq!((r.lost, r.duplicates, r.per_receiver[1]), (0, 0, 0), "{r}");
}

#[test]
fn a_silent_gateway_is_left_by_the_kernel_within_the_detection_time() {
    if !privileged("a_silent_gateway_is_left_by_the_kernel_within_the_detection_time") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    let t = lab.gateway_traffic(3, RATE);
    std::thread::sleep(Duration::from_millis(500));
    lab.silence_gateway(1);
    let s = lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    std::thread::sleep(Duration::from_millis(300));
    let r = t.finish();
    eprintln!("silent primary gateway (20 ms x 3 probes): {r}; {:?}", s.groups[0].last_switchover);
    assert!(has_alarm(&s, "gateway", Some("primary")), "{:?}", s.alarms);
    // The lab probes every 20 ms with down_after 3: 61 ms of silence, plus
    // up to one probe interval of phase, plus the lab's own jitter.
    assert!(r.max_gap < Duration::from_millis(150), "{r}");
    assert_eq!(r.duplicates, 0, "{r}");
}
