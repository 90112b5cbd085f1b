//! VLANs end to end in the OVS lab: the VM ports are OVS access ports of
//! VLAN 100, the uplinks trunks of VLAN 100, the gateways tag (TC programs
//! of `failover_tests::tagger`: this kernel has no 8021q) and take only
//! frames tagged 100, and both uplinks have `vlan = 100` in the agent's
//! configuration. The tag reaches the host in band (tx-vlan offload off on
//! the gateways' veths) or out of band (on: in `skb->vlan_tci`, as a real
//! NIC's rx-vlan offload delivers it; that needs the agent's TC ingress
//! mode). Traffic is measured by sequence numbers.

use std::time::{Duration, Instant};

use failover_tests::{
    agent_lab::{AgentProcess, active, has_alarm},
    ovs_lab::{GW1_MAC, GW2_MAC, GatewayVlan, LabSpec, OvsLab},
    privileged, unique_name,
};

const VID: u16 = 100;
const RATE: u64 = 1000;
const WAIT: Duration = Duration::from_secs(5);

fn spec(out_of_band: bool) -> LabSpec {
    let name = unique_name("vlan");
    LabSpec {
        dir: std::env::temp_dir().join(&name),
        vm_tag: Some(VID),
        uplink_trunks: vec![VID],
        gateway_vlan: Some(GatewayVlan { vid: VID, out_of_band }),
        agent_vlan: Some(VID),
        ingress: out_of_band.then_some("tc"),
        ..LabSpec::named(&name)
    }
}

