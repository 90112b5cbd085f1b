//! `cargo xtask chaos --seconds N [--seed S]`: a seeded random schedule of
//! faults and recoveries in the OVS lab, invariants checked throughout
//! (see `failover_tests::chaos`). Exit status 1 if any invariant broke; the
//! seed printed reproduces the run.

use std::process::ExitCode;

use failover_tests::chaos::{ChaosOptions, run};

fn main() -> ExitCode {
    let mut o = ChaosOptions {
        seconds: 60,
        seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs()),
        rate: 1000,
        name: format!("fl-chaos{}", std::process::id()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--seconds", Some(v)) => o.seconds = v.clamp(5, 3600),
            ("--seed", Some(v)) => o.seed = v,
            ("--rate", Some(v)) => o.rate = v.clamp(100, 20_000),
            _ => {
                eprintln!("usage: failover-chaos [--seconds N] [--seed S] [--rate N]");
                return ExitCode::from(2);
            }
        }
    }
    if !failover_tests::privileged("failover-chaos") {
        return ExitCode::FAILURE;
    }
    eprintln!("[chaos] seed {} ({} s): reproduce with --seed {}", o.seed, o.seconds, o.seed);
    match run(&o) {
        Ok(r) => {
            println!(
                "chaos seed {}: {} changes, {} datagrams sent, {} received, {} violation(s)",
                r.seed,
                r.timeline.len(),
                r.sent,
                r.received,
                r.violations.len()
            );
            for v in &r.violations {
                println!("  VIOLATION: {v}");
            }
            if r.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
