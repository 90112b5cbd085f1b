//! What ships in deploy/ is checked with the tools operators use on it:
//! promtool for the alert rules, systemd-analyze for the unit.

use std::{path::Path, process::Command};

use failover_tests::{agent_lab::agent_binary, unique_name};

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

/// Whether `tool` is installed; under CI a missing tool is a failure.
fn have(tool: &str, test: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {tool} is not installed (./dev installs it)");
    eprintln!("SKIPPED {test}: {tool} is not installed (./dev setup installs it)");
    false
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("running the tool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn promtool_checks_and_unit_tests_the_shipped_alert_rules() {
    if !have("promtool", "promtool_checks_and_unit_tests_the_shipped_alert_rules") {
        return;
    }
    let dir = deploy().join("prometheus");
    let (ok, out) = run(Command::new("promtool").arg("check").arg("rules").arg(dir.join("alerts.yml")));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let (ok, out) = run(Command::new("promtool").current_dir(&dir).args(["test", "rules", "alerts_test.yml"]));
    assert!(ok, "{out}");
}

#[test]
fn every_alarm_kind_has_an_alert_naming_host_and_part() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    for (alert, expr) in [
        ("FailoverReplaceNIC", "failover_alarm{part=\"nic\"}"),
        ("FailoverReplaceGateway", "failover_alarm{part=\"gateway\"}"),
        ("FailoverNoHealthyUplink", "failover_no_healthy_uplink"),
        ("FailoverFlapping", "failover_flapping"),
        ("FailoverOVSUnreachable", "failover_ovs_reachable"),
        ("FailoverDatapathNotAttached", "failover_datapath_attached"),
        ("FailoverAgentDown", "up{job=\"failover-agent\"}"),
    ] {
        let at = rules.find(&format!("alert: {alert}")).unwrap_or_else(|| panic!("no alert {alert}"));
        let body = &rules[at..];
        let body = &body[..body[1..].find("- alert:").map_or(body.len(), |e| e + 1)];
        assert!(body.contains(expr), "{alert} does not use {expr}");
        assert!(body.contains("{{ $labels.instance }}"), "{alert} does not name the host");
    }
}

#[test]
fn systemd_verifies_the_shipped_unit() {
    if !have("systemd-analyze", "systemd_verifies_the_shipped_unit") {
        return;
    }
    // An offline root with the system's own units, the agent at the path
    // the unit names, and the unit.
    let root = std::env::temp_dir().join(unique_name("sysroot"));
    for dir in ["usr/bin", "usr/lib/systemd", "etc/systemd/system"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let (ok, out) = run(Command::new("cp").arg("-r").arg("/lib/systemd/system").arg(root.join("usr/lib/systemd/")));
    assert!(ok, "{out}");
    std::fs::copy(agent_binary(), root.join("usr/bin/failover-agent")).unwrap();
    std::fs::copy(
        deploy().join("systemd/failover-agent.service"),
        root.join("etc/systemd/system/failover-agent.service"),
    )
    .unwrap();
    let (ok, out) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("failover-agent.service"));
    let _ = std::fs::remove_dir_all(&root);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
}

#[test]
fn the_unit_runs_the_documented_commands_with_few_capabilities() {
    let unit = std::fs::read_to_string(deploy().join("systemd/failover-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/failover-agent run --config /etc/failover-agent/failover-agent.toml"));
    assert!(unit.contains("Restart=on-failure"));
    assert!(unit.contains("RestartPreventExitStatus=2"), "a bad config is not retried");
    let caps: Vec<&str> =
        unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).unwrap().split_whitespace().collect();
    assert_eq!(caps, ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW"]);
}
