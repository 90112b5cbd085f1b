//! Chaos in the OVS lab: a seeded random schedule of faults and recoveries
//! (links, gateways, agent kills, ovs-vswitchd restarts, forced switches)
//! under continuous VM traffic, with invariants checked throughout:
//! - whenever a healthy uplink exists, traffic flows (gap bounded once the
//!   grace period after a change has passed);
//! - no frame leaves an inactive uplink (never both gateways at once,
//!   beyond the instant of a switchover);
//! - no datagram is delivered twice;
//! - the agent's alarms match the faults injected, once settled.
//!
//! The seed of a run reproduces its schedule (`--seed`).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use failover_agent::control::Request;

use crate::{
    agent_lab::AgentProcess,
    ovs_lab::{LabSpec, OvsLab},
    udp::Arrival,
};

/// What to run.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub seconds: u64,
    pub seed: u64,
    pub rate: u64,
    /// Prefix of the lab's names.
    pub name: String,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub timeline: Vec<String>,
    pub violations: Vec<String>,
    pub sent: u64,
    pub received: u64,
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

#[derive(Clone, Copy, Debug, Default)]
struct World {
    link_down: [bool; 2],
    gateway_silent: [bool; 2],
}

impl World {
    fn healthy(self, k: usize) -> bool {
        !self.link_down[k] && !self.gateway_silent[k]
    }
    fn any_healthy(self) -> bool {
        self.healthy(0) || self.healthy(1)
    }
    /// The alarms the agent must show (kind, uplink name), once settled.
    fn expected_alarms(self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (k, name) in ["primary", "standby"].into_iter().enumerate() {
            if self.link_down[k] {
                out.insert(("nic".to_string(), name.to_string()));
            } else if self.gateway_silent[k] {
                out.insert(("gateway".to_string(), name.to_string()));
            }
        }
        out
    }
}

/// A change of the world, as time (Unix ms) and what after it.
struct Change {
    at_ms: f64,
    world: World,
    /// Extra grace (ms) for this change (an OVS restart forwards nothing meanwhile).
    grace_ms: f64,
}

/// Runs the chaos; a run with violations still returns Ok (the report says).
pub fn run(o: &ChaosOptions) -> Result<ChaosReport, String> {
    let mut rng = Rng(o.seed.max(1));
    let mut lab = OvsLab::up(LabSpec { probe_interval_ms: 20, ..LabSpec::named(&o.name) })?;
    let mut agent: Option<AgentProcess> = Some(lab.start_agent());
    lab.wait_ready();
    let traffic = lab.gateway_traffic(77, o.rate);
    let mut report = ChaosReport { seed: o.seed, ..ChaosReport::default() };
    let start = Instant::now();
    let mut world = World::default();
    let mut changes = vec![Change { at_ms: now_ms(), world, grace_ms: 0.0 }];
    let log = |what: String, report: &mut ChaosReport| {
        let line = format!("{:7.2} s  {what}", start.elapsed().as_secs_f64());
        eprintln!("[chaos] {line}");
        report.timeline.push(line);
    };
    while start.elapsed() < Duration::from_secs(o.seconds) {
        // Before the next change: the alarms must match the faults.
        let settled = changes.last().is_some_and(|c| now_ms() - c.at_ms > 1500.0);
        if settled
            && let Ok(r) = failover_agent::control::request(&lab.socket_path(), &Request::Status)
            && let Some(s) = r.status
        {
            let have: BTreeSet<(String, String)> = s
                .alarms
                .iter()
                .filter(|a| a.kind == "nic" || a.kind == "gateway")
                .map(|a| (a.kind.to_string(), a.uplink.clone().unwrap_or_default()))
                .collect();
            if have != world.expected_alarms() {
                let v = format!("alarms {have:?} do not match the faults {:?}", world.expected_alarms());
                log(format!("VIOLATION: {v}"), &mut report);
                report.violations.push(v);
            }
        }
        let k = usize::try_from(rng.below(2)).unwrap_or(0);
        let n = u32::try_from(k + 1).unwrap_or(1);
        let mut grace = 0.0;
        let what = match rng.below(100) {
            0..=34 => {
                world.link_down[k] = !world.link_down[k];
                lab.set_link(n, !world.link_down[k]);
                format!("link {} of uplink {n}", if world.link_down[k] { "down" } else { "up" })
            }
            35..=69 => {
                world.gateway_silent[k] = !world.gateway_silent[k];
                if world.gateway_silent[k] {
                    lab.silence_gateway(n);
                } else {
                    lab.revive_gateway(n);
                }
                format!("gateway {n} {}", if world.gateway_silent[k] { "silent" } else { "back" })
            }
            70..=79 => {
                if let Some(a) = agent.take() {
                    a.kill();
                }
                agent = Some(lab.start_agent());
                "agent SIGKILLed and restarted".to_string()
            }
            80..=87 => {
                lab.stop_vswitchd();
                lab.start_vswitchd()?;
                lab.wait_vswitchd()?;
                grace = 2000.0;
                "ovs-vswitchd restarted".to_string()
            }
            _ => {
                let to = if k == 0 { "primary" } else { "standby" };
                let r = lab.ask(&Request::Switch { group: "ext".into(), uplink: to.into(), force: false });
                format!("forced switch to {to}: {}", if r.ok { "done" } else { "refused (unhealthy)" })
            }
        };
        log(what, &mut report);
        changes.push(Change { at_ms: now_ms(), world, grace_ms: grace });
        std::thread::sleep(Duration::from_millis(800 + rng.below(1200)));
    }
    let r = traffic.finish_raw();
    drop(agent);
    drop(lab);
    report.sent = r.0;
    let arrivals = r.1;
    check_traffic(&arrivals, &changes, &mut report);
    Ok(report)
}

