//! The decision core: a pure state machine (sans-IO).
//!
//! Inputs are events with the current time passed in: link states
//! ([`Core::handle_link`]), reply counters read from the datapath
//! ([`Core::handle_replies`]), timeouts ([`Core::handle_timeout`], due at
//! [`Core::poll_timeout`]) and operator requests ([`Core::switch`]). Outputs
//! are [`Action`]s, taken with [`Core::poll_action`]: set the active uplink,
//! mirror it to OVS, raise or clear an alarm, send a probe, use a gateway MAC.
//! No tokio, aya, netlink or clock in here: every case is a plain unit test.
//!
//! The method (`../shared/docs/mission.md`):
//! - an uplink is *healthy* when its link is up and its gateway has answered
//!   `up_after` probes in a row; it is *faulty* when its link is down or gone
//!   (replace its NIC) or its gateway missed `down_after` probes in a row
//!   with the link up (replace its gateway);
//! - when the active uplink is faulty, traffic moves to the first healthy
//!   uplink in priority order; a faulty standby raises its alarm only;
//! - with no healthy uplink, traffic stays and "no healthy uplink" is raised;
//!   the first uplink to recover takes the traffic;
//! - a repaired uplink serves as a standby (`failback = "never"`), or takes
//!   the traffic back after `hold_down` of health (`"auto"`);
//! - an uplink whose health changed `flap_threshold` times within
//!   `flap_window` is *flapping*: alarm, and it is not chosen while another
//!   healthy uplink exists, nor failed back to, until it has been stable for
//!   a whole window.

use std::{
    collections::{BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use failover_common::rule::{self, Fault, Liveness, Policy};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Failback};

#[cfg(test)]
mod tests;

/// An uplink's link, as netlink reports it (or the kernel's own read of
/// the carrier, when it failed over by itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Not reported yet.
    #[default]
    Unknown,
    /// Present, administratively up, with carrier.
    Up,
    /// Present but down or without carrier.
    Down,
    /// The interface does not exist.
    Absent,
    /// The interface is there but the datapath could not be attached to
    /// it: unusable, yet nothing says its NIC is at fault.
    Detached,
}

/// An uplink's gateway, as the probes show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Gateway {
    /// Not enough probes answered or missed yet (also while the link is not up).
    #[default]
    Unknown,
    Up,
    Down,
}

/// The part an alarm asks to replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Nic,
    Gateway,
}

/// What an alarm is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// A part of an uplink must be replaced.
    Replace(Part),
    /// No uplink of the group is healthy.
    NoHealthyUplink,
    /// An uplink's health keeps changing.
    Flapping,
    /// The datapath's programs could not be attached to an uplink.
    NotAttached,
}

/// An alarm: what, in which group, about which uplink (by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    pub group: usize,
    pub uplink: Option<usize>,
    pub kind: AlarmKind,
}

/// Why the active uplink changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No active uplink was known: the first one with a link.
    #[default]
    Startup,
    /// The active uplink's NIC failed (link down or interface gone).
    NicFault,
    /// The active uplink's gateway stopped answering.
    GatewaySilent,
    /// Back to a higher-priority uplink (`failback = "auto"`).
    Failback,
    /// An operator asked for it.
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::NicFault => "nic_fault",
            Self::GatewaySilent => "gateway_silent",
            Self::Failback => "failback",
            Self::Manual => "manual",
        }
    }

    fn of(fault: Fault) -> Self {
        match fault {
            Fault::Carrier => Self::NicFault,
            Fault::Silence => Self::GatewaySilent,
        }
    }
}

/// Who made a switchover: the agent's core, or the kernel's fast rule
/// (which the core then ratified).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Decider {
    #[default]
    Agent,
    Kernel,
}

impl Decider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Kernel => "kernel",
        }
    }
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Absent => "absent",
            Self::Detached => "detached",
            Self::Unknown => "unknown",
        }
    }
}

impl Gateway {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Unknown => "unknown",
        }
    }
}

/// What the kernel's fast rule may choose from, per group (written into the
/// group's datapath state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Bit i: uplink i is healthy in the core's view.
    pub allowed: u8,
    /// Bit i: healthy and not flapping.
    pub preferred: u8,
    /// An operator holds the group where it is.
    pub hold: bool,
}

