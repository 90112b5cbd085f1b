//! Many groups on one host, end to end with the real agent: 16 groups on
//! two bridges, IPv4 and IPv6 gateways mixed, one group with three
//! uplinks. Faults in one group never touch another; the agent's CPU at
//! 10 ms probes is reported.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use failover_agent::control::Status;
use failover_tests::{
    Netns, PinDir,
    agent_lab::{spawn_agent, wait_for},
    cpu_ticks, privileged, unique_name,
};

const GROUPS: usize = 16;
/// The group with three uplinks.
const THREE: usize = 5;
const WAIT: Duration = Duration::from_secs(10);

fn uplinks_of(g: usize) -> usize {
    if g == THREE { 3 } else { 2 }
}

fn ipv6(g: usize) -> bool {
    g % 2 == 1
}

/// Interface index of uplink `u` of group `g` (names `u<i>` / `g<i>`).
fn index(g: usize, u: usize) -> usize {
    (0..g).map(uplinks_of).sum::<usize>() + u
}

/// Every group but those in `touched` is on its first uplink, healthy, not
/// switched since `base` (its startup choice), without an alarm.
fn untouched_elsewhere(base: &Status, s: &Status, touched: &[usize]) {
    for (g, group) in s.groups.iter().enumerate() {
        if touched.contains(&g) {
            continue;
        }
        assert_eq!(group.active.as_deref(), Some("u0"), "group {} moved: {group:?}", group.name);
        let startup = &base.groups[g].last_switchover;
        assert_eq!(&group.last_switchover, startup, "group {} switched: {group:?}", group.name);
        assert!(group.uplinks.iter().all(|u| u.healthy), "group {}: {group:?}", group.name);
        assert!(!s.alarms.iter().any(|a| a.group == group.name), "alarm in group {}: {:?}", group.name, s.alarms);
    }
}

#[test]
fn sixteen_groups_faults_in_one_never_touch_another() {
    if !privileged("sixteen_groups_faults_in_one_never_touch_another") {
        return;
    }
    let host = Netns::new("h");
    let gw = Netns::new("g");
    host.disable_ipv6();
    let pins = PinDir::new();
    let dir = std::env::temp_dir().join(unique_name("fleet"));
    std::fs::create_dir_all(&dir).unwrap();
    for br in ["br-a", "br-b"] {
        host.ip(&["link", "add", br, "type", "bridge"]);
        host.ip(&["link", "set", br, "up"]);
    }
    let mut config = format!(
        "[agent]\nstate_dir = \"{}\"\nbpf_pin_dir = \"{}\"\ncontrol_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\novs_flows = false\n",
        dir.join("state").display(),
        pins.path().display(),
        dir.join("control.sock").display()
    );
    for g in 0..GROUPS {
        let bridge = if g < GROUPS / 2 { "br-a" } else { "br-b" };
        let (gateway, source) = if ipv6(g) { ("2001:db8::1", "2001:db8::fa") } else { ("192.0.2.1", "192.0.2.250") };
        let _ = write!(config, "\n[[group]]\nname = \"grp{g}\"\nbridge = \"{bridge}\"\nprobe_interval_ms = 10\n");
        for u in 0..uplinks_of(g) {
            let i = index(g, u);
            let (up, peer) = (format!("u{i}"), format!("g{i}"));
            host.veth(&up, [2, 0xfa, 1, 0, 0, i as u8], &gw, &peer, [2, 0xfa, 2, 0, 0, i as u8]);
            host.ip(&["link", "set", &up, "master", bridge]);
            if ipv6(g) {
                gw.ip(&["addr", "add", "2001:db8::1/64", "dev", &peer, "nodad"]);
            } else {
                gw.ip(&["addr", "add", "192.0.2.1/24", "dev", &peer]);
            }
            let _ = write!(
                config,
                "[[group.uplink]]\nname = \"u{u}\"\ninterface = \"{up}\"\ngateway = \"{gateway}\"\nprobe_source = \"{source}\"\n"
            );
        }
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, &config).unwrap();
    let socket = dir.join("control.sock");
    let agent = spawn_agent(&host, &path, &socket, dir.join("agent.log"));
    let all_healthy =
        |s: &Status| s.groups.len() == GROUPS && s.groups.iter().all(|g| g.uplinks.iter().all(|u| u.healthy));
    let base = wait_for(&socket, "all 16 groups healthy", WAIT, all_healthy);
    untouched_elsewhere(&base, &base, &[]);

    // The agent's CPU with 16 groups (33 uplinks) at 10 ms probes.
    let (t0, start) = (cpu_ticks(agent.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: sysconf has no preconditions.
    let hz = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1)).unwrap_or(100));
    let ticks = f64::from(u32::try_from(cpu_ticks(agent.pid()) - t0).unwrap_or(u32::MAX));
    let share = ticks / hz / start.elapsed().as_secs_f64() * 100.0;
    eprintln!("agent CPU, 16 groups / 33 uplinks at 10 ms probes: {share:.1} % of a core");

    // A link fault in group 2 (IPv4): only group 2 moves.
    gw.ip(&["link", "set", &format!("g{}", index(2, 0)), "down"]);
    let s = wait_for(&socket, "group 2 on its standby", WAIT, |s| s.groups[2].active.as_deref() == Some("u1"));
    assert!(s.alarms.iter().any(|a| a.group == "grp2" && a.kind == "nic"), "{:?}", s.alarms);
    std::thread::sleep(Duration::from_millis(300));
    untouched_elsewhere(&base, &failover_tests::agent_lab::status(&socket), &[2]);

    // A silent IPv6 gateway in group 9: only group 9 moves.
    gw.ip(&["addr", "del", "2001:db8::1/64", "dev", &format!("g{}", index(9, 0))]);
    let s = wait_for(&socket, "group 9 on its standby", WAIT, |s| s.groups[9].active.as_deref() == Some("u1"));
    assert!(s.alarms.iter().any(|a| a.group == "grp9" && a.kind == "gateway"), "{:?}", s.alarms);
    std::thread::sleep(Duration::from_millis(300));
    untouched_elsewhere(&base, &failover_tests::agent_lab::status(&socket), &[2, 9]);

    // The group with three uplinks: primary, then second lost: the third.
    gw.ip(&["link", "set", &format!("g{}", index(THREE, 0)), "down"]);
    wait_for(&socket, "group 5 on its second", WAIT, |s| s.groups[THREE].active.as_deref() == Some("u1"));
    gw.ip(&["link", "set", &format!("g{}", index(THREE, 1)), "down"]);
    let s = wait_for(&socket, "group 5 on its third", WAIT, |s| s.groups[THREE].active.as_deref() == Some("u2"));
    let nic_alarms = s.alarms.iter().filter(|a| a.group == "grp5" && a.kind == "nic").count();
    assert_eq!(nic_alarms, 2, "{:?}", s.alarms);
    std::thread::sleep(Duration::from_millis(300));
    untouched_elsewhere(&base, &failover_tests::agent_lab::status(&socket), &[2, 9, THREE]);
    assert!(agent.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}
