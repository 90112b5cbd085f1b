//! The driver: wires the pure core ([`crate::failover`]) to the world. The
//! only code that touches tokio; it reaches the datapath, netlink, probe
//! sockets, control socket and state file through their own modules.
//!
//! One loop on one thread: a timer (probe rounds), link events, control
//! requests and signals go in; the core's actions come out and are carried
//! out in order. The datapath flips first (one map update), the rest follows.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use failover_common::{
    FAMILY_IPV4, FAMILY_IPV6, GROUP_ACTIVE_MAC_KNOWN, GROUP_REDIRECT_INACTIVE, GroupState, MAX_GROUP_UPLINKS,
    UPLINK_GATEWAY_MAC_KNOWN, UplinkConfig,
};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

mod ovs_sync;

use ovs_sync::{BridgeAlarm, JobDone, OvsSync, run_job};

use crate::{
    config::{Config, format_mac},
    control::{
        self, AlarmStatus, Event, GroupStatus, Incoming, Request, Response, Status, SwitchoverStatus, UplinkStatus,
    },
    datapath::{AttachOutcome, Counters, Datapath, DatapathOptions, EbpfDatapath},
    failover::{Action, Alarm, AlarmKind, Core, Gateway, Link, Part, SwitchDone, alarm_message},
    link::{self, LinkEvent, LinkState},
    metrics::Metrics,
    ovs::{GroupFlows, OvsCli, openflow},
    probe::{PacketSockets, ProbeSpec, ProbeTransport, probe_frame},
    state::{self, PersistedAlarm, State},
};

/// How many events `failover-agent events` can look back on.
const EVENT_HISTORY: usize = 1000;
/// How many switchover durations are kept (for the metrics).
const DURATION_HISTORY: usize = 1000;

/// What the driver keeps about one uplink.
#[derive(Debug, Default)]
struct UplinkRt {
    slot: u32,
    ifindex: Option<u32>,
    mac: Option<[u8; 6]>,
    attached: bool,
    probes_sent: u64,
    probe_failing: bool,
    counters: Counters,
    /// `CLOCK_MONOTONIC` time the last probe was sent (for the RTT).
    last_probe_mono: Option<Duration>,
}

/// Now on `CLOCK_MONOTONIC`, the clock of the datapath's reply times.
fn monotonic() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Duration::new(ts.tv_sec.unsigned_abs(), ts.tv_nsec.unsigned_abs() as u32)
}

/// The agent: core plus the world it acts on.
pub struct Agent<D: Datapath, P: ProbeTransport> {
    config: Config,
    core: Core,
    dp: D,
    probes: P,
    rt: Vec<Vec<UplinkRt>>,
    events: VecDeque<Event>,
    alarm_since: HashMap<Alarm, u64>,
    last_duration: Vec<Option<Duration>>,
    /// Decision-to-map-update times of every switchover (newest last).
    pub switch_durations: VecDeque<Duration>,
    clock: (Instant, SystemTime),
    dirty: bool,
    /// The OVS side (None when `ovs_flows = false`).
    ovs: Option<OvsSync>,
    ovs_alarm_since: HashMap<String, u64>,
    pub metrics: Metrics,
    /// When the pins are next checked (someone may remove them by hand).
    next_pin_check: Instant,
    /// New events, for `events --follow`.
    pub events_tx: tokio::sync::broadcast::Sender<Event>,
    /// Where the metrics endpoint listens, once bound.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn alarm_kind(kind: AlarmKind) -> &'static str {
    match kind {
        AlarmKind::Replace(Part::Nic) => "nic",
        AlarmKind::Replace(Part::Gateway) => "gateway",
        AlarmKind::NoHealthyUplink => "no_healthy_uplink",
        AlarmKind::Flapping => "flapping",
    }
}

fn alarm_kind_from(s: &str) -> Option<AlarmKind> {
    Some(match s {
        "nic" => AlarmKind::Replace(Part::Nic),
        "gateway" => AlarmKind::Replace(Part::Gateway),
        "no_healthy_uplink" => AlarmKind::NoHealthyUplink,
        "flapping" => AlarmKind::Flapping,
        _ => return None,
    })
}

fn ovs_alarm_message(bridge: &str) -> String {
    format!("OVS bridge {bridge} does not answer: the datapath keeps steering; the agent's rules return when it does")
}

fn link_str(l: Link) -> &'static str {
    match l {
        Link::Up => "up",
        Link::Down => "down",
        Link::Absent => "absent",
        Link::Unknown => "unknown",
    }
}

fn gateway_str(g: Gateway) -> &'static str {
    match g {
        Gateway::Up => "up",
        Gateway::Down => "down",
        Gateway::Unknown => "unknown",
    }
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        IpAddr::V6(a) => a.octets(),
    }
}