/// What the core asks the world to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make `uplink` the group's active uplink in the datapath (one map update).
    SetActive {
        group: usize,
        uplink: usize,
        previous: Option<usize>,
        reason: Reason,
        /// The kernel already did it (the datapath is there): ratified.
        by: Decider,
        /// When the decision was taken (for decision-to-map-update time).
        decided_at: Instant,
    },
    /// Mirror the group's active uplink into its OVS bridge's flows.
    MirrorToOvs {
        group: usize,
        uplink: usize,
    },
    RaiseAlarm(Alarm),
    ClearAlarm(Alarm),
    /// Send one probe out of the uplink: unicast to `gateway_mac` if known,
    /// broadcast (ARP) or solicited-node multicast (NS) otherwise.
    SendProbe {
        group: usize,
        uplink: usize,
        gateway_mac: Option<[u8; 6]>,
    },
    /// The MAC the datapath should accept replies from and readdress VM
    /// frames to (`None`: learned MAC forgotten, accept any again).
    GatewayMac {
        group: usize,
        uplink: usize,
        mac: Option<[u8; 6]>,
        /// The MAC known before, when the new one differs (a gateway
        /// replaced, or someone answering in its name).
        replaced: Option<[u8; 6]>,
    },
}

/// The last switchover of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switchover {
    pub from: Option<usize>,
    pub to: usize,
    pub reason: Reason,
    pub by: Decider,
    pub at: Instant,
}

/// Why a requested switch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchRefused {
    #[error("no group {0}")]
    NoSuchGroup(usize),
    #[error("group has no uplink {0}")]
    NoSuchUplink(usize),
    #[error("uplink is not healthy ({0}); use --force to switch anyway")]
    Unhealthy(&'static str),
}

/// What a requested switch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchDone {
    Switched,
    AlreadyActive,
}

/// An uplink as the core sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkView {
    pub link: Link,
    pub gateway: Gateway,
    pub healthy: bool,
    pub flapping: bool,
    /// Configured, or learned from replies: replies count only from it.
    pub gateway_mac: Option<[u8; 6]>,
    /// The gateway MAC last known, kept when a learned one is forgotten
    /// (VMs may still address frames to it).
    pub last_gateway_mac: Option<[u8; 6]>,
    /// Valid replies counted by the datapath.
    pub replies: u64,
    /// Frames from the gateway counted by the datapath.
    pub gateway_frames: u64,
    /// What proved the gateway alive last (None: nothing yet).
    pub last_proof: Option<Proof>,
}

/// What proved a gateway alive in a probe round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// A valid reply to a probe.
    Reply,
    /// A frame from the gateway (data-plane liveness): no probe was needed.
    Traffic,
}

impl Proof {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reply => "reply",
            Self::Traffic => "traffic",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Params {
    interval: Duration,
    down_after: u32,
    up_after: u32,
    failback: Failback,
    hold_down: Duration,
    flap_threshold: u32,
    flap_window: Duration,
    relearn_after: Duration,
    data_plane_liveness: bool,
}

#[derive(Debug)]
struct UplinkFsm {
    link: Link,
    gateway: Gateway,
    answered: u32,
    unanswered: u32,
    replies: u64,
    /// The reply count at the last round (None: no round yet).
    replies_at_probe: Option<u64>,
    /// Frames from the gateway counted by the datapath, and their count at
    /// the last round.
    traffic: u64,
    traffic_at_round: u64,
    last_proof: Option<Proof>,
    /// Judged and probed every this many rounds while not the active
    /// uplink (`standby_probe_interval_ms`); 1: every round.
    standby_every: u32,
    configured_mac: Option<[u8; 6]>,
    learned_mac: Option<[u8; 6]>,
    last_mac: Option<[u8; 6]>,
    /// Since when the gateway has been down.
    down_since: Option<Instant>,
    was_healthy: bool,
    seen_healthy: bool,
    healthy_since: Option<Instant>,
    health_changes: VecDeque<Instant>,
    flapping: bool,
}

impl UplinkFsm {
    fn healthy(&self) -> bool {
        self.link == Link::Up && self.gateway == Gateway::Up
    }

