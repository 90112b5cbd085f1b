//! `cargo xtask lab up|down|status`: the OVS lab, kept up between commands.
//!
//! `up` builds it (refusing to clobber one that exists) and starts the agent
//! in it; `down` removes everything a lab of that name made, also after a
//! crash; `status` says what is there.

use std::{os::unix::process::CommandExt as _, process::ExitCode};

use failover_tests::{
    agent_lab::agent_binary,
    ovs_lab::{self, LabSpec, OvsLab},
};

const USAGE: &str = "usage: failover-lab up [--name NAME] [--vms N] [--shared-mac] [--no-agent] | down [--name NAME] | status [--name NAME]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().cloned() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut spec = LabSpec::named("fl-lab");
    let mut agent = true;
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--name" => match rest.next() {
                Some(n)
                    if !n.is_empty() && n.len() <= 20 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    spec = LabSpec { vms: spec.vms, shared_mac: spec.shared_mac, ..LabSpec::named(n) };
                }
                _ => {
                    eprintln!("error: --name needs 1-20 characters of A-Z a-z 0-9 -");
                    return ExitCode::from(2);
                }
            },
            "--vms" => match rest.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if (2..=16).contains(&n) => spec.vms = n,
                _ => {
                    eprintln!("error: --vms needs a number from 2 to 16");
                    return ExitCode::from(2);
                }
            },
            "--shared-mac" => spec.shared_mac = true,
            "--no-agent" => agent = false,
            other => {
                eprintln!("error: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if !failover_tests::privileged("failover-lab") {
        return ExitCode::FAILURE;
    }
    match command.as_str() {
        "up" => up(spec, agent),
        "down" => {
            let removed = ovs_lab::down(&spec);
            if removed.is_empty() {
                println!("lab {}: nothing to remove", spec.name);
            }
            for r in removed {
                println!("removed {r}");
            }
            ExitCode::SUCCESS
        }
        "status" => {
            print!("{}", ovs_lab::status(&spec));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("error: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn up(spec: LabSpec, agent: bool) -> ExitCode {
    let lab = match OvsLab::up(spec) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("lab {} is up: {}", lab.spec.name, lab.describe());
    lab.write_config();
    if agent {
        let log = lab.spec.dir.join("agent.log");
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.host.name()))
            .arg(agent_binary())
            .args(["run", "--config"])
            .arg(lab.config_path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .process_group(0)
            .spawn();
        match child {
            Ok(c) => {
                let _ = std::fs::write(lab.spec.dir.join("agent.pid"), c.id().to_string());
                println!("agent started (pid {}), log {}", c.id(), log.display());
            }
            Err(e) => eprintln!("error: starting the agent: {e}"),
        }
    }
    let config = lab.config_path();
    println!("try:  failover-agent status --config {}", config.display());
    println!("      ip netns exec {}-vm1 ping -c 3 192.0.2.1", lab.spec.name);
    println!("      ip netns exec {}-gw1 ip link set gw1 down    # a NIC fault", lab.spec.name);
    println!(
        "down: cargo xtask lab down{}",
        if lab.spec.name == "fl-lab" { String::new() } else { format!(" --name {}", lab.spec.name) }
    );
    // The lab stays up after this process: `down` removes it.
    std::mem::forget(lab);
    ExitCode::SUCCESS
}
