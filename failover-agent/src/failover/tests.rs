//! Every case of the method, as a plain test: events and time in, actions out.

use std::path::Path;

use super::*;
use crate::config;

const INTERVAL: Duration = Duration::from_millis(100);
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 1];

fn config(uplinks: usize, failback: &str) -> Config {
    let mut text = format!(
        "[[group]]\nname = \"ext\"\nbridge = \"br\"\nprobe_interval_ms = 100\ndown_after = 3\nup_after = 3\ndata_plane_liveness = true\n\
         failback = \"{failback}\"\nhold_down_ms = 1000\nflap_threshold = 4\nflap_window_ms = 10000\nrelearn_after_ms = 1000\n"
    );
    for (i, name) in ["primary", "standby", "third", "fourth"].iter().take(uplinks).enumerate() {
        text += &format!(
            "[[group.uplink]]\nname = \"{name}\"\ninterface = \"eth{i}\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n"
        );
    }
    config::parse(&text, Path::new("test.toml")).expect("valid test config")
}

/// Drives a core of one group through time.
struct H {
    core: Core,
    cfg: Config,
    now: Instant,
    replies: Vec<u64>,
}

impl H {
    fn new(uplinks: usize, failback: &str) -> Self {
        let cfg = config(uplinks, failback);
        let now = Instant::now();
        Self { core: Core::new(&cfg, now), cfg, now, replies: vec![0; uplinks] }
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn link(&mut self, uplink: usize, link: Link) -> Vec<Action> {
        self.core.handle_link(0, uplink, link, self.now);
        self.drain()
    }

    /// One probe interval passes; the uplinks in `answering` answered the
    /// previous round's probe.
    fn tick(&mut self, answering: &[usize]) -> Vec<Action> {
        self.now += INTERVAL;
        for &u in answering {
            self.replies[u] += 1;
            self.core.handle_replies(0, u, self.replies[u], Some(GW_MAC));
        }
        self.core.handle_timeout(self.now);
        self.drain()
    }

    fn ticks(&mut self, n: usize, answering: &[usize]) -> Vec<Action> {
        (0..n).flat_map(|_| self.tick(answering)).collect()
    }

    /// All links up, every gateway answering until healthy; group on `primary`.
    fn healthy(uplinks: usize, failback: &str) -> Self {
        let mut h = Self::new(uplinks, failback);
        for u in 0..uplinks {
            h.link(u, Link::Up);
        }
        h.core.handle_timeout(h.now);
        let all: Vec<usize> = (0..uplinks).collect();
        h.ticks(4, &all);
        h.drain();
        for u in 0..uplinks {
            assert!(h.core.uplink(0, u).unwrap().healthy, "uplink {u} healthy after start");
        }
        assert_eq!(h.core.active(0), Some(0));
        h
    }

    fn alarm_text(&self, a: &Action) -> Option<String> {
        match a {
            Action::RaiseAlarm(al) => Some(format!("raise: {}", alarm_message(&self.cfg, al))),
            Action::ClearAlarm(al) => Some(format!("clear: {}", alarm_message(&self.cfg, al))),
            _ => None,
        }
    }

    fn alarms(&self, actions: &[Action]) -> Vec<String> {
        actions.iter().filter_map(|a| self.alarm_text(a)).collect()
    }
}

fn switches(actions: &[Action]) -> Vec<(Option<usize>, usize, Reason)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::SetActive { uplink, previous, reason, .. } => Some((previous, uplink, reason)),
            _ => None,
        })
        .collect()
}

fn probes(actions: &[Action]) -> Vec<(usize, Option<[u8; 6]>)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::SendProbe { uplink, gateway_mac, .. } => Some((uplink, gateway_mac)),
            _ => None,
        })
        .collect()
}

