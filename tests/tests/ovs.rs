//! End to end with a real Open vSwitch (userspace datapath) in the OVS lab
//! (`failover_tests::ovs_lab`): every step of the demo, VM-to-VM traffic,
//! ovs-vswitchd restarts and agent restarts, with traffic measured by
//! sequence numbers and receive timestamps, and the agent's rules on the
//! bridge checked against the exact expected set after each step.

use std::time::{Duration, Instant};

use failover_agent::{
    control::Request,
    ovs::{GroupFlows, OvsCli, PortVlan, group_cookie, plan},
};
use failover_tests::{
    agent_lab::{AgentProcess, active, agent_binary, has_alarm},
    ovs_lab::{BRIDGE, GW1_MAC, GW2_MAC, LabSpec, OvsLab},
    privileged, unique_name,
};

const RATE: u64 = 2000;
const WAIT: Duration = Duration::from_secs(5);

fn lab() -> OvsLab {
    let name = unique_name("ovs");
    let spec = LabSpec { dir: std::env::temp_dir().join(&name), ..LabSpec::named(&name) };
    OvsLab::up(spec).expect("lab up")
}

/// A lab with the agent started and ready. The agent is dropped (stopped)
/// before the lab, as the bindings `let (lab, agent)` go in reverse order.
fn lab_with_agent() -> (OvsLab, AgentProcess) {
    let mut lab = lab();
    let agent = lab.start_agent();
    lab.wait_ready();
    (lab, agent)
}

fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

fn mac(m: [u8; 6]) -> String {
    failover_agent::config::format_mac(&m)
}