impl<D: Datapath, P: ProbeTransport> Agent<D, P> {
    pub fn new(config: Config, dp: D, probes: P, now: Instant) -> Self {
        let mut slot = 0;
        let rt = config
            .groups
            .iter()
            .map(|g| {
                g.uplinks
                    .iter()
                    .map(|_| {
                        slot += 1;
                        UplinkRt { slot: slot - 1, ..UplinkRt::default() }
                    })
                    .collect()
            })
            .collect();
        let core = Core::new(&config, now);
        let groups = config.groups.len();
        let ovs = config.agent.ovs_flows.then(|| {
            let bridges: std::collections::BTreeSet<String> = config.groups.iter().map(|g| g.bridge.clone()).collect();
            OvsSync::new(groups, bridges, now)
        });
        Self {
            config,
            core,
            dp,
            probes,
            rt,
            events: VecDeque::new(),
            alarm_since: HashMap::new(),
            last_duration: vec![None; groups],
            switch_durations: VecDeque::new(),
            clock: (now, SystemTime::now()),
            dirty: false,
            ovs,
            ovs_alarm_since: HashMap::new(),
            metrics: {
                let m = Metrics::new();
                m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                m
            },
            metrics_addr: None,
            next_pin_check: now,
            events_tx: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Sets the gauges from the current state.
    pub fn refresh_metrics(&self) {
        let m = &self.metrics;
        for (g, group) in self.config.groups.iter().enumerate() {
            let active = self.core.active(g);
            let mut flapping = false;
            for (u, uplink) in group.uplinks.iter().enumerate() {
                let labels = [group.name.as_str(), uplink.name.as_str()];
                let view = self.core.uplink(g, u);
                m.active_uplink.with_label_values(&labels).set(i64::from(active == Some(u)));
                m.uplink_carrier_up.with_label_values(&labels).set(i64::from(view.is_some_and(|v| v.link == Link::Up)));
                m.gateway_reachable
                    .with_label_values(&labels)
                    .set(i64::from(view.is_some_and(|v| v.gateway == Gateway::Up)));
                flapping |= view.is_some_and(|v| v.flapping);
                for (part, kind) in [("nic", Part::Nic), ("gateway", Part::Gateway)] {
                    let raised = self
                        .core
                        .alarms()
                        .any(|a| a.group == g && a.uplink == Some(u) && a.kind == AlarmKind::Replace(kind));
                    m.alarm
                        .with_label_values(&[group.name.as_str(), uplink.name.as_str(), part])
                        .set(i64::from(raised));
                }
            }
            let no_healthy = self.core.alarms().any(|a| a.group == g && a.kind == AlarmKind::NoHealthyUplink);
            m.no_healthy_uplink.with_label_values(&[group.name.as_str()]).set(i64::from(no_healthy));
            m.flapping.with_label_values(&[group.name.as_str()]).set(i64::from(flapping));
        }
        let mut all_reachable = true;
        if let Some(ovs) = &self.ovs {
            for group in &self.config.groups {
                let reachable = ovs.bridge_reachable(&group.bridge);
                all_reachable &= reachable;
                m.ovs_bridge_reachable.with_label_values(&[group.bridge.as_str()]).set(i64::from(reachable));
            }
        }
        m.ovs_reachable.set(i64::from(all_reachable));
    }

    /// What group `g`'s OpenFlow rules should say now (None: nothing decided).
    fn group_flows(&self, g: usize) -> Option<GroupFlows> {
        let group = &self.config.groups[g];
        let active = self.core.active(g)?;
        let macs: Vec<[u8; 6]> =
            (0..group.uplinks.len()).filter_map(|u| self.core.uplink(g, u).and_then(|v| v.last_gateway_mac)).collect();
        Some(GroupFlows {
            group: g as u32,
            bridge: group.bridge.clone(),
            uplinks: group.uplinks.iter().map(|u| u.interface.clone()).collect(),
            active,
            gateway_macs: macs,
            active_mac: self.core.uplink(g, active).and_then(|v| v.last_gateway_mac),
        })
    }

    /// Asks for group `g`'s rules to follow its current state.
    fn ovs_desire(&mut self, g: usize) {
        if let Some(flows) = self.group_flows(g)
            && let Some(ovs) = &mut self.ovs
        {
            ovs.desire(g, flows);
        }
    }

    /// The next OVS job due, if any.
    pub fn ovs_job(&mut self, now: Instant) -> Option<ovs_sync::Job> {
        self.ovs.as_mut()?.next_job(now)
    }

    /// An OVS job finished.
    pub fn ovs_done(&mut self, done: &JobDone, now: Instant) {
        if let Some(ovs) = &mut self.ovs {
            ovs.done(done, now);
        }
        // Rules in place: the datapath stops redirecting (one map update).
        self.sync_group(done.group);
        if let Ok(true) = done.result {
            let g = done.group;
            let msg = format!(
                "OVS rules on {} follow {} ({} ms)",
                done.flows.bridge,
                self.config.groups[g].uplinks[done.flows.active].name,
                done.took.as_millis()
            );
            info!(group = %self.config.groups[g].name, bridge = %done.flows.bridge, took_ms = done.took.as_millis() as u64, "OVS rules installed");
            self.event("ovs", Some(g), None, msg);
        }
    }

    /// A bridge came or went; raises or clears "OVS unreachable" when due.
    pub fn ovs_reachability(&mut self, bridge: &str, up: bool, now: Instant) {
        if let Some(ovs) = &mut self.ovs {
            ovs.reachability(bridge, up, now);
        }
        self.ovs_alarms(now);
    }

    fn ovs_alarms(&mut self, now: Instant) {
        let Some(ovs) = &mut self.ovs else {
            return;
        };
        for change in ovs.alarms(now) {
            match change {
                BridgeAlarm::Raise(bridge) => {
                    let message = ovs_alarm_message(&bridge);
                    warn!(target: "failover_agent::alarm", bridge = %bridge, kind = "ovs_unreachable", state = "raised", "{message}");
                    self.ovs_alarm_since.insert(bridge, unix_ms(SystemTime::now()));
                    self.event("alarm_raised", None, None, message);
                }
                BridgeAlarm::Clear(bridge) => {
                    let message = ovs_alarm_message(&bridge);
                    info!(target: "failover_agent::alarm", bridge = %bridge, kind = "ovs_unreachable", state = "cleared", "{message}");
                    self.ovs_alarm_since.remove(&bridge);
                    self.event("alarm_cleared", None, None, message);
                }
            }
        }
    }

    /// When the OVS side next needs attention.
    pub fn ovs_deadline(&self, now: Instant) -> Option<Instant> {
        self.ovs.as_ref()?.next_deadline(now)
    }

    fn at_unix_ms(&self, t: Instant) -> u64 {
        let (base_i, base_s) = self.clock;
        match t.checked_duration_since(base_i) {
            Some(d) => unix_ms(base_s + d),
            None => unix_ms(base_s - base_i.duration_since(t)),
        }
    }

    fn find(&self, ifname: &str) -> Option<(usize, usize)> {
        self.config
            .groups
            .iter()
            .enumerate()
            .find_map(|(g, group)| group.uplinks.iter().position(|u| u.interface == ifname).map(|u| (g, u)))
    }

    fn event(&mut self, kind: &str, group: Option<usize>, uplink: Option<usize>, message: String) {
        let group_cfg = group.map(|g| &self.config.groups[g]);
        let event = Event {
            at_unix_ms: unix_ms(SystemTime::now()),
            kind: kind.to_string(),
            group: group_cfg.map(|g| g.name.clone()),
            uplink: uplink.and_then(|u| group_cfg.map(|g| g.uplinks[u].name.clone())),
            message,
        };
        let _ = self.events_tx.send(event.clone());
        self.events.push_back(event);
        while self.events.len() > EVENT_HISTORY {
            self.events.pop_front();
        }
    }

    /// Records interface indexes and MACs from the initial dump, before any
    /// decision (restoring needs them).
    pub fn learn_interfaces(&mut self, dump: &[LinkEvent]) {
        for ev in dump {
            if let Some((g, u)) = self.find(&ev.ifname) {
                self.rt[g][u].ifindex = Some(ev.ifindex);
                self.rt[g][u].mac = ev.mac;
            }
        }
    }

    /// Takes over the last run's decisions: the datapath's own state first
    /// (it is what traffic follows), the state file second; and its alarms.
    pub fn restore(&mut self, saved: Option<&State>) {
        for g in 0..self.config.groups.len() {
            let from_dp = match self.dp.group(g as u32) {
                Ok(Some(state)) if state.active_ifindex != 0 => {
                    self.rt[g].iter().position(|u| u.ifindex == Some(state.active_ifindex))
                }
                Ok(_) => None,
                Err(e) => {
                    warn!(error = %anyhow::Error::from(e), "reading the pinned group state");
                    None
                }
            };
            let group = &self.config.groups[g];
            let from_file = saved
                .and_then(|s| s.active.get(&group.name))
                .and_then(|name| group.uplinks.iter().position(|u| &u.name == name));
            if let Some(u) = from_dp.or(from_file) {
                info!(group = %group.name, active = %group.uplinks[u].name, source = if from_dp.is_some() { "datapath" } else { "state file" }, "taking over the last decision");
                self.core.restore_active(g, u);
            }
        }
        for a in saved.map(|s| s.alarms.as_slice()).unwrap_or_default() {
            let Some(g) = self.config.groups.iter().position(|g| g.name == a.group) else {
                continue;
            };
            let uplink = match &a.uplink {
                Some(name) => match self.config.groups[g].uplinks.iter().position(|u| &u.name == name) {
                    Some(u) => Some(u),
                    None => continue,
                },
                None => None,
            };
            if let Some(kind) = alarm_kind_from(&a.kind) {
                let alarm = Alarm { group: g, uplink, kind };
                self.core.restore_alarm(alarm);
                self.alarm_since.insert(alarm, a.since_unix_ms);
            }
        }
    }

    fn uplink_config(&self, g: usize, u: usize) -> UplinkConfig {
        let cfg = &self.config.groups[g].uplinks[u];
        let rt = &self.rt[g][u];
        let gateway_mac = self.core.uplink(g, u).and_then(|v| v.gateway_mac);
        UplinkConfig {
            group: g as u32,
            slot: rt.slot,
            own_mac: rt.mac.unwrap_or([0; 6]),
            gateway_mac: gateway_mac.unwrap_or([0; 6]),
            gateway_ip: ip_bytes(cfg.gateway),
            probe_source: ip_bytes(cfg.probe_source),
            vlan: cfg.vlan.unwrap_or(0),
            family: if cfg.gateway.is_ipv4() { FAMILY_IPV4 } else { FAMILY_IPV6 },
            flags: if gateway_mac.is_some() { UPLINK_GATEWAY_MAC_KNOWN } else { 0 },
        }
    }

    fn group_state(&self, g: usize) -> GroupState {
        let mut state = GroupState::inactive();
        // Redirect what the bridge still sends out of an inactive uplink
        // until its flows follow the current decision (always, when the
        // agent does not manage them).
        let flows_follow = match (&self.ovs, self.core.active(g)) {
            (Some(ovs), Some(active)) => ovs.settled(g, active, Instant::now()),
            _ => false,
        };
        if !flows_follow {
            state.flags |= GROUP_REDIRECT_INACTIVE;
        }
        let active = self.core.active(g);
        state.active_ifindex = active.and_then(|u| self.rt[g][u].ifindex).unwrap_or(0);
        // Readdressing uses every gateway MAC seen, also one no longer
        // accepted for liveness: VMs may still send to it.
        for u in 0..self.config.groups[g].uplinks.len().min(MAX_GROUP_UPLINKS) {
            if let Some(mac) = self.core.uplink(g, u).and_then(|v| v.last_gateway_mac) {
                state.gateway_macs[state.gateway_count as usize] = mac;
                state.gateway_count += 1;
                if Some(u) == active {
                    state.active_gateway_mac = mac;
                    state.flags |= GROUP_ACTIVE_MAC_KNOWN;
                }
            }
        }
        state
    }

    /// Writes the group's datapath state if it differs from what is pinned
    /// (a re-created interface has a new ifindex, a MAC was learned, ...).
    fn sync_group(&mut self, g: usize) {
        let want = self.group_state(g);
        if self.core.active(g).is_none() {
            return; // nothing decided yet: leave the datapath as it is
        }
        // The map, not a copy of what was last written, is compared: a map
        // re-pinned or written by hand is put right within one probe round,
        // for one lookup (about a microsecond).
        match self.dp.group(g as u32) {
            Ok(Some(have)) if have == want => {}
            _ => {
                if let Err(e) = self.dp.set_group(g as u32, &want) {
                    error!(group = %self.config.groups[g].name, error = %anyhow::Error::from(e), "writing the group's datapath state");
                }
            }
        }
    }

    fn attach(&mut self, g: usize, u: usize) {
        let cfg = self.uplink_config(g, u);
        let ifname = self.config.groups[g].uplinks[u].interface.clone();
        match self.dp.attach_uplink(&ifname, &cfg) {
            Ok(outcome) => {
                self.rt[g][u].attached = true;
                let how = if outcome == AttachOutcome::Reused { "reused the pinned programs" } else { "attached" };
                info!(interface = %ifname, "{how}");
            }
            Err(e) => {
                self.rt[g][u].attached = false;
                error!(interface = %ifname, error = %anyhow::Error::from(e), "attaching the datapath");
            }
        }
    }

    /// A link changed (or was dumped).
    pub fn on_link(&mut self, ev: &LinkEvent, now: Instant) {
        let Some((g, u)) = self.find(&ev.ifname) else {
            return;
        };
        let link = match ev.state {
            LinkState::Gone => {
                let rt = &mut self.rt[g][u];
                rt.ifindex = None;
                rt.attached = false;
                Link::Absent
            }
            LinkState::Up | LinkState::Down => {
                let rt = &mut self.rt[g][u];
                let recreated = rt.ifindex != Some(ev.ifindex);
                let mac_changed = ev.mac.is_some() && ev.mac != rt.mac;
                rt.ifindex = Some(ev.ifindex);
                rt.mac = ev.mac.or(rt.mac);
                if recreated || !rt.attached {
                    self.attach(g, u);
                    self.sync_group(g);
                } else if mac_changed {
                    // Replies must be addressed to the uplink's current MAC.
                    let cfg = self.uplink_config(g, u);
                    let ifname = &self.config.groups[g].uplinks[u].interface;
                    info!(interface = %ifname, mac = %format_mac(&cfg.own_mac), "the uplink's MAC changed");
                    if let Err(e) = self.dp.update_uplink(ifname, &cfg) {
                        warn!(interface = %ifname, error = %anyhow::Error::from(e), "updating the uplink's MAC");
                    }
                }
                if !self.rt[g][u].attached {
                    // Without the datapath the uplink can be neither probed nor used.
                    Link::Down
                } else if ev.state == LinkState::Up {
                    Link::Up
                } else {
                    Link::Down
                }
            }
        };
        if self.core.uplink(g, u).is_some_and(|v| v.link != link) {
            let name = &self.config.groups[g].uplinks[u];
            info!(group = %self.config.groups[g].name, uplink = %name.name, interface = %name.interface, link = link_str(link), "link");
            let msg = format!("{} ({}) link {}", name.name, name.interface, link_str(link));
            self.event("link", Some(g), Some(u), msg);
        }
        self.core.handle_link(g, u, link, now);
    }

    /// Interfaces of the configuration that the dump did not show are gone.
    pub fn mark_missing(&mut self, dump: &[LinkEvent], now: Instant) {
        for g in 0..self.config.groups.len() {
            for u in 0..self.config.groups[g].uplinks.len() {
                let name = &self.config.groups[g].uplinks[u].interface;
                if !dump.iter().any(|e| &e.ifname == name) {
                    warn!(interface = %name, "configured interface not found: a NIC fault until it appears");
                    self.core.handle_link(g, u, Link::Absent, now);
                }
            }
        }
    }

    /// A probe round is due: read the datapath's counters, then let the core judge.
    pub fn on_timeout(&mut self, now: Instant) {
        for g in 0..self.rt.len() {
            for u in 0..self.rt[g].len() {
                if !self.rt[g][u].attached {
                    continue;
                }
                match self.dp.counters(self.rt[g][u].slot) {
                    Ok(c) => {
                        let rt = &self.rt[g][u];
                        let labels =
                            [self.config.groups[g].name.as_str(), self.config.groups[g].uplinks[u].name.as_str()];
                        // Kernel counters start over when programs are attached anew.
                        let delta = |new: u64, old: u64| if new >= old { new - old } else { new };
                        self.metrics
                            .probe_replies
                            .with_label_values(&labels)
                            .inc_by(delta(c.valid_replies, rt.counters.valid_replies));
                        self.metrics
                            .probe_replies_rejected
                            .with_label_values(&labels)
                            .inc_by(delta(c.rejected_replies, rt.counters.rejected_replies));
                        if c.valid_replies != rt.counters.valid_replies
                            && let (Some(reply), Some(sent)) = (c.last_reply, rt.last_probe_mono)
                            && let Some(rtt) = reply.checked_sub(sent)
                        {
                            self.metrics.probe_rtt.with_label_values(&labels).observe(rtt.as_secs_f64());
                        }
                        self.rt[g][u].counters = c;
                        self.core.handle_replies(g, u, c.valid_replies, c.gateway_mac);
                    }
                    Err(e) => warn!(error = %anyhow::Error::from(e), "reading counters"),
                }
            }
        }
        self.core.handle_timeout(now);
        self.ovs_alarms(now);
        self.check_pins(now);
        // Rules that have settled let the datapath stop redirecting.
        for g in 0..self.config.groups.len() {
            self.sync_group(g);
        }
    }

    /// Once a second: pins removed by hand are put back, and uplinks whose
    /// link pin went (which detaches the programs) are attached again.
    fn check_pins(&mut self, now: Instant) {
        if now < self.next_pin_check {
            return;
        }
        self.next_pin_check = now + Duration::from_secs(1);
        match self.dp.repair_pins() {
            Ok(restored) if !restored.is_empty() => {
                let list: Vec<String> = restored.iter().map(|p| p.display().to_string()).collect();
                warn!(pins = ?list, "pinned maps had been removed: pinned again");
                self.event(
                    "agent",
                    None,
                    None,
                    format!("pinned maps had been removed; pinned again: {}", list.join(", ")),
                );
            }
            Ok(_) => {}
            Err(e) => error!(error = %anyhow::Error::from(e), "checking the datapath's pins"),
        }
        for g in 0..self.rt.len() {
            for u in 0..self.rt[g].len() {
                if !self.rt[g][u].attached {
                    continue;
                }
                let cfg = self.uplink_config(g, u);
                let ifname = self.config.groups[g].uplinks[u].interface.clone();
                match self.dp.attach_uplink(&ifname, &cfg) {
                    Ok(AttachOutcome::Reused) => {}
                    Ok(AttachOutcome::Attached) => {
                        warn!(interface = %ifname, "the programs had been detached (a link pin removed?): attached again");
                        self.event(
                            "agent",
                            Some(g),
                            Some(u),
                            format!("{ifname}: programs had been detached; attached again"),
                        );
                        self.sync_group(g);
                    }
                    Err(e) => {
                        error!(interface = %ifname, error = %anyhow::Error::from(e), "re-checking the uplink's programs");
                    }
                }
            }
        }
    }

    /// When [`Agent::on_timeout`] is next due.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// Carries out what the core decided, in order.
    pub fn apply_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::SetActive { group, uplink, previous, reason, decided_at } => {
                    let state = self.group_state(group);
                    let result = self.dp.set_group(group as u32, &state);
                    let took = decided_at.elapsed();
                    let g = &self.config.groups[group];
                    let from = previous.map_or("-", |p| g.uplinks[p].name.as_str());
                    let to = g.uplinks[uplink].name.clone();
                    match result {
                        Ok(()) => {
                            self.metrics
                                .switchovers
                                .with_label_values(&[g.name.as_str(), from, to.as_str(), reason.as_str()])
                                .inc();
                            self.metrics
                                .switchover_duration
                                .with_label_values(&[g.name.as_str()])
                                .observe(took.as_secs_f64());
                            self.last_duration[group] = Some(took);
                            self.switch_durations.push_back(took);
                            while self.switch_durations.len() > DURATION_HISTORY {
                                self.switch_durations.pop_front();
                            }
                            info!(group = %g.name, from, to = %to, reason = reason.as_str(), duration_us = took.as_micros() as u64, "switchover");
                            let msg = format!(
                                "{from} -> {to} ({}), map updated {} us after the decision",
                                reason.as_str(),
                                took.as_micros()
                            );
                            self.event("switchover", Some(group), Some(uplink), msg);
                        }
                        Err(e) => {
                            error!(group = %g.name, to = %to, error = %anyhow::Error::from(e), "switchover: writing the datapath failed");
                        }
                    }
                    self.dirty = true;
                }
                Action::MirrorToOvs { group, uplink } => {
                    debug!(group = %self.config.groups[group].name, uplink = %self.config.groups[group].uplinks[uplink].name, "OVS rules to follow");
                    self.ovs_desire(group);
                }
                Action::RaiseAlarm(alarm) => {
                    let message = alarm_message(&self.config, &alarm);
                    warn!(target: "failover_agent::alarm", group = %self.config.groups[alarm.group].name, kind = alarm_kind(alarm.kind), state = "raised", "{message}");
                    self.alarm_since.insert(alarm, unix_ms(SystemTime::now()));
                    self.event("alarm_raised", Some(alarm.group), alarm.uplink, message);
                    self.dirty = true;
                }
                Action::ClearAlarm(alarm) => {
                    let message = alarm_message(&self.config, &alarm);
                    info!(target: "failover_agent::alarm", group = %self.config.groups[alarm.group].name, kind = alarm_kind(alarm.kind), state = "cleared", "{message}");
                    self.alarm_since.remove(&alarm);
                    self.event("alarm_cleared", Some(alarm.group), alarm.uplink, message);
                    self.dirty = true;
                }
                Action::SendProbe { group, uplink, gateway_mac } => self.send_probe(group, uplink, gateway_mac),
                Action::GatewayMac { group, uplink, mac, replaced } => {
                    let u = self.config.groups[group].uplinks[uplink].clone();
                    let mut what = mac.map_or_else(
                        || "forgotten (accepting any until learned again)".to_string(),
                        |m| format!("learned: {}", format_mac(&m)),
                    );
                    if let Some(old) = replaced {
                        // A replaced gateway, or someone answering in its name: worth a look.
                        what = format!(
                            "{what}, replacing {} (a new gateway? if not, look for a spoofer)",
                            format_mac(&old)
                        );
                        warn!(group = %self.config.groups[group].name, uplink = %u.name, "gateway MAC {what}");
                    } else {
                        info!(group = %self.config.groups[group].name, uplink = %u.name, "gateway MAC {what}");
                    }
                    let msg = format!("{} gateway MAC {what}", u.name);
                    self.event("gateway", Some(group), Some(uplink), msg);
                    if self.rt[group][uplink].attached {
                        let cfg = self.uplink_config(group, uplink);
                        let ifname = u.interface;
                        if let Err(e) = self.dp.update_uplink(&ifname, &cfg) {
                            warn!(interface = %ifname, error = %anyhow::Error::from(e), "updating the uplink's gateway MAC");
                        }
                    }
                    self.sync_group(group);
                    self.ovs_desire(group);
                }
            }
        }
    }

    fn send_probe(&mut self, g: usize, u: usize, gateway_mac: Option<[u8; 6]>) {
        let cfg = &self.config.groups[g].uplinks[u];
        let rt = &self.rt[g][u];
        let Some(own_mac) = rt.mac else {
            return;
        };
        let spec = ProbeSpec { own_mac, source: cfg.probe_source, gateway: cfg.gateway, gateway_mac, vlan: cfg.vlan };
        let Some(frame) = probe_frame(&spec) else {
            return;
        };
        let ifname = cfg.interface.clone();
        let labels = [self.config.groups[g].name.clone(), cfg.name.clone()];
        // Taken before sending: on a veth the reply can be counted before send() returns.
        let sent_at = monotonic();
        match self.probes.send(&ifname, &frame) {
            Ok(()) => {
                self.metrics.probes_sent.with_label_values(&labels).inc();
                let rt = &mut self.rt[g][u];
                rt.last_probe_mono = Some(sent_at);
                rt.probes_sent += 1;
                if rt.probe_failing {
                    rt.probe_failing = false;
                    info!(interface = %ifname, "probes are sent again");
                }
            }
            Err(e) => {
                let rt = &mut self.rt[g][u];
                if !rt.probe_failing {
                    rt.probe_failing = true;
                    warn!(error = %e, "sending a probe failed (logged once until it works again)");
                }
            }
        }
    }

    /// Writes the state file if anything worth keeping changed.
    pub fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut state = State::default();
        for (g, group) in self.config.groups.iter().enumerate() {
            if let Some(u) = self.core.active(g) {
                state.active.insert(group.name.clone(), group.uplinks[u].name.clone());
            }
        }
        for a in self.core.alarms() {
            let group = &self.config.groups[a.group];
            state.alarms.push(PersistedAlarm {
                group: group.name.clone(),
                uplink: a.uplink.map(|u| group.uplinks[u].name.clone()),
                kind: alarm_kind(a.kind).to_string(),
                since_unix_ms: self.alarm_since.get(a).copied().unwrap_or_default(),
            });
        }
        if let Err(e) = state::save(&self.config.agent.state_dir, &state) {
            error!(error = %e, "persisting the state");
        }
    }

    /// The whole state, for `status`.
    pub fn status(&self) -> Status {
        let groups = self
            .config
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let active = self.core.active(g);
                let ovs = self.ovs.as_ref().map(|o| {
                    let (reachable, in_sync, last_error) = o.group_status(g);
                    control::OvsStatus { reachable, rules_in_place: in_sync, last_error }
                });
                GroupStatus {
                    ovs,
                    name: group.name.clone(),
                    bridge: group.bridge.clone(),
                    active: active.map(|u| group.uplinks[u].name.clone()),
                    operator_hold: self.core.operator_hold(g),
                    last_switchover: self.core.last_switchover(g).map(|s| SwitchoverStatus {
                        from: s.from.map(|u| group.uplinks[u].name.clone()),
                        to: group.uplinks[s.to].name.clone(),
                        reason: s.reason.as_str().to_string(),
                        at_unix_ms: self.at_unix_ms(s.at),
                        duration_us: self.last_duration[g].map(|d| d.as_micros() as u64),
                    }),
                    uplinks: group
                        .uplinks
                        .iter()
                        .enumerate()
                        .map(|(u, cfg)| {
                            let view = self.core.uplink(g, u);
                            let rt = &self.rt[g][u];
                            UplinkStatus {
                                name: cfg.name.clone(),
                                interface: cfg.interface.clone(),
                                ifindex: rt.ifindex,
                                link: view.map_or("unknown", |v| link_str(v.link)).to_string(),
                                gateway: view.map_or("unknown", |v| gateway_str(v.gateway)).to_string(),
                                gateway_ip: cfg.gateway.to_string(),
                                gateway_mac: view.and_then(|v| v.gateway_mac).map(|m| format_mac(&m)),
                                healthy: view.is_some_and(|v| v.healthy),
                                active: active == Some(u),
                                flapping: view.is_some_and(|v| v.flapping),
                                probes_sent: rt.probes_sent,
                                replies: rt.counters.valid_replies,
                                replies_rejected: rt.counters.rejected_replies,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let ovs_alarms = self.ovs.iter().flat_map(OvsSync::alarmed).map(|bridge| AlarmStatus {
            group: self.config.groups.iter().find(|g| &g.bridge == bridge).map(|g| g.name.clone()).unwrap_or_default(),
            uplink: None,
            kind: "ovs_unreachable".into(),
            message: ovs_alarm_message(bridge),
            since_unix_ms: self.ovs_alarm_since.get(bridge).copied().unwrap_or_default(),
        });
        let alarms = self
            .core
            .alarms()
            .map(|a| {
                let group = &self.config.groups[a.group];
                AlarmStatus {
                    group: group.name.clone(),
                    uplink: a.uplink.map(|u| group.uplinks[u].name.clone()),
                    kind: alarm_kind(a.kind).to_string(),
                    message: alarm_message(&self.config, a),
                    since_unix_ms: self.alarm_since.get(a).copied().unwrap_or_default(),
                }
            })
            .chain(ovs_alarms)
            .collect();
        Status {
            agent: Some(control::AgentInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                metrics_listen: self.metrics_addr.map(|a| a.to_string()),
                pid: std::process::id(),
            }),
            groups,
            alarms,
        }
    }

    /// Answers a control request.
    pub fn on_request(&mut self, request: Request, now: Instant) -> Response {
        match request {
            Request::Status => Response { ok: true, status: Some(self.status()), ..Response::default() },
            Request::Events { limit, .. } => {
                let limit = limit.unwrap_or(100).min(EVENT_HISTORY);
                let skip = self.events.len().saturating_sub(limit);
                Response {
                    ok: true,
                    events: Some(self.events.iter().skip(skip).cloned().collect()),
                    ..Response::default()
                }
            }
            Request::Switch { group, uplink, force } => {
                let Some(g) = self.config.groups.iter().position(|x| x.name == group) else {
                    return Response::error(format!("no group {group:?}"));
                };
                let Some(u) = self.config.groups[g].uplinks.iter().position(|x| x.name == uplink) else {
                    return Response::error(format!("group {group:?} has no uplink {uplink:?}"));
                };
                match self.core.switch(g, u, force, now) {
                    Ok(done) => {
                        self.apply_actions();
                        self.persist();
                        let message = match done {
                            SwitchDone::Switched => {
                                format!("group {group}: traffic now on {uplink}")
                            }
                            SwitchDone::AlreadyActive => {
                                format!("group {group}: {uplink} is already active")
                            }
                        };
                        Response { ok: true, message: Some(message), ..Response::default() }
                    }
                    Err(e) => Response::error(format!("group {group:?}, uplink {uplink:?}: {e}")),
                }
            }
        }
    }
}

/// `failover-agent run`: runs until SIGTERM or SIGINT, then leaves the
/// datapath in place (fail-static) and exits. SIGHUP reloads `config_path`:
/// a file that does not validate is refused and the running configuration
/// kept; a valid, changed one takes effect by the agent executing itself
/// anew, which is a restart without a flip (see "Restart safety").
pub fn run(config: Config, config_path: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let reexec = runtime.block_on(run_async(config, config_path))?;
    drop(runtime);
    if reexec {
        use std::os::unix::process::CommandExt as _;
        let exe = std::env::current_exe().context("finding the agent's own binary")?;
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
        return Err(anyhow::Error::from(err).context("executing the agent anew for the new configuration"));
    }
    Ok(())
}

/// Runs the agent; `Ok(true)` asks the caller to execute it anew (reload).
/// A connection per bridge tells when ovs-vswitchd comes and goes (none
/// with `ovs_flows = false`).
fn monitor_bridges(config: &Config, ovs_cli: &OvsCli) -> mpsc::UnboundedReceiver<openflow::Reachability> {
    let (reach_tx, reachability) = mpsc::unbounded_channel();
    if config.agent.ovs_flows {
        let bridges: std::collections::BTreeSet<&str> = config.groups.iter().map(|g| g.bridge.as_str()).collect();
        for bridge in bridges {
            tokio::spawn(openflow::monitor(bridge.to_owned(), ovs_cli.socket(bridge), reach_tx.clone()));
        }
    }
    reachability
}

async fn run_async(config: Config, config_path: &std::path::Path) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let dp = EbpfDatapath::open(&DatapathOptions {
        pin_dir: config.agent.bpf_pin_dir.clone(),
        xdp_mode: config.agent.xdp_mode,
    })
    .context("opening the datapath")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut reexec = false;
    let (dump, mut links) = link::watch().await.context("watching links")?;
    let saved = match state::load(&config.agent.state_dir) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "ignoring the saved state");
            None
        }
    };
    let control_path = config.agent.control_socket.clone();
    let now = Instant::now();
    let mut agent = Agent::new(config, dp, PacketSockets::default(), now);
    agent.learn_interfaces(&dump);
    agent.restore(saved.as_ref());
    for ev in &dump {
        agent.on_link(ev, now);
    }
    agent.mark_missing(&dump, now);
    for g in 0..agent.config.groups.len() {
        agent.sync_group(g);
        agent.ovs_desire(g);
    }
    agent.apply_actions();
    agent.persist();
    // OVS: rule installs run on blocking threads and report back.
    let (done_tx, mut jobs_done) = mpsc::unbounded_channel::<JobDone>();
    let ovs_cli = OvsCli::new(&agent.config.agent.ovs_rundir);
    let mut reachability = monitor_bridges(&agent.config, &ovs_cli);
    let listen = agent.config.agent.metrics_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics endpoint: binding {listen} (agent.metrics_listen)"))?;
    agent.metrics_addr = listener.local_addr().ok();
    tokio::spawn(crate::metrics::serve(listener, agent.metrics.clone()));
    let (tx, mut requests) = mpsc::channel::<Incoming>(16);
    let server = control::serve(&control_path, tx, agent.events_tx.clone()).context("starting the control socket")?;
    agent.event("agent", None, None, "started".into());
    agent.refresh_metrics();
    info!(control_socket = %control_path.display(), metrics = ?agent.metrics_addr, "running");

    loop {
        let now = Instant::now();
        while let Some(job) = agent.ovs_job(now) {
            let (cli, tx) = (ovs_cli.clone(), done_tx.clone());
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(run_job(&cli, job));
            });
        }
        let next = [agent.next_timeout(), agent.ovs_deadline(now)].into_iter().flatten().min();
        let due =
            next.map_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1), tokio::time::Instant::from_std);
        tokio::select! {
            () = tokio::time::sleep_until(due) => agent.on_timeout(Instant::now()),
            Some(r) = reachability.recv() => agent.ovs_reachability(&r.bridge, r.up, Instant::now()),
            Some(done) = jobs_done.recv() => agent.ovs_done(&done, Instant::now()),
            Some(ev) = links.recv() => agent.on_link(&ev, Instant::now()),
            Some(Incoming { request, reply }) = requests.recv() => {
                let response = agent.on_request(request, Instant::now());
                let _ = reply.send(response);
            }
            _ = term.recv() => { info!("SIGTERM: stopping; the datapath stays in place"); break; }
            _ = int.recv() => { info!("SIGINT: stopping; the datapath stays in place"); break; }
            _ = hup.recv() => match crate::config::load(config_path) {
                Err(e) => {
                    error!(error = %e, "SIGHUP: the new configuration is refused; the running one stays");
                    agent.event("agent", None, None, format!("reload refused, running configuration kept: {e}"));
                }
                Ok(new) if new == agent.config => info!("SIGHUP: configuration unchanged"),
                Ok(_) => {
                    info!("SIGHUP: new configuration; executing the agent anew (the datapath keeps steering)");
                    reexec = true;
                    break;
                }
            },
        }
        agent.apply_actions();
        agent.persist();
        agent.refresh_metrics();
    }
    server.abort();
    let _ = std::fs::remove_file(&control_path);
    agent.dirty = true;
    agent.persist();
    Ok(reexec)
}