const NIC_PRIMARY: &str = "replace NIC of uplink primary (eth0) in group ext";
const NIC_STANDBY: &str = "replace NIC of uplink standby (eth1) in group ext";
const GW_PRIMARY: &str = "replace gateway of uplink primary (192.0.2.1 via eth0) in group ext";
const GW_STANDBY: &str = "replace gateway of uplink standby (192.0.2.1 via eth1) in group ext";
const NO_HEALTHY: &str = "no healthy uplink in group ext: traffic stays where it is";

#[test]
fn startup_chooses_the_primary_and_probes_every_uplink_each_interval() {
    let mut h = H::new(2, "never");
    h.core.handle_timeout(h.now);
    assert!(switches(&h.drain()).is_empty(), "no decision before links are known");
    h.link(0, Link::Up);
    let a = h.link(1, Link::Up);
    assert_eq!(switches(&a), vec![(None, 0, Reason::Startup)]);
    assert!(a.contains(&Action::MirrorToOvs { group: 0, uplink: 0 }));
    let a = h.tick(&[]);
    assert_eq!(probes(&a), vec![(0, None), (1, None)], "broadcast until the MAC is known");
    assert_eq!(h.core.poll_timeout(), Some(h.now + INTERVAL));
}

#[test]
fn startup_with_the_primary_nic_missing_chooses_the_standby_and_alarms() {
    let mut h = H::new(2, "never");
    let a = h.link(1, Link::Up);
    assert!(switches(&a).is_empty(), "waits until every link is known");
    let a = h.link(0, Link::Absent);
    assert_eq!(switches(&a), vec![(None, 1, Reason::Startup)]);
    assert_eq!(h.alarms(&a), vec![format!("raise: {NIC_PRIMARY}")]);
}

#[test]
fn gateway_mac_is_learned_then_probes_are_unicast() {
    let mut h = H::healthy(2, "never");
    let a = h.tick(&[0, 1]);
    assert_eq!(probes(&a), vec![(0, Some(GW_MAC)), (1, Some(GW_MAC))]);
    assert_eq!(h.core.uplink(0, 0).unwrap().gateway_mac, Some(GW_MAC));
}

#[test]
fn learning_emits_the_mac_for_the_datapath_once() {
    let mut h = H::new(2, "never");
    h.link(0, Link::Up);
    h.link(1, Link::Up);
    h.core.handle_timeout(h.now);
    h.drain();
    let a = h.tick(&[0]);
    assert_eq!(a.iter().filter(|x| matches!(x, Action::GatewayMac { uplink: 0, mac: Some(_), .. })).count(), 1);
    let a = h.tick(&[0]);
    assert!(!a.iter().any(|x| matches!(x, Action::GatewayMac { .. })));
}

#[test]
fn s1_primary_nic_fault_switches_and_names_the_nic() {
    let mut h = H::healthy(2, "never");
    let a = h.link(0, Link::Down);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::NicFault)], "at once, not at the next probe");
    assert_eq!(h.alarms(&a), vec![format!("raise: {NIC_PRIMARY}")]);
    assert!(a.contains(&Action::MirrorToOvs { group: 0, uplink: 1 }));
    let a = h.ticks(5, &[1]);
    assert!(switches(&a).is_empty(), "stays on the standby");
    assert!(!probes(&a).iter().any(|(u, _)| *u == 0), "no probes through a dead link");
}

#[test]
fn s1_standby_nic_fault_raises_an_alarm_only() {
    let mut h = H::healthy(2, "never");
    let a = h.link(1, Link::Down);
    assert!(switches(&a).is_empty());
    assert_eq!(h.alarms(&a), vec![format!("raise: {NIC_STANDBY}")]);
    let a = h.link(1, Link::Absent);
    assert!(switches(&a).is_empty() && h.alarms(&a).is_empty(), "still the same alarm");
}

