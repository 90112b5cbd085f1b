//! Process hygiene (issue 12, in part): one agent per runtime directory,
//! tools that need only the control socket or the pin directory, and
//! `uninstall` refused while an agent runs.
#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use failover_tests::{
    agent_lab::{AgentLab, LabOptions, agent_binary},
    privileged,
};

const WAIT: Duration = Duration::from_secs(5);

/// Runs the agent's binary with `args` inside the lab's host namespace;
/// killed (by its pid) if it has not exited within 10 s.
fn cli(lab: &AgentLab, args: &[&str]) -> Output {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host.name()))
        .arg(agent_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("failover-agent {args:?} did not exit within 10 s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn config_arg(lab: &AgentLab) -> String {
    lab.config_path().display().to_string()
}

fn sighup(pid: u32) {
    // SAFETY: signalling the agent this test started, by its pid.
    unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGHUP) };
}

#[test]
fn a_second_run_exits_2_naming_the_running_pid_and_touches_nothing() {
    if !privileged("a_second_run_exits_2_naming_the_running_pid_and_touches_nothing") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let agent = lab.start_agent();
    lab.wait_healthy();
    let lock = lab.dir.join("failover-agent.lock");
    let socket_inode = inode(&lab.socket_path());
    let second = |lab: &AgentLab| {
        let out = cli(lab, &["run", "--config", &config_arg(lab)]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "failover-agent is already running (pid {}, lock {})",
                agent.pid(),
                lock.display()
            )),
            "{stderr}"
        );
    };
    second(&lab);
    // Nothing touched: the same socket, the first agent answers and steers on.
    assert_eq!(inode(&lab.socket_path()), socket_inode, "the control socket was not replaced");
    let s = lab.status();
    assert_eq!(s.agent.as_ref().unwrap().pid, agent.pid());
    assert_eq!(s.groups[0].active.as_deref(), Some("primary"));
    assert_eq!(std::fs::read_to_string(&lock).unwrap().lines().next(), Some(agent.pid().to_string().as_str()));

    // A reload executes the agent anew: the lock passes to the new image.
    let good = std::fs::read_to_string(lab.config_path()).unwrap();
    std::fs::write(lab.config_path(), good.replace("probe_interval_ms = 20", "probe_interval_ms = 30")).unwrap();
    sighup(agent.pid());
    let deadline = Instant::now() + WAIT;
    while !lab.socket_path().exists() || inode(&lab.socket_path()) == socket_inode {
        assert!(Instant::now() < deadline, "the agent did not come back after the reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.wait_healthy();
    second(&lab);

    // Once it stops, the next run takes the lock.
    assert!(agent.terminate().success());
    let next = lab.start_agent();
    lab.wait_healthy();
    assert_eq!(lab.status().agent.unwrap().pid, next.pid());
}

#[test]
fn status_and_events_need_only_the_control_socket() {
    if !privileged("status_and_events_need_only_the_control_socket") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    lab.wait_healthy();
    let socket = lab.socket_path().display().to_string();
    let out = cli(&lab, &["status", "--socket", &socket]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("group ext (bridge br0)  active: primary"), "{stdout}");
    let out = cli(&lab, &["events", "--socket", &socket]);
    assert!(out.status.success() && text(&out).0.contains("started"), "{:?}", text(&out));

    // A file invalid elsewhere: the [agent] paths still serve, with a warning naming the fault.
    let good = std::fs::read_to_string(lab.config_path()).unwrap();
    std::fs::write(
        lab.config_path(),
        good.replace("probe_interval_ms = 20", "probe_interval_ms = 0").replace("[agent]\n", "[agent]\nbogus = 1\n"),
    )
    .unwrap();
    let config = config_arg(&lab);
    assert!(failover_agent::config::load(&lab.config_path()).is_err(), "the file is invalid");
    for args in [&["status", "--config", &config][..], &["events", "--config", &config, "--json"]] {
        let out = cli(&lab, args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("warning: ") && stderr.contains("using only its [agent] paths"), "{stderr}");
        assert!(stderr.contains("bogus") || stderr.contains("probe_interval_ms"), "the fault is named: {stderr}");
        assert!(!stdout.is_empty(), "{args:?} printed nothing");
    }
    // A needed path that is wrong is an error naming it.
    std::fs::write(lab.config_path(), "[agent]\ncontrol_socket = \"control.sock\"\n").unwrap();
    let out = cli(&lab, &["status", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("agent.control_socket: control.sock is not an absolute path"), "{:?}", text(&out));
    // --socket and --config exclude each other.
    let out = cli(&lab, &["status", "--config", &config, "--socket", &socket]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("cannot be used with"), "{:?}", text(&out));
}

#[test]
fn uninstall_is_refused_while_the_agent_runs_and_works_from_the_pin_dir_alone() {
    if !privileged("uninstall_is_refused_while_the_agent_runs_and_works_from_the_pin_dir_alone") {
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let agent = lab.start_agent();
    lab.wait_healthy();
    let pins = lab.pins.path().to_path_buf();
    let pin_arg = pins.display().to_string();
    let config = config_arg(&lab);
    for args in [&["uninstall", "--config", &config][..], &["uninstall", "--pin-dir", &pin_arg]] {
        let out = cli(&lab, args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("failover-agent is running (pid {}", agent.pid()))
                && stderr.contains("systemctl stop failover-agent"),
            "{args:?}: {stderr}"
        );
    }
    // Nothing removed, nothing to undo: the pins stay and the agent steers on.
    assert!(pins.join("maps").exists() && pins.join("links").exists());
    std::thread::sleep(Duration::from_millis(1500));
    let s = lab.status();
    assert_eq!(s.agent.unwrap().pid, agent.pid());
    assert!(s.groups[0].uplinks.iter().all(|u| u.healthy), "{:?}", s.groups[0].uplinks);

    // Stopped: the pin directory alone is enough to take the datapath away.
    assert!(agent.terminate().success());
    // The ingress hook (TC ingress by default) holds the agent's program.
    let attached = |dev: &'static str| {
        lab.host
            .run(|| aya::programs::SchedClassifier::query_tcx(dev, aya::programs::TcAttachType::Ingress))
            .map(|(_, progs)| !progs.is_empty())
            .unwrap()
    };
    assert!(attached("up1"), "SIGTERM leaves the datapath in place");
    // A configuration that is not even TOML does not matter for it.
    std::fs::copy(lab.config_path(), lab.config_path().with_extension("good")).unwrap();
    std::fs::write(lab.config_path(), "this is not toml [[[").unwrap();
    let out = cli(&lab, &["uninstall", "--pin-dir", &pin_arg]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("detached") && stdout.contains(&format!("removed {pin_arg}")), "{stdout}");
    assert!(!pins.exists(), "pins removed");
    assert!(!attached("up1") && !attached("up2"), "programs detached");
    assert!(lab.dir.join("state/state.json").exists(), "the state stays with --pin-dir alone");
    // --config with a file invalid elsewhere: its [agent] paths serve, the state goes too.
    let good = lab.config_path().with_extension("good");
    std::fs::write(
        lab.config_path(),
        std::fs::read_to_string(&good).unwrap().replace("down_after = 3", "down_after = 0"),
    )
    .unwrap();
    let out = cli(&lab, &["uninstall", "--config", &config]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("using only its [agent] paths"), "{stderr}");
    assert!(stdout.contains("and the agent's state"), "{stdout}");
    assert!(!lab.dir.join("state/state.json").exists(), "state removed");
    assert!(!lab.socket_path().exists(), "control socket removed");
}