    fn faulty(&self) -> bool {
        matches!(self.link, Link::Down | Link::Absent | Link::Detached)
            || (self.link == Link::Up && self.gateway == Gateway::Down)
    }

    fn gateway_mac(&self) -> Option<[u8; 6]> {
        self.configured_mac.or(self.learned_mac)
    }

    fn unhealthy_because(&self) -> &'static str {
        match (self.link, self.gateway) {
            (Link::Absent, _) => "its interface is gone",
            (Link::Down, _) => "its link is down",
            (Link::Detached, _) => "the datapath is not attached to it",
            (Link::Unknown, _) => "its link state is not known yet",
            (Link::Up, Gateway::Down) => "its gateway does not answer",
            (Link::Up, Gateway::Unknown) => "its gateway has not answered enough probes yet",
            (Link::Up, Gateway::Up) => "healthy",
        }
    }
}

#[derive(Debug)]
struct GroupFsm {
    params: Params,
    uplinks: Vec<UplinkFsm>,
    active: Option<usize>,
    /// A forced switch to an unhealthy uplink holds traffic there until it is healthy.
    operator_hold: bool,
    next_probe: Instant,
    /// Probe rounds so far (the standbys' cadence counts in them).
    rounds: u64,
    last_switch: Option<Switchover>,
}

/// The decision core of all groups.
#[derive(Debug)]
pub struct Core {
    groups: Vec<GroupFsm>,
    alarms: BTreeSet<Alarm>,
    actions: VecDeque<Action>,
}

impl Core {
    /// A core for `config`; the first probes are due at `now`.
    pub fn new(config: &Config, now: Instant) -> Self {
        let groups = config
            .groups
            .iter()
            .map(|g| GroupFsm {
                params: Params {
                    interval: g.probe_interval,
                    down_after: g.down_after,
                    up_after: g.up_after,
                    failback: g.failback,
                    hold_down: g.hold_down,
                    flap_threshold: g.flap_threshold,
                    flap_window: g.flap_window,
                    relearn_after: g.relearn_after,
                    data_plane_liveness: g.data_plane_liveness,
                },
                uplinks: g
                    .uplinks
                    .iter()
                    .map(|u| UplinkFsm {
                        link: Link::Unknown,
                        gateway: Gateway::Unknown,
                        answered: 0,
                        unanswered: 0,
                        replies: 0,
                        replies_at_probe: None,
                        traffic: 0,
                        traffic_at_round: 0,
                        last_proof: None,
                        standby_every: u.standby_probe_interval.map_or(1, |s| {
                            u32::try_from(s.as_millis().div_ceil(g.probe_interval.as_millis().max(1)))
                                .unwrap_or(u32::MAX)
                                .max(1)
                        }),
                        configured_mac: u.gateway_mac,
                        learned_mac: None,
                        last_mac: u.gateway_mac,
                        down_since: None,
                        was_healthy: false,
                        seen_healthy: false,
                        healthy_since: None,
                        health_changes: VecDeque::new(),
                        flapping: false,
                    })
                    .collect(),
                active: None,
                operator_hold: false,
                next_probe: now,
                rounds: 0,
                last_switch: None,
            })
            .collect();
        Self { groups, alarms: BTreeSet::new(), actions: VecDeque::new() }
    }

    /// Takes over a group's active uplink from an earlier run (persisted, or
    /// read back from the datapath): no switchover, no action.
    pub fn restore_active(&mut self, group: usize, uplink: usize) {
        if let Some(g) = self.groups.get_mut(group)
            && uplink < g.uplinks.len()
        {
            g.active = Some(uplink);
        }
    }

    /// Takes over an alarm raised by an earlier run: it is not raised again,
    /// and is cleared when its cause is gone.
    pub fn restore_alarm(&mut self, alarm: Alarm) {
        if self.groups.get(alarm.group).is_some_and(|g| alarm.uplink.is_none_or(|u| u < g.uplinks.len())) {
            self.alarms.insert(alarm);
        }
    }

