//! The demo (`./dev demo`, `cargo xtask demo`): the whole method, on one
//! machine, with a real Open vSwitch and the real agent. It brings the OVS
//! lab up, runs sequence-numbered traffic from a VM to the gateway, injects
//! the faults of the method one by one and prints, for each, the detection
//! time, the packets lost, the alarm and where traffic flows; then tears
//! everything down. With `--with-prometheus`, a real Prometheus scrapes the
//! agent with the shipped alert rules, and each step shows the alerts it
//! fires or resolves. With `--agent PATH`, the demo runs that
//! `failover-agent` binary (an installed package's, say) for the agent and
//! its CLI instead of the one built here.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use failover_agent::control::Status;
use failover_tests::{
    agent_lab::{self, agent_binary},
    ovs_lab::{LabSpec, LabTraffic, OvsLab},
    prom,
    udp::Report,
};

const RATE: u64 = 1000;
const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn bold(s: &str) -> String {
    format!("\x1b[1m{s}\x1b[0m")
}

fn active(s: &Status) -> String {
    let g = &s.groups[0];
    let name = g.active.clone().unwrap_or_else(|| "-".into());
    let iface = g.uplinks.iter().find(|u| Some(&u.name) == g.active.as_ref()).map_or("-", |u| u.interface.as_str());
    let gw = if iface == "up1" { "gateway 1" } else { "gateway 2" };
    format!("{name} ({iface} -> {gw})")
}

fn alarms(s: &Status) -> String {
    if s.alarms.is_empty() {
        "none".into()
    } else {
        s.alarms.iter().map(|a| format!("\"{}\"", a.message)).collect::<Vec<_>>().join("; ")
    }
}

/// One step's outcome, printed as lines of the timeline.
fn report(started: Instant, title: &str, detection: Option<u64>, r: &Report, before: &Status, after: &Status) {
    let t = started.elapsed().as_secs_f64();
    println!("\n[{t:6.2} s] {}", bold(title));
    if let Some(ms) = detection {
        println!("           detected and switched in {ms} ms");
    }
    println!(
        "           VM traffic: {} sent, {} lost (longest gap {:.1} ms)",
        r.sent,
        r.lost,
        r.max_gap.as_secs_f64() * 1e3
    );
    let raised: Vec<_> =
        after.alarms.iter().filter(|a| !before.alarms.iter().any(|b| b.message == a.message)).collect();
    let cleared: Vec<_> =
        before.alarms.iter().filter(|b| !after.alarms.iter().any(|a| a.message == b.message)).collect();
    for a in raised {
        println!("           alarm raised: \"{}\"", a.message);
    }
    for a in cleared {
        println!("           alarm cleared: \"{}\"", a.message);
    }
    println!("           traffic flows through: {}", active(after));
}

/// The alerts the shipped rules should fire for the agent's alarms.
fn expected_alerts(s: &Status) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s
        .alarms
        .iter()
        .map(|a| {
            let name = match a.kind.as_str() {
                "nic" => "FailoverReplaceNIC",
                "gateway" => "FailoverReplaceGateway",
                "no_healthy_uplink" => "FailoverNoHealthyUplink",
                "flapping" => "FailoverFlapping",
                _ => "FailoverOVSUnreachable",
            };
            (name.to_string(), a.uplink.clone().unwrap_or_else(|| "-".into()))
        })
        .collect();
    out.sort();
    out
}

