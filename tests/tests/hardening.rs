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
    assert!(
        lab.ask(&failover_agent::control::Request::Switch {
            group: "ext".into(),
            uplink: "standby".into(),
            force: false
        })
        .ok
    );
    let good = std::fs::read_to_string(lab.config_path()).unwrap();

    std::fs::write(lab.config_path(), good.replace("probe_interval_ms = 20", "probe_interval_ms = 0")).unwrap();
    sighup(agent.pid());
    let events =
        || lab.ask(&failover_agent::control::Request::Events { limit: Some(50), follow: false }).events.unwrap();
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
    let mode = std::fs::metadata(lab.socket_path())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
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
        .find(|e| e.file_name().to_string_lossy().starts_with("tci-up2-"))
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
    let (_, progs) = lab
        .host
        .run(|| aya::programs::SchedClassifier::query_tcx("up2", aya::programs::TcAttachType::Ingress))
        .expect("query TCX");
    assert_eq!(progs.len(), 1, "TC ingress attached again to up2, once");
    lab.set_link(1, false);
    lab.wait_for("switch to the standby", WAIT, |s| s.groups[0].active.as_deref() == Some("standby"));
    let events = lab.ask(&failover_agent::control::Request::Events { limit: Some(100), follow: false }).events.unwrap();
    assert!(events.iter().any(|e| e.message.contains("pinned maps had been removed")), "{events:?}");
}

#[test]
fn a_starved_agent_does_not_fail_over_falsely() {
    if !privileged("a_starved_agent_does_not_fail_over_falsely") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions { probe_interval_ms: 100, ..LabOptions::default() });
    let agent = lab.start_agent();
    lab.wait_healthy();
    // Lowest priority for the agent; both cores busy at normal priority.
    let renice =
        std::process::Command::new("renice").args(["-n", "19", "-p", &agent.pid().to_string()]).output().unwrap();
    assert!(renice.status.success(), "{}", String::from_utf8_lossy(&renice.stderr));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut worst = Duration::ZERO;
    while Instant::now() < deadline {
        let asked = Instant::now();
        let s = lab.status();
        worst = worst.max(asked.elapsed());
        assert_eq!(s.groups[0].active.as_deref(), Some("primary"), "no switchover under starvation: {s:#?}");
        assert!(s.alarms.is_empty(), "no alarm under starvation: {:?}", s.alarms);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    eprintln!(
        "starved agent (nice 19, both cores busy, 100 ms probes): no false failover; slowest status answer {worst:?}"
    );
    let s = lab.status();
    assert_eq!(s.groups[0].last_switchover.as_ref().unwrap().reason, "startup");
}

