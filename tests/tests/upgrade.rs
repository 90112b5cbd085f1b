//! Upgrade in place: the previous release of the agent (built from git, in
//! this test's own target directory) runs under traffic; the new one starts
//! over its pins and gives every hook its own programs atomically. And the
//! other way: the previous release over the new one's pins.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use aya::programs::links::{FdLink, PinnedLink};
use failover_tests::{
    agent_lab::{AgentLab, LabOptions},
    privileged,
};

/// The last commit before the datapath learnt TC ingress, the legacy TC
/// path and in-place replacement (layout 2: generic XDP + TCX egress).
const PREVIOUS: &str = "50b308d";
const RATE: u64 = 2000;

fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Builds the previous release once (kept between runs under
/// `target/upgrade-from-<commit>`) and returns its binary.
fn previous_agent() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let dir = root.join("target").join(format!("upgrade-from-{PREVIOUS}"));
    let bin = dir.join("target/debug/failover-agent");
    if bin.exists() {
        return bin;
    }
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("source directory for the previous release");
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!("git -C '{}' archive {PREVIOUS} | tar -x -C '{}'", root.display(), src.display()))
        .status()
        .expect("git archive");
    assert!(archive.success(), "extracting {PREVIOUS} from git (a clone with history is needed)");
    eprintln!("building the previous release ({PREVIOUS}) in {}", dir.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "failover-agent", "--bin", "failover-agent"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("FAILOVER_EBPF_REQUIRED", "1")
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the previous release failed");
    bin
}

/// The program id a pinned link runs.
fn prog_id(lab: &AgentLab, pin: &str) -> u32 {
    let link = FdLink::from(PinnedLink::from_pin(lab.pins.path().join("links").join(pin)).expect("pinned link"));
    link.info().expect("link info").program_id()
}

fn pin_of<'a>(pins: &'a [String], prefix: &str) -> &'a str {
    pins.iter().find(|p| p.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}* pin in {pins:?}"))
}

#[test]
fn the_new_agent_takes_over_the_previous_ones_datapath_under_traffic_and_back() {
    if !privileged("the_new_agent_takes_over_the_previous_ones_datapath_under_traffic_and_back") {
        return;
    }
    let previous = previous_agent();
    let mut lab = AgentLab::new(LabOptions::default());
    let old = lab.start_binary(&previous);
    lab.wait_healthy();
    let pins = lab.link_pins();
    let old_egress = pin_of(&pins, "tc-up1-").to_string();
    assert!(pins.iter().any(|p| p.starts_with("xdp-up1-")), "the previous release attaches XDP: {pins:?}");
    let old_id = prog_id(&lab, &old_egress);

    // Upgrade: stop (SIGTERM, as systemd does), start the new one.
    let traffic = lab.traffic(5, RATE);
    settle();
    assert!(old.terminate().success());
    let new = lab.start_agent();
    let s = lab.wait_healthy();
    settle();
    let r = traffic.finish();
    eprintln!("upgrade from {PREVIOUS} under traffic: {r}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
    let pins = lab.link_pins();
    assert_eq!(pin_of(&pins, "tc-up1-"), old_egress, "the same TCX link, kept");
    let new_id = prog_id(&lab, &old_egress);
    assert_ne!(new_id, old_id, "the link runs the new agent's program now");
    assert!(pins.iter().any(|p| p.starts_with("tci-up1-")), "TC ingress attached: {pins:?}");
    assert!(!pins.iter().any(|p| p.starts_with("xdp-")), "the old XDP hooks detached: {pins:?}");
    assert!(lab.pins.path().join("layout-v2").is_dir(), "the map layout is marked");
    assert_eq!(s.agent.as_ref().map(|a| a.ingress.as_str()), Some("tc"));
    assert_eq!(s.groups[0].active.as_deref(), Some("primary"), "no flip");
    assert!(s.groups[0].last_switchover.is_none(), "no switchover: {s:#?}");

    // Downgrade: the previous release over the new pins is handled (same
    // map layout): it keeps the hooks it does not know, adds its own.
    let traffic = lab.traffic(6, RATE);
    settle();
    assert!(new.terminate().success());
    let old = lab.start_binary(&previous);
    lab.wait_healthy();
    settle();
    let r = traffic.finish();
    eprintln!("back to {PREVIOUS} under traffic: {r}");
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r}");
    assert!(old.terminate().success());
}