    /// The link of an uplink changed (or was reported for the first time).
    pub fn handle_link(&mut self, group: usize, uplink: usize, link: Link, now: Instant) {
        let Some(u) = self.groups.get_mut(group).and_then(|g| g.uplinks.get_mut(uplink)) else {
            return;
        };
        if u.link == link {
            return;
        }
        u.link = link;
        if link != Link::Up {
            // Nothing can be learned about the gateway through a dead link.
            u.gateway = Gateway::Unknown;
            u.answered = 0;
            u.unanswered = 0;
            u.replies_at_probe = None;
        }
        self.decide(group, now);
    }

    /// The kernel moved the group from `from` to `to` by itself, because of
    /// `fault` (its fast rule, which this core shares): ratified. What the
    /// kernel saw is taken as a fact about `from` (its carrier is lost, or
    /// its gateway silent), the active uplink follows, and the usual rules
    /// and alarms apply from there.
    pub fn handle_kernel_switch(&mut self, group: usize, from: usize, to: usize, fault: Fault, now: Instant) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if from >= g.uplinks.len() || to >= g.uplinks.len() {
            return;
        }
        let down_after = g.params.down_after;
        let u = &mut g.uplinks[from];
        match fault {
            Fault::Carrier if u.link == Link::Up || u.link == Link::Unknown => {
                u.link = Link::Down;
                u.gateway = Gateway::Unknown;
                u.answered = 0;
                u.unanswered = 0;
                u.replies_at_probe = None;
            }
            Fault::Silence if u.link == Link::Up && u.gateway != Gateway::Down => {
                u.gateway = Gateway::Down;
                u.down_since = Some(now);
                u.answered = 0;
                u.unanswered = u.unanswered.max(down_after);
            }
            _ => {}
        }
        if g.active == Some(from) {
            self.set_active_by(group, to, Reason::of(fault), Decider::Kernel, now);
        }
        self.decide(group, now);
    }

    /// What the kernel's fast rule may choose from in a group.
    pub fn kernel_policy(&self, group: usize) -> Option<KernelPolicy> {
        let g = self.groups.get(group)?;
        let n = g.uplinks.len();
        Some(KernelPolicy {
            allowed: rule::mask(n, |i| g.uplinks[i].healthy()),
            preferred: rule::mask(n, |i| g.uplinks[i].healthy() && !g.uplinks[i].flapping),
            hold: g.operator_hold,
        })
    }

    /// The datapath's counters of an uplink: `total` valid replies so far,
    /// the last one from `mac`.
    pub fn handle_replies(&mut self, group: usize, uplink: usize, total: u64, mac: Option<[u8; 6]>) {
        let Some(u) = self.groups.get_mut(group).and_then(|g| g.uplinks.get_mut(uplink)) else {
            return;
        };
        if total < u.replies {
            // The counters started over (programs attached anew): rebase.
            u.replies_at_probe = u.replies_at_probe.map(|_| total);
        }
        // `mac` is the sender of the newest reply: learn it only from a reply
        // newer than what was seen (not from the one before a forget).
        let fresh = total > u.replies;
        u.replies = total;
        if u.configured_mac.is_none()
            && u.learned_mac.is_none()
            && fresh
            && let Some(mac) = mac
        {
            let replaced = u.last_mac.filter(|old| *old != mac);
            u.learned_mac = Some(mac);
            u.last_mac = Some(mac);
            self.actions.push_back(Action::GatewayMac { group, uplink, mac: Some(mac), replaced });
        }
    }

    /// The datapath's count of frames from an uplink's gateway (`total` so
    /// far): data-plane liveness, judged with the replies each round.
    pub fn handle_traffic(&mut self, group: usize, uplink: usize, total: u64) {
        let Some(u) = self.groups.get_mut(group).and_then(|g| g.uplinks.get_mut(uplink)) else {
            return;
        };
        if total < u.traffic {
            u.traffic_at_round = total; // counters started over: rebase
        }
        u.traffic = total;
    }

    /// Delays group `group`'s first probe round by `offset` (at most its
    /// interval): hosts started together then do not probe in step.
    pub fn set_phase(&mut self, group: usize, offset: Duration) {
        if let Some(g) = self.groups.get_mut(group) {
            g.next_probe += offset.min(g.params.interval);
        }
    }

    /// The groups whose probe round is due at `now` (the driver reads only
    /// their counters before [`Core::handle_timeout`]).
    pub fn due_groups(&self, now: Instant) -> Vec<usize> {
        self.groups.iter().enumerate().filter(|(_, g)| g.next_probe <= now).map(|(i, _)| i).collect()
    }

    /// When [`Core::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.groups.iter().map(|g| g.next_probe).min()
    }

    /// Runs what is due at `now`: a probe round for each group whose probes
    /// are due (judging the previous round, sending the next), then decisions.
    pub fn handle_timeout(&mut self, now: Instant) {
        for group in 0..self.groups.len() {
            let g = &mut self.groups[group];
            if now >= g.next_probe {
                let next = g.next_probe + g.params.interval;
                g.next_probe = if next > now { next } else { now + g.params.interval };
                self.probe_round(group, now);
            }
            self.decide(group, now);
        }
    }

    /// An operator's request to make `uplink` active. Refused for an
    /// unhealthy uplink unless `force`; forced onto an unhealthy uplink, the
    /// group stays there until that uplink is healthy (then the usual rules
    /// apply again).
    pub fn switch(
        &mut self,
        group: usize,
        uplink: usize,
        force: bool,
        now: Instant,
    ) -> Result<SwitchDone, SwitchRefused> {
        let g = self.groups.get_mut(group).ok_or(SwitchRefused::NoSuchGroup(group))?;
        let u = g.uplinks.get(uplink).ok_or(SwitchRefused::NoSuchUplink(uplink))?;
        let healthy = u.healthy();
        if !healthy && !force {
            return Err(SwitchRefused::Unhealthy(u.unhealthy_because()));
        }
        if g.active == Some(uplink) {
            g.operator_hold = !healthy;
            return Ok(SwitchDone::AlreadyActive);
        }
        g.operator_hold = !healthy;
        self.set_active(group, uplink, Reason::Manual, now);
        self.sync_alarms(group);
        Ok(SwitchDone::Switched)
    }

    /// The next action to carry out, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The active uplink of a group.
    pub fn active(&self, group: usize) -> Option<usize> {
        self.groups.get(group)?.active
    }

    /// Whether an operator holds the group on an unhealthy uplink.
    pub fn operator_hold(&self, group: usize) -> bool {
        self.groups.get(group).is_some_and(|g| g.operator_hold)
    }

    /// The last switchover of a group.
    pub fn last_switchover(&self, group: usize) -> Option<Switchover> {
        self.groups.get(group)?.last_switch
    }

    /// An uplink's state.
    pub fn uplink(&self, group: usize, uplink: usize) -> Option<UplinkView> {
        let u = self.groups.get(group)?.uplinks.get(uplink)?;
        Some(UplinkView {
            link: u.link,
            gateway: u.gateway,
            healthy: u.healthy(),
            flapping: u.flapping,
            gateway_mac: u.gateway_mac(),
            last_gateway_mac: u.last_mac,
            replies: u.replies,
            gateway_frames: u.traffic,
            last_proof: u.last_proof,
        })
    }

    /// The alarms raised now.
    pub fn alarms(&self) -> impl Iterator<Item = &Alarm> {
        self.alarms.iter()
    }

    fn probe_round(&mut self, group: usize, now: Instant) {
        let g = &mut self.groups[group];
        let params = g.params;
        let round = g.rounds;
        g.rounds += 1;
        let active = g.active;
        for (index, u) in g.uplinks.iter_mut().enumerate() {
            // A gateway down for `relearn_after` may have been replaced (a
            // new MAC): its learned MAC is forgotten and any is accepted
            // again. Not sooner: until then a reply from another MAC is a
            // spoof and must not keep a dead gateway alive. (A configured
            // MAC is the operator's and stays.)
            if u.gateway == Gateway::Down
                && params.relearn_after > Duration::ZERO
                && u.down_since.is_some_and(|t| t + params.relearn_after <= now)
                && u.learned_mac.take().is_some()
            {
                self.actions.push_back(Action::GatewayMac { group, uplink: index, mac: None, replaced: None });
            }
            if u.link != Link::Up {
                continue;
            }
            // A standby with a cadence of its own is judged and probed on
            // every `standby_every`-th round only.
            if active.is_some_and(|a| a != index)
                && u.standby_every > 1
                && !round.is_multiple_of(u64::from(u.standby_every))
            {
                continue;
            }
            // Frames from the gateway since the last round prove it alive
            // as a reply does (and then no probe is needed).
            let traffic = params.data_plane_liveness && u.traffic > u.traffic_at_round;
            u.traffic_at_round = u.traffic;
            if let Some(base) = u.replies_at_probe {
                let replied = u.replies > base;
                if replied || traffic {
                    u.last_proof = Some(if replied { Proof::Reply } else { Proof::Traffic });
                    u.answered = u.answered.saturating_add(1);
                    u.unanswered = 0;
                    if u.gateway != Gateway::Up && u.answered >= params.up_after {
                        u.gateway = Gateway::Up;
                        u.down_since = None;
                    }
                } else {
                    u.unanswered = u.unanswered.saturating_add(1);
                    u.answered = 0;
                    if u.gateway != Gateway::Down && u.unanswered >= params.down_after {
                        u.gateway = Gateway::Down;
                        u.down_since = Some(now);
                    }
                }
            }
            u.replies_at_probe = Some(u.replies);
            if traffic {
                continue; // alive by its traffic: no probe this round
            }
            self.actions.push_back(Action::SendProbe { group, uplink: index, gateway_mac: u.gateway_mac() });
        }
    }

    /// Health bookkeeping, then the switchover rules, then the alarms.
    fn decide(&mut self, group: usize, now: Instant) {
        let g = &mut self.groups[group];
        let params = g.params;
        for u in &mut g.uplinks {
            while u.health_changes.front().is_some_and(|&t| t + params.flap_window <= now) {
                u.health_changes.pop_front();
            }
            let healthy = u.healthy();
            if healthy != u.was_healthy {
                u.was_healthy = healthy;
                u.healthy_since = healthy.then_some(now);
                // Coming up the first time is not a change of health.
                if !healthy || u.seen_healthy {
                    u.health_changes.push_back(now);
                }
                u.seen_healthy |= healthy;
                if u.health_changes.len() >= params.flap_threshold as usize {
                    u.flapping = true;
                }
            } else if u.flapping && u.health_changes.is_empty() {
                u.flapping = false; // stable for a whole window
            }
        }

        if let Some((target, reason)) = Self::rule(g, now) {
            self.set_active(group, target, reason, now);
        }
        self.sync_alarms(group);
    }

    /// The switchover rules: where the group's traffic should go now, if
    /// elsewhere than it is.
    fn rule(g: &mut GroupFsm, now: Instant) -> Option<(usize, Reason)> {
        let Some(active) = g.active else {
            // Nothing known from an earlier run: once every link is known,
            // the first uplink with a link (gateways are judged from there on).
            if g.uplinks.iter().any(|u| u.link == Link::Unknown) {
                return None;
            }
            let first_up = g.uplinks.iter().position(|u| u.link == Link::Up).unwrap_or(0);
            return Some((first_up, Reason::Startup));
        };
        let current = &g.uplinks[active];
        if g.operator_hold {
            g.operator_hold = !current.healthy();
            return None;
        }
        // Off a faulty active uplink: the rule the kernel runs too.
        let n = g.uplinks.len();
        let policy = Policy {
            count: n,
            allowed: rule::mask(n, |i| g.uplinks[i].healthy()),
            preferred: rule::mask(n, |i| g.uplinks[i].healthy() && !g.uplinks[i].flapping),
            hold: false,
        };
        if current.faulty() {
            return rule::fail_over(&policy, active, &CoreLiveness(&g.uplinks)).map(|(t, f)| (t, Reason::of(f)));
        }
        if g.params.failback == Failback::Auto && current.healthy() {
            let hold_down = g.params.hold_down;
            return g.uplinks[..active]
                .iter()
                .position(|u| u.healthy() && !u.flapping && u.healthy_since.is_some_and(|t| t + hold_down <= now))
                .map(|t| (t, Reason::Failback));
        }
        None
    }

    fn set_active(&mut self, group: usize, uplink: usize, reason: Reason, now: Instant) {
        self.set_active_by(group, uplink, reason, Decider::Agent, now);
    }

    fn set_active_by(&mut self, group: usize, uplink: usize, reason: Reason, by: Decider, now: Instant) {
        let g = &mut self.groups[group];
        let previous = g.active;
        g.active = Some(uplink);
        g.last_switch = Some(Switchover { from: previous, to: uplink, reason, by, at: now });
        self.actions.push_back(Action::SetActive { group, uplink, previous, reason, by, decided_at: now });
        self.actions.push_back(Action::MirrorToOvs { group, uplink });
    }

    /// Raises and clears the group's alarms to match its state.
    fn sync_alarms(&mut self, group: usize) {
        let g = &self.groups[group];
        let raised = |a: &Alarm| self.alarms.contains(a);
        let mut want = BTreeSet::new();
        for (index, u) in g.uplinks.iter().enumerate() {
            let alarm = |kind| Alarm { group, uplink: Some(index), kind };
            if matches!(u.link, Link::Down | Link::Absent) {
                want.insert(alarm(AlarmKind::Replace(Part::Nic)));
            }
            if u.link == Link::Detached {
                want.insert(alarm(AlarmKind::NotAttached));
            }
            let gw = alarm(AlarmKind::Replace(Part::Gateway));
            // An unknown gateway keeps an alarm it had (after a restart, say).
            if u.link == Link::Up && (u.gateway == Gateway::Down || (u.gateway == Gateway::Unknown && raised(&gw))) {
                want.insert(gw);
            }
            if u.flapping {
                want.insert(alarm(AlarmKind::Flapping));
            }
        }
        let none_healthy = !g.uplinks.iter().any(UplinkFsm::healthy);
        let no_healthy = Alarm { group, uplink: None, kind: AlarmKind::NoHealthyUplink };
        let active_faulty = g.active.is_some_and(|a| g.uplinks[a].faulty());
        if none_healthy && (active_faulty || raised(&no_healthy)) {
            want.insert(no_healthy);
        }
        let have: Vec<Alarm> = self.alarms.iter().filter(|a| a.group == group).copied().collect();
        for a in &have {
            if !want.contains(a) {
                self.alarms.remove(a);
                self.actions.push_back(Action::ClearAlarm(*a));
            }
        }
        for a in want {
            if self.alarms.insert(a) {
                self.actions.push_back(Action::RaiseAlarm(a));
            }
        }
    }
}