/// Waits (at most 20 s) until Prometheus fires exactly the alerts the
/// agent's alarms call for, and says so.
fn show_prometheus(lab: &OvsLab, since: Instant) {
    let want = expected_alerts(&lab.status());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut firing = prom::firing(&lab.host);
        firing.sort();
        if firing == want {
            let what = if want.is_empty() {
                "no alert firing".to_string()
            } else {
                want.iter().map(|(n, u)| format!("{n}{{uplink={u}}} firing")).collect::<Vec<_>>().join(", ")
            };
            println!("           Prometheus: {what} ({:.1} s after the change)", since.elapsed().as_secs_f64());
            return;
        }
        if Instant::now() > deadline {
            println!("           Prometheus: expected {want:?}, firing {firing:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real Prometheus in the lab, scraping the agent with the shipped rules.
fn start_prometheus(lab: &OvsLab, ready: &Status) -> Result<prom::Prometheus, String> {
    if !prom::installed() {
        return Err("--with-prometheus: prometheus is not installed (./dev setup installs it)".into());
    }
    let target = ready.agent.as_ref().and_then(|a| a.metrics_listen.clone()).ok_or("no metrics address")?;
    let dir = lab.spec.dir.join("prometheus");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let p = prom::start(&lab.host, &dir, &target);
    if !prom::wait_scraping(&lab.host, Duration::from_secs(30)) {
        return Err("Prometheus did not scrape the agent".into());
    }
    println!(
        "Prometheus scrapes the agent every second with deploy/prometheus/alerts.yml (http://{} in {})",
        prom::ADDR,
        lab.host.name()
    );
    Ok(p)
}

#[expect(clippy::too_many_lines, reason = "the demo's steps in the order the README tells them")]
fn run(lab: &mut OvsLab, with_prometheus: bool, agent: &Path) -> Result<(), String> {
    let started = Instant::now();
    println!("{}", bold("failover-agent demo: the method of ../shared/docs/mission.md, on one machine"));
    println!("lab: {}", lab.describe());
    println!("agent: {}", agent.display());
    lab.write_config();
    let log = lab.spec.dir.join("agent.log");
    let agent_process = agent_lab::spawn_binary(agent, &lab.host, &lab.config_path(), &lab.socket_path(), log, &[]);
    // Where `failover-lab down` finds the agent of a lab left behind.
    let _ = std::fs::write(lab.spec.dir.join("agent.pid"), agent_process.pid().to_string());
    let ready = lab.wait_ready();
    let prometheus_step = |lab: &OvsLab, since: Instant| {
        if with_prometheus {
            show_prometheus(lab, since);
        }
    };
    println!(
        "[{:6.2} s] agent up: both gateways answer its probes; traffic flows through {}; alarms: {}",
        started.elapsed().as_secs_f64(),
        active(&ready),
        alarms(&ready)
    );
    let _prometheus = if with_prometheus { Some(start_prometheus(lab, &ready)?) } else { None };

    let step = |lab: &OvsLab,
                n: u32,
                fault: &dyn Fn(&OvsLab),
                until: &dyn Fn(&Status) -> bool|
     -> Result<(Report, Status, Status, Option<u64>, Instant), String> {
        let before = lab.status();
        let traffic: LabTraffic = lab.gateway_traffic(n, RATE);
        std::thread::sleep(Duration::from_millis(500));
        let fault_ms = now_ms();
        let fault_at = Instant::now();
        fault(lab);
        let deadline = Instant::now() + WAIT;
        loop {
            let s = lab.status();
            if until(&s) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("step {n}: the expected state did not come within {WAIT:?}: {s:#?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(700));
        let r = traffic.finish();
        let after = lab.status();
        let detection = match (&before.groups[0].last_switchover, &after.groups[0].last_switchover) {
            (b, Some(a)) if b.as_ref().map(|b| b.at_unix_ms) != Some(a.at_unix_ms) => {
                Some(a.at_unix_ms.saturating_sub(fault_ms))
            }
            _ => None,
        };
        Ok((r, before, after, detection, fault_at))
    };

    // 1. The primary NIC fails.
    let (traffic, before, after, detection, at) = step(lab, 1, &|l| l.set_link(1, false), &|s| {
        s.groups[0].active.as_deref() == Some("standby") && s.alarms.iter().any(|a| a.kind == "nic")
    })?;
    report(
        started,
        "1. primary NIC fault (link down): traffic moves to the standby",
        detection,
        &traffic,
        &before,
        &after,
    );
    prometheus_step(lab, at);

    // 2. The NIC is back: the alarm clears, it is the new standby.
    let (traffic, before, after, detection, at) =
        step(lab, 2, &|l| l.set_link(1, true), &|s| s.alarms.is_empty() && s.groups[0].uplinks[0].healthy)?;
    report(
        started,
        "2. primary NIC repaired: alarm cleared; it now serves as the standby",
        detection,
        &traffic,
        &before,
        &after,
    );
    prometheus_step(lab, at);

    // 3. The active gateway goes silent with its link up.
    let (traffic, before, after, detection, at) = step(lab, 3, &|l| l.silence_gateway(2), &|s| {
        s.groups[0].active.as_deref() == Some("primary") && s.alarms.iter().any(|a| a.kind == "gateway")
    })?;
    report(
        started,
        "3. active gateway silent (link up, no ARP replies): traffic moves back",
        detection,
        &traffic,
        &before,
        &after,
    );
    prometheus_step(lab, at);

    // 4. It recovers; an operator moves traffic back with the CLI.
    let (traffic, before, after, detection, at) =
        step(lab, 4, &|l| l.revive_gateway(2), &|s| s.alarms.is_empty() && s.groups[0].uplinks[1].healthy)?;
    report(started, "4a. gateway 2 recovered: alarm cleared", detection, &traffic, &before, &after);
    prometheus_step(lab, at);
    let config = lab.config_path();
    let (traffic, before, after, _, at) = step(
        lab,
        5,
        &|_| {
            let out =
                std::process::Command::new(agent).args(["switch", "ext", "standby", "--config"]).arg(&config).output();
            if let Ok(out) = out {
                println!(
                    "\n           $ failover-agent switch ext standby\n           {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                );
            }
        },
        &|s| s.groups[0].active.as_deref() == Some("standby"),
    )?;
    report(started, "4b. forced switchover with the CLI", None, &traffic, &before, &after);
    prometheus_step(lab, at);
    if traffic.lost != 0 {
        return Err(format!("the forced switchover lost {} packets", traffic.lost));
    }

    println!("\n{}", bold("final status (failover-agent status):"));
    let out = std::process::Command::new(agent)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .map_err(|e| e.to_string())?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\ndemo took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `--with-prometheus`, `--agent PATH` (default: the agent built here).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(bool, PathBuf), String> {
    let (mut with_prometheus, mut agent) = (false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--with-prometheus" => with_prometheus = true,
            "--agent" => {
                let path = PathBuf::from(args.next().ok_or("--agent needs the path of a failover-agent binary")?);
                if !path.is_file() {
                    return Err(format!("--agent {}: no such file", path.display()));
                }
                agent = Some(path);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((with_prometheus, agent.unwrap_or_else(agent_binary)))
}

fn main() -> ExitCode {
    let (with_prometheus, agent) = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}; usage: failover-demo [--with-prometheus] [--agent PATH]");
            return ExitCode::from(2);
        }
    };
    if !failover_tests::privileged("failover-demo") {
        return ExitCode::FAILURE;
    }
    // A demo that was killed left its lab: remove it first.
    for e in std::fs::read_dir("/run/failover-lab").into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n.strip_prefix("fl-demo").and_then(|p| p.parse::<u32>().ok())
            && !failover_tests::pid_alive(pid)
        {
            failover_tests::ovs_lab::down(&LabSpec::named(&n));
        }
    }
    let name = format!("fl-demo{}", std::process::id());
    let spec = LabSpec { probe_interval_ms: 20, ..LabSpec::named(&name) };
    let mut lab = match OvsLab::up(spec) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("error: bringing the lab up: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&mut lab, with_prometheus, &agent);
    let name = lab.spec.name.clone();
    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name))
        .collect();
    println!(
        "teardown: lab removed{}",
        if left.is_empty() { ", nothing left behind".to_string() } else { format!("; LEFT: {left:?}") }
    );
    match result {
        Ok(()) if left.is_empty() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\x1b[1;31mdemo failed:\x1b[0m {e}");
            ExitCode::FAILURE
        }
    }
}
