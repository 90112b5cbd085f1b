//! The driver: routes events to the pure core ([`crate::failover`]) and the
//! core's actions to the rooms that carry them out. The only code that
//! touches tokio.
//!
//! Rooms, each with one concern:
//! - `inputs`: what each input does (link, kernel report, probe round,
//!   request); `actions`: the core's actions carried out;
//! - [`topology`]: who is who (ids from names, datapath slots, interfaces);
//! - [`reconcile::datapath`], [`reconcile::ovs`]: the kernel's state and the
//!   bridges' rules, level-triggered from the core's view;
//! - [`journal`]: events (numbered) and since when alarms are open;
//! - [`telemetry`]: Prometheus metrics, gauges read at scrape time;
//! - [`persist`]: the state file, written by a thread of its own;
//! - [`status`]: what `status` shows.
//!
//! One loop on one thread ([`run`]): timer (probe rounds), link events, the
//! kernel's own switchovers, control requests, OVS reports, scrapes and
//! signals come in as [`Input`]s. Each wakeup first ratifies what the kernel
//! did by itself, then handles its input; the datapath flips first (the map
//! update for a decision is the first thing done after it), the rest follows.

mod actions;
mod inputs;
pub mod journal;
pub mod persist;
pub mod reconcile;
mod status;
pub mod telemetry;
pub mod topology;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use failover_common::rule::Fault;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
};
use tracing::{debug, error, info, warn};

use self::{
    journal::{Journal, unix_ms_now},
    persist::Persister,
    reconcile::{
        datapath::{self as dp_plan, Steer, Synced},
        ovs::{BridgeAlarm, Job, JobDone, OvsSync, desired_flows, run_job},
    },
    telemetry::{Telemetry, UplinkFacts},
    topology::Topology,
};
use crate::{
    config::Config,
    control::{self, EventKind, Incoming},
    datapath::{AttachOutcome, Datapath, DatapathOptions, EbpfDatapath, KernelCarrier},
    failover::{Alarm, Core, Link},
    link::{self, LinkEvent},
    ovs::{OvsCli, openflow},
    probe::{PacketSockets, ProbeTransport},
    state::{PersistedAlarm, State},
};

/// How often pins are checked (someone may remove them by hand) and, while
/// the kernel reads carrier itself, every uplink's link read anew (a
/// netlink overrun loses events).
const PIN_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often, at most, every uplink's link is read when the kernel cannot
/// read carrier itself (each read takes the kernel's rtnl lock, ~0.2 ms).
const LINK_READ_EVERY: Duration = Duration::from_millis(10);
/// How often every group's kernel state is compared with the plan, besides
/// at each group's own probe rounds.
const FULL_SYNC_EVERY: Duration = Duration::from_millis(100);

/// Now on `CLOCK_MONOTONIC`, the clock of the datapath's reply times.
fn monotonic() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    Duration::new(ts.tv_sec.unsigned_abs(), ts.tv_nsec.unsigned_abs() as u32)
}

/// A random offset below `interval` (std's per-process random hash keys:
/// no randomness needed beyond "not in step with another host").
fn random_phase(interval: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(h.finish() % nanos)
}

fn ovs_alarm_message(bridge: &str) -> String {
    format!("OVS bridge {bridge} does not answer: the datapath keeps steering; the agent's rules return when it does")
}

/// The agent: the core, and the rooms it acts through.
pub struct Agent<D: Datapath, P: ProbeTransport> {
    config: Config,
    core: Core,
    topo: Topology,
    dp: D,
    probes: P,
    journal: Journal,
    telemetry: Telemetry,
    /// The OVS side (None when `ovs_flows = false`).
    ovs: Option<OvsSync>,
    persister: Option<Persister>,
    kernel_carrier: KernelCarrier,
    clock: (Instant, SystemTime),
    dirty: bool,
    next_pin_check: Instant,
    /// Interfaces to read anew (see [`link::LinkQuery`]).
    link_queries: BTreeSet<u32>,
    next_link_read: Instant,
    next_full_sync: Instant,
    /// Per group: rounds the kernel's map was ahead of the core, unreported.
    kernel_ahead: Vec<u32>,
    /// Where the metrics endpoint listens, once bound.
    metrics_addr: Option<std::net::SocketAddr>,
}