#[test]
fn s2_silent_primary_gateway_switches_after_down_after_probes() {
    let mut h = H::healthy(2, "never");
    let a = h.ticks(2, &[1]);
    assert!(switches(&a).is_empty(), "two missed probes are not enough");
    let a = h.tick(&[1]);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::GatewaySilent)]);
    assert_eq!(h.alarms(&a), vec![format!("raise: {GW_PRIMARY}")]);
    assert!(
        !a.iter().any(|x| matches!(x, Action::GatewayMac { .. })),
        "the learned MAC is kept: a reply from another MAC now would be a spoof"
    );
}

#[test]
fn a_learned_mac_is_forgotten_only_after_relearn_after_of_silence() {
    let mut h = H::healthy(2, "never");
    let a = h.ticks(3, &[1]);
    assert_eq!(switches(&a).len(), 1);
    // relearn_after_ms = 1000 in the test configuration.
    let a = h.ticks(9, &[1]);
    assert!(!a.iter().any(|x| matches!(x, Action::GatewayMac { uplink: 0, .. })), "too early");
    let a = h.ticks(1, &[1]);
    assert!(a.contains(&Action::GatewayMac { group: 0, uplink: 0, mac: None, replaced: None }));
}

#[test]
fn a_forgotten_mac_is_learned_again_only_from_a_new_reply() {
    let mut h = H::healthy(2, "never");
    let a = h.ticks(13, &[1]);
    assert!(a.contains(&Action::GatewayMac { group: 0, uplink: 0, mac: None, replaced: None }));
    // The datapath still reports the old reply's MAC: that is no new evidence.
    let total = h.replies[0];
    h.core.handle_replies(0, 0, total, Some(GW_MAC));
    assert!(!h.drain().iter().any(|x| matches!(x, Action::GatewayMac { uplink: 0, .. })));
    assert_eq!(h.core.uplink(0, 0).unwrap().gateway_mac, None);
    assert_eq!(h.core.uplink(0, 0).unwrap().last_gateway_mac, Some(GW_MAC), "kept for readdressing");
    let replacement = [2, 0, 0, 0, 0xa, 9];
    h.core.handle_replies(0, 0, total + 1, Some(replacement));
    assert_eq!(
        h.drain(),
        vec![Action::GatewayMac { group: 0, uplink: 0, mac: Some(replacement), replaced: Some(GW_MAC) }]
    );
}

#[test]
fn s2_silent_standby_gateway_raises_an_alarm_only() {
    let mut h = H::healthy(2, "never");
    let a = h.ticks(3, &[0]);
    assert!(switches(&a).is_empty());
    assert_eq!(h.alarms(&a), vec![format!("raise: {GW_STANDBY}")]);
    let a = h.ticks(3, &[0, 1]);
    assert_eq!(h.alarms(&a), vec![format!("clear: {GW_STANDBY}")], "recovery clears it");
    assert!(switches(&a).is_empty());
}

#[test]
fn a_configured_gateway_mac_is_never_forgotten() {
    let text = config(2, "never");
    let mut cfg = text.clone();
    cfg.groups[0].uplinks[0].gateway_mac = Some([2, 0, 0, 0, 0, 9]);
    let mut h = H::new(2, "never");
    h.core = Core::new(&cfg, h.now);
    h.cfg = cfg;
    h.link(0, Link::Up);
    h.link(1, Link::Up);
    h.core.handle_timeout(h.now);
    let a = h.drain();
    assert_eq!(probes(&a)[0], (0, Some([2, 0, 0, 0, 0, 9])), "unicast from the start");
    let a = h.ticks(4, &[1]);
    assert!(!a.iter().any(|x| matches!(x, Action::GatewayMac { uplink: 0, .. })));
}

