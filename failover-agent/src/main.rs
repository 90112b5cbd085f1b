//! The `failover-agent` command line: thin; the work is in the library.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::Parser as _;
use failover_agent::{
    agent,
    config::{self, Config},
    control::{self, Request, Response},
    datapath::EbpfDatapath,
    lock, state,
};

mod cli;

use cli::{Cli, Command, DEFAULT_CONFIG, LogFormat, Target};

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

// Configuration and state errors say their cause in their own text: they
// are printed with `{e}`, the others with their chain (`report`).

/// Loads the configuration, or prints why not (exit status 2).
fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// The `[agent]` keys the tools need (`status`, `events`, `switch`,
/// `uninstall`); the others may be wrong without stopping them.
const TOOL_KEYS: [&str; 5] = ["control_socket", "bpf_pin_dir", "state_dir", "ovs_flows", "ovs_rundir"];

/// A group that validates, standing in for the file's own when only its
/// `[agent]` paths are read: the configuration's own validation and
/// defaults then apply to those paths, from one place.
const STAND_IN_GROUP: &str = r#"
[[group]]
name = "stand-in"
bridge = "stand-in"
[[group.uplink]]
name = "a"
interface = "a"
gateway = "192.0.2.1"
probe_source = "192.0.2.2"
[[group.uplink]]
name = "b"
interface = "b"
gateway = "192.0.2.1"
probe_source = "192.0.2.2"
"#;

/// The `[agent]` paths of `text`, the rest of the file ignored. `Ok(None)`:
/// the text is not TOML at all.
fn agent_paths(text: &str, path: &Path) -> Result<Option<config::Agent>, config::ConfigError> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(None);
    };
    let mut agent = toml::Table::new();
    if let Some(toml::Value::Table(t)) = table.get("agent") {
        for key in TOOL_KEYS {
            if let Some(v) = t.get(key) {
                agent.insert(key.to_string(), v.clone());
            }
        }
    }
    let mut doc: toml::Table = STAND_IN_GROUP.parse().expect("the stand-in group is TOML");
    doc.insert("agent".into(), toml::Value::Table(agent));
    let text = toml::to_string(&doc).expect("a table serializes");
    config::parse(&text, path).map(|c| Some(c.agent))
}

/// What a tool reads from a configuration file: the whole file when it is
/// valid; else, with a warning, only the `[agent]` paths (and no groups),
/// or the default paths when the file is not TOML at all.
struct ToolConfig {
    agent: config::Agent,
    /// Empty when the file is invalid.
    groups: Vec<config::Group>,
}

fn tool_config(path: &Path) -> Result<ToolConfig, ExitCode> {
    let invalid = match config::load(path) {
        Ok(c) => return Ok(ToolConfig { agent: c.agent, groups: c.groups }),
        Err(e @ config::ConfigError::Read { .. }) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(2));
        }
        Err(e) => e,
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match agent_paths(&text, path) {
        Ok(Some(agent)) => {
            eprintln!("warning: {invalid}");
            eprintln!("warning: the configuration is invalid; using only its [agent] paths");
            Ok(ToolConfig { agent, groups: Vec::new() })
        }
        Ok(None) => {
            let agent = agent_paths("", path).ok().flatten().expect("the defaults validate");
            eprintln!("warning: {invalid}");
            eprintln!(
                "warning: the configuration is not TOML; using the default paths (control socket {}, pins {})",
                agent.control_socket.display(),
                agent.bpf_pin_dir.display()
            );
            Ok(ToolConfig { agent, groups: Vec::new() })
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// The control socket a tool talks to.
fn socket_of(target: &Target) -> Result<PathBuf, ExitCode> {
    match (&target.socket, &target.config) {
        (Some(socket), _) => Ok(socket.clone()),
        (None, config) => {
            tool_config(config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))).map(|c| c.agent.control_socket)
        }
    }
}

fn ask(target: &Target, request: &Request) -> Result<Response, ExitCode> {
    let socket = socket_of(target)?;
    match control::request(&socket, request) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => {
            eprintln!("error: {}", r.error.unwrap_or_else(|| "the agent refused".into()));
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            report(e);
            Err(ExitCode::FAILURE)
        }
    }
}