impl<D: Datapath, P: ProbeTransport> Agent<D, P> {
    /// An agent for `config` over the datapath `dp`: slots are taken over
    /// from the datapath's entries of the same uplinks.
    pub fn new(config: Config, dp: D, probes: P, now: Instant) -> Result<Self, topology::NoSlot> {
        let pinned = dp.pinned_uplinks().unwrap_or_else(|e| {
            warn!(error = %anyhow::Error::from(e), "reading the datapath's uplink entries");
            Vec::new()
        });
        let topo = Topology::new(&config, &pinned)?;
        let groups = config.groups.len();
        let ovs = config.agent.ovs_flows.then(|| {
            let bridges: BTreeSet<String> = config.groups.iter().map(|g| g.bridge.clone()).collect();
            OvsSync::new(groups, bridges, now)
        });
        let mut core = Core::new(&config, now);
        // A random phase per group (less than its interval), so that a
        // fleet's probes do not reach the gateways in step.
        for (g, group) in config.groups.iter().enumerate() {
            core.set_phase(g, random_phase(group.probe_interval));
        }
        Ok(Self {
            core,
            kernel_carrier: dp.kernel_carrier(),
            config,
            topo,
            dp,
            probes,
            journal: Journal::new(),
            telemetry: Telemetry::new(groups),
            ovs,
            persister: None,
            clock: (now, SystemTime::now()),
            dirty: false,
            next_pin_check: now,
            link_queries: BTreeSet::new(),
            next_link_read: now,
            next_full_sync: now,
            kernel_ahead: vec![0; groups],
            metrics_addr: None,
        })
    }

    /// Persists through `persister` from now on.
    pub fn persist_with(&mut self, persister: Persister) {
        self.persister = Some(persister);
    }

    /// The journal's broadcast of new events.
    pub fn events(&self) -> tokio::sync::broadcast::Sender<control::Event> {
        self.journal.sender()
    }

    /// The first decisions: interfaces from the dump, what is no longer
    /// configured removed, the last run's decisions taken over, every link
    /// reported, the datapath brought in line. `saved`: the state file.
    pub fn start(&mut self, dump: &[LinkEvent], saved: Option<&State>, now: Instant) {
        for ev in dump {
            if let Some((g, u)) = Topology::find(&self.config, &ev.ifname) {
                let rt = self.topo.rt_mut(g, u);
                rt.ifindex = Some(ev.ifindex);
                rt.mac = ev.mac;
            }
        }
        for removed in dp_plan::remove_orphans(&mut self.dp, &self.config, &self.topo) {
            warn!("{removed}");
            self.journal.record(EventKind::Agent, None, None, removed);
        }
        if let Some(ovs) = &mut self.ovs {
            let mut keep: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
            for g in &self.config.groups {
                keep.insert(g.bridge.clone(), reconcile::ovs::cookies_on(&self.config, &g.bridge));
            }
            ovs.clean_orphans(keep);
        }
        self.restore(saved);
        for ev in dump {
            self.on_link(ev, now);
        }
        for (g, u) in self.topo.positions().collect::<Vec<_>>() {
            let cfg = &self.config.groups[g].uplinks[u];
            if !dump.iter().any(|e| e.ifname == cfg.interface) {
                warn!(interface = %cfg.interface, "configured interface not found: a NIC fault until it appears");
                self.core.handle_link(g, u, Link::Absent, now);
            }
        }
        // Reports the kernel left while no agent ran.
        self.on_kernel_switches(now);
        self.apply_actions(now);
        for g in 0..self.config.groups.len() {
            self.sync_group(g, now);
        }
        self.journal.record(EventKind::Agent, None, None, "started".into());
        self.dirty = true;
        self.persist();
    }

