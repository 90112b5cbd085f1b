//! Builds the eBPF programs (failover-ebpf) and leaves the object in `OUT_DIR`
//! for `include_bytes_aligned!`. Without the eBPF toolchain the agent still
//! builds: the object is left out (cfg `failover_ebpf_missing`) and loading
//! the datapath fails with a message saying how to get the toolchain. Set
//! `FAILOVER_EBPF_REQUIRED=1` to make a missing toolchain a build error.

use std::{env, fs};

include!("../build-support/ebpf_toolchain.rs");

fn main() {
    println!("cargo:rustc-check-cfg=cfg(failover_ebpf_missing)");
    for var in ["FAILOVER_BPF_TOOLS", "FAILOVER_EBPF_REQUIRED", "XDG_CACHE_HOME", "HOME"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("failover-agent lives in the workspace").to_path_buf();
    for dir in ["failover-ebpf", "failover-common", "build-support"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());
    let required = env::var("FAILOVER_EBPF_REQUIRED").is_ok_and(|v| v == "1" || v == "true");

    let toolchain = match find_ebpf_toolchain() {
        Ok(tc) => tc,
        Err(why) => {
            assert!(!required, "FAILOVER_EBPF_REQUIRED is set but {why}");
            println!("cargo:warning=building without the eBPF datapath: {why}");
            println!("cargo:rustc-cfg=failover_ebpf_missing");
            return;
        }
    };
    // Rebuild when bpf-linker is installed or replaced.
    println!("cargo:rerun-if-changed={}", toolchain.linker_dir.join("bpf-linker").display());

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out_dir.join("ebpf-target");
    let status = ebpf_build_command(&toolchain, &workspace, &target_dir)
        .status()
        .expect("spawning /usr/bin/cargo to build failover-ebpf");
    assert!(status.success(), "building failover-ebpf failed ({status}); see the output above");
    let object = ebpf_object_path(&target_dir);
    fs::copy(&object, out_dir.join("failover-ebpf.o")).unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}