/// Prints `error: ` and the error with its causes, each once (`{:#}`).
fn report(e: impl Into<anyhow::Error>) {
    eprintln!("error: {:#}", e.into());
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `run`: the lock first, before anything is touched; held until exit
/// (and across a reload's exec).
fn run(path: &Path) -> Result<(), ExitCode> {
    let c = load(path)?;
    let _lock = match lock::acquire(&c.agent.control_socket, &c.agent.bpf_pin_dir) {
        Ok(l) => l,
        Err(e @ lock::LockError::Held { .. }) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(2));
        }
        Err(e) => {
            report(e);
            return Err(ExitCode::FAILURE);
        }
    };
    agent::run(c, path).map_err(|e| {
        report(e);
        ExitCode::FAILURE
    })
}

/// The probe load the file puts on each gateway (see `Config::probe_load`).
fn print_probe_load(c: &Config) {
    const FLEET: f64 = 1000.0;
    println!(
        "probe load per gateway (an uplink probes every probe_interval_ms while its gateway sends it nothing, \
         every standby_probe_interval_ms while not active, and, with data_plane_liveness = true, not at all while frames from its gateway arrive):"
    );
    for l in c.probe_load() {
        println!(
            "  {}: at most {:.0} probes/s from this host ({:.0}/s with traffic on the active uplinks); \
             {FLEET:.0} such hosts -> {:.0}/s ({:.0}/s)",
            l.gateway,
            l.quiet,
            l.busy,
            l.quiet * FLEET,
            l.busy * FLEET
        );
    }
}

fn refuse_running(pid: Option<u32>, lock: &Path) -> ExitCode {
    let pid = pid.map_or_else(|| "pid unknown".into(), |p| format!("pid {p}"));
    eprintln!(
        "error: failover-agent is running ({pid}, lock {}): stop it first (systemctl stop failover-agent), \
         or it puts back what uninstall removes",
        lock.display()
    );
    ExitCode::from(2)
}

/// Removes the datapath's pins (detaching its programs); refused while an
/// agent runs with them.
fn uninstall_datapath(pin_dir: &Path) -> Result<(), ExitCode> {
    if let Some((pid, lock)) = lock::agent_using_pins(pin_dir) {
        return Err(refuse_running(Some(pid), &lock));
    }
    match EbpfDatapath::uninstall(pin_dir) {
        Ok(removed) => {
            for path in &removed {
                println!("detached {}", path.display());
            }
            Ok(())
        }
        Err(e) => {
            report(e);
            Err(ExitCode::FAILURE)
        }
    }
}