    /// Takes over the last run's decisions: the datapath's own state first
    /// (it is what traffic follows), the state file second; and its alarms.
    fn restore(&mut self, saved: Option<&State>) {
        for g in 0..self.config.groups.len() {
            let id = self.topo.ids[g];
            let from_dp = match self.dp.group(id.0) {
                Ok(Some(state)) if state.active_ifindex != 0 => self.topo.uplink_of(g, state.active_ifindex),
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
            if let Some(kind) = a.kind.core() {
                let alarm = Alarm { group: g, uplink, kind };
                self.core.restore_alarm(alarm);
                self.journal.alarm_since.insert(alarm, a.since_unix_ms);
            }
        }
    }

    fn at_unix_ms(&self, t: Instant) -> u64 {
        let (base_i, base_s) = self.clock;
        let at = match t.checked_duration_since(base_i) {
            Some(d) => base_s + d,
            None => base_s - base_i.duration_since(t),
        };
        at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn names(&self, g: usize, u: usize) -> (&str, &str) {
        (self.config.groups[g].name.as_str(), self.config.groups[g].uplinks[u].name.as_str())
    }

    /// Where group `g`'s bridge rules point now.
    fn steer(&self, g: usize, now: Instant) -> Steer {
        match (&self.ovs, self.core.active(g)) {
            (Some(ovs), Some(active)) => {
                Steer { rules_uplink: ovs.rules_active(g), settled: ovs.settled(g, active, now) }
            }
            _ => Steer::default(),
        }
    }

    /// Brings group `g`'s datapath state in line with the core.
    fn sync_group(&mut self, g: usize, now: Instant) {
        if self.core.active(g).is_none() {
            return; // nothing decided yet: leave the datapath as it is
        }
        let want = dp_plan::group_plan(&self.config, &self.topo, &self.core, g, self.steer(g, now));
        match dp_plan::sync_group(&mut self.dp, self.topo.ids[g], &want) {
            Synced::InPlace | Synced::Written => self.kernel_ahead[g] = 0,
            Synced::KernelAhead(to_ifindex) => {
                debug!(group = %self.config.groups[g].name, "the kernel switched; ratifying first");
                // Its report normally comes first. If it is lost (a ring
                // full after a long stop), the map itself is the report.
                self.kernel_ahead[g] += 1;
                if self.kernel_ahead[g] >= 2
                    && let (Some(from), Some(to)) = (self.core.active(g), self.topo.uplink_of(g, to_ifindex))
                {
                    warn!(group = %self.config.groups[g].name, "the kernel switched without a report: ratified from its map");
                    let link_up = self.core.uplink(g, from).is_some_and(|v| v.link == Link::Up);
                    let fault = if link_up { Fault::Silence } else { Fault::Carrier };
                    if let Some(i) = self.topo.rt(g, from).ifindex {
                        self.link_queries.insert(i);
                    }
                    self.core.handle_kernel_switch(g, from, to, fault, now);
                    self.apply_actions(now);
                    self.kernel_ahead[g] = 0;
                }
            }
            Synced::Failed(e) => {
                error!(group = %self.config.groups[g].name, error = %anyhow::Error::from(e), "writing the group's datapath state");
            }
        }
    }

    fn attach(&mut self, g: usize, u: usize) {
        let cfg = dp_plan::uplink_config(&self.config, &self.topo, &self.core, g, u);
        let ifname = self.config.groups[g].uplinks[u].interface.clone();
        match self.dp.attach_uplink(&ifname, &cfg) {
            Ok(outcome) => {
                let rt = self.topo.rt_mut(g, u);
                rt.attached = true;
                rt.attach_error = None;
                let how = if outcome == AttachOutcome::Reused {
                    "kept the pinned hooks, with this agent's programs"
                } else {
                    "attached"
                };
                let hooks = self.dp.hooks();
                info!(interface = %ifname, slot = cfg.slot, ingress = %hooks.ingress, tc = hooks.tc.as_str(), "{how}");
            }
            Err(e) => {
                let why = format!("{:#}", anyhow::Error::from(e));
                error!(target: "failover_agent::alarm", interface = %ifname, error = %why, "datapath not attached on {ifname}: {why}");
                let rt = self.topo.rt_mut(g, u);
                rt.attached = false;
                rt.attach_error = Some(why);
            }
        }
    }

    /// When the loop must wake up next without an event.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let ovs = self.ovs.as_ref().and_then(|o| o.next_deadline(now));
        [self.core.poll_timeout(), ovs].into_iter().flatten().min()
    }

    /// Asks for group `g`'s rules to follow its current state.
    fn ovs_desire(&mut self, g: usize) {
        if let Some(flows) = desired_flows(&self.config, &self.topo, &self.core, g)
            && let Some(ovs) = &mut self.ovs
        {
            ovs.desire(g, flows);
        }
    }

    /// The next OVS job due, if any.
    pub fn ovs_job(&mut self, now: Instant) -> Option<Job> {
        self.ovs.as_mut()?.next_job(now)
    }

    /// An OVS job finished.
    pub fn ovs_done(&mut self, done: &JobDone, now: Instant) {
        if let Some(ovs) = &mut self.ovs {
            ovs.done(done, now);
        }
        for cookie in &done.orphans_removed {
            let msg = format!(
                "removed the agent's rules with cookie {cookie:#x} from {}: no longer configured",
                done.flows.bridge
            );
            warn!("{msg}");
            self.journal.record(EventKind::Ovs, None, None, msg);
        }
        // Rules in place: the datapath steers by them (one map update).
        self.sync_group(done.group, now);
        if let Ok(true) = done.result {
            let g = done.group;
            let msg = format!(
                "OVS rules on {} follow {} ({} ms)",
                done.flows.bridge,
                self.config.groups[g].uplinks[done.flows.active].name,
                done.took.as_millis()
            );
            let group = self.config.groups[g].name.clone();
            info!(group = %group, bridge = %done.flows.bridge, took_ms = done.took.as_millis() as u64, "OVS rules installed");
            self.journal.record(EventKind::Ovs, Some(&group), None, msg);
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
                    self.journal.ovs_alarm_since.insert(bridge, unix_ms_now());
                    self.journal.record(EventKind::AlarmRaised, None, None, message);
                }
                BridgeAlarm::Clear(bridge) => {
                    let message = ovs_alarm_message(&bridge);
                    info!(target: "failover_agent::alarm", bridge = %bridge, kind = "ovs_unreachable", state = "cleared", "{message}");
                    self.journal.ovs_alarm_since.remove(&bridge);
                    self.journal.record(EventKind::AlarmCleared, None, None, message);
                }
            }
        }
    }

    /// Sets the gauges (a scrape is about to read them).
    pub fn refresh_metrics(&self) {
        let hooks = self.dp.hooks();
        let facts = |g, u| UplinkFacts {
            kernel_carrier: self.kernel_reads_carrier(g, u),
            attached: self.topo.rt(g, u).attached,
            hooks: (hooks.ingress.as_str(), hooks.tc.as_str()),
        };
        let reachable = self.ovs.as_ref().map(|o| move |b: &str| o.bridge_reachable(b));
        let reachable_dyn: Option<&dyn Fn(&str) -> bool> = reachable.as_ref().map(|f| f as &dyn Fn(&str) -> bool);
        self.telemetry.refresh(&self.config, &self.core, facts, reachable_dyn);
    }

    /// Hands the state to the writer if anything worth keeping changed.
    pub fn persist(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
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
                kind: a.kind.into(),
                since_unix_ms: self.journal.alarm_since.get(a).copied().unwrap_or_default(),
            });
        }
        if self.config.agent.ovs_flows {
            let bridges: BTreeSet<String> = self.config.groups.iter().map(|g| g.bridge.clone()).collect();
            state.bridges = bridges.into_iter().collect();
        }
        if let Some(p) = &self.persister {
            p.save(state);
        }
    }

    /// Stops: the state written, the datapath left in place.
    pub fn stop(&mut self) {
        self.dirty = true;
        self.persist();
        if let Some(p) = &mut self.persister {
            p.finish();
        }
    }
}

