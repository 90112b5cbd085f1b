//! How the datapath is attached, end to end with the real agent: the legacy
//! TC path (clsact + a netlink tc filter, what kernels before 6.6 get),
//! forced on this kernel, across a restart under traffic; and an attach
//! that fails, which is its own alarm, never "replace NIC".

use std::{process::Command, time::Duration};

use aya::{
    EbpfLoader,
    programs::{Xdp, XdpMode},
};
use failover_agent::{control::Request, datapath::ebpf::object};
use failover_common::PROG_XDP;
use failover_tests::{
    PinDir,
    agent_lab::{AgentLab, LabOptions, active, has_alarm},
    privileged,
};

const RATE: u64 = 2000;
const WAIT: Duration = Duration::from_secs(5);

fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// `tc filter show dev <dev> <dir>` in the lab's host namespace.
fn filters(lab: &AgentLab, dev: &str, dir: &str) -> String {
    let out = Command::new("tc")
        .args(["-n", lab.host.name(), "filter", "show", "dev", dev, dir])
        .output()
        .expect("running tc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The program id in a `tc filter show` line of our filter (`... id N ...`).
fn filter_prog_id(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.contains("handle 0xfa11"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "id" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[test]
fn the_legacy_tc_path_attaches_survives_a_restart_under_traffic_and_fails_over() {
    if !privileged("the_legacy_tc_path_attaches_survives_a_restart_under_traffic_and_fails_over") {
        return;
    }
    let mut lab =
        AgentLab::new(LabOptions { agent_extra: "tc_attach = \"netlink\"\n".into(), ..LabOptions::default() });
    let agent = lab.start_agent();
    let s = lab.wait_healthy();
    let info = s.agent.as_ref().unwrap();
    assert_eq!((info.ingress.as_str(), info.tc_attach.as_str()), ("tc", "netlink"), "{info:?}");
    let pins = lab.link_pins();
    for want in ["tcnl-up1-", "tcinl-up1-", "tcnl-up2-", "tcinl-up2-"] {
        assert!(pins.iter().any(|p| p.starts_with(want)), "{want} missing: {pins:?}");
    }
    assert!(!pins.iter().any(|p| p.starts_with("tc-") || p.starts_with("tci-")), "no TCX links: {pins:?}");
    let egress = filters(&lab, "up1", "egress");
    let ingress = filters(&lab, "up1", "ingress");
    assert!(egress.contains("failover_tc_egress") && egress.contains("pref 1"), "{egress}");
    assert!(ingress.contains("failover_tc_ingress"), "{ingress}");
    let old_id = filter_prog_id(&egress).expect("program id of the egress filter");

    // Restart under traffic: the filters are replaced in place.
    assert!(lab.ask(&Request::Switch { group: "ext".into(), uplink: "standby".into(), force: false }).ok);
    let traffic = lab.traffic(3, RATE);
    settle();
    agent.kill();
    settle();
    let agent = lab.start_agent();
    lab.wait_healthy();
    settle();
    let egress = filters(&lab, "up1", "egress");
    assert_eq!(egress.matches("handle 0xfa11").count(), 1, "one filter, not two: {egress}");
    let new_id = filter_prog_id(&egress).expect("program id after the restart");
    assert_ne!(new_id, old_id, "the restarted agent's program runs");
    let r = traffic.finish();
    eprintln!("legacy TC path, SIGKILL and restart under traffic: {r}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
    assert!(r.per_receiver[1] > 0 && r.per_receiver[0] == 0, "all on the standby: {r}");

    // The datapath still steers: a link fault of the active moves traffic.
    let traffic = lab.traffic(4, RATE);
    settle();
    lab.set_link(2, false);
    let s = lab.wait_for("switch back to the primary", WAIT, |s| active(s) == Some("primary"));
    assert!(has_alarm(&s, "nic", Some("standby")), "{:?}", s.alarms);
    settle();
    let r = traffic.finish();
    eprintln!("legacy TC path, standby link fault: {r}");
    assert!(r.lost < RATE / 10, "{r}");

    // Uninstalling removes the filters too.
    assert!(agent.terminate().success());
    // In the agent's network namespace, as on a host.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host.name()))
        .arg(failover_tests::agent_lab::agent_binary())
        .args(["uninstall", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let egress = filters(&lab, "up1", "egress");
    assert!(!egress.contains("0xfa11"), "filter left behind: {egress}");
    let ingress = filters(&lab, "up2", "ingress");
    assert!(!ingress.contains("0xfa11"), "filter left behind: {ingress}");
}

#[test]
fn a_failed_attach_is_its_own_alarm_and_is_retried() {
    if !privileged("a_failed_attach_is_its_own_alarm_and_is_retried") {
        return;
    }
    let mut lab =
        AgentLab::new(LabOptions { agent_extra: "ingress = \"xdp-generic\"\n".into(), ..LabOptions::default() });
    // Another XDP program holds up2 (as another tool would): the agent's
    // attach there fails with EBUSY.
    let other_pins = PinDir::new();
    std::fs::create_dir_all(other_pins.path()).unwrap();
    let blocker = lab.host.run(|| {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(other_pins.path())
            .load(object().expect("object"))
            .expect("load the object");
        let prog: &mut Xdp = ebpf.program_mut(PROG_XDP).unwrap().try_into().unwrap();
        prog.load().unwrap();
        prog.attach("up2", XdpMode::Skb).expect("attach the blocker");
        ebpf
    });
    let _agent = lab.start_agent();
    let s = lab.wait_for("the not_attached alarm", WAIT, |s| has_alarm(s, "not_attached", Some("standby")));
    assert!(!has_alarm(&s, "nic", Some("standby")), "healthy hardware is not to be replaced: {:?}", s.alarms);
    let alarm = s.alarms.iter().find(|a| a.kind == "not_attached").unwrap();
    assert!(alarm.message.starts_with("datapath not attached on up2"), "{}", alarm.message);
    assert!(alarm.message.contains("failover_xdp"), "the reason is named: {}", alarm.message);
    let up2 = &s.groups[0].uplinks[1];
    assert_eq!(up2.link, "detached");
    assert!(up2.attach_error.as_deref().is_some_and(|e| e.contains("up2")), "{up2:?}");
    assert_eq!(active(&s), Some("primary"));
    // The other program goes: the agent attaches within its link re-read.
    drop(blocker);
    let s = lab.wait_for("attached and healthy", WAIT, |s| {
        s.groups[0].uplinks[1].healthy && !has_alarm(s, "not_attached", None)
    });
    assert!(s.groups[0].uplinks[1].attach_error.is_none());
}
