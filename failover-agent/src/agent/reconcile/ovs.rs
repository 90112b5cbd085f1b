//! Keeping each group's OpenFlow rules in step with the datapath,
//! level-triggered: the desired rules of a group ([`desired_flows`]) are
//! compared with what was installed, and one change is one install. Also:
//! whether each bridge answers, the "OVS unreachable" alarm, and removing
//! the rules of groups no longer configured (by cookie). The `ovs-ofctl`
//! runs themselves happen on blocking threads ([`run_job`]); this part only
//! decides, with the time passed in.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    agent::topology::Topology,
    config::Config,
    failover::Core,
    ovs::{GroupFlows, OvsCli, OvsError, group_cookie, plan},
};

/// What group `g`'s OpenFlow rules should say now (None: nothing decided).
pub fn desired_flows(config: &Config, topo: &Topology, core: &Core, g: usize) -> Option<GroupFlows> {
    let group = &config.groups[g];
    let active = core.active(g)?;
    let macs: Vec<[u8; 6]> =
        (0..group.uplinks.len()).filter_map(|u| core.uplink(g, u).and_then(|v| v.last_gateway_mac)).collect();
    Some(GroupFlows {
        group: topo.ids[g].0,
        bridge: group.bridge.clone(),
        uplinks: group.uplinks.iter().map(|u| u.interface.clone()).collect(),
        active,
        gateway_macs: macs,
        active_mac: core.uplink(g, active).and_then(|v| v.last_gateway_mac),
    })
}

/// The cookies of the rules the agent keeps on `bridge` under `config`.
pub fn cookies_on(config: &Config, bridge: &str) -> BTreeSet<u64> {
    config.groups.iter().filter(|g| g.bridge == bridge).map(|g| group_cookie(&g.name)).collect()
}

/// Removes the agent's rules on `bridge` whose cookie is not in `keep`
/// (groups no longer configured); returns the cookies removed.
pub fn remove_orphans(cli: &OvsCli, bridge: &str, keep: &BTreeSet<u64>) -> Result<Vec<u64>, OvsError> {
    let mut removed = Vec::new();
    for c in cli.agent_cookies(bridge)? {
        if !keep.contains(&c) {
            cli.remove_cookie(bridge, c)?;
            removed.push(c);
        }
    }
    Ok(removed)
}

/// How long a bridge may be unreachable before the alarm.
pub const UNREACHABLE_ALARM_AFTER: Duration = Duration::from_secs(1);
/// How often the rules are checked against the bridge.
pub const VERIFY_EVERY: Duration = Duration::from_secs(5);
/// How long after new rules are in place the datapath keeps redirecting:
/// the switch's datapath may still forward a few frames by flows cached
/// before the change, until its revalidation catches up (a forced switch in
/// the lab lost one datagram without this).
pub const SETTLE_AFTER_INSTALL: Duration = Duration::from_secs(1);
/// Retry after a failed install: first, and at most.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One install (or check) to run on a blocking thread.
#[derive(Clone, Debug)]
pub struct Job {
    pub group: usize,
    pub flows: GroupFlows,
    /// Only compare with the bridge; install if it differs.
    pub verify_only: bool,
    /// An install with nothing known about the bridge's rules (the agent
    /// just started, the bridge came back, or the last install failed):
    /// compare first and leave rules already as wanted alone (a restarted
    /// agent finds its rules in place and changes nothing on the switch).
    pub compare_first: bool,
    /// The first job on a bridge since it answers: also remove the agent's
    /// rules of other cookies than these (groups no longer configured).
    pub cleanup: Option<BTreeSet<u64>>,
}

/// What a job did.
#[derive(Debug)]
pub struct JobDone {
    pub group: usize,
    pub flows: GroupFlows,
    pub verify_only: bool,
    /// `Ok(true)`: rules were (re)installed; `Ok(false)`: already in place.
    pub result: Result<bool, OvsError>,
    pub took: Duration,
    /// The cleanup the job was asked for (see [`Job::cleanup`]).
    pub cleanup: Option<BTreeSet<u64>>,
    /// Cookies of orphaned rules removed.
    pub orphans_removed: Vec<u64>,
}

