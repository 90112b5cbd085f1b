// The recipe for building the eBPF object, shared by failover-agent's build
// script (which embeds the object) and `cargo xtask build-ebpf` (which builds
// it on its own). Measured recipe: ../shared/docs/toolchain.md.
//
// Debian's rustc-web (LLVM 22) with its `rust-web-src` std sources builds
// `core` for bpfel-unknown-none under RUSTC_BOOTSTRAP=1, and bpf-linker built
// against Debian's LLVM 22 links it. rustup's compilers are never used for
// this: they have no std sources here, and their LLVM may not match.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

/// Where `./dev setup` installs bpf-linker, unless `FAILOVER_BPF_TOOLS` says otherwise.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAILOVER_BPF_TOOLS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    cache.join("failover-agent-dev").join("tools")
}

/// The pieces of the eBPF toolchain, found.
pub struct EbpfToolchain {
    pub cargo: PathBuf,
    pub linker_dir: PathBuf,
}

/// Finds the eBPF toolchain, or says what is missing and how to get it.
pub fn find_ebpf_toolchain() -> Result<EbpfToolchain, String> {
    let cargo = PathBuf::from("/usr/bin/cargo");
    let rustc = Path::new("/usr/bin/rustc");
    let std_src = Path::new("/usr/lib/rustlib/src/rust/library/core");
    let linker_dir = tools_dir().join("bin");
    let mut missing = Vec::new();
    if !cargo.exists() || !rustc.exists() {
        missing.push("Debian's rustc-web and cargo-web (/usr/bin/rustc, /usr/bin/cargo)".to_string());
    }
    if !std_src.exists() {
        missing.push(format!("Debian's rust-web-src ({})", std_src.display()));
    }
    if !linker_dir.join("bpf-linker").exists() {
        missing.push(format!("bpf-linker ({})", linker_dir.join("bpf-linker").display()));
    }
    if missing.is_empty() {
        Ok(EbpfToolchain { cargo, linker_dir })
    } else {
        Err(format!("the eBPF toolchain is incomplete: missing {}; `./dev setup` installs it", missing.join(", ")))
    }
}

/// The target the programs are built for.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// `cargo build` of failover-ebpf into `target_dir`; the object lands at
/// `<target_dir>/bpfel-unknown-none/release/failover-ebpf`.
pub fn ebpf_build_command(tc: &EbpfToolchain, workspace: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new(&tc.cargo);
    cmd.current_dir(workspace)
        .args(["build", "--package", "failover-ebpf", "--release", "--target", EBPF_TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir);
    let mut path = OsString::from(tc.linker_dir.as_os_str());
    path.push(":/usr/bin:/bin");
    cmd.env("PATH", path).env("RUSTC_BOOTSTRAP", "1");
    // BTF for the programs; the separator is cargo's encoded-rustflags one.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf");
    // Whatever compiler or target the outer build was told to use is not ours.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Where [`ebpf_build_command`] leaves the object.
pub fn ebpf_object_path(target_dir: &Path) -> PathBuf {
    target_dir.join(EBPF_TARGET).join("release").join("failover-ebpf")
}
