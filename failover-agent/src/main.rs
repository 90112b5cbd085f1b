//! The `failover-agent` command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use failover_agent::datapath::EbpfDatapath;

#[derive(Parser)]
#[command(version, about = "Active/standby gateway failover for Open vSwitch hypervisors")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detach the datapath from every uplink and remove its pinned maps and links.
    Uninstall {
        /// The bpffs directory the datapath is pinned under.
        #[arg(long, default_value = "/sys/fs/bpf/failover-agent")]
        pin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Uninstall { pin_dir } => match EbpfDatapath::uninstall(&pin_dir) {
            Ok(removed) => {
                for path in &removed {
                    println!("detached {}", path.display());
                }
                println!("removed {}", pin_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", anyhow::Error::from(e).chain().map(ToString::to_string).collect::<Vec<_>>().join(": "));
                ExitCode::FAILURE
            }
        },
    }
}
