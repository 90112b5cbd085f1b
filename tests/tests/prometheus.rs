//! The alarms where operators look: a real Prometheus server (Debian's
//! package) scrapes the agent in the lab with the shipped rules; a fault
//! fires the matching alert within the rule's `for` plus two scrape
//! intervals, and it resolves after recovery. The scraped text passes
//! `promtool check metrics`.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use failover_tests::{
    Netns,
    agent_lab::{AgentLab, LabOptions},
    privileged,
    prom::{self, alerts, http_get},
};

const SCRAPE: Duration = Duration::from_secs(1);
/// The shipped rule's `for` of `FailoverReplaceNIC`.
const NIC_FOR: Duration = Duration::from_secs(10);

fn nic_alert_firing(ns: &Netns) -> Option<serde_json::Value> {
    alerts(ns)
        .into_iter()
        .find(|(name, state, labels)| {
            name == "FailoverReplaceNIC" && state == "firing" && labels["uplink"] == "primary"
        })
        .map(|(_, _, labels)| labels)
}

#[test]
fn a_nic_fault_fires_its_alert_in_prometheus_and_recovery_resolves_it() {
    if !privileged("a_nic_fault_fires_its_alert_in_prometheus_and_recovery_resolves_it") {
        return;
    }
    if !prom::installed() {
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
        "failover_switchovers_total{decided_by=\"agent\",from=\"-\",group=\"ext\",reason=\"startup\",to=\"primary\"} 1",
    ] {
        assert!(text.contains(metric), "missing {metric}:\n{text}");
    }
    assert_eq!(http_get(&lab.host, &target, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(&lab.host, &target, "/").map(|r| r.0), Some(404));

    // A real Prometheus with the shipped rules.
    let dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let _prom = prom::start(&lab.host, &dir, &target);
    assert!(prom::wait_scraping(&lab.host, Duration::from_secs(30)), "Prometheus did not scrape the agent");
    assert!(nic_alert_firing(&lab.host).is_none());

    let fault = Instant::now();
    lab.set_link(1, false);
    let bound = NIC_FOR + 2 * SCRAPE + SCRAPE; // `for`, two scrapes, one rule evaluation
    let labels = loop {
        if let Some(l) = nic_alert_firing(&lab.host) {
            break l;
        }
        assert!(
            fault.elapsed() < bound + Duration::from_secs(5),
            "FailoverReplaceNIC did not fire: {:?}",
            alerts(&lab.host)
        );
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