/// The exact rules the agent must have on the bridge with `active` (1 or 2).
fn expected_flows(lab: &OvsLab, active: u32) -> Vec<String> {
    let (up1, up2) = (lab.ofport("up1").expect("up1 on the bridge"), lab.ofport("up2").expect("up2 on the bridge"));
    let (a, amac) = if active == 1 { (up1, GW1_MAC) } else { (up2, GW2_MAC) };
    let mut flows = vec![format!("priority=250,in_port={a} actions=NORMAL")];
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

/// Waits until the agent's rules on the bridge are exactly those for `active`.
fn assert_flows(lab: &OvsLab, active: u32) {
    let want = expected_flows(lab, active);
    let deadline = Instant::now() + WAIT;
    loop {
        let have = lab.agent_flows();
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "rules on the bridge:\n{have:#?}\nexpected:\n{want:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn step1_primary_nic_fault_moves_traffic_and_the_flows() {
    if !privileged("step1_primary_nic_fault_moves_traffic_and_the_flows") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    assert_flows(&lab, 1);
    let t = lab.gateway_traffic(1, RATE);
    settle();
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    // The carrier event may lag the probes on a loaded machine (the kernel
    // delivers it under the rtnl lock): then the gateway is found silent
    // first, and the NIC alarm follows with the event.
    let s = lab.wait_for("NIC alarm", WAIT, |s| has_alarm(s, "nic", Some("primary")));
    assert!(!has_alarm(&s, "gateway", Some("primary")), "{:?}", s.alarms);
    assert_flows(&lab, 2);
    settle();
    let r = t.finish();
    eprintln!("OVS lab, primary NIC fault: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.lost < RATE / 5, "{r}");
    assert!(r.per_receiver[1] > RATE / 4, "traffic flows through the standby: {r}");
}

#[test]
fn step2_the_repaired_nic_clears_its_alarm_and_is_the_standby() {
    if !privileged("step2_the_repaired_nic_clears_its_alarm_and_is_the_standby") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    let t = lab.gateway_traffic(2, RATE);
    settle();
    lab.set_link(1, true);
    let s = lab.wait_for("primary healthy", WAIT, |s| s.groups[0].uplinks[0].healthy);
    assert!(!has_alarm(&s, "nic", Some("primary")), "{:?}", s.alarms);
    settle();
    let s = lab.status();
    assert_eq!(active(&s), Some("standby"), "no failback: the repaired NIC is the standby");
    assert_flows(&lab, 2);
    let r = t.finish();
    assert_eq!((r.lost, r.duplicates, r.per_receiver[0]), (0, 0, 0), "{r}");
}

#[test]
fn step3_a_silent_active_gateway_moves_traffic_and_names_the_gateway() {
    if !privileged("step3_a_silent_active_gateway_moves_traffic_and_names_the_gateway") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    let t = lab.gateway_traffic(3, RATE);
    settle();
    lab.silence_gateway(1);
    let s = lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    assert!(has_alarm(&s, "gateway", Some("primary")), "{:?}", s.alarms);
    assert!(
        s.alarms.iter().any(|a| { a.message.starts_with("replace gateway of uplink primary (192.0.2.1 via up1)") })
    );
    assert_flows(&lab, 2);
    settle();
    let r = t.finish();
    eprintln!("OVS lab, active gateway silent (20 ms probes, down after 3): {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.lost < RATE / 2, "{r}");
    assert!(r.per_receiver[1] > RATE / 4, "{r}");
}

#[test]
fn step4_a_recovered_gateway_clears_and_a_forced_switch_back_loses_nothing() {
    if !privileged("step4_a_recovered_gateway_clears_and_a_forced_switch_back_loses_nothing") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    lab.silence_gateway(1);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    lab.revive_gateway(1);
    let s = lab.wait_for("gateway alarm cleared", WAIT, |s| {
        !has_alarm(s, "gateway", Some("primary")) && s.groups[0].uplinks[0].healthy
    });
    assert_eq!(active(&s), Some("standby"));
    let t = lab.gateway_traffic(4, RATE);
    settle();
    let out = std::process::Command::new(agent_binary())
        .args(["switch", "ext", "primary", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "group ext: traffic now on primary");
    assert_flows(&lab, 1);
    settle();
    let r = t.finish();
    eprintln!("OVS lab, forced switch back: {r}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
    assert!(r.per_receiver[0] > 0 && r.per_receiver[1] > 0, "{r}");
}

#[test]
fn vm_to_vm_traffic_is_unaffected_by_a_switchover() {
    if !privileged("vm_to_vm_traffic_is_unaffected_by_a_switchover") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    let t = lab.vm_traffic(5, RATE);
    settle();
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    settle();
    assert!(lab.ask(&Request::Switch { group: "ext".into(), uplink: "standby".into(), force: false }).ok);
    settle();
    let r = t.finish();
    eprintln!("OVS lab, VM to VM across a switchover: {r}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
}

#[test]
fn ovs_restart_under_traffic_gets_the_rules_back_within_a_second() {
    if !privileged("ovs_restart_under_traffic_gets_the_rules_back_within_a_second") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    // On the standby, so that the restored rules are visibly the agent's.
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    assert_flows(&lab, 2);
    let t = lab.gateway_traffic(6, RATE);
    settle();
    lab.stop_vswitchd();
    // Down long enough for the alarm.
    let s = lab.wait_for("OVS unreachable alarm", WAIT, |s| has_alarm(s, "ovs_unreachable", None));
    assert!(s.alarms.iter().any(|a| a.message.contains("br-ext does not answer")), "{:?}", s.alarms);
    lab.start_vswitchd().unwrap();
    lab.wait_vswitchd().unwrap();
    let answering = Instant::now();
    assert_flows(&lab, 2);
    let restored = answering.elapsed();
    eprintln!("rules back {} ms after ovs-vswitchd answered", restored.as_millis());
    assert!(restored < Duration::from_secs(1), "rules restored after {restored:?}");
    let s = lab.wait_for("alarm cleared", WAIT, |s| !has_alarm(s, "ovs_unreachable", None));
    assert_eq!(active(&s), Some("standby"));
    settle();
    let r = t.finish();
    eprintln!("OVS lab, ovs-vswitchd down about 1.5 s under traffic: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.max_gap < Duration::from_secs(5), "{r}");
    assert!(r.per_receiver[0] == 0, "nothing through the inactive uplink: {r}");
    assert!(r.received > RATE, "traffic resumed: {r}");
}

#[test]
fn agent_sigkill_and_restart_under_traffic_lose_nothing() {
    if !privileged("agent_sigkill_and_restart_under_traffic_lose_nothing") {
        return;
    }
    let (mut lab, agent) = lab_with_agent();
    assert!(lab.ask(&Request::Switch { group: "ext".into(), uplink: "standby".into(), force: false }).ok);
    assert_flows(&lab, 2);
    let t = lab.gateway_traffic(7, RATE);
    settle();
    agent.kill();
    settle();
    let _agent = lab.start_agent();
    let s = lab.wait_ready();
    assert_eq!(active(&s), Some("standby"));
    assert!(s.groups[0].last_switchover.is_none(), "no flip on restart");
    assert_flows(&lab, 2);
    settle();
    let r = t.finish();
    eprintln!("OVS lab, agent SIGKILL and restart: {r}");
    assert_eq!((r.lost, r.duplicates, r.per_receiver[0]), (0, 0, 0), "{r}");
}

#[test]
fn ovs_absent_at_start_raises_an_alarm_and_its_arrival_gets_the_rules() {
    if !privileged("ovs_absent_at_start_raises_an_alarm_and_its_arrival_gets_the_rules") {
        return;
    }
    let mut lab = lab();
    lab.stop_vswitchd();
    let _agent = lab.start_agent();
    let s = lab.wait_for("OVS unreachable alarm", WAIT, |s| has_alarm(s, "ovs_unreachable", None));
    assert!(!s.groups[0].ovs.as_ref().unwrap().reachable);
    // The datapath works without OVS's rules: the uplinks are judged, one is active.
    lab.wait_for("uplinks healthy", WAIT, |s| s.groups[0].uplinks.iter().all(|u| u.healthy));
    lab.start_vswitchd().unwrap();
    lab.wait_ready();
    assert_flows(&lab, 1);
    lab.wait_for("alarm cleared", WAIT, |s| !has_alarm(s, "ovs_unreachable", None));
}

#[test]
fn uninstall_removes_the_datapath_the_rules_and_the_state() {
    if !privileged("uninstall_removes_the_datapath_the_rules_and_the_state") {
        return;
    }
    let (lab, agent) = lab_with_agent();
    assert_flows(&lab, 1);
    assert!(agent.terminate().success());
    assert!(!lab.agent_flows().is_empty(), "SIGTERM leaves everything in place");
    let out = std::process::Command::new(agent_binary())
        .args(["uninstall", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lab.agent_flows().is_empty(), "rules removed");
    assert!(!lab.spec.pin_dir().exists(), "pins removed");
    assert!(!lab.spec.dir.join("state/state.json").exists(), "state removed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("detached") && stdout.contains("removed the agent's rules of group ext from br-ext"),
        "{stdout}"
    );
}

#[test]
fn gateways_sharing_a_mac_fail_over_too() {
    if !privileged("gateways_sharing_a_mac_fail_over_too") {
        return;
    }
    let name = unique_name("ovs");
    let mut lab =
        OvsLab::up(LabSpec { dir: std::env::temp_dir().join(&name), shared_mac: true, ..LabSpec::named(&name) })
            .expect("lab up");
    let _agent = lab.start_agent();
    lab.wait_ready();
    let t = lab.gateway_traffic(8, RATE);
    settle();
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    settle();
    let r = t.finish();
    eprintln!("OVS lab, shared gateway MAC, primary NIC fault: {r}");
    assert!(r.lost < RATE / 5 && r.per_receiver[1] > RATE / 4, "{r}");
}

#[test]
fn ovsdb_server_crash_and_restart_leave_the_agent_working() {
    if !privileged("ovsdb_server_crash_and_restart_leave_the_agent_working") {
        return;
    }
    let (lab, _agent) = lab_with_agent();
    let t = lab.gateway_traffic(10, RATE);
    settle();
    lab.crash_and_restart_ovsdb().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let r = t.finish();
    // ovs-vswitchd reconfigures its ports when it finds the database again;
    // with the userspace datapath that costs traffic (OVS's own, measured
    // here, not the agent's).
    eprintln!("OVS lab, ovsdb-server SIGKILLed and restarted: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.max_gap < Duration::from_secs(3), "traffic resumed: {r}");
    // The agent's rules are there, and a fault is still handled.
    assert_flows(&lab, 1);
    let t = lab.gateway_traffic(11, RATE);
    settle();
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    assert_flows(&lab, 2);
    settle();
    let r = t.finish();
    eprintln!("then a NIC fault: {r}");
    assert!(r.lost < RATE / 5 && r.duplicates == 0, "{r}");
}

#[test]
fn a_group_renamed_on_reload_leaves_no_rules_of_its_old_name() {
    if !privileged("a_group_renamed_on_reload_leaves_no_rules_of_its_old_name") {
        return;
    }
    let (lab, agent) = lab_with_agent();
    assert_flows(&lab, 1);
    let all = || {
        let dump = lab
            .ofctl(&["-O", "OpenFlow14", "dump-flows", "BRIDGE", "cookie=0xfa11000000000000/0xffffffff00000000"])
            .unwrap_or_default();
        failover_agent::ovs::parse_cookies(&dump)
    };
    assert_eq!(all(), vec![group_cookie("ext")]);
    // The group gets another name: another id, another cookie.
    let text = std::fs::read_to_string(lab.config_path()).unwrap().replace("name = \"ext\"", "name = \"ext2\"");
    std::fs::write(lab.config_path(), text).unwrap();
    // SAFETY: signalling the agent this test started, by its pid.
    unsafe { libc::kill(i32::try_from(agent.pid()).unwrap(), libc::SIGHUP) };
    let deadline = Instant::now() + WAIT * 2;
    loop {
        if let Ok(r) = failover_agent::control::request(&lab.socket_path(), &Request::Status)
            && let Some(s) = r.status
            && s.groups[0].name == "ext2"
            && s.groups[0].ovs.as_ref().is_some_and(|o| o.rules_in_place)
            && all() == vec![group_cookie("ext2")]
        {
            break;
        }
        assert!(Instant::now() < deadline, "the old group's rules are still there: {:#x?}", all());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The VLAN rules of `plan()` for every kind of port, installed on a real
/// ovs-vswitchd and dumped back: the dump must equal the plan exactly (the
/// agent compares the two every few seconds and reinstalls on a
/// difference), and the port settings are read from the real OVSDB.
#[test]
fn vlan_rules_round_trip_through_a_real_ovs() {
    if !privileged("vlan_rules_round_trip_through_a_real_ovs") {
        return;
    }
    let lab = lab();
    let cli = OvsCli::new(&lab.spec.dir);
    let group = GroupFlows {
        group: 0x5a5a,
        bridge: BRIDGE.into(),
        uplinks: vec!["up1".into(), "up2".into()],
        active: 0,
        gateway_macs: vec![GW1_MAC, GW2_MAC],
        active_mac: Some(GW1_MAC),
    };
    // (what the case is, settings of vm1p, vm2p, up1 as ovs-vsctl takes them,
    // a rule (action part) the plan must contain)
    let cases: [(&str, [&[&str]; 3], &str); 6] = [
        ("no VLAN anywhere", [&[], &[], &[]], "priority=200,dl_dst=02:fa:00:00:0a:01 actions=output:"),
        ("access VMs, trunk uplink", [&["tag=100"], &["tag=200"], &["trunks=100,200"]], "push_vlan:0x8100"),
        ("trunk VM, trunk uplink", [&["trunks=100,200"], &[], &["trunks=100"]], "dl_vlan=100"),
        ("trunk VM, access uplink", [&["trunks=100"], &["tag=100"], &["tag=100"]], "pop_vlan"),
        ("VLAN rewrite", [&["tag=7", "vlan_mode=native-tagged"], &[], &["trunks=7,9"]], "set_field:4103->vlan_vid"),
        (
            "native-untagged uplink",
            [&[], &["tag=100"], &["tag=100", "vlan_mode=native-untagged"]],
            "vlan_tci=0x1000/0x1000",
        ),
    ];
    let vlan_columns = ["tag", "trunks", "vlan_mode"];
    for (what, settings, must) in cases {
        for (port, set) in ["vm1p", "vm2p", "up1"].into_iter().zip(settings) {
            let mut args = vec!["clear", "Port", port];
            args.extend(vlan_columns);
            lab.vsctl(&args).unwrap();
            if !set.is_empty() {
                let mut args = vec!["set", "Port", port];
                args.extend(set.iter().copied());
                lab.vsctl(&args).unwrap();
            }
        }
        let ports = cli.bridge_ports(BRIDGE).unwrap();
        let vm1 = &ports["vm1p"].vlan;
        assert_eq!(vm1.is_plain(), settings[0].is_empty(), "{what}: vm1p read from OVSDB as {vm1:?}");
        let wanted = plan(&group, &ports).unwrap();
        assert!(wanted.flows.iter().any(|f| f.contains(must)), "{what}: {:#?}", wanted.flows);
        cli.apply(BRIDGE, group.group, &wanted).unwrap();
        let dumped = cli.dump(BRIDGE, group.group).unwrap();
        assert_eq!(dumped, wanted.flows, "{what}: the bridge's dump differs from the plan");
        eprintln!("{what}: {} rules, dump == plan", wanted.flows.len());
    }
    assert_eq!(
        cli.port_vlans(BRIDGE).unwrap()["up1"],
        PortVlan { mode: Some("native-untagged".into()), ..PortVlan::access(100) }
    );
}