#[test]
fn both_down_stays_and_switches_to_the_first_that_recovers() {
    let mut h = H::healthy(2, "never");
    h.link(0, Link::Down);
    let a = h.link(1, Link::Down);
    assert!(switches(&a).is_empty(), "nowhere to go: traffic stays on the standby");
    let mut alarms = h.alarms(&a);
    alarms.sort();
    assert_eq!(alarms, vec![format!("raise: {NO_HEALTHY}"), format!("raise: {NIC_STANDBY}")]);
    // The primary's link comes back first; it becomes healthy after up_after answers.
    h.link(0, Link::Up);
    let a = h.ticks(3, &[0]);
    assert!(switches(&a).is_empty(), "gateway not proven yet");
    let a = h.tick(&[0]);
    assert_eq!(switches(&a), vec![(Some(1), 0, Reason::NicFault)]);
    let alarms = h.alarms(&a);
    assert!(alarms.contains(&format!("clear: {NO_HEALTHY}")), "{alarms:?}");
}

#[test]
fn both_gateways_silent_raise_no_healthy_uplink() {
    let mut h = H::healthy(2, "never");
    let a = h.ticks(3, &[]);
    assert_eq!(switches(&a), Vec::new());
    let alarms = h.alarms(&a);
    assert!(alarms.contains(&format!("raise: {GW_PRIMARY}")));
    assert!(alarms.contains(&format!("raise: {GW_STANDBY}")));
    assert!(alarms.contains(&format!("raise: {NO_HEALTHY}")));
    let a = h.ticks(4, &[1]);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::GatewaySilent)]);
    assert!(h.alarms(&a).contains(&format!("clear: {NO_HEALTHY}")));
}

#[test]
fn a_repaired_primary_becomes_the_standby_without_failback() {
    let mut h = H::healthy(2, "never");
    h.link(0, Link::Down);
    let a = h.link(0, Link::Up);
    assert_eq!(h.alarms(&a), vec![format!("clear: {NIC_PRIMARY}")], "the alarm clears with the link");
    let a = h.ticks(50, &[0, 1]);
    assert!(switches(&a).is_empty(), "failback = never: the standby keeps the traffic");
    assert!(h.core.uplink(0, 0).unwrap().healthy);
    assert_eq!(h.core.active(0), Some(1));
    // Now the new active fails: the repaired primary takes over again.
    let a = h.link(1, Link::Down);
    assert_eq!(switches(&a), vec![(Some(1), 0, Reason::NicFault)]);
}

#[test]
fn auto_failback_waits_for_the_hold_down() {
    let mut h = H::healthy(2, "auto");
    h.link(0, Link::Down);
    h.link(0, Link::Up);
    // The first round after the link returns sends a probe; three answers follow.
    let a = h.ticks(4, &[0, 1]);
    assert!(switches(&a).is_empty());
    let healthy_at = h.now;
    assert!(h.core.uplink(0, 0).unwrap().healthy);
    // hold_down_ms = 1000: nothing before, back at the first round after.
    let a = h.ticks(9, &[0, 1]);
    assert!(switches(&a).is_empty(), "too early");
    let a = h.ticks(1, &[0, 1]);
    assert_eq!(switches(&a), vec![(Some(1), 0, Reason::Failback)]);
    assert!(h.now >= healthy_at + Duration::from_secs(1));
}

#[test]
fn auto_failback_restarts_the_hold_down_when_health_breaks() {
    let mut h = H::healthy(2, "auto");
    h.link(0, Link::Down);
    h.link(0, Link::Up);
    h.ticks(8, &[0, 1]);
    h.link(0, Link::Down);
    h.link(0, Link::Up);
    let a = h.ticks(8, &[0, 1]);
    assert!(switches(&a).is_empty(), "the hold-down starts again");
}

