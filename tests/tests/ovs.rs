//! End to end with a real Open vSwitch (userspace datapath) in the OVS lab
//! (`failover_tests::ovs_lab`): every step of the demo, VM-to-VM traffic,
//! ovs-vswitchd restarts and agent restarts, with traffic measured by
//! sequence numbers and receive timestamps, and the agent's rules on the
//! bridge checked against the exact expected set after each step.

use std::time::{Duration, Instant};

use failover_agent::control::{Request, Status};
use failover_tests::{
    ovs_lab::{GW1_MAC, GW2_MAC, LabSpec, OvsLab},
    privileged, unique_name,
};

const RATE: u64 = 2000;
const WAIT: Duration = Duration::from_secs(5);

fn lab() -> OvsLab {
    let name = unique_name("ovs");
    let spec = LabSpec {
        dir: std::env::temp_dir().join(&name),
        ..LabSpec::named(&name)
    };
    OvsLab::up(spec).expect("lab up")
}

fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

fn active(s: &Status) -> Option<&str> {
    s.groups[0].active.as_deref()
}

fn has_alarm(s: &Status, kind: &str, uplink: Option<&str>) -> bool {
    s.alarms.iter().any(|a| a.kind == kind && a.uplink.as_deref() == uplink)
}

fn mac(m: [u8; 6]) -> String {
    failover_agent::config::format_mac(&m)
}

/// The exact rules the agent must have on the bridge with `active` (1 or 2).
fn expected_flows(lab: &OvsLab, active: u32) -> Vec<String> {
    let (up1, up2) = (lab.ofport("up1").unwrap(), lab.ofport("up2").unwrap());
    let (a, i, amac) = if active == 1 { (up1, up2, GW1_MAC) } else { (up2, up1, GW2_MAC) };
    let mut flows = vec![
        format!("priority=300,in_port={i} actions=drop"),
        format!("priority=250,in_port={a} actions=NORMAL"),
    ];
    for m in [GW1_MAC, GW2_MAC] {
        if m == amac {
            flows.push(format!("priority=200,dl_dst={} actions=output:{a}", mac(m)));
        } else {
            flows.push(format!("priority=200,dl_dst={} actions=set_field:{}->eth_dst,output:{a}", mac(m), mac(amac)));
        }
    }
    flows.sort();
    flows
}

/// Waits until the rules on the bridge are exactly those for `active`, and
/// only the active uplink floods.
fn assert_flows(lab: &OvsLab, active: u32) {
    let want = expected_flows(lab, active);
    let deadline = Instant::now() + WAIT;
    loop {
        let have = lab.agent_flows();
        let (a, i) = if active == 1 { ("up1", "up2") } else { ("up2", "up1") };
        if have == want && lab.floods(a) && !lab.floods(i) {
            return;
        }
        assert!(Instant::now() < deadline, "rules on the bridge:\n{have:#?}\nexpected:\n{want:#?}\nflood {a}: {}, flood {i}: {}", lab.floods(a), lab.floods(i));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn step1_primary_nic_fault_moves_traffic_and_the_flows() {
    if !privileged("step1_primary_nic_fault_moves_traffic_and_the_flows") {
        return;
    }
    let mut lab = lab();
    let _agent = lab.start_agent();
    lab.wait_ready();
    assert_flows(&lab, 1);
    let t = lab.gateway_traffic(1, RATE);
    settle();
    lab.set_link(1, false);
    let s = lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    assert!(has_alarm(&s, "nic", Some("primary")), "{:?}", s.alarms);
    assert_flows(&lab, 2);
    settle();
    let r = t.finish();
    eprintln!("OVS lab, primary NIC fault: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.lost < RATE / 5, "{r}");
    assert!(r.per_receiver[1] > RATE / 4, "traffic flows through the standby: {r}");
}
