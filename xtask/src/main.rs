//! `cargo xtask <task>`: the project's tasks.
//!
//! - `build-ebpf`: build the eBPF object on its own (Debian's rustc-web and
//!   bpf-linker, as in ../shared/docs/toolchain.md) and say where it is.
//! - `demo`: build everything and run the demo: the OVS lab, the agent, the
//!   faults of the method one by one, then teardown (needs root).
//! - `lab up|down|status`: the OVS lab, kept up between commands.
//! - `deb`: the Debian package (cargo-deb), with the eBPF object inside.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[path = "../../build-support/ebpf_toolchain.rs"]
mod ebpf_toolchain;

#[derive(Parser)]
#[command(about = "failover-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object (target bpfel-unknown-none) on its own.
    BuildEbpf,
    /// Build everything and run the demo in the OVS lab (root); `--with-prometheus` adds a real Prometheus.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The failover benchmark against OVS's active-backup bond (root): `[--rate N] [--reps N] [--quick]`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Random faults in the OVS lab with invariants checked (root): `[--seconds N] [--seed S]`.
    Chaos {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The OVS lab: `up [--name N] [--vms N] [--shared-mac] [--no-agent]`, `down`, `status`.
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (cargo-deb; `./dev setup` installs it) into target/debian/.
    Deb,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

mod deb;

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The release build of the agent and the lab tools, the eBPF object
/// required: one selection for the demo, the lab and the package, so none
/// rebuilds what another built.
fn build_release(root: &Path) -> Result<()> {
    run(Command::new(cargo()).current_dir(root).env("FAILOVER_EBPF_REQUIRED", "1").args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "failover-agent",
        "-p",
        "failover-tests",
        "--bins",
    ]))
}

fn build_ebpf() -> Result<PathBuf> {
    let toolchain = ebpf_toolchain::find_ebpf_toolchain().map_err(anyhow::Error::msg)?;
    let root = workspace_root();
    let target_dir = root.join("target");
    run(&mut ebpf_toolchain::ebpf_build_command(&toolchain, &root, &target_dir))?;
    let object = ebpf_toolchain::ebpf_object_path(&target_dir);
    let size = std::fs::metadata(&object).with_context(|| format!("reading {}", object.display()))?.len();
    println!("eBPF object: {} ({size} bytes)", object.display());
    Ok(object)
}

/// Builds the agent and the lab tools (release), then runs `bin` with
/// `args`; its exit status is ours (it says itself what went wrong).
fn run_lab_tool(bin: &str, args: &[String]) -> Result<ExitCode> {
    if effective_uid() != 0 {
        bail!("{bin} creates network namespaces and loads eBPF: run it as root");
    }
    let root = workspace_root();
    build_release(&root)?;
    let status = Command::new(root.join("target/release").join(bin))
        .env("FAILOVER_EBPF_REQUIRED", "1")
        .args(args)
        .status()
        .with_context(|| format!("running {bin}"))?;
    Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)))
}

fn effective_uid() -> u32 {
    // `id -u` keeps xtask free of libc.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::BuildEbpf => build_ebpf().map(|_| ExitCode::SUCCESS),
        Task::Demo { args } => run_lab_tool("failover-demo", &args),
        Task::Lab { args } => run_lab_tool("failover-lab", &args),
        Task::Bench { args } => run_lab_tool("failover-bench", &args),
        Task::Chaos { args } => run_lab_tool("failover-chaos", &args),
        Task::Deb => deb::build(&workspace_root()).map(|path| {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
