//! A 60-second chaos run (fixed seed) in the OVS lab: random faults and
//! recoveries under traffic, every invariant of `failover_tests::chaos`
//! checked. `cargo xtask chaos --seconds N [--seed S]` runs longer ones.

use failover_tests::{
    chaos::{ChaosOptions, run},
    privileged, unique_name,
};

#[test]
fn sixty_seconds_of_chaos_break_no_invariant() {
    if !privileged("sixty_seconds_of_chaos_break_no_invariant") {
        return;
    }
    let seed = std::env::var("FAILOVER_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_126);
    let report = run(&ChaosOptions { seconds: 60, seed, rate: 1000, name: unique_name("chaos") }).expect("chaos run");
    eprintln!(
        "chaos seed {seed}: {} changes, sent {}, received {}",
        report.timeline.len(),
        report.sent,
        report.received
    );
    assert!(report.timeline.len() >= 20, "too few changes: {:?}", report.timeline);
    assert!(report.received > 0, "traffic flowed: {} of {}", report.received, report.sent);
    assert!(
        report.violations.is_empty(),
        "seed {seed} (reproduce: cargo xtask chaos --seconds 60 --seed {seed}):\n{}\ntimeline:\n{}",
        report.violations.join("\n"),
        report.timeline.join("\n")
    );
}
