//! The command line's definition: what `main` parses, and what the man
//! pages and shell completions are generated from (`failover-agent
//! generate DIR`, hidden; `cargo xtask deb` runs it), so they cannot drift
//! from the binary they ship with.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

pub const DEFAULT_CONFIG: &str = "/etc/failover-agent/failover-agent.toml";

#[derive(Parser)]
#[command(
    name = "failover-agent",
    version,
    about = "Active/standby gateway failover for Open vSwitch hypervisors",
    long_about = "Active/standby gateway failover for Open vSwitch hypervisors.\n\n\
                  The agent probes each uplink's gateway (ARP or Neighbor Solicitation), \
                  steers a group's traffic to one healthy uplink with an eBPF datapath, \
                  raises an alarm naming the part to replace, and exports Prometheus metrics. \
                  The other subcommands talk to a running agent over its control socket.",
    after_help = "Configuration: /etc/failover-agent/failover-agent.toml (see check-config). \
                  Documentation: /usr/share/doc/failover-agent/."
)]
pub struct Cli {
    /// Log format of the messages on stderr ("json": one object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where a tool finds the running agent: its control socket, given or read
/// from the configuration (of which only `[agent] control_socket` is needed).
#[derive(Args)]
pub struct Target {
    /// The configuration file; only its `[agent]` paths are read [default: /etc/failover-agent/failover-agent.toml].
    #[arg(long, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The agent's control socket, instead of reading it from the configuration.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent (as root): attach the datapath, probe, decide, alarm.
    ///
    /// One agent per runtime directory: `run` first takes an exclusive lock,
    /// `failover-agent.lock` beside the control socket, and exits with status 2,
    /// touching nothing, if another agent holds it. SIGHUP reloads the
    /// configuration (`systemctl reload failover-agent`); SIGTERM stops the
    /// agent and leaves the datapath steering (fail-static).
    Run {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file without touching the system (exit 2 if invalid).
    ///
    /// Prints the number of groups and uplinks and the probe load the file
    /// puts on each gateway.
    CheckConfig {
        /// The configuration file to validate.
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Show groups, uplinks, the active uplink and the open alarms.
    Status {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output (stable field names).
        #[arg(long)]
        json: bool,
    },
    /// Move a group's traffic to an uplink (refused if it is unhealthy, unless --force).
    Switch {
        /// The group, by its `name` in the configuration.
        group: String,
        /// The uplink of that group to make active, by its `name`.
        uplink: String,
        /// Switch even to an uplink the agent judges unhealthy.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show recent events: switchovers, alarms, link changes.
    Events {
        #[command(flatten)]
        target: Target,
        /// How many of the most recent events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep the connection and print each new event as it happens.
        #[arg(long, short)]
        follow: bool,
        /// Machine-readable output: one JSON object per event and line.
        #[arg(long)]
        json: bool,
    },
    /// Detach the datapath from every uplink, remove its pins and the agent's state.
    ///
    /// Refused (exit 2) while an agent runs with these pins or this runtime
    /// directory: stop it first (`systemctl stop failover-agent`), else it
    /// would put everything back. With --config, only the `[agent]` paths are
    /// needed (the bridges come from the file, or from the state file when the
    /// rest of the file is invalid); with --pin-dir, only the datapath is
    /// removed (the state and the OVS rules stay).
    Uninstall {
        /// The configuration file [default: /etc/failover-agent/failover-agent.toml].
        #[arg(long, value_name = "FILE", conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// The datapath's pin directory (`[agent] bpf_pin_dir`), instead of a configuration.
        #[arg(long, value_name = "PATH")]
        pin_dir: Option<PathBuf>,
    },
    /// Write the man pages and shell completions generated from this CLI (packaging).
    #[command(hide = true)]
    Generate {
        /// The directory to write `man/*.1` and `completions/*` into.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The completions written by [`generate`]: shell and file name.
const COMPLETIONS: [(clap_complete::Shell, &str); 3] = [
    (clap_complete::Shell::Bash, "failover-agent.bash"),
    (clap_complete::Shell::Zsh, "_failover-agent"),
    (clap_complete::Shell::Fish, "failover-agent.fish"),
];

/// Writes `dir/man/failover-agent*.1` (one page per subcommand, hidden
/// ones left out) and `dir/completions/` for bash, zsh and fish.
pub fn generate(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    let mut written = Vec::new();
    // After `build`, a subcommand's display name is `failover-agent-run`.
    let page = |c: &clap::Command| -> std::io::Result<PathBuf> {
        let path = man.join(format!("{}.1", c.get_display_name().unwrap_or(c.get_name())));
        let mut out = Vec::new();
        clap_mangen::Man::new(c.clone()).render(&mut out)?;
        std::fs::write(&path, out)?;
        Ok(path)
    };
    written.push(page(&cmd)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        written.push(page(sub)?);
    }
    // clap_complete completes hidden subcommands too: complete a copy
    // of the root with only the visible ones.
    // (Copied from the unbuilt command: the built one has `--help` and
    // `--version` already, which the copy adds again.)
    let base = Cli::command();
    let mut visible = clap::Command::new("failover-agent")
        .version(env!("CARGO_PKG_VERSION"))
        .about(base.get_about().cloned().unwrap_or_default())
        .args(base.get_arguments().cloned())
        .subcommands(base.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in COMPLETIONS {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut visible, "failover-agent", &mut out);
        let path = completions.join(file);
        std::fs::write(&path, out)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and argument, at every level, says what it is for.
    #[test]
    fn every_argument_and_subcommand_has_help() {
        let mut cmd = Cli::command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        let mut stack = vec![(String::from("failover-agent"), cmd)];
        let mut seen = 0;
        while let Some((path, c)) = stack.pop() {
            if c.get_about().is_none() && path != "failover-agent help" && !path.starts_with("failover-agent help ") {
                missing.push(path.clone());
            }
            for a in c.get_arguments() {
                seen += 1;
                if a.get_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in c.get_subcommands() {
                stack.push((format!("{path} {}", s.get_name()), s.clone()));
            }
        }
        assert!(seen > 20, "the walk saw only {seen} arguments");
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }

    #[test]
    fn man_pages_and_completions_name_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("failover-cli-gen-{}", std::process::id()));
        let written = generate(&dir).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for want in ["failover-agent.1", "failover-agent-run.1", "failover-agent-switch.1", "_failover-agent"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "the hidden subcommand has no page: {names:?}");
        let page = std::fs::read_to_string(dir.join("man/failover-agent-switch.1")).unwrap();
        assert!(page.contains("Switch even to an uplink"), "{page}");
        let bash = std::fs::read_to_string(dir.join("completions/failover-agent.bash")).unwrap();
        assert!(bash.contains("check-config") && bash.contains("--pin-dir"), "{bash}");
        assert!(!bash.contains("generate"), "the hidden subcommand is not completed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