#[test]
fn spoofed_replies_keep_no_dead_gateway_alive() {
    use failover_tests::{
        PacketSocket,
        agent_lab::{GW1_MAC, GW2_MAC, UP1_MAC},
        packet::arp_reply,
    };
    const ROGUE: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0e, 0x0e];
    const GW: [u8; 4] = [192, 0, 2, 1];
    const PROBE: [u8; 4] = [192, 0, 2, 250];
    if !privileged("spoofed_replies_keep_no_dead_gateway_alive") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let before = lab.status();
    // A rogue on gateway 1's segment, one on gateway 2's, and a rogue VM.
    let seg1 = lab.gw1.run(|| PacketSocket::open("gw1").unwrap());
    let seg2 = lab.gw2.run(|| PacketSocket::open("gw2").unwrap());
    let vm = lab.vm.run(|| PacketSocket::open("eth0").unwrap());
    let forged_seg1 = [
        arp_reply(UP1_MAC, ROGUE, GW, UP1_MAC, PROBE), // another MAC than the gateway's
        arp_reply(UP1_MAC, GW1_MAC, GW, UP1_MAC, [192, 0, 2, 77]), // aimed at another target
        arp_reply(UP1_MAC, GW1_MAC, [192, 0, 2, 2], UP1_MAC, PROBE), // another sender address
    ];
    let for_up1_on_seg2 = arp_reply(UP1_MAC, GW2_MAC, GW, UP1_MAC, PROBE); // arrives on the other uplink
    let from_vm = arp_reply(UP1_MAC, GW1_MAC, GW, UP1_MAC, PROBE); // a VM in the gateway's name
    lab.silence_gateway(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let rogue = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(6);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            for f in &forged_seg1 {
                let _ = seg1.send(f);
            }
            let _ = seg2.send(&for_up1_on_seg2);
            let _ = vm.send(&from_vm);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let s = lab.wait_for("the dead gateway found dead despite the spoofers", WAIT, |s| {
        s.groups[0].active.as_deref() == Some("standby")
            && s.alarms.iter().any(|a| a.kind == "gateway" && a.uplink.as_deref() == Some("primary"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = lab.status();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rogue.join().unwrap();
    let primary = &after.groups[0].uplinks[0];
    assert!(!primary.healthy && primary.gateway == "down", "kept dead: {primary:?}");
    assert_eq!(primary.gateway_mac.as_deref(), Some("02:fa:00:00:0a:01"), "the rogue's MAC was not learned");
    assert!(after.alarms.iter().any(|a| a.kind == "gateway" && a.uplink.as_deref() == Some("primary")));
    let rejected = |s: &failover_agent::control::Status, u: usize| s.groups[0].uplinks[u].replies_rejected;
    assert!(
        rejected(&after, 0) > rejected(&before, 0) + 100,
        "spoofs counted as rejected on the primary: {}",
        rejected(&after, 0)
    );
    assert!(
        rejected(&after, 1) > rejected(&before, 1) + 100,
        "misdirected replies counted on the standby: {}",
        rejected(&after, 1)
    );
    assert!(after.groups[0].uplinks[1].healthy, "the standby's real gateway still counts");
    assert_eq!(s.groups[0].last_switchover.as_ref().unwrap().reason, "gateway_silent");
}

#[test]
fn sigkill_in_the_middle_of_a_switchover_leaves_a_consistent_state() {
    if !privileged("sigkill_in_the_middle_of_a_switchover_leaves_a_consistent_state") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let mut agent = lab.start_agent();
    lab.wait_healthy();
    // Kill the agent 0-4 ms after the fault that makes it switch, repeatedly,
    // moving the fault between the uplinks.
    for round in 0..4u32 {
        let s = lab.status();
        let active = if s.groups[0].active.as_deref() == Some("primary") { 1 } else { 2 };
        lab.set_link(active, false);
        std::thread::sleep(Duration::from_micros(u64::from(round) * 1000));
        agent.kill();
        agent = lab.start_agent();
        let want = if active == 1 { "standby" } else { "primary" };
        let s = lab.wait_for("a consistent state after the kill", WAIT, |s| {
            s.groups[0].active.as_deref() == Some(want) && s.alarms.iter().any(|a| a.kind == "nic")
        });
        let nic: Vec<_> = s.alarms.iter().filter(|a| a.kind == "nic").filter_map(|a| a.uplink.clone()).collect();
        assert_eq!(
            nic,
            vec![if active == 1 { "primary" } else { "standby" }.to_string()],
            "round {round}: {:?}",
            s.alarms
        );
        lab.set_link(active, true);
        lab.wait_healthy();
        lab.wait_for("alarms cleared", WAIT, |s| s.alarms.is_empty());
    }
}

#[test]
fn an_uplink_deleted_and_recreated_at_run_time_is_attached_and_relearned() {
    use failover_tests::agent_lab::{GW2_MAC, UP2_MAC};
    if !privileged("an_uplink_deleted_and_recreated_at_run_time_is_attached_and_relearned") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    lab.host.ip(&["link", "del", "up2"]);
    let s = lab.wait_for("standby NIC alarm", WAIT, |s| s.alarms.iter().any(|a| a.kind == "nic"));
    assert_eq!(s.groups[0].uplinks[1].link, "absent");
    lab.host.veth("up2", UP2_MAC, &lab.gw2, "gw2", GW2_MAC);
    lab.host.ip(&["link", "set", "up2", "master", "br0"]);
    lab.gw2.ip(&["addr", "add", "192.0.2.1/24", "dev", "gw2"]);
    let s = lab.wait_for("standby back", WAIT, |s| s.groups[0].uplinks[1].healthy && s.alarms.is_empty());
    assert!(s.groups[0].uplinks[1].replies > 0);
    let (_, progs) = lab
        .host
        .run(|| aya::programs::SchedClassifier::query_tcx("up2", aya::programs::TcAttachType::Ingress))
        .expect("query TCX");
    assert_eq!(progs.len(), 1, "TC ingress attached to the new up2, once");
    // It works: a fault on the primary moves traffic to the re-created standby.
    lab.set_link(1, false);
    lab.wait_for("switch to the re-created standby", WAIT, |s| s.groups[0].active.as_deref() == Some("standby"));
}

#[test]
fn only_root_may_use_the_control_socket() {
    if !privileged("only_root_may_use_the_control_socket") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    // The same CLI as user nobody: refused by the socket's mode.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(failover_tests::agent_lab::agent_binary())
        .args(["status", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody got the status: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("control socket") && stderr.contains("Permission denied"), "{stderr}");
    // Root still may.
    assert_eq!(lab.status().groups[0].active.as_deref(), Some("primary"));
}

#[test]
fn the_metrics_endpoint_serves_a_bounded_number_of_idle_clients_and_frees_them() {
    use std::net::TcpStream;

    use failover_agent::metrics::{CLIENT_TIMEOUT, MAX_CONNECTIONS};
    use failover_tests::prom::http_get;
    const IDLE: usize = 3 * MAX_CONNECTIONS;
    if !privileged("the_metrics_endpoint_serves_a_bounded_number_of_idle_clients_and_frees_them") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let target = lab.status().agent.and_then(|a| a.metrics_listen).unwrap();
    assert_eq!(http_get(&lab.host, &target, "/healthz").map(|(c, _)| c), Some(200));
    // Clients that connect and never send a request, well over the cap.
    let addr = target.clone();
    let opened = Instant::now();
    let idle: Vec<TcpStream> = lab.host.run(move || (0..IDLE).map(|_| TcpStream::connect(&addr).unwrap()).collect());
    // Those over the cap are closed at once; the first MAX_CONNECTIONS wait for their head.
    std::thread::sleep(Duration::from_millis(500));
    let closed = |streams: &[TcpStream]| {
        streams
            .iter()
            .filter(|s| {
                let mut s: &TcpStream = s;
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 512];
                let r = s.read(&mut buf);
                // EOF, a reset, or the agent's 408: closed; no data yet: still held.
                !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    };
    let closed_at_once = closed(&idle);
    assert_eq!(closed_at_once, IDLE - MAX_CONNECTIONS, "all but {MAX_CONNECTIONS} closed at once");
    // Meanwhile the agent works: its control socket answers.
    let started = Instant::now();
    assert_eq!(lab.status().groups[0].active.as_deref(), Some("primary"));
    assert!(started.elapsed() < Duration::from_millis(500), "status took {:?}", started.elapsed());
    // While the slots are held, one more client is closed without an answer.
    assert_eq!(http_get(&lab.host, &target, "/healthz"), None, "the cap holds");
    // The held ones are closed after the head timeout, and the endpoint answers again.
    let deadline = opened + CLIENT_TIMEOUT + Duration::from_secs(2);
    while closed(&idle) < IDLE {
        assert!(Instant::now() < deadline, "idle clients still held after {:?}", opened.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let freed_after = opened.elapsed();
    assert!(
        freed_after + Duration::from_millis(100) >= CLIENT_TIMEOUT,
        "freed only after the timeout: {freed_after:?}"
    );
    let (code, body) = http_get(&lab.host, &target, "/metrics").expect("metrics answer once the slots are free");
    assert_eq!(code, 200);
    assert!(body.contains("failover_active_uplink{group=\"ext\",uplink=\"primary\"} 1"), "{body}");
    eprintln!(
        "metrics endpoint: {IDLE} idle clients, {closed_at_once} closed at once, {MAX_CONNECTIONS} held and freed after {freed_after:?}"
    );
}