#[test]
fn flapping_uplink_raises_an_alarm_and_is_not_bounced_to() {
    let mut h = H::healthy(3, "auto");
    let flap_alarm = "uplink primary (eth0) in group ext is flapping: held out of service until stable for 10 s";
    let mut all = Vec::new();
    // The primary loses and regains its link twice: four health changes.
    for _ in 0..2 {
        all.extend(h.link(0, Link::Down));
        all.extend(h.link(0, Link::Up));
        all.extend(h.ticks(4, &[0, 1, 2]));
    }
    assert!(h.alarms(&all).contains(&format!("raise: {flap_alarm}")), "{:?}", h.alarms(&all));
    assert!(h.core.uplink(0, 0).unwrap().flapping);
    // Healthy again, but flapping: no failback to it.
    let a = h.ticks(20, &[0, 1, 2]);
    assert!(switches(&a).is_empty(), "no bounce back to a flapping uplink");
    // When the active fails, the non-flapping third uplink is chosen over it.
    let a = h.link(1, Link::Down);
    assert_eq!(switches(&a), vec![(Some(1), 2, Reason::NicFault)]);
    // Stable for a whole window: the alarm clears, and failback resumes.
    let a = h.ticks(100, &[0, 2]);
    assert!(h.alarms(&a).contains(&format!("clear: {flap_alarm}")), "{:?}", h.alarms(&a));
    assert_eq!(switches(&a), vec![(Some(2), 0, Reason::Failback)]);
}

#[test]
fn a_flapping_uplink_is_still_better_than_none() {
    let mut h = H::healthy(2, "never");
    for _ in 0..2 {
        h.link(1, Link::Down);
        h.link(1, Link::Up);
        h.ticks(4, &[0, 1]);
    }
    assert!(h.core.uplink(0, 1).unwrap().flapping);
    let a = h.link(0, Link::Down);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::NicFault)]);
}

#[test]
fn more_than_two_uplinks_in_priority_order() {
    let mut h = H::healthy(4, "never");
    let a = h.link(0, Link::Down);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::NicFault)]);
    // The next one fails while the third's gateway is silent: the fourth.
    let a = h.ticks(3, &[1, 3]);
    assert!(switches(&a).is_empty());
    let a = h.link(1, Link::Absent);
    assert_eq!(switches(&a), vec![(Some(1), 3, Reason::NicFault)]);
    let a = h.ticks(4, &[2, 3]);
    assert!(switches(&a).is_empty(), "never fail back");
    let a = h.link(3, Link::Down);
    assert_eq!(switches(&a), vec![(Some(3), 2, Reason::NicFault)], "the only healthy one left");
}

#[test]
fn forced_switch_to_a_healthy_uplink() {
    let mut h = H::healthy(2, "never");
    assert_eq!(h.core.switch(0, 1, false, h.now), Ok(SwitchDone::Switched));
    assert_eq!(switches(&h.drain()), vec![(Some(0), 1, Reason::Manual)]);
    assert_eq!(h.core.switch(0, 1, false, h.now), Ok(SwitchDone::AlreadyActive));
    assert!(switches(&h.drain()).is_empty());
    let a = h.ticks(20, &[0, 1]);
    assert!(switches(&a).is_empty(), "stays where the operator put it");
}

#[test]
fn forced_switch_to_an_unhealthy_uplink_needs_force_and_holds() {
    let mut h = H::healthy(2, "never");
    h.ticks(3, &[0]);
    h.drain();
    assert_eq!(h.core.switch(0, 1, false, h.now), Err(SwitchRefused::Unhealthy("its gateway does not answer")));
    assert!(switches(&h.drain()).is_empty());
    assert_eq!(h.core.switch(0, 1, true, h.now), Ok(SwitchDone::Switched));
    assert_eq!(switches(&h.drain()), vec![(Some(0), 1, Reason::Manual)]);
    assert!(h.core.operator_hold(0));
    let a = h.ticks(10, &[0]);
    assert!(switches(&a).is_empty(), "held on the operator's choice");
    // Once it is healthy the hold ends; when it fails later, the usual rules move traffic.
    h.ticks(4, &[0, 1]);
    assert!(!h.core.operator_hold(0));
    let a = h.link(1, Link::Down);
    assert_eq!(switches(&a), vec![(Some(1), 0, Reason::NicFault)]);
    assert_eq!(h.core.switch(0, 7, false, h.now), Err(SwitchRefused::NoSuchUplink(7)));
    assert_eq!(h.core.switch(3, 0, false, h.now), Err(SwitchRefused::NoSuchGroup(3)));
}