/// Runs a job: plan from the bridge's ports (and their VLAN settings),
/// compare, install if needed.
pub fn run_job(cli: &OvsCli, job: Job) -> JobDone {
    let start = Instant::now();
    let bridge = job.flows.bridge.clone();
    let mut orphans_removed = Vec::new();
    let result = (|| {
        if let Some(keep) = &job.cleanup {
            orphans_removed = remove_orphans(cli, &bridge, keep)?;
        }
        let ports = cli.bridge_ports(&bridge)?;
        let wanted = plan(&job.flows, &ports)?;
        if (job.verify_only || job.compare_first) && cli.dump(&bridge, job.flows.group)? == wanted.flows {
            return Ok(false);
        }
        cli.apply(&bridge, job.flows.group, &wanted)?;
        Ok(true)
    })();
    JobDone {
        group: job.group,
        flows: job.flows,
        verify_only: job.verify_only,
        result,
        took: start.elapsed(),
        cleanup: job.cleanup,
        orphans_removed,
    }
}

#[derive(Debug, Default)]
struct GroupSync {
    desired: Option<GroupFlows>,
    installed: Option<GroupFlows>,
    /// The active uplink the bridge's rules were last installed for. Kept
    /// when ovs-vswitchd restarts (its rules gone, it floods; the datapath
    /// need not redirect for that), changed only by a successful install.
    rules_active: Option<usize>,
    /// When `rules_active` last changed.
    rules_changed_at: Option<Instant>,
    in_flight: bool,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    next_verify: Option<Instant>,
    last_error: Option<String>,
    last_sync: Option<Duration>,
}

/// The OVS side of each group.
#[derive(Debug)]
pub struct OvsSync {
    groups: Vec<GroupSync>,
    /// Bridge -> since when it has been unreachable (None: reachable).
    bridges: BTreeMap<String, Option<Instant>>,
    alarmed: BTreeSet<String>,
    /// Bridge -> the cookies to keep there, until the orphans of other
    /// cookies were removed (once per start).
    cleanup: BTreeMap<String, BTreeSet<u64>>,
}

/// A change of the "OVS unreachable" alarm of a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgeAlarm {
    Raise(String),
    Clear(String),
}

impl OvsSync {
    pub fn new(groups: usize, bridges: impl IntoIterator<Item = String>, now: Instant) -> Self {
        Self {
            groups: (0..groups).map(|_| GroupSync::default()).collect(),
            // Unknown until the first report: counted as unreachable from now.
            bridges: bridges.into_iter().map(|b| (b, Some(now))).collect(),
            alarmed: BTreeSet::new(),
            cleanup: BTreeMap::new(),
        }
    }

    /// Removes, with the first job on each bridge, the agent's rules of
    /// cookies other than `keep[bridge]`.
    pub fn clean_orphans(&mut self, keep: BTreeMap<String, BTreeSet<u64>>) {
        self.cleanup = keep;
    }

    /// The uplink the bridge's installed rules send VM traffic to.
    pub fn rules_active(&self, group: usize) -> Option<usize> {
        self.groups.get(group)?.rules_active
    }

    /// The rules a group should have now.
    pub fn desire(&mut self, group: usize, flows: GroupFlows) {
        let g = &mut self.groups[group];
        if g.desired.as_ref() != Some(&flows) {
            g.desired = Some(flows);
            g.retry_at = None;
            g.retry_delay = RETRY_MIN;
        }
    }

