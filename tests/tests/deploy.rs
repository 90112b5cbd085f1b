//! What ships in deploy/ is checked with the tools operators use on it:
//! promtool for the alert rules (a 50-host fleet among their tests), amtool
//! and a private Alertmanager for the Alertmanager example, systemd-analyze
//! for the unit.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use failover_tests::{Netns, agent_lab::agent_binary, have, privileged, unique_name};
use serde_json::Value;

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
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
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    for tests in ["alerts_test.yml", "alerts_fleet_test.yml"] {
        let (ok, out) = run(Command::new("promtool").current_dir(&dir).args(["test", "rules", tests]));
        assert!(ok && out.contains("SUCCESS"), "{tests}: {out}");
    }
}

#[test]
fn every_alarm_kind_has_an_alert_naming_host_and_part() {
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    for (alert, expr) in [
        ("FailoverReplaceNIC", "failover_alarm{part=\"nic\"}"),
        ("FailoverReplaceGateway", "group_left (gateway) failover_gateway_info"),
        ("FailoverNoHealthyUplink", "failover_no_healthy_uplink"),
        ("FailoverFlapping", "failover_flapping"),
        ("FailoverOVSUnreachable", "failover_ovs_reachable"),
        ("FailoverDatapathNotAttached", "failover_datapath_attached"),
        ("FailoverAgentDown", "up{job=\"failover-agent\"}"),
    ] {
        let body = alert_body(&rules, alert);
        assert!(body.contains(expr), "{alert} does not use {expr}");
        assert!(body.contains("{{ $labels.instance }}"), "{alert} does not name the host");
    }
    // The fleet alert names the part and how many hosts see it, not a host.
    let body = alert_body(&rules, "FailoverGatewayDown");
    for needle in
        ["failover_alarm{part=\"gateway\"}", "group_left (gateway) failover_gateway_info", "count by (gateway)"]
    {
        assert!(body.contains(needle), "FailoverGatewayDown does not use {needle}");
    }
    assert!(body.contains("{{ $labels.gateway }}") && body.contains("{{ $value }} hosts"), "{body}");
    assert!(!body.contains("$labels.instance"), "the fleet alert is not per host: {body}");
}