/// One thing the loop woke up for.
enum Input {
    Timer,
    Link(LinkEvent),
    Kernel,
    Reachability(openflow::Reachability),
    OvsDone(JobDone),
    Control(Incoming),
    Scrape(oneshot::Sender<()>),
    Stop(&'static str),
    Reload,
}

/// What the loop does after an input.
enum Flow {
    Continue,
    Stop,
    Reexec,
}

impl<D: Datapath, P: ProbeTransport> Agent<D, P> {
    /// Takes one input to the room that handles it.
    fn route(&mut self, input: Input, config_path: &std::path::Path, now: Instant) -> Flow {
        match input {
            Input::Kernel => {}
            Input::Timer => self.on_timeout(now),
            Input::Link(ev) => self.on_link(&ev, now),
            Input::Reachability(r) => self.ovs_reachability(&r.bridge, r.up, now),
            Input::OvsDone(done) => self.ovs_done(&done, now),
            Input::Control(Incoming { request, reply }) => {
                let _ = reply.send(self.on_request(request, now));
            }
            Input::Scrape(done) => {
                self.refresh_metrics();
                let _ = done.send(());
            }
            Input::Stop(signal) => {
                info!("{signal}: stopping; the datapath stays in place");
                return Flow::Stop;
            }
            Input::Reload => match crate::config::load(config_path) {
                Err(e) => {
                    error!(error = %e, "SIGHUP: the new configuration is refused; the running one stays");
                    let msg = format!("reload refused, running configuration kept: {e}");
                    self.journal.record(EventKind::Agent, None, None, msg);
                }
                Ok(new) if new == self.config => info!("SIGHUP: configuration unchanged"),
                Ok(_) => {
                    info!("SIGHUP: new configuration; executing the agent anew (the datapath keeps steering)");
                    return Flow::Reexec;
                }
            },
        }
        Flow::Continue
    }
}

/// `failover-agent run`: runs until SIGTERM or SIGINT, then leaves the
/// datapath in place (fail-static) and exits. SIGHUP reloads `config_path`:
/// a file that does not validate is refused and the running configuration
/// kept; a valid, changed one takes effect by the agent executing itself
/// anew, which reconciles the datapath and the rules with the new
/// configuration without a flip of what stays (see "Restart safety").
pub fn run(config: Config, config_path: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let reexec = runtime.block_on(run_async(config, config_path))?;
    drop(runtime);
    if reexec {
        use std::os::unix::process::CommandExt as _;
        let exe = std::env::current_exe().context("finding the agent's own binary")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1));
        // The single-instance lock passes to the new image, held throughout.
        crate::lock::hand_over(&mut cmd);
        let err = cmd.exec();
        return Err(anyhow::Error::from(err).context("executing the agent anew for the new configuration"));
    }
    Ok(())
}

