//! The alarms where operators look: a real Prometheus server (Debian's
//! package) scrapes the agent in the lab with the shipped rules; a fault
//! fires the matching alert within the rule's `for` plus two scrape
//! intervals, and it resolves after recovery. The scraped text passes
//! `promtool check metrics`.
#![expect(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use failover_tests::{
    Netns,
    agent_lab::{AgentLab, LabOptions},
    privileged,
};

const SCRAPE: Duration = Duration::from_secs(1);
/// The shipped rule's `for` of `FailoverReplaceNIC`.
const NIC_FOR: Duration = Duration::from_secs(10);

/// GET `path` from `addr`, inside `ns`; the body.
fn http_get(ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    ns.run(move || {
        let mut s = TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
}

struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default());
        }
    }
}

/// Starts Prometheus inside `ns` on 127.0.0.1:9090, scraping `target`
/// every second with the shipped alert rules.
fn prometheus(ns: &Netns, dir: &Path, target: &str) -> Prometheus {
    let rules = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yml"))
        .canonicalize()
        .unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: failover-agent\n    static_configs:\n      - targets: ['{target}']\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "prometheus"])
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("starting prometheus (Debian package prometheus)");
    Prometheus {
        child,
        dir: dir.to_path_buf(),
    }
}

/// The alerts Prometheus reports: (name, state, labels).
fn alerts(ns: &Netns) -> Vec<(String, String, serde_json::Value)> {
    let Some((200, body)) = http_get(ns, "127.0.0.1:9090", "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["labels"]["alertname"].as_str().unwrap_or_default().to_string(),
                        x["state"].as_str().unwrap_or_default().to_string(),
                        x["labels"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn nic_alert_firing(ns: &Netns) -> Option<serde_json::Value> {
    alerts(ns)
        .into_iter()
        .find(|(name, state, labels)| name == "FailoverReplaceNIC" && state == "firing" && labels["uplink"] == "primary")
        .map(|(_, _, labels)| labels)
}

#[test]
fn a_nic_fault_fires_its_alert_in_prometheus_and_recovery_resolves_it() {
    if !privileged("a_nic_fault_fires_its_alert_in_prometheus_and_recovery_resolves_it") {
        return;
    }
    if Command::new("prometheus").arg("--version").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "prometheus is not installed (./dev installs it)");
        eprintln!("SKIPPED: prometheus is not installed (./dev setup installs it)");
        return;
    }
    let mut lab = AgentLab::new(LabOptions::default());
    let _agent = lab.start_agent();
    let status = lab.wait_healthy();
    let target = status.agent.and_then(|a| a.metrics_listen).expect("metrics address in the status");

    // The endpoint: the metrics pass promtool's checks; only GET of two paths.
    let (code, text) = http_get(&lab.host, &target, "/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for metric in [
        "failover_active_uplink{group=\"ext\",uplink=\"primary\"} 1",
        "failover_gateway_reachable{group=\"ext\",uplink=\"standby\"} 1",
        "failover_probe_rtt_seconds_count{group=\"ext\",uplink=\"primary\"}",
        "failover_switchovers_total{from=\"-\",group=\"ext\",reason=\"startup\",to=\"primary\"} 1",
    ] {
        assert!(text.contains(metric), "missing {metric}:\n{text}");
    }
    assert_eq!(http_get(&lab.host, &target, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(&lab.host, &target, "/").map(|r| r.0), Some(404));

    // A real Prometheus with the shipped rules.
    let dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let _prom = prometheus(&lab.host, &dir, &target);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = http_get(&lab.host, "127.0.0.1:9090", "/api/v1/query?query=up%7Bjob%3D%22failover-agent%22%7D");
        if up.is_some_and(|(c, b)| c == 200 && b.contains("\"value\":[") && b.contains(",\"1\"]")) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus did not scrape the agent");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(nic_alert_firing(&lab.host).is_none());

    let fault = Instant::now();
    lab.set_link(1, false);
    let bound = NIC_FOR + 2 * SCRAPE + SCRAPE; // `for`, two scrapes, one rule evaluation
    let labels = loop {
        if let Some(l) = nic_alert_firing(&lab.host) {
            break l;
        }
        assert!(fault.elapsed() < bound + Duration::from_secs(5), "FailoverReplaceNIC did not fire: {:?}", alerts(&lab.host));
        std::thread::sleep(Duration::from_millis(200));
    };
    let fired = fault.elapsed();
    eprintln!("FailoverReplaceNIC firing {:.1} s after the fault (for: 10s, scrape 1s)", fired.as_secs_f64());
    assert!(fired <= bound, "fired after {fired:?}, bound {bound:?}");
    assert_eq!(labels["group"], "ext");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["job"], "failover-agent");

    lab.set_link(1, true);
    let recovered = Instant::now();
    while nic_alert_firing(&lab.host).is_some() {
        assert!(recovered.elapsed() < Duration::from_secs(10), "the alert did not resolve");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("resolved {:.1} s after recovery", recovered.elapsed().as_secs_f64());
}
