//! The `failover-agent` command line: thin; the work is in the library.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::{Parser, Subcommand, ValueEnum};
use failover_agent::{
    agent,
    config::{self, Config},
    control::{self, Request, Response},
    datapath::EbpfDatapath,
    state,
};

const DEFAULT_CONFIG: &str = "/etc/failover-agent/failover-agent.toml";

#[derive(Parser)]
#[command(version, about = "Active/standby gateway failover for Open vSwitch hypervisors")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (as root): attach the datapath, probe, decide, alarm.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file without touching the system (exit 2 if invalid).
    CheckConfig { config: PathBuf },
    /// Show groups, uplinks, the active uplink and the open alarms.
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Machine-readable output (stable field names).
        #[arg(long)]
        json: bool,
    },
    /// Move a group's traffic to an uplink (refused if it is unhealthy, unless --force).
    Switch {
        group: String,
        uplink: String,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show recent events: switchovers, alarms, link changes.
    Events {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// How many of the most recent events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep the connection and print each new event as it happens.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Detach the datapath from every uplink, remove its pins and the agent's state.
    Uninstall {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Loads the configuration, or prints why not (exit status 2).
fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn ask(config: &Path, request: &Request) -> Result<Response, ExitCode> {
    let config = load(config)?;
    match control::request(&config.agent.control_socket, request) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => {
            eprintln!("error: {}", r.error.unwrap_or_else(|| "the agent refused".into()));
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("error: {}", chain(&anyhow::Error::from(e)));
            Err(ExitCode::FAILURE)
        }
    }
}

fn chain(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { config } => load(&config).map(|c| {
            let uplinks: usize = c.groups.iter().map(|g| g.uplinks.len()).sum();
            println!("{}: valid ({} group(s), {uplinks} uplink(s))", config.display(), c.groups.len());
        }),
        Command::Run { config } => load(&config).and_then(|c| {
            agent::run(c, &config).map_err(|e| {
                eprintln!("error: {}", chain(&e));
                ExitCode::FAILURE
            })
        }),
        Command::Status { config, json } => ask(&config, &Request::Status).map(|r| {
            let status = r.status.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
            } else {
                print!("{}", control::render_status(&status, now_ms()));
            }
        }),
        Command::Switch { group, uplink, force, config } => ask(&config, &Request::Switch { group, uplink, force })
            .map(|r| {
                println!("{}", r.message.unwrap_or_default());
            }),
        Command::Events { config, limit, follow, json } => {
            let print = |e: &control::Event| {
                if json {
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                } else {
                    println!("{}  {:<14} {}", control::format_unix_ms(e.at_unix_ms), e.kind.as_str(), e.message);
                }
            };
            if follow {
                load(&config).and_then(|c| {
                    control::follow_events(&c.agent.control_socket, limit, print).map_err(|e| {
                        eprintln!("error: {}", chain(&anyhow::Error::from(e)));
                        ExitCode::FAILURE
                    })
                })
            } else {
                ask(&config, &Request::Events { limit: Some(limit), follow: false }).map(|r| {
                    for e in r.events.unwrap_or_default() {
                        print(&e);
                    }
                })
            }
        }
        Command::Uninstall { config } => load(&config).and_then(|c| {
            match EbpfDatapath::uninstall(&c.agent.bpf_pin_dir) {
                Ok(removed) => {
                    for path in &removed {
                        println!("detached {}", path.display());
                    }
                }
                Err(e) => {
                    eprintln!("error: {}", chain(&anyhow::Error::from(e)));
                    return Err(ExitCode::FAILURE);
                }
            }
            if c.agent.ovs_flows {
                let ovs = failover_agent::ovs::OvsCli::new(&c.agent.ovs_rundir);
                let bridges: std::collections::BTreeSet<&str> = c.groups.iter().map(|g| g.bridge.as_str()).collect();
                for bridge in bridges {
                    // Every rule with the agent's cookie, of any group, configured or not.
                    match failover_agent::agent::reconcile::ovs::remove_orphans(&ovs, bridge, &std::collections::BTreeSet::new()) {
                        Ok(removed) => {
                            for cookie in removed {
                                match c.groups.iter().find(|g| {
                                    failover_agent::ovs::group_cookie(&g.name)
                                        == cookie
                                }) {
                                    Some(g) => println!("removed the agent's rules of group {} from {bridge}", g.name),
                                    None => println!(
                                        "removed the agent's rules with cookie {cookie:#x} (a group no longer configured) from {bridge}"
                                    ),
                                }
                            }
                        }
                        Err(e) => eprintln!("warning: {e} (the rules go with the next ovs-vswitchd restart)"),
                    }
                }
            }
            if let Err(e) = state::remove(&c.agent.state_dir) {
                eprintln!("error: {e}");
                return Err(ExitCode::FAILURE);
            }
            let _ = std::fs::remove_file(&c.agent.control_socket);
            println!("removed {} and the agent's state", c.agent.bpf_pin_dir.display());
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