fn alert_body<'a>(rules: &'a str, alert: &str) -> &'a str {
    let at = rules.find(&format!("alert: {alert}\n")).unwrap_or_else(|| panic!("no alert {alert}"));
    let body = &rules[at..];
    &body[..body[1..].find("- alert:").map_or(body.len(), |e| e + 1)]
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
    // ExecReload runs /bin/kill (procps, a dependency of the package).
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
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
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "systemctl reload sends SIGHUP, which the agent reloads on"
    );
    let caps: Vec<&str> =
        unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).unwrap().split_whitespace().collect();
    assert_eq!(caps, ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW"]);
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `name="value"` matchers (the only kind the example uses) as pairs.
fn matchers(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .expect("a matcher list")
        .iter()
        .map(|m| {
            let m = m.as_str().expect("a matcher string");
            let (name, value) = m.split_once('=').expect("name=\"value\"");
            assert!(!name.ends_with(['!', '=']) && !value.starts_with('~'), "only = matchers here: {m}");
            (name.to_string(), value.trim_matches('"').to_string())
        })
        .collect()
}

/// The example's inhibit rule for the per-host gateway alert: source
/// matchers, target matchers, equal labels.
type Inhibit = (Vec<(String, String)>, Vec<(String, String)>, Vec<String>);

fn gateway_inhibit_rule() -> Inhibit {
    let am = yaml(&deploy().join("alertmanager/alertmanager.example.yml"));
    let rule = am["inhibit_rules"]
        .as_array()
        .expect("inhibit_rules")
        .iter()
        .find(|r| matchers(&r["target_matchers"]).contains(&("alertname".into(), "FailoverReplaceGateway".into())))
        .expect("an inhibit rule for FailoverReplaceGateway");
    let equal = rule["equal"]
        .as_array()
        .expect("equal")
        .iter()
        .map(|l| l.as_str().expect("a label name").to_string())
        .collect();
    (matchers(&rule["source_matchers"]), matchers(&rule["target_matchers"]), equal)
}

/// The alerts (labels with alertname, annotations) that one case of
/// `alerts_fleet_test.yml` expects of `alertname` at `eval_time`.
fn expected_alerts(case: usize, alertname: &str, eval_time: &str) -> Vec<Value> {
    let tests = yaml(&deploy().join("prometheus/alerts_fleet_test.yml"));
    let case = &tests["tests"][case]["alert_rule_test"];
    let test = case
        .as_array()
        .expect("alert_rule_test")
        .iter()
        .find(|t| t["alertname"] == alertname && t["eval_time"] == eval_time)
        .unwrap_or_else(|| panic!("no test of {alertname} at {eval_time}"));
    test["exp_alerts"]
        .as_array()
        .expect("exp_alerts")
        .iter()
        .map(|a| {
            let mut labels = a["exp_labels"].clone();
            labels["alertname"] = Value::from(alertname);
            serde_json::json!({"labels": labels, "annotations": a["exp_annotations"]})
        })
        .collect()
}

fn matches(labels: &Value, matchers: &[(String, String)]) -> bool {
    matchers.iter().all(|(name, value)| labels[name.as_str()] == value.as_str())
}

#[test]
fn the_fleet_alert_and_the_per_host_ones_line_up_for_the_inhibit_rule() {
    let (source, target, equal) = gateway_inhibit_rule();
    assert!(!equal.is_empty(), "an inhibit rule without equal would silence every gateway's alerts");
    let fleet = expected_alerts(0, "FailoverGatewayDown", "12s");
    let hosts = expected_alerts(0, "FailoverReplaceGateway", "12s");
    assert_eq!(fleet.len(), 1, "one gateway down: one fleet alert");
    assert_eq!(hosts.len(), 50, "every host of the fleet sees it");
    let fleet = &fleet[0]["labels"];
    assert!(matches(fleet, &source), "{fleet} is not the inhibit rule's source {source:?}");
    assert_eq!(fleet["gateway"], "192.0.2.1");
    let instances: std::collections::BTreeSet<&str> =
        hosts.iter().map(|a| a["labels"]["instance"].as_str().unwrap()).collect();
    assert_eq!(instances.len(), 50, "50 distinct hosts");
    for host in &hosts {
        let host = &host["labels"];
        assert!(matches(host, &target), "{host} is not the inhibit rule's target {target:?}");
        for label in &equal {
            assert!(fleet[label.as_str()].as_str().is_some_and(|v| !v.is_empty()), "fleet alert lacks {label}");
            assert_eq!(host[label.as_str()], fleet[label.as_str()], "{label} differs: {host} vs {fleet}");
        }
    }
    // The lone host's alert is for another gateway: not inhibited by this one.
    let lone = &expected_alerts(2, "FailoverReplaceGateway", "12s")[0]["labels"];
    assert!(equal.iter().any(|l| lone[l.as_str()] != fleet[l.as_str()]), "{lone}");
    assert!(expected_alerts(2, "FailoverGatewayDown", "12s").is_empty());
}

#[test]
fn amtool_checks_the_shipped_alertmanager_example() {
    if !have("amtool", "amtool_checks_the_shipped_alertmanager_example") {
        return;
    }
    let dir = deploy().join("alertmanager");
    let (ok, out) = run(Command::new("amtool").current_dir(&dir).args(["check-config", "alertmanager.example.yml"]));
    assert!(ok && out.contains("SUCCESS") && out.contains("1 inhibit rules"), "{out}");
}

/// An HTTP/1.0 exchange with `addr` inside `ns`: status and body.
fn http(ns: &Netns, addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let addr = addr.to_string();
    ns.run(move || {
        let mut s = TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
    })
}

/// An Alertmanager of our own: in a namespace of its own, its own data
/// directory, stopped by its pid when dropped.
struct Alertmanager {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- alertmanager log ---\n{}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const AM: &str = "127.0.0.1:9093";

fn start_alertmanager(ns: &Netns) -> Alertmanager {
    let dir = std::env::temp_dir().join(unique_name("am"));
    std::fs::create_dir_all(dir.join("data")).expect("alertmanager data directory");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "prometheus-alertmanager"])
        .arg(format!("--config.file={}", deploy().join("alertmanager/alertmanager.example.yml").display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={AM}"))
        .args(["--cluster.listen-address=", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).expect("alertmanager log"))
        .spawn()
        .expect("starting alertmanager (Debian package prometheus-alertmanager)");
    let am = Alertmanager { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(ns, AM, "GET", "/-/ready", "").is_none_or(|(code, _)| code != 200) {
        assert!(Instant::now() < deadline, "alertmanager not ready within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    am
}

#[test]
fn a_real_alertmanager_inhibits_the_per_host_gateway_alerts_under_the_fleet_one() {
    let test = "a_real_alertmanager_inhibits_the_per_host_gateway_alerts_under_the_fleet_one";
    if !privileged(test) || !have("prometheus-alertmanager", test) {
        return;
    }
    let ns = Netns::new("am");
    let _am = start_alertmanager(&ns);
    // What the rules' tests expect Prometheus to send: the fleet alert and
    // the 50 hosts' alerts for 192.0.2.1, a NIC alert, and a lone host's
    // alert for another gateway.
    let fleet = expected_alerts(0, "FailoverGatewayDown", "12s");
    let hosts = expected_alerts(0, "FailoverReplaceGateway", "12s");
    let nic = expected_alerts(1, "FailoverReplaceNIC", "12s");
    let lone = expected_alerts(2, "FailoverReplaceGateway", "12s");
    let all: Vec<Value> = fleet.iter().chain(&hosts).chain(&nic).chain(&lone).cloned().collect();
    assert_eq!(all.len(), 53);
    let (code, body) = http(&ns, AM, "POST", "/api/v2/alerts", &Value::from(all.clone()).to_string()).expect("posted");
    assert_eq!(code, 200, "{body}");

    // The inhibitor picks the source up asynchronously: wait, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let states = loop {
        let (code, body) = http(&ns, AM, "GET", "/api/v2/alerts", "").expect("alerts listed");
        assert_eq!(code, 200, "{body}");
        let listed: Vec<Value> = serde_json::from_str(&body).unwrap();
        let suppressed = listed.iter().filter(|a| a["status"]["state"] == "suppressed").count();
        if listed.len() == all.len() && suppressed == hosts.len() || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(states.len(), all.len(), "{states:?}");
    let fleet_fp = states
        .iter()
        .find(|a| a["labels"]["alertname"] == "FailoverGatewayDown")
        .map(|a| a["fingerprint"].clone())
        .unwrap();
    let (mut inhibited, mut active) = (0, Vec::new());
    for alert in &states {
        let (labels, status) = (&alert["labels"], &alert["status"]);
        if labels["alertname"] == "FailoverReplaceGateway" && labels["gateway"] == "192.0.2.1" {
            assert_eq!(status["state"], "suppressed", "{alert}");
            assert_eq!(status["inhibitedBy"], Value::from(vec![fleet_fp.clone()]), "{alert}");
            inhibited += 1;
        } else {
            assert_eq!(status["state"], "active", "{alert}");
            assert_eq!(status["inhibitedBy"].as_array().map(Vec::len), Some(0), "{alert}");
            active.push(labels["alertname"].as_str().unwrap().to_string());
        }
    }
    active.sort();
    eprintln!("alertmanager: {inhibited} per-host gateway alerts inhibited by the fleet alert; active: {active:?}");
    assert_eq!(inhibited, 50);
    assert_eq!(active, ["FailoverGatewayDown", "FailoverReplaceGateway", "FailoverReplaceNIC"]);
}