/// A connection per bridge tells when ovs-vswitchd comes and goes (none
/// with `ovs_flows = false`).
fn monitor_bridges(config: &Config, ovs_cli: &OvsCli) -> mpsc::UnboundedReceiver<openflow::Reachability> {
    let (reach_tx, reachability) = mpsc::unbounded_channel();
    if config.agent.ovs_flows {
        let bridges: BTreeSet<&str> = config.groups.iter().map(|g| g.bridge.as_str()).collect();
        for bridge in bridges {
            tokio::spawn(openflow::monitor(bridge.to_owned(), ovs_cli.socket(bridge), reach_tx.clone()));
        }
    }
    reachability
}

/// Bridges of the last run that this configuration no longer has: their
/// rules are removed once (best effort; their bridges may be gone).
fn clean_old_bridges(config: &Config, saved: Option<&State>, ovs_cli: &OvsCli) {
    let Some(saved) = saved else { return };
    if !config.agent.ovs_flows {
        return;
    }
    for bridge in &saved.bridges {
        if config.groups.iter().any(|g| &g.bridge == bridge) {
            continue;
        }
        let (cli, bridge) = (ovs_cli.clone(), bridge.clone());
        tokio::task::spawn_blocking(move || match reconcile::ovs::remove_orphans(&cli, &bridge, &BTreeSet::new()) {
            Ok(removed) => {
                info!(bridge = %bridge, rules = removed.len(), "removed the agent's rules from a bridge no longer configured");
            }
            Err(e) => {
                warn!(bridge = %bridge, error = %e, "removing the agent's rules from a bridge no longer configured");
            }
        });
    }
}

/// Resolves when the kernel has reported a switchover (never without a fd).
async fn kernel_ready(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => {
            if let Ok(mut guard) = fd.readable().await {
                guard.clear_ready();
            }
        }
        None => std::future::pending().await,
    }
}