impl H {
    /// A core restarted on `active` with `alarm` restored, then the links
    /// of the two uplinks reported; returns the actions up to the first timeout.
    fn restored(active: usize, alarm: Alarm, links: [Link; 2]) -> (Self, Vec<Action>) {
        let mut h = Self::new(2, "never");
        h.core.restore_active(0, active);
        h.core.restore_alarm(alarm);
        let mut a = h.link(0, links[0]);
        a.extend(h.link(1, links[1]));
        h.core.handle_timeout(h.now);
        a.extend(h.drain());
        (h, a)
    }
}

#[test]
fn a_restored_decision_is_kept_without_a_switchover() {
    let nic = Alarm { group: 0, uplink: Some(0), kind: AlarmKind::Replace(Part::Nic) };
    let (mut h, a) = H::restored(1, nic, [Link::Down, Link::Up]);
    assert!(switches(&a).is_empty(), "no flip on restart: {a:?}");
    assert!(!a.iter().any(|x| matches!(x, Action::RaiseAlarm(_))), "the alarm is not raised twice");
    assert_eq!(h.core.active(0), Some(1));
    let a = h.link(0, Link::Up);
    assert_eq!(a, vec![Action::ClearAlarm(nic)]);
}

#[test]
fn a_restored_gateway_alarm_waits_for_evidence() {
    let gw = Alarm { group: 0, uplink: Some(0), kind: AlarmKind::Replace(Part::Gateway) };
    let (mut h, a) = H::restored(1, gw, [Link::Up, Link::Up]);
    assert!(!a.contains(&Action::ClearAlarm(gw)), "unknown is not healthy");
    let a = h.ticks(4, &[0]);
    assert!(a.contains(&Action::ClearAlarm(gw)), "cleared once the gateway answers");
}

#[test]
fn restarted_counters_are_rebased_not_taken_as_silence_or_replies() {
    let mut h = H::healthy(2, "never");
    // Programs re-attached: the counter starts over at 0 and then counts again.
    h.replies[0] = 0;
    h.core.handle_replies(0, 0, 0, None);
    let a = h.ticks(5, &[0, 1]);
    assert!(switches(&a).is_empty() && h.alarms(&a).is_empty(), "{a:?}");
}

#[test]
fn interface_gone_is_a_nic_fault_and_its_return_clears_it() {
    let mut h = H::healthy(2, "never");
    let a = h.link(0, Link::Absent);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::NicFault)]);
    assert_eq!(h.alarms(&a), vec![format!("raise: {NIC_PRIMARY}")]);
    let a = h.link(0, Link::Up);
    assert_eq!(h.alarms(&a), vec![format!("clear: {NIC_PRIMARY}")]);
}

fn deciders(actions: &[Action]) -> Vec<Decider> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::SetActive { by, .. } => Some(by),
            _ => None,
        })
        .collect()
}

#[test]
fn a_kernel_carrier_switch_is_ratified_and_names_the_nic() {
    let mut h = H::healthy(2, "never");
    h.core.handle_kernel_switch(0, 0, 1, Fault::Carrier, h.now);
    let a = h.drain();
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::NicFault)]);
    assert_eq!(deciders(&a), vec![Decider::Kernel]);
    assert!(a.contains(&Action::MirrorToOvs { group: 0, uplink: 1 }));
    assert_eq!(h.alarms(&a), vec![format!("raise: {NIC_PRIMARY}")]);
    assert_eq!(h.core.last_switchover(0).map(|s| s.by), Some(Decider::Kernel));
    // The late netlink event says the same: nothing more happens.
    assert!(switches(&h.link(0, Link::Down)).is_empty());
    // And the carrier back: the alarm clears, traffic stays (failback never).
    let a = h.link(0, Link::Up);
    assert_eq!(h.alarms(&a), vec![format!("clear: {NIC_PRIMARY}")]);
    assert_eq!(h.core.active(0), Some(1));
}