    /// A bridge came or went.
    pub fn reachability(&mut self, bridge: &str, up: bool, now: Instant) {
        let Some(state) = self.bridges.get_mut(bridge) else {
            return;
        };
        match (up, state.is_some()) {
            (true, true) => {
                info!(bridge, "OVS answers: putting the agent's rules in place");
                *state = None;
                // Whatever was installed before is gone if ovs-vswitchd restarted.
                for g in &mut self.groups {
                    if g.desired.as_ref().is_some_and(|d| d.bridge == bridge) {
                        g.installed = None;
                        g.retry_at = None;
                    }
                }
            }
            (false, false) => {
                warn!(bridge, "OVS does not answer; the datapath keeps steering, rules follow when it is back");
                *state = Some(now);
            }
            _ => {}
        }
    }

    /// Whether the bridge answers now.
    pub fn bridge_reachable(&self, bridge: &str) -> bool {
        self.reachable(bridge)
    }

    fn reachable(&self, bridge: &str) -> bool {
        self.bridges.get(bridge).is_some_and(Option::is_none)
    }

    /// The next job to run, if any is due.
    pub fn next_job(&mut self, now: Instant) -> Option<Job> {
        for (i, g) in self.groups.iter_mut().enumerate() {
            let Some(desired) = g.desired.clone() else {
                continue;
            };
            if g.in_flight || !self.bridges.get(&desired.bridge).is_some_and(Option::is_none) {
                continue;
            }
            if g.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let changed = g.installed.as_ref() != Some(&desired);
            let verify = g.next_verify.is_some_and(|t| t <= now);
            if changed || verify {
                g.in_flight = true;
                g.next_verify = Some(now + VERIFY_EVERY);
                let cleanup = self.cleanup.remove(&desired.bridge);
                let compare_first = changed && g.installed.is_none();
                return Some(Job { group: i, flows: desired, verify_only: !changed, compare_first, cleanup });
            }
        }
        None
    }

    /// A job finished.
    pub fn done(&mut self, done: &JobDone, now: Instant) {
        if done.result.is_err()
            && let Some(keep) = &done.cleanup
        {
            // Not done: try again with the next job on that bridge.
            self.cleanup.entry(done.flows.bridge.clone()).or_insert_with(|| keep.clone());
        }
        let g = &mut self.groups[done.group];
        g.in_flight = false;
        match &done.result {
            Ok(changed) => {
                if *changed && done.verify_only {
                    warn!(bridge = %done.flows.bridge, "the agent's rules had changed on the bridge: put back");
                }
                if g.rules_active != Some(done.flows.active) {
                    g.rules_active = Some(done.flows.active);
                    g.rules_changed_at = Some(now);
                }
                g.installed = Some(done.flows.clone());
                g.last_error = None;
                g.retry_at = None;
                g.retry_delay = RETRY_MIN;
                g.last_sync = Some(done.took);
            }
            Err(e) => {
                let message = e.to_string();
                if g.last_error.as_deref() != Some(&message) {
                    warn!(error = %message, "installing the agent's OVS rules failed; retrying");
                }
                g.last_error = Some(message);
                g.installed = None;
                g.retry_at = Some(now + g.retry_delay);
                g.retry_delay = (g.retry_delay * 2).min(RETRY_MAX);
            }
        }
    }