/// The core's view of its uplinks, for the shared rule: faulty is a lost
/// link (NIC) or, with the link up, a gateway found down.
struct CoreLiveness<'a>(&'a [UplinkFsm]);

impl Liveness for CoreLiveness<'_> {
    fn fault(&self, i: usize) -> Option<Fault> {
        let u = self.0.get(i)?;
        if !u.faulty() {
            None
        } else if u.link == Link::Up {
            Some(Fault::Silence)
        } else {
            Some(Fault::Carrier)
        }
    }
}

/// The operator-facing text of an alarm.
pub fn alarm_message(config: &Config, alarm: &Alarm) -> String {
    let group = &config.groups[alarm.group];
    let uplink = alarm.uplink.map(|u| &group.uplinks[u]);
    match (alarm.kind, uplink) {
        (AlarmKind::Replace(Part::Nic), Some(u)) => {
            format!("replace NIC of uplink {} ({}) in group {}", u.name, u.interface, group.name)
        }
        (AlarmKind::Replace(Part::Gateway), Some(u)) => {
            format!("replace gateway of uplink {} ({} via {}) in group {}", u.name, u.gateway, u.interface, group.name)
        }
        (AlarmKind::Flapping, Some(u)) => format!(
            "uplink {} ({}) in group {} is flapping: held out of service until stable for {} s",
            u.name,
            u.interface,
            group.name,
            group.flap_window.as_secs()
        ),
        (AlarmKind::NoHealthyUplink, _) => {
            format!("no healthy uplink in group {}: traffic stays where it is", group.name)
        }
        (AlarmKind::NotAttached, Some(u)) => format!(
            "datapath not attached on {} (uplink {} in group {}; not a NIC fault)",
            u.interface, u.name, group.name
        ),
        (kind, None) => format!("{kind:?} in group {}", group.name),
    }
}