/// Runs the agent; `Ok(true)` asks the caller to execute it anew (reload).
async fn run_async(config: Config, config_path: &std::path::Path) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let dp = EbpfDatapath::open(&DatapathOptions {
        pin_dir: config.agent.bpf_pin_dir.clone(),
        ingress: config.agent.ingress,
        tc_attach: config.agent.tc_attach,
        carrier_reads: config.agent.kernel_failover,
    })
    .context("opening the datapath")?;
    let kernel_fd = dp
        .kernel_switch_fd()
        // SAFETY: an `OwnedFd` owns its descriptor, open and unchanged for as
        // long as the `AsyncFd` holding it lives.
        .map(|fd| unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
        .transpose()
        .map_err(|e| anyhow::anyhow!("watching the kernel's reports: {e}"))?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let link::LinkWatch { dump, events: mut links, query } = link::watch().await.context("watching links")?;
    let saved = match crate::state::load(&config.agent.state_dir) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "ignoring the saved state");
            None
        }
    };
    let control_path = config.agent.control_socket.clone();
    let ovs_cli = OvsCli::new(&config.agent.ovs_rundir);
    clean_old_bridges(&config, saved.as_ref(), &ovs_cli);
    let now = Instant::now();
    let state_dir = config.agent.state_dir.clone();
    let mut agent = Agent::new(config, dp, PacketSockets::default(), now)?;
    agent.persist_with(Persister::start(state_dir));
    agent.start(&dump, saved.as_ref(), now);
    // OVS: rule installs run on blocking threads and report back.
    let (done_tx, mut jobs_done) = mpsc::channel::<JobDone>(64);
    let mut reachability = monitor_bridges(&agent.config, &ovs_cli);
    let listen = agent.config.agent.metrics_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics endpoint: binding {listen} (agent.metrics_listen)"))?;
    agent.metrics_addr = listener.local_addr().ok();
    let (scrape_tx, mut scrapes) = mpsc::channel(8);
    tokio::spawn(crate::metrics::serve(listener, agent.telemetry.metrics.clone(), Some(scrape_tx)));
    let (tx, mut requests) = mpsc::channel::<Incoming>(16);
    let server = control::serve(&control_path, tx, agent.events()).context("starting the control socket")?;
    info!(control_socket = %control_path.display(), metrics = ?agent.metrics_addr, kernel_carrier = ?agent.kernel_carrier, "running");

    let timer = crate::timer::RoundTimer::new().context("creating the round timer (timerfd)")?;
    let mut reexec = false;
    loop {
        let now = Instant::now();
        while let Some(job) = agent.ovs_job(now) {
            let (cli, tx) = (ovs_cli.clone(), done_tx.clone());
            tokio::task::spawn_blocking(move || {
                let _ = tx.blocking_send(run_job(&cli, job));
            });
        }
        for ifindex in agent.take_link_queries() {
            let q = query.clone();
            tokio::spawn(async move { q.refresh(ifindex).await });
        }
        let due = agent.next_deadline(now).unwrap_or_else(|| now + Duration::from_secs(1));
        let input = tokio::select! {
            biased;
            () = kernel_ready(kernel_fd.as_ref()) => Input::Kernel,
            Some(ev) = links.recv() => Input::Link(ev),
            () = timer.sleep_until(due) => Input::Timer,
            Some(r) = reachability.recv() => Input::Reachability(r),
            Some(done) = jobs_done.recv() => Input::OvsDone(done),
            Some(incoming) = requests.recv() => Input::Control(incoming),
            Some(done) = scrapes.recv() => Input::Scrape(done),
            _ = term.recv() => Input::Stop("SIGTERM"),
            _ = int.recv() => Input::Stop("SIGINT"),
            _ = hup.recv() => Input::Reload,
        };
        let now = Instant::now();
        // What the kernel did by itself comes first, whatever woke us.
        agent.on_kernel_switches(now);
        match agent.route(input, config_path, now) {
            Flow::Continue => agent.persist(),
            Flow::Stop => break,
            Flow::Reexec => {
                reexec = true;
                break;
            }
        }
    }
    server.abort();
    let _ = std::fs::remove_file(&control_path);
    agent.stop();
    Ok(reexec)
}

#[cfg(test)]
mod tests;