#[test]
fn a_kernel_silence_switch_is_ratified_and_names_the_gateway() {
    let mut h = H::healthy(2, "never");
    h.core.handle_kernel_switch(0, 0, 1, Fault::Silence, h.now);
    let a = h.drain();
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::GatewaySilent)]);
    assert_eq!(h.alarms(&a), vec![format!("raise: {GW_PRIMARY}")]);
    // The primary stays down until it answers up_after probes again.
    let a = h.ticks(2, &[1]);
    assert!(switches(&a).is_empty());
    assert_eq!(h.core.uplink(0, 0).map(|v| v.gateway), Some(Gateway::Down));
}

#[test]
fn a_kernel_report_of_a_switch_the_core_already_made_changes_nothing_more() {
    let mut h = H::healthy(2, "never");
    let a = h.link(0, Link::Down);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::NicFault)]);
    h.core.handle_kernel_switch(0, 0, 1, Fault::Carrier, h.now);
    assert!(switches(&h.drain()).is_empty());
    assert_eq!(h.core.active(0), Some(1));
}

#[test]
fn the_kernel_policy_allows_the_healthy_and_prefers_the_stable() {
    let mut h = H::healthy(3, "never");
    assert_eq!(h.core.kernel_policy(0), Some(KernelPolicy { allowed: 0b111, preferred: 0b111, hold: false }));
    h.link(2, Link::Down);
    assert_eq!(h.core.kernel_policy(0).map(|p| p.allowed), Some(0b011));
    h.core.switch(0, 2, true, h.now).unwrap();
    h.drain();
    assert!(h.core.kernel_policy(0).is_some_and(|p| p.hold), "forced onto an unhealthy uplink: held");
}

/// Data-plane liveness: frames counted from uplink `u`'s gateway.
fn traffic(h: &mut H, u: usize, total: u64) {
    h.core.handle_traffic(0, u, total);
}

#[test]
fn traffic_from_the_gateway_stands_in_for_probes() {
    let mut h = H::healthy(2, "never");
    // Frames from the primary's gateway every round: no probe on it, the
    // standby (no traffic) still probed, and the primary stays healthy.
    let mut frames = 0;
    for _ in 0..10 {
        frames += 50;
        traffic(&mut h, 0, frames);
        let a = h.tick(&[1]);
        assert_eq!(probes(&a).iter().map(|p| p.0).collect::<Vec<_>>(), vec![1], "only the standby probed");
        assert!(switches(&a).is_empty());
    }
    let v = h.core.uplink(0, 0).unwrap();
    assert!(v.healthy);
    assert_eq!(v.last_proof, Some(Proof::Traffic));
    assert_eq!(h.core.uplink(0, 1).unwrap().last_proof, Some(Proof::Reply));
}

#[test]
fn a_quiet_gateway_is_probed_again_and_found_dead_in_down_after_quiet_rounds() {
    let mut h = H::healthy(2, "never");
    traffic(&mut h, 0, 100);
    h.tick(&[1]);
    // Traffic and replies stop: the first quiet round counts as one miss
    // and probes; down after `down_after` (3) rounds, counted from the
    // last round that saw traffic. (The kernel counts from the gateway's
    // last frame: the fast rule is the quicker judge here.)
    let a = h.tick(&[1]);
    assert!(probes(&a).iter().any(|p| p.0 == 0), "probed once quiet");
    assert!(switches(&a).is_empty());
    let a = h.tick(&[1]);
    assert!(switches(&a).is_empty());
    let a = h.tick(&[1]);
    assert_eq!(switches(&a), vec![(Some(0), 1, Reason::GatewaySilent)], "down on the 3rd quiet round");
    assert!(h.alarms(&a).contains(&format!("raise: {GW_PRIMARY}")));
}

