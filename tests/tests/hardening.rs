//! The agent against bad input and rough handling (issue 7, in part): a bad
//! configuration on reload, abusive control-socket clients, pins removed
//! by hand.
#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use failover_tests::{
    agent_lab::{AgentLab, LabOptions},
    privileged,
};

const WAIT: Duration = Duration::from_secs(5);

fn sighup(pid: u32) {
    // SAFETY: signalling the agent this test started, by its pid.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGHUP) };
}

#[test]
fn a_bad_configuration_on_reload_is_refused_and_a_good_one_applied_without_a_flip() {
    if !privileged("a_bad_configuration_on_reload_is_refused_and_a_good_one_applied_without_a_flip") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let agent = lab.start_agent();
    lab.wait_healthy();
    assert!(lab.ask(&failover_agent::control::Request::Switch { group: "ext".into(), uplink: "standby".into(), force: false }).ok);
    let good = std::fs::read_to_string(lab.config_path()).unwrap();

    std::fs::write(lab.config_path(), good.replace("probe_interval_ms = 20", "probe_interval_ms = 0")).unwrap();
    sighup(agent.pid());
    let events = || lab.ask(&failover_agent::control::Request::Events { limit: Some(50), follow: false }).events.unwrap();
    let deadline = Instant::now() + WAIT;
    while !events().iter().any(|e| e.message.contains("reload refused")) {
        assert!(Instant::now() < deadline, "no refusal event: {:?}", events());
        std::thread::sleep(Duration::from_millis(20));
    }
    let refusal = events().into_iter().find(|e| e.message.contains("reload refused")).unwrap();
    assert!(refusal.message.contains("group \"ext\", probe_interval_ms: 0 is out of range"), "{}", refusal.message);
    assert_eq!(lab.status().agent.unwrap().pid, agent.pid(), "still the same agent, still running");

    // A valid change: the agent executes itself anew with it; no flip.
    std::fs::write(lab.config_path(), good.replace("probe_interval_ms = 20", "probe_interval_ms = 30")).unwrap();
    sighup(agent.pid());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = failover_agent::control::request(&lab.socket_path(), &failover_agent::control::Request::Status)
            && r.status.as_ref().is_some_and(|s| s.groups[0].last_switchover.is_none())
        {
            let s = r.status.unwrap();
            assert_eq!(s.groups[0].active.as_deref(), Some("standby"), "the decision survived the reload");
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not come back after the reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.wait_healthy();
}

fn raw(lab: &AgentLab, bytes: &[u8], half_close: bool) -> String {
    let mut s = UnixStream::connect(lab.socket_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn abusive_control_clients_get_errors_and_block_nobody() {
    if !privileged("abusive_control_clients_get_errors_and_block_nobody") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let out = raw(&lab, b"{\"request\":\"reboot\"}\n", false);
    assert!(out.contains("\"ok\":false") && out.contains("malformed request") && out.contains("reboot"), "{out}");
    let out = raw(&lab, b"not json at all\n", false);
    assert!(out.contains("malformed request"), "{out}");
    let big = vec![b'x'; 100_000];
    let out = raw(&lab, &big, false);
    assert!(out.contains("request longer than 4096 bytes"), "{out}");
    let out = raw(&lab, b"{\"request\":\"status\"}", true);
    assert!(out.contains("\"ok\":true"), "a request without its newline, then half-closed: {out}");
    // A client that connects and says nothing holds up nobody.
    let _silent = UnixStream::connect(lab.socket_path()).unwrap();
    let started = Instant::now();
    let status = lab.status();
    assert!(started.elapsed() < Duration::from_millis(500), "status took {:?}", started.elapsed());
    assert_eq!(status.groups[0].active.as_deref(), Some("primary"));
    let mode = std::fs::metadata(lab.socket_path()).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap();
    assert_eq!(mode, 0o600, "only its owner (root) may use the socket");
}

#[test]
fn pins_removed_by_hand_are_put_back_and_the_programs_reattached() {
    if !privileged("pins_removed_by_hand_are_put_back_and_the_programs_reattached") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let maps = lab.pins.path().join("maps");
    let links = lab.pins.path().join("links");
    std::fs::remove_file(maps.join("GROUPS")).unwrap();
    let xdp_up2 = std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("xdp-up2-"))
        .unwrap()
        .path();
    std::fs::remove_file(&xdp_up2).unwrap();
    let deadline = Instant::now() + WAIT;
    while !(maps.join("GROUPS").exists() && xdp_up2.exists()) {
        assert!(Instant::now() < deadline, "pins not restored");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still working: the standby is watched again and a fault still moves traffic.
    lab.wait_healthy();
    let out = std::process::Command::new("ip").args(["-n", lab.host.name(), "-d", "link", "show", "up2"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("xdp"), "XDP attached again to up2");
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| s.groups[0].active.as_deref() == Some("standby"));
    let events = lab.ask(&failover_agent::control::Request::Events { limit: Some(100), follow: false }).events.unwrap();
    assert!(events.iter().any(|e| e.message.contains("pinned maps had been removed")), "{events:?}");
}