    /// When something is next due (a retry or a verification). Jobs of a
    /// bridge that does not answer are not due (they wait for it to come
    /// back, which is an event): they add no deadline, so the loop sleeps.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let settling = self
            .groups
            .iter()
            .filter_map(|g| g.rules_changed_at.map(|t| t + SETTLE_AFTER_INSTALL))
            .filter(|&t| t > now);
        let bridge_alarms = self
            .bridges
            .iter()
            .filter(|(b, _)| !self.alarmed.contains(*b))
            .filter_map(|(_, since)| since.map(|t| t + UNREACHABLE_ALARM_AFTER));
        self.groups
            .iter()
            .filter(|g| !g.in_flight && g.desired.as_ref().is_some_and(|d| self.reachable(&d.bridge)))
            .flat_map(|g| [g.retry_at, g.next_verify])
            .flatten()
            .chain(bridge_alarms)
            .chain(settling)
            .min()
    }

    /// Raises and clears "OVS unreachable" per bridge.
    pub fn alarms(&mut self, now: Instant) -> Vec<BridgeAlarm> {
        let mut out = Vec::new();
        for (bridge, since) in &self.bridges {
            let down_long = since.is_some_and(|t| now.duration_since(t) >= UNREACHABLE_ALARM_AFTER);
            if down_long && self.alarmed.insert(bridge.clone()) {
                out.push(BridgeAlarm::Raise(bridge.clone()));
            } else if since.is_none() && self.alarmed.remove(bridge) {
                out.push(BridgeAlarm::Clear(bridge.clone()));
            }
        }
        out
    }

    /// Whether the bridge of a group answers, and whether its rules are in place.
    pub fn group_status(&self, group: usize) -> (bool, bool, Option<String>) {
        let g = &self.groups[group];
        let reachable = g.desired.as_ref().is_some_and(|d| self.reachable(&d.bridge));
        let in_sync = g.desired.is_some() && g.installed == g.desired;
        (reachable, in_sync, g.last_error.clone())
    }

    /// Whether the bridge's rules send VM traffic to uplink `active`, and
    /// have for long enough that the switch forwards by them (see
    /// [`SETTLE_AFTER_INSTALL`]): then the datapath need not redirect.
    pub fn settled(&self, group: usize, active: usize, now: Instant) -> bool {
        self.groups.get(group).is_some_and(|g| {
            g.rules_active == Some(active) && g.rules_changed_at.is_some_and(|t| t + SETTLE_AFTER_INSTALL <= now)
        })
    }

    /// Bridges with the alarm raised.
    pub fn alarmed(&self) -> impl Iterator<Item = &String> {
        self.alarmed.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::cookie;

    fn flows(active: usize) -> GroupFlows {
        GroupFlows {
            group: 0,
            bridge: "br0".into(),
            uplinks: vec!["up1".into(), "up2".into()],
            active,
            gateway_macs: vec![],
            active_mac: None,
        }
    }

    fn ok(job: &Job) -> JobDone {
        JobDone {
            group: job.group,
            flows: job.flows.clone(),
            verify_only: job.verify_only,
            result: Ok(true),
            took: Duration::from_millis(5),
            cleanup: job.cleanup.clone(),
            orphans_removed: vec![],
        }
    }

    #[test]
    fn an_unreachable_bridge_adds_no_deadline_so_the_loop_sleeps() {
        let t0 = Instant::now();
        let mut s = OvsSync::new(1, ["br0".to_string()], t0);
        s.reachability("br0", true, t0);
        s.desire(0, flows(0));
        let job = s.next_job(t0).unwrap();
        s.done(&ok(&job), t0);
        s.reachability("br0", false, t0);
        // 10 s of outage: after the alarm, nothing is due until the bridge is back.
        let mut wakeups = 0;
        let mut now = t0;
        let end = t0 + Duration::from_secs(10);
        while now < end {
            let next = s.next_deadline(now).unwrap_or(end).min(end);
            assert!(next > now || wakeups == 0, "a deadline in the past at {:?}", now - t0);
            now = next.max(now + Duration::from_micros(1));
            let _ = s.alarms(now);
            assert!(s.next_job(now).is_none());
            wakeups += 1;
        }
        assert!(wakeups <= 3, "{wakeups} wakeups in 10 s of outage");
    }

    #[test]
    fn the_first_job_on_a_bridge_carries_the_orphan_cleanup() {
        let t0 = Instant::now();
        let mut s = OvsSync::new(1, ["br0".to_string()], t0);
        s.clean_orphans([("br0".to_string(), BTreeSet::from([cookie(7)]))].into());
        s.reachability("br0", true, t0);
        s.desire(0, flows(0));
        let job = s.next_job(t0).unwrap();
        assert_eq!(job.cleanup, Some(BTreeSet::from([cookie(7)])));
        s.done(&ok(&job), t0);
        s.desire(0, flows(1));
        assert_eq!(s.next_job(t0).unwrap().cleanup, None, "once");
    }

    #[test]
    fn nothing_runs_until_the_bridge_answers_then_the_rules_go_in() {
        let t0 = Instant::now();
        let mut s = OvsSync::new(1, ["br0".to_string()], t0);
        s.desire(0, flows(0));
        assert!(s.next_job(t0).is_none(), "bridge not reachable yet");
        s.reachability("br0", true, t0);
        let job = s.next_job(t0).expect("install");
        assert!(!job.verify_only);
        assert!(job.compare_first, "nothing known of the bridge's rules: compare before replacing");
        assert!(s.next_job(t0).is_none(), "one job at a time per group");
        s.done(&ok(&job), t0);
        assert!(s.next_job(t0).is_none(), "in place");
        assert_eq!(s.group_status(0), (true, true, None));
        // A switchover: install again at once, without a comparison first.
        s.desire(0, flows(1));
        let job = s.next_job(t0).unwrap();
        assert!(!job.verify_only && !job.compare_first);
    }

    #[test]
    fn a_restarted_switch_gets_its_rules_back_and_the_alarm_waits_a_second() {
        let t0 = Instant::now();
        let mut s = OvsSync::new(1, ["br0".to_string()], t0);
        s.reachability("br0", true, t0);
        s.desire(0, flows(0));
        let job = s.next_job(t0).unwrap();
        s.done(&ok(&job), t0);
        s.reachability("br0", false, t0);
        assert!(s.alarms(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(s.alarms(t0 + Duration::from_secs(1)), vec![BridgeAlarm::Raise("br0".into())]);
        assert!(s.alarms(t0 + Duration::from_secs(2)).is_empty(), "raised once");
        let back = t0 + Duration::from_secs(3);
        s.reachability("br0", true, back);
        assert_eq!(s.alarms(back), vec![BridgeAlarm::Clear("br0".into())]);
        let job = s.next_job(back).expect("rules put back");
        assert!(!job.verify_only);
    }

    #[test]
    fn redirecting_ends_a_settle_time_after_the_rules_follow_and_survives_a_switch_restart() {
        let t0 = Instant::now();
        let mut s = OvsSync::new(1, ["br0".to_string()], t0);
        s.reachability("br0", true, t0);
        s.desire(0, flows(0));
        assert!(!s.settled(0, 0, t0));
        let job = s.next_job(t0).unwrap();
        s.done(&ok(&job), t0);
        assert!(!s.settled(0, 0, t0 + Duration::from_millis(500)), "the switch may still use cached flows");
        assert!(s.settled(0, 0, t0 + SETTLE_AFTER_INSTALL));
        assert!(!s.settled(0, 1, t0 + SETTLE_AFTER_INSTALL), "rules for another uplink");
        // ovs-vswitchd restarts: its rules are gone and it floods; no redirecting for that.
        let later = t0 + Duration::from_secs(5);
        s.reachability("br0", false, later);
        s.reachability("br0", true, later);
        assert!(s.settled(0, 0, later));
    }

    #[test]
    fn failures_retry_with_backoff_and_verification_is_periodic() {
        let t0 = Instant::now();
        let mut s = OvsSync::new(1, ["br0".to_string()], t0);
        s.reachability("br0", true, t0);
        s.desire(0, flows(0));
        let job = s.next_job(t0).unwrap();
        s.done(
            &JobDone { result: Err(OvsError::MissingPort { bridge: "br0".into(), port: "up1".into() }), ..ok(&job) },
            t0,
        );
        assert!(s.next_job(t0).is_none(), "not before the retry");
        assert_eq!(s.group_status(0).2.as_deref(), Some("bridge br0: port up1 is not on the bridge"));
        let job = s.next_job(t0 + Duration::from_millis(100)).expect("retry");
        s.done(&ok(&job), t0 + Duration::from_millis(100));
        let later = t0 + Duration::from_millis(100) + VERIFY_EVERY;
        let check = s.next_job(later).expect("periodic check");
        assert!(check.verify_only);
    }
}