#[test]
fn a_policed_gateway_answering_some_probes_stays_up_while_its_traffic_flows() {
    let mut h = H::healthy(2, "never");
    let mut frames = 0;
    for round in 0..50 {
        frames += 10;
        traffic(&mut h, 0, frames);
        // Its replies are dropped by a policer most of the time.
        let answering: &[usize] = if round % 5 == 0 { &[0, 1] } else { &[1] };
        let a = h.tick(answering);
        assert!(switches(&a).is_empty(), "round {round}: {a:?}");
    }
    assert!(h.core.uplink(0, 0).unwrap().healthy);
}

#[test]
fn without_data_plane_liveness_every_uplink_is_probed_and_traffic_proves_nothing() {
    let text = "[[group]]\nname = \"ext\"\nbridge = \"br\"\nprobe_interval_ms = 100\ndata_plane_liveness = false\n\
                [[group.uplink]]\nname = \"primary\"\ninterface = \"eth0\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\
                [[group.uplink]]\nname = \"standby\"\ninterface = \"eth1\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n";
    let cfg = config::parse(text, Path::new("test.toml")).unwrap();
    let mut h = H { core: Core::new(&cfg, Instant::now()), cfg, now: Instant::now(), replies: vec![0; 2] };
    h.link(0, Link::Up);
    h.link(1, Link::Up);
    h.core.handle_timeout(h.now);
    h.ticks(4, &[0, 1]);
    let mut frames = 0;
    let mut switched = Vec::new();
    for _ in 0..4 {
        frames += 50;
        traffic(&mut h, 0, frames);
        let a = h.tick(&[1]);
        assert!(probes(&a).iter().any(|p| p.0 == 0), "the primary is probed whatever its traffic");
        switched.extend(switches(&a));
    }
    assert_eq!(switched, vec![(Some(0), 1, Reason::GatewaySilent)], "its silence is judged by the replies alone");
}

#[test]
fn a_standby_interval_probes_the_standby_less_often() {
    let text = "[[group]]\nname = \"ext\"\nbridge = \"br\"\nprobe_interval_ms = 100\n\
                [[group.uplink]]\nname = \"primary\"\ninterface = \"eth0\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\
                [[group.uplink]]\nname = \"standby\"\ninterface = \"eth1\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\
                standby_probe_interval_ms = 250\n";
    let cfg = config::parse(text, Path::new("test.toml")).unwrap();
    assert_eq!(cfg.groups[0].uplinks[1].standby_probe_interval, Some(Duration::from_millis(300)), "rounded up");
    let mut h = H { core: Core::new(&cfg, Instant::now()), cfg, now: Instant::now(), replies: vec![0; 2] };
    h.link(0, Link::Up);
    h.link(1, Link::Up);
    h.core.handle_timeout(h.now);
    for _ in 0..12 {
        h.tick(&[0, 1]);
    }
    assert!(h.core.uplink(0, 1).unwrap().healthy);
    let a = h.ticks(30, &[0, 1]);
    let to = |u: usize| probes(&a).iter().filter(|p| p.0 == u).count();
    assert_eq!(to(0), 30);
    assert_eq!(to(1), 10, "one round in three");
}

#[test]
fn phases_delay_only_the_first_round() {
    let cfg = config(2, "never");
    let now = Instant::now();
    let mut core = Core::new(&cfg, now);
    core.set_phase(0, Duration::from_millis(40));
    assert_eq!(core.poll_timeout(), Some(now + Duration::from_millis(40)));
    core.set_phase(0, Duration::from_secs(9));
    assert_eq!(core.poll_timeout(), Some(now + Duration::from_millis(140)), "at most one interval more");
}