fn lab_with_agent(out_of_band: bool) -> (OvsLab, AgentProcess) {
    let mut lab = OvsLab::up(spec(out_of_band)).expect("lab up");
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

/// The exact rules for uplink `active` (1 or 2): each VM port's untagged
/// frames for a gateway get VLAN 100 pushed on their way to the uplink.
fn expected_flows(lab: &OvsLab, active: u32) -> Vec<String> {
    let up = lab.ofport(&format!("up{active}")).expect("uplink on the bridge");
    let amac = if active == 1 { GW1_MAC } else { GW2_MAC };
    let mut flows = vec![format!("priority=250,in_port={up} actions=NORMAL")];
    for vm in 1..=lab.vms.len() {
        let port = lab.ofport(&format!("vm{vm}p")).expect("VM port on the bridge");
        for m in [GW1_MAC, GW2_MAC] {
            let readdress = if m == amac { String::new() } else { format!("set_field:{}->eth_dst,", mac(amac)) };
            flows.push(format!(
                "priority=202,in_port={port},vlan_tci=0x0000/0x1fff,dl_dst={} \
                 actions=push_vlan:0x8100,set_field:{}->vlan_vid,{readdress}output:{up}",
                mac(m),
                0x1000 | VID
            ));
        }
    }
    flows.sort();
    flows
}

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

/// The lab itself, without the agent: the gateways' tags travel as asked
/// (a capture on the gateway's interface), and OVS's own switching
/// (NORMAL) carries VM traffic to a gateway of VLAN 100 and back.
fn the_lab_tags_as_asked(out_of_band: bool) {
    let lab = OvsLab::up(spec(out_of_band)).expect("lab up");
    let back = lab.return_traffic(1, 20, RATE);
    let tags = lab.gateway_tags(1, Duration::from_millis(500));
    let r = back.finish();
    eprintln!("gateway 1 -> VM, NORMAL switching, tags {tags:?}: {r}");
    if out_of_band {
        assert!(tags.out_of_band > RATE / 4 && tags.in_band == 0, "{tags:?}");
    } else {
        assert!(tags.in_band > RATE / 4 && tags.out_of_band == 0, "{tags:?}");
    }
    assert_eq!(tags.untagged, 0, "the gateway tags every frame: {tags:?}");
    assert_eq!(r.lost, 0, "{r}");
    let t = lab.gateway_traffic(21, RATE);
    std::thread::sleep(Duration::from_secs(1));
    let r = t.finish();
    eprintln!("VM -> gateway, NORMAL switching: {r}");
    assert_eq!(r.lost, 0, "{r}");
}

/// The lab catches the bug these rules fix: the agent's former rule
/// (`dl_dst=<gateway> actions=output:<uplink>`, skipping NORMAL) sends
/// access-port frames untagged, and the gateways of VLAN 100 drop them all.
#[test]
fn rules_that_skip_the_vlan_processing_lose_everything() {
    if !privileged("rules_that_skip_the_vlan_processing_lose_everything") {
        return;
    }
    let lab = OvsLab::up(spec(false)).expect("lab up");
    let up1 = lab.ofport("up1").unwrap();
    for m in [GW1_MAC, GW2_MAC] {
        let flow = format!("priority=200,dl_dst={} actions=set_field:{}->eth_dst,output:{up1}", mac(m), mac(GW1_MAC));
        lab.ofctl(&["add-flow", "BRIDGE", &flow]).unwrap();
    }
    let t = lab.gateway_traffic(22, RATE);
    std::thread::sleep(Duration::from_secs(1));
    let r = t.finish();
    eprintln!("VLAN {VID}, the former rules: {r}");
    assert!(r.sent > RATE / 2 && r.received == 0, "{r}");
}

/// No fault: a few seconds of traffic both ways through the agent's rules.
fn no_fault_loses_nothing(out_of_band: bool) {
    let (lab, _agent) = lab_with_agent(out_of_band);
    assert_flows(&lab, 1);
    let to_gw = lab.gateway_traffic(1, RATE);
    let back = lab.return_traffic(1, 2, RATE);
    std::thread::sleep(Duration::from_secs(3));
    let (r, b) = (to_gw.finish(), back.finish());
    eprintln!("VLAN {VID}, out of band {out_of_band}, no fault: VM -> gateway {r}; gateway -> VM {b}");
    assert_eq!((r.lost, r.duplicates, r.per_receiver[1]), (0, 0, 0), "{r}");
    assert!(r.received >= 2 * RATE, "{r}");
    assert_eq!((b.lost, b.duplicates), (0, 0), "{b}");
    assert!(b.received >= 2 * RATE, "{b}");
    let s = lab.status();
    assert_eq!(active(&s), Some("primary"));
    assert!(s.alarms.is_empty(), "{:?}", s.alarms);
}

fn link_fault_fails_over_with_the_nic_alarm(out_of_band: bool) {
    let (lab, _agent) = lab_with_agent(out_of_band);
    let t = lab.gateway_traffic(3, RATE);
    settle();
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    let s = lab.wait_for("NIC alarm", WAIT, |s| has_alarm(s, "nic", Some("primary")));
    assert!(!has_alarm(&s, "gateway", Some("primary")), "{:?}", s.alarms);
    assert_flows(&lab, 2);
    settle();
    let r = t.finish();
    eprintln!("VLAN {VID}, out of band {out_of_band}, primary NIC fault: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.lost < RATE / 5, "{r}");
    assert!(r.per_receiver[1] > RATE / 4, "traffic flows through the standby: {r}");
}

fn silent_gateway_fails_over_with_the_gateway_alarm(out_of_band: bool) {
    let (lab, _agent) = lab_with_agent(out_of_band);
    let t = lab.gateway_traffic(4, RATE);
    settle();
    lab.silence_gateway(1);
    let s = lab.wait_for("switch to the standby", WAIT, |s| active(s) == Some("standby"));
    assert!(
        s.alarms.iter().any(|a| a.message.starts_with("replace gateway of uplink primary (192.0.2.1 via up1)")),
        "{:?}",
        s.alarms
    );
    assert!(!has_alarm(&s, "nic", Some("primary")), "{:?}", s.alarms);
    assert_flows(&lab, 2);
    settle();
    let r = t.finish();
    eprintln!("VLAN {VID}, out of band {out_of_band}, active gateway silent: {r}");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.lost < RATE / 2, "{r}");
    assert!(r.per_receiver[1] > RATE / 4, "{r}");
}

#[test]
fn in_band_the_lab_tags_in_the_frame() {
    if privileged("in_band_the_lab_tags_in_the_frame") {
        the_lab_tags_as_asked(false);
    }
}

#[test]
fn out_of_band_the_lab_tags_beside_the_frame() {
    if privileged("out_of_band_the_lab_tags_beside_the_frame") {
        the_lab_tags_as_asked(true);
    }
}

#[test]
fn in_band_no_fault_loses_nothing() {
    if privileged("in_band_no_fault_loses_nothing") {
        no_fault_loses_nothing(false);
    }
}

#[test]
fn in_band_link_fault_fails_over_with_the_nic_alarm() {
    if privileged("in_band_link_fault_fails_over_with_the_nic_alarm") {
        link_fault_fails_over_with_the_nic_alarm(false);
    }
}

#[test]
fn in_band_silent_gateway_fails_over_with_the_gateway_alarm() {
    if privileged("in_band_silent_gateway_fails_over_with_the_gateway_alarm") {
        silent_gateway_fails_over_with_the_gateway_alarm(false);
    }
}

#[test]
fn out_of_band_no_fault_loses_nothing() {
    if privileged("out_of_band_no_fault_loses_nothing") {
        no_fault_loses_nothing(true);
    }
}

#[test]
fn out_of_band_link_fault_fails_over_with_the_nic_alarm() {
    if privileged("out_of_band_link_fault_fails_over_with_the_nic_alarm") {
        link_fault_fails_over_with_the_nic_alarm(true);
    }
}

#[test]
fn out_of_band_silent_gateway_fails_over_with_the_gateway_alarm() {
    if privileged("out_of_band_silent_gateway_fails_over_with_the_gateway_alarm") {
        silent_gateway_fails_over_with_the_gateway_alarm(true);
    }
}
