//! A SIGHUP reload that changes the topology, under traffic: an uplink added
//! in front of a group, one removed, one moved to another group, a group
//! added. The untouched group loses nothing; the removed uplink is
//! detached; the added one is attached and probed; no uplink reports
//! another's counters or gateway MAC (each gateway has a MAC of its own).

use std::time::{Duration, Instant};

use failover_agent::control::{Request, Status};
use failover_tests::{
    Netns,
    agent_lab::{AgentLab, LabOptions, spawn_agent},
    privileged,
};

const RATE: u64 = 2000;

/// Extra uplinks up3..up7, each to a gateway of its own (198.51.100.1, MAC
/// 02:fa:00:00:0d:0N) in a namespace of its own.
fn extra_gateways(lab: &AgentLab) -> Vec<Netns> {
    (3..=7)
        .map(|n: u8| {
            let gw = Netns::new("g");
            gw.disable_ipv6();
            lab.host.veth(&format!("up{n}"), [0x02, 0xfa, 0, 0, 0x01, n], &gw, "gw", [0x02, 0xfa, 0, 0, 0x0d, n]);
            gw.ip(&["addr", "add", "198.51.100.1/24", "dev", "gw"]);
            gw
        })
        .collect()
}

fn group(name: &str, uplinks: &[(&str, &str)]) -> String {
    let (gateway, source) =
        if name == "ext" { ("192.0.2.1", "192.0.2.250") } else { ("198.51.100.1", "198.51.100.250") };
    let mut text = format!(
        "[[group]]\nname = \"{name}\"\nbridge = \"br0\"\nprobe_interval_ms = 20\ndown_after = 3\nup_after = 3\n\n"
    );
    for (uplink, interface) in uplinks {
        text += &format!(
            "[[group.uplink]]\nname = \"{uplink}\"\ninterface = \"{interface}\"\ngateway = \"{gateway}\"\nprobe_source = \"{source}\"\n\n"
        );
    }
    text
}

fn config(lab: &AgentLab, groups: &[String]) -> String {
    format!(
        "[agent]\nstate_dir = \"{}\"\nbpf_pin_dir = \"{}\"\ncontrol_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\novs_flows = false\n\n{}",
        lab.dir.join("state").display(),
        lab.pins.path().display(),
        lab.socket_path().display(),
        groups.concat()
    )
}

fn all_healthy(s: &Status) -> bool {
    s.groups.iter().all(|g| g.uplinks.iter().all(|u| u.healthy))
}

/// Each uplink reports its own gateway's MAC; the uplinks in `fresh` (new
/// identities: added, or moved to another group) no more replies than
/// probes this process sent (inherited counters would show more). An uplink
/// that stayed keeps its own counters.
fn check_own_state(s: &Status, fresh: &[&str]) {
    for g in &s.groups {
        for u in &g.uplinks {
            let n = u.interface.trim_start_matches("up");
            let want = match n {
                "1" => "02:fa:00:00:0a:01".to_string(),
                "2" => "02:fa:00:00:0a:02".to_string(),
                n => format!("02:fa:00:00:0d:0{n}"),
            };
            assert_eq!(u.gateway_mac.as_deref(), Some(want.as_str()), "group {}, uplink {}: {u:?}", g.name, u.name);
            if fresh.contains(&u.name.as_str()) {
                assert!(u.replies <= u.probes_sent, "group {}, uplink {}: counters not its own: {u:?}", g.name, u.name);
            }
        }
    }
}

#[test]
fn a_reload_that_changes_the_topology_moves_no_state_and_loses_nothing_elsewhere() {
    if !privileged("a_reload_that_changes_the_topology_moves_no_state_and_loses_nothing_elsewhere") {
        return;
    }
    let lab = AgentLab::new(LabOptions::default());
    let _gws = extra_gateways(&lab);
    let ext = group("ext", &[("primary", "up1"), ("standby", "up2")]);
    let before = [ext.clone(), group("b", &[("x", "up3"), ("y", "up4"), ("r", "up5")])];
    std::fs::write(lab.config_path(), config(&lab, &before)).unwrap();
    let agent = spawn_agent(&lab.host, &lab.config_path(), &lab.socket_path(), lab.dir.join("agent.log"));
    lab.wait_for("every uplink healthy", Duration::from_secs(10), all_healthy);
    check_own_state(&lab.status(), &["primary", "standby", "x", "y", "r"]);
    let pid = agent.pid();

    let t = lab.traffic(1, RATE);
    std::thread::sleep(Duration::from_millis(500));
    // n added in front of b, r removed, y moved to a new group c.
    let after = [ext, group("b", &[("n", "up6"), ("x", "up3")]), group("c", &[("y", "up4"), ("q", "up7")])];
    std::fs::write(lab.config_path(), config(&lab, &after)).unwrap();
    // SAFETY: signalling the agent this test started, by its pid.
    unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        if let Ok(r) = failover_agent::control::request(&lab.socket_path(), &Request::Status)
            && let Some(s) = r.status
            && s.groups.len() == 3
            && all_healthy(&s)
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not come back with the new topology");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    let r = t.finish();
    eprintln!("group ext (untouched) across the reload: {r}");
    assert_eq!(s.agent.as_ref().map(|a| a.pid), Some(pid), "the same process, executed anew");
    assert_eq!(s.groups[0].active.as_deref(), Some("primary"), "no flip of the untouched group");
    assert_eq!((r.lost, r.duplicates), (0, 0), "the untouched group loses nothing: {r}");
    // The added uplink is attached and probed, in front.
    let b = s.groups.iter().find(|g| g.name == "b").unwrap();
    assert_eq!(b.uplinks[0].name, "n");
    assert!(b.uplinks[0].probes_sent > 0 && b.uplinks[0].healthy, "{:?}", b.uplinks[0]);
    // The removed uplink is detached: no pinned links for up5 any more.
    let links: Vec<String> = std::fs::read_dir(lab.pins.path().join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!links.iter().any(|l| l.contains("-up5-")), "up5 still attached: {links:?}");
    assert!(
        links.iter().any(|l| l.starts_with("tci-up6-")) && links.iter().any(|l| l.starts_with("tc-up6-")),
        "{links:?}"
    );
    let events =
        failover_agent::control::request(&lab.socket_path(), &Request::Events { limit: Some(100), follow: false })
            .unwrap()
            .events
            .unwrap();
    assert!(events.iter().any(|e| e.message.contains("detached the datapath from up5")), "{events:#?}");
    check_own_state(&s, &["n", "y", "q"]);
    // A little later, with counters moving: still each its own.
    std::thread::sleep(Duration::from_millis(300));
    check_own_state(&lab.status(), &["n", "y", "q"]);
    drop(agent);
}