/// Detection allowances: a change is given this long before traffic must
/// flow again (link: carrier event; gateway: 3 probes of 20 ms; both with
/// room for a loaded 2-core machine).
const GRACE_MS: f64 = 1000.0;
/// Longest silence allowed while an uplink is healthy and no change is fresh.
const MAX_GAP_MS: f64 = 250.0;

fn check_traffic(arrivals: &[Arrival], changes: &[Change], report: &mut ChaosReport) {
    let mut seen = BTreeSet::new();
    let (mut dups, mut excused_dups) = (0, 0);
    let mut sorted: Vec<&Arrival> = arrivals.iter().collect();
    sorted.sort_by_key(|a| a.at);
    for a in sorted {
        if !seen.insert(a.seq) {
            // Known overlap: ovs-vswitchd restarted within a second of a
            // switchover, while the datapath still redirected, floods
            // unknown unicast to both uplinks.
            let t = a.at.as_secs_f64() * 1e3;
            if changes.iter().any(|c| c.grace_ms > 0.0 && t >= c.at_ms - 1000.0 && t <= c.at_ms + c.grace_ms) {
                excused_dups += 1;
            } else {
                dups += 1;
            }
        }
    }
    report.received = seen.len() as u64;
    if dups > 0 {
        report.violations.push(format!("{dups} datagrams delivered twice"));
    }
    if excused_dups > 0 {
        report.timeline.push(format!("{excused_dups} duplicates right after an ovs-vswitchd restart (known overlap)"));
    }
    let mut times: Vec<(f64, usize)> = arrivals.iter().map(|a| (a.at.as_secs_f64() * 1e3, a.receiver)).collect();
    times.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Gaps while an uplink is healthy and the last change is not fresh.
    for w in times.windows(2) {
        let (t0, t1) = (w[0].0, w[1].0);
        if t1 - t0 <= MAX_GAP_MS {
            continue;
        }
        // The world during the gap, and the freshest change before its end.
        let excused = changes.iter().any(|c| c.at_ms <= t1 && c.at_ms + GRACE_MS + c.grace_ms >= t0)
            || changes.iter().rev().find(|c| c.at_ms <= t0).is_some_and(|c| !c.world.any_healthy());
        if !excused {
            report.violations.push(format!("{:.0} ms without traffic while an uplink was healthy", t1 - t0));
        }
    }
    // Traffic moving between the gateways more often than the changes can
    // explain means both uplinks carried it at once.
    let both = times.windows(2).filter(|w| w[0].1 != w[1].1).count();
    let switches = changes.len();
    if both > switches * 4 {
        report.violations.push(format!("both uplinks carried traffic at once {both} times ({switches} changes)"));
    }
}

#[cfg(test)]
#[expect(clippy::cast_precision_loss, reason = "small test numbers")]
mod tests {
    use super::*;

    fn arrival(seq: u64, ms: f64, receiver: usize) -> Arrival {
        Arrival { seq, at: Duration::from_secs_f64(ms / 1e3), receiver }
    }

    fn change(at_ms: f64, world: World) -> Change {
        Change { at_ms, world, grace_ms: 0.0 }
    }

    /// Steady traffic on receiver 0 from 0 to `until` ms, one per ms, but for `gap`.
    fn steady(until: u64, gap: std::ops::Range<u64>) -> Vec<Arrival> {
        (0..until).filter(|t| !gap.contains(t)).map(|t| arrival(t, t as f64, 0)).collect()
    }

    #[test]
    fn a_gap_while_an_uplink_is_healthy_is_a_violation() {
        let mut r = ChaosReport::default();
        check_traffic(&steady(4000, 2000..2500), &[change(0.0, World::default())], &mut r);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("without traffic while an uplink was healthy"));
    }

    #[test]
    fn a_gap_right_after_a_change_or_with_nothing_healthy_is_not() {
        let mut r = ChaosReport::default();
        check_traffic(
            &steady(3000, 1000..1500),
            &[change(0.0, World::default()), change(900.0, World::default())],
            &mut r,
        );
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        let dead = World { link_down: [true, true], gateway_silent: [false, false] };
        let mut r = ChaosReport::default();
        check_traffic(&steady(3000, 1000..1500), &[change(0.0, World::default()), change(100.0, dead)], &mut r);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn duplicates_and_traffic_on_both_uplinks_are_violations() {
        let mut arrivals = steady(1000, 0..0);
        arrivals.push(arrival(10, 10.5, 1));
        let mut r = ChaosReport::default();
        check_traffic(&arrivals, &[change(0.0, World::default())], &mut r);
        assert!(r.violations.iter().any(|v| v.contains("delivered twice")), "{:?}", r.violations);
        let both: Vec<Arrival> = (0..1000).map(|t| arrival(t, t as f64, usize::try_from(t % 2).unwrap())).collect();
        let mut r = ChaosReport::default();
        check_traffic(&both, &[change(0.0, World::default())], &mut r);
        assert!(r.violations.iter().any(|v| v.contains("both uplinks")), "{:?}", r.violations);
    }

    #[test]
    fn expected_alarms_follow_the_faults() {
        let w = World { link_down: [true, false], gateway_silent: [true, true] };
        let want: BTreeSet<(String, String)> =
            [("nic".to_string(), "primary".to_string()), ("gateway".to_string(), "standby".to_string())].into();
        assert_eq!(w.expected_alarms(), want);
        assert!(!w.any_healthy());
    }
}