fn uninstall(config: Option<&Path>, pin_dir: Option<&Path>) -> Result<(), ExitCode> {
    if let Some(pin_dir) = pin_dir {
        uninstall_datapath(pin_dir)?;
        println!(
            "removed {} (the agent's state and OVS rules, if any, stay: --config removes them)",
            pin_dir.display()
        );
        return Ok(());
    }
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    let c = tool_config(path)?;
    let a = &c.agent;
    // Held while uninstalling: no agent starts in between.
    let _lock = match lock::acquire(&a.control_socket, &a.bpf_pin_dir) {
        Ok(l) => l,
        Err(lock::LockError::Held { pid, path }) => return Err(refuse_running(pid, &path)),
        Err(e) => {
            report(e);
            return Err(ExitCode::FAILURE);
        }
    };
    // The bridges: the file's, or the last run's (the state file) when the file is invalid.
    let bridges: BTreeSet<String> = if c.groups.is_empty() {
        match state::load(&a.state_dir) {
            Ok(s) => s.map(|s| s.bridges.into_iter().collect()).unwrap_or_default(),
            Err(e) => {
                eprintln!("warning: {e}: no bridges known, the agent's OVS rules (if any) stay");
                BTreeSet::new()
            }
        }
    } else {
        c.groups.iter().map(|g| g.bridge.clone()).collect()
    };
    uninstall_datapath(&a.bpf_pin_dir)?;
    if a.ovs_flows {
        let ovs = failover_agent::ovs::OvsCli::new(&a.ovs_rundir);
        for bridge in &bridges {
            // Every rule with the agent's cookie, of any group, configured or not.
            match failover_agent::agent::reconcile::ovs::remove_orphans(&ovs, bridge, &BTreeSet::new()) {
                Ok(removed) => {
                    for cookie in removed {
                        match c.groups.iter().find(|g| failover_agent::ovs::group_cookie(&g.name) == cookie) {
                            Some(g) => println!("removed the agent's rules of group {} from {bridge}", g.name),
                            None => println!(
                                "removed the agent's rules with cookie {cookie:#x} (a group not in the configuration) from {bridge}"
                            ),
                        }
                    }
                }
                Err(e) => eprintln!("warning: {e} (the rules go with the next ovs-vswitchd restart)"),
            }
        }
    }
    if let Err(e) = state::remove(&a.state_dir) {
        eprintln!("error: {e}");
        return Err(ExitCode::FAILURE);
    }
    let _ = std::fs::remove_file(&a.control_socket);
    println!("removed {} and the agent's state", a.bpf_pin_dir.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { config } => load(&config).map(|c| {
            let uplinks: usize = c.groups.iter().map(|g| g.uplinks.len()).sum();
            println!("{}: valid ({} group(s), {uplinks} uplink(s))", config.display(), c.groups.len());
            print_probe_load(&c);
        }),
        Command::Run { config } => run(&config),
        Command::Status { target, json } => ask(&target, &Request::Status).map(|r| {
            let status = r.status.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
            } else {
                print!("{}", control::render_status(&status, now_ms()));
            }
        }),
        Command::Switch { group, uplink, force, target } => ask(&target, &Request::Switch { group, uplink, force })
            .map(|r| {
                println!("{}", r.message.unwrap_or_default());
            }),
        Command::Events { target, limit, follow, json } => {
            let print = |e: &control::Event| {
                if json {
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                } else {
                    println!("{}  {:<14} {}", control::format_unix_ms(e.at_unix_ms), e.kind.as_str(), e.message);
                }
            };
            if follow {
                socket_of(&target).and_then(|socket| {
                    control::follow_events(&socket, limit, print).map_err(|e| {
                        report(e);
                        ExitCode::FAILURE
                    })
                })
            } else {
                ask(&target, &Request::Events { limit: Some(limit), follow: false }).map(|r| {
                    for e in r.events.unwrap_or_default() {
                        print(&e);
                    }
                })
            }
        }
        Command::Uninstall { config, pin_dir } => uninstall(config.as_deref(), pin_dir.as_deref()),
        Command::Generate { dir } => match cli::generate(&dir) {
            Ok(written) => {
                for path in written {
                    println!("wrote {}", path.display());
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("error: writing into {}: {e}", dir.display());
                Err(ExitCode::FAILURE)
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_paths_are_read_from_an_invalid_file() {
        let text = "[agent]\ncontrol_socket = \"/run/x/c.sock\"\nbpf_pin_dir = \"/sys/fs/bpf/x\"\n\
                    metrics_listen = \"nonsense\"\nno_such_key = 1\n[[group]]\nname = \"\"\n";
        let p = Path::new("t.toml");
        assert!(config::parse(text, p).is_err(), "the whole file is invalid");
        let a = agent_paths(text, p).unwrap().unwrap();
        assert_eq!(a.control_socket, PathBuf::from("/run/x/c.sock"));
        assert_eq!(a.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(a.state_dir, PathBuf::from("/var/lib/failover-agent"), "defaults for the rest");
        assert_eq!(agent_paths("[[[not toml", p).unwrap(), None);
        let d = agent_paths("", p).unwrap().unwrap();
        assert_eq!(d.control_socket, PathBuf::from("/run/failover-agent/control.sock"));
        // A path the tools need that is wrong is an error naming it.
        let e = agent_paths("[agent]\ncontrol_socket = \"relative.sock\"\n", p).unwrap_err().to_string();
        assert!(e.contains("agent.control_socket") && e.contains("not an absolute path"), "{e}");
    }
}
