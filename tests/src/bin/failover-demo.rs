//! The demo (`./dev demo`, `cargo xtask demo`): the whole method, on one
//! machine, with a real Open vSwitch and the real agent. It brings the OVS
//! lab up, runs sequence-numbered traffic from a VM to the gateway, injects
//! the faults of the method one by one and prints, for each, the detection
//! time, the packets lost, the alarm and where traffic flows; then tears
//! everything down.

use std::{
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use failover_agent::control::Status;
use failover_tests::{
    agent_lab::agent_binary,
    ovs_lab::{LabSpec, LabTraffic, OvsLab},
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
    let raised: Vec<_> = after.alarms.iter().filter(|a| !before.alarms.iter().any(|b| b.message == a.message)).collect();
    let cleared: Vec<_> = before.alarms.iter().filter(|b| !after.alarms.iter().any(|a| a.message == b.message)).collect();
    for a in raised {
        println!("           alarm raised: \"{}\"", a.message);
    }
    for a in cleared {
        println!("           alarm cleared: \"{}\"", a.message);
    }
    println!("           traffic flows through: {}", active(after));
}

fn run(lab: &mut OvsLab) -> Result<(), String> {
    let started = Instant::now();
    println!("{}", bold("failover-agent demo: the method of ../shared/docs/mission.md, on one machine"));
    println!("lab: {}", lab.describe());
    let _agent = lab.start_agent();
    let ready = lab.wait_ready();
    println!(
        "[{:6.2} s] agent up: both gateways answer its probes; traffic flows through {}; alarms: {}",
        started.elapsed().as_secs_f64(),
        active(&ready),
        alarms(&ready)
    );

    let step = |lab: &OvsLab, n: u32, fault: &dyn Fn(&OvsLab), until: &dyn Fn(&Status) -> bool| -> Result<(Report, Status, Status, Option<u64>), String> {
        let before = lab.status();
        let traffic: LabTraffic = lab.gateway_traffic(n, RATE);
        std::thread::sleep(Duration::from_millis(500));
        let fault_ms = now_ms();
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
        };
        std::thread::sleep(Duration::from_millis(700));
        let r = traffic.finish();
        let after = lab.status();
        let detection = match (&before.groups[0].last_switchover, &after.groups[0].last_switchover) {
            (b, Some(a)) if b.as_ref().map(|b| b.at_unix_ms) != Some(a.at_unix_ms) => Some(a.at_unix_ms.saturating_sub(fault_ms)),
            _ => None,
        };
        Ok((r, before, after, detection))
    };

    // 1. The primary NIC fails.
    let (traffic, before, after, detection) = step(lab, 1, &|l| l.set_link(1, false), &|s| {
        s.groups[0].active.as_deref() == Some("standby") && s.alarms.iter().any(|a| a.kind == "nic")
    })?;
    report(started, "1. primary NIC fault (link down): traffic moves to the standby", detection, &traffic, &before, &after);

    // 2. The NIC is back: the alarm clears, it is the new standby.
    let (traffic, before, after, detection) = step(lab, 2, &|l| l.set_link(1, true), &|s| {
        s.alarms.is_empty() && s.groups[0].uplinks[0].healthy
    })?;
    report(started, "2. primary NIC repaired: alarm cleared; it now serves as the standby", detection, &traffic, &before, &after);

    // 3. The active gateway goes silent with its link up.
    let (traffic, before, after, detection) = step(lab, 3, &|l| l.silence_gateway(2), &|s| {
        s.groups[0].active.as_deref() == Some("primary") && s.alarms.iter().any(|a| a.kind == "gateway")
    })?;
    report(started, "3. active gateway silent (link up, no ARP replies): traffic moves back", detection, &traffic, &before, &after);

    // 4. It recovers; an operator moves traffic back with the CLI.
    let (traffic, before, after, detection) = step(lab, 4, &|l| l.revive_gateway(2), &|s| s.alarms.is_empty() && s.groups[0].uplinks[1].healthy)?;
    report(started, "4a. gateway 2 recovered: alarm cleared", detection, &traffic, &before, &after);
    let config = lab.config_path();
    let (traffic, before, after, _) = step(lab, 5, &|_| {
        let out = std::process::Command::new(agent_binary())
            .args(["switch", "ext", "standby", "--config"])
            .arg(&config)
            .output();
        if let Ok(out) = out {
            println!("\n           $ failover-agent switch ext standby\n           {}", String::from_utf8_lossy(&out.stdout).trim());
        }
    }, &|s| s.groups[0].active.as_deref() == Some("standby"))?;
    report(started, "4b. forced switchover with the CLI", None, &traffic, &before, &after);
    if traffic.lost != 0 {
        return Err(format!("the forced switchover lost {} packets", traffic.lost));
    }

    println!("\n{}", bold("final status (failover-agent status):"));
    let out = std::process::Command::new(agent_binary())
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .map_err(|e| e.to_string())?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\ndemo took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
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
    let spec = LabSpec {
        probe_interval_ms: 20,
        ..LabSpec::named(&name)
    };
    let mut lab = match OvsLab::up(spec) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("error: bringing the lab up: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&mut lab);
    let name = lab.spec.name.clone();
    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name))
        .collect();
    println!("teardown: lab removed{}", if left.is_empty() { ", nothing left behind".to_string() } else { format!("; LEFT: {left:?}") });
    match result {
        Ok(()) if left.is_empty() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\x1b[1;31mdemo failed:\x1b[0m {e}");
            ExitCode::FAILURE
        }
    }
}
