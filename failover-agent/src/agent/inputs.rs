//! What each input does to the agent: a link change, the kernel's own
//! switchovers, a probe round, an operator's request. Each hands the facts
//! to the core and has its actions carried out at once (the map update of a
//! decision first), then records what happened.

use std::time::{Duration, Instant};

use failover_common::{KernelSwitch, rule::Fault};
use tracing::{error, info, warn};

use super::{
    Agent, FULL_SYNC_EVERY, LINK_READ_EVERY, PIN_CHECK_EVERY, monotonic, reconcile::datapath as dp_plan,
    topology::Topology,
};
use crate::{
    config::format_mac,
    control::{EventKind, Request, Response},
    datapath::{AttachOutcome, Datapath, KernelCarrier},
    failover::{Link, SwitchDone},
    link::{LinkEvent, LinkState},
    probe::ProbeTransport,
};

impl<D: Datapath, P: ProbeTransport> Agent<D, P> {
    /// A link changed (or was dumped, or read anew).
    pub fn on_link(&mut self, ev: &LinkEvent, now: Instant) {
        let Some((g, u)) = Topology::find(&self.config, &ev.ifname) else {
            return;
        };
        let link = match ev.state {
            LinkState::Gone => {
                let rt = self.topo.rt_mut(g, u);
                rt.ifindex = None;
                rt.attached = false;
                Link::Absent
            }
            LinkState::Up | LinkState::Down => {
                let rt = self.topo.rt_mut(g, u);
                let recreated = rt.ifindex != Some(ev.ifindex);
                let mac_changed = ev.mac.is_some() && ev.mac != rt.mac;
                rt.ifindex = Some(ev.ifindex);
                rt.mac = ev.mac.or(rt.mac);
                if recreated || !rt.attached {
                    self.attach(g, u);
                    self.sync_group(g, now);
                } else if mac_changed {
                    // Replies must be addressed to the uplink's current MAC.
                    let cfg = dp_plan::uplink_config(&self.config, &self.topo, &self.core, g, u);
                    let ifname = &self.config.groups[g].uplinks[u].interface;
                    info!(interface = %ifname, mac = %format_mac(&cfg.own_mac), "the uplink's MAC changed");
                    if let Err(e) = self.dp.update_uplink(ifname, &cfg) {
                        warn!(interface = %ifname, error = %anyhow::Error::from(e), "updating the uplink's MAC");
                    }
                }
                if !self.topo.rt(g, u).attached {
                    // Without the datapath the uplink can be neither probed
                    // nor used; its own alarm says so (not "replace NIC").
                    Link::Detached
                } else if ev.state == LinkState::Up {
                    Link::Up
                } else {
                    Link::Down
                }
            }
        };
        let changed = self.core.uplink(g, u).is_some_and(|v| v.link != link);
        self.core.handle_link(g, u, link, now);
        // The flip first; then the words about it.
        self.apply_actions(now);
        if changed {
            let cfg = &self.config.groups[g].uplinks[u];
            let msg = format!("{} ({}) link {}", cfg.name, cfg.interface, link.as_str());
            info!(group = %self.config.groups[g].name, uplink = %cfg.name, interface = %cfg.interface, link = link.as_str(), "link");
            let (group, uplink) = (self.config.groups[g].name.clone(), cfg.name.clone());
            self.journal.record(EventKind::Link, Some(&group), Some(&uplink), msg);
        }
    }

    /// The kernel switched groups by itself: the core ratifies each
    /// switchover (active uplink, alarm naming the part, OVS rules).
    pub fn on_kernel_switches(&mut self, now: Instant) {
        let reports = self.dp.kernel_switches();
        if reports.is_empty() {
            return;
        }
        let mono_now = monotonic();
        for KernelSwitch { group, from_ifindex, to_ifindex, reason, at_ns } in reports {
            let Some(g) = self.topo.group_of(group) else {
                continue;
            };
            let (Some(from), Some(to), Some(fault)) =
                (self.topo.uplink_of(g, from_ifindex), self.topo.uplink_of(g, to_ifindex), Fault::from_code(reason))
            else {
                warn!(group, from_ifindex, to_ifindex, reason, "a kernel switchover report that matches no uplink");
                continue;
            };
            self.core.handle_kernel_switch(g, from, to, fault, now);
            self.apply_actions(now);
            let ago = mono_now.saturating_sub(Duration::from_nanos(at_ns));
            let (gname, fname) = self.names(g, from);
            let (gname, fname, tname) = (gname.to_string(), fname.to_string(), self.names(g, to).1.to_string());
            let why = match fault {
                Fault::Carrier => "its carrier was lost",
                Fault::Silence => "its gateway went silent",
            };
            info!(group = %gname, from = %fname, to = %tname, reason = why, ratified_after_us = ago.as_micros() as u64, "the kernel switched by itself; ratified");
            self.journal.record(
                EventKind::Switchover,
                Some(&gname),
                Some(&tname),
                format!("{fname} -> {tname} by the kernel ({why}), ratified {} ms later", ago.as_millis()),
            );
            if fault == Fault::Carrier {
                // Read the link now: the truth, and the kernel's held-back
                // notification released.
                self.link_queries.insert(from_ifindex);
            }
        }
    }

    /// Interfaces the loop should read anew.
    pub fn take_link_queries(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.link_queries).into_iter().collect()
    }

    /// A probe round is due: read the datapath's counters, then let the core judge.
    pub fn on_timeout(&mut self, now: Instant) {
        // Only the groups whose round is due: each read is a system call,
        // and at 1 ms probes the loop wakes for one group at a time.
        let due = self.core.due_groups(now);
        for (g, u) in self.topo.positions().filter(|(g, _)| due.contains(g)).collect::<Vec<_>>() {
            if !self.topo.rt(g, u).attached {
                continue;
            }
            match self.dp.counters(self.topo.rt(g, u).slot.0) {
                Ok(c) => {
                    let rt = self.topo.rt(g, u);
                    let (group, uplink) = self.names(g, u);
                    self.telemetry.counters(&[group, uplink], &rt.counters, &c, rt.last_probe_mono);
                    self.topo.rt_mut(g, u).counters = c;
                    self.core.handle_replies(g, u, c.valid_replies, c.gateway_mac);
                    self.core.handle_traffic(g, u, c.gateway_frames);
                }
                Err(e) => warn!(error = %anyhow::Error::from(e), "reading counters"),
            }
        }
        self.core.handle_timeout(now);
        self.apply_actions(now);
        self.ovs_alarms(now);
        if now >= self.next_pin_check {
            self.next_pin_check = now + PIN_CHECK_EVERY;
            self.check_pins(now);
            self.queue_link_reads();
        } else if self.kernel_carrier != KernelCarrier::On && now >= self.next_link_read {
            self.next_link_read = now + LINK_READ_EVERY;
            self.queue_link_reads();
        }
        // The groups of this round are compared with the kernel's state;
        // every group at least every FULL_SYNC_EVERY (rules that have
        // settled let the datapath stop redirecting).
        let all = now >= self.next_full_sync;
        if all {
            self.next_full_sync = now + FULL_SYNC_EVERY;
        }
        for g in 0..self.config.groups.len() {
            if all || due.contains(&g) {
                self.sync_group(g, now);
            }
        }
    }

    /// Reads every uplink's link anew: each probe round (at most every
    /// [`LINK_READ_EVERY`]) when the kernel cannot read carrier (the
    /// user-space fast path: a read also releases the kernel's held-back
    /// notification), once a second otherwise (events lost to a netlink
    /// overrun).
    pub(super) fn queue_link_reads(&mut self) {
        let ifindexes: Vec<u32> = self.topo.positions().filter_map(|(g, u)| self.topo.rt(g, u).ifindex).collect();
        self.link_queries.extend(ifindexes);
    }

    /// Pins removed by hand are put back, and uplinks whose link pin went
    /// (which detaches the programs) are attached again.
    pub(super) fn check_pins(&mut self, now: Instant) {
        match self.dp.repair_pins() {
            Ok(restored) if !restored.is_empty() => {
                let list: Vec<String> = restored.iter().map(|p| p.display().to_string()).collect();
                warn!(pins = ?list, "pinned maps had been removed: pinned again");
                self.journal.record(
                    EventKind::Agent,
                    None,
                    None,
                    format!("pinned maps had been removed; pinned again: {}", list.join(", ")),
                );
            }
            Ok(_) => {}
            Err(e) => error!(error = %anyhow::Error::from(e), "checking the datapath's pins"),
        }
        for (g, u) in self.topo.positions().collect::<Vec<_>>() {
            if !self.topo.rt(g, u).attached {
                continue;
            }
            let cfg = dp_plan::uplink_config(&self.config, &self.topo, &self.core, g, u);
            let ifname = self.config.groups[g].uplinks[u].interface.clone();
            match self.dp.attach_uplink(&ifname, &cfg) {
                Ok(AttachOutcome::Reused) => {}
                Ok(AttachOutcome::Attached) => {
                    warn!(interface = %ifname, "the programs had been detached (a link pin removed?): attached again");
                    let (group, uplink) = self.names(g, u);
                    let (group, uplink) = (group.to_string(), uplink.to_string());
                    self.journal.record(
                        EventKind::Agent,
                        Some(&group),
                        Some(&uplink),
                        format!("{ifname}: programs had been detached; attached again"),
                    );
                    self.sync_group(g, now);
                }
                Err(e) => {
                    error!(interface = %ifname, error = %anyhow::Error::from(e), "re-checking the uplink's programs");
                }
            }
        }
    }

    /// Answers a control request.
    pub fn on_request(&mut self, request: Request, now: Instant) -> Response {
        match request {
            Request::Status => Response { ok: true, status: Some(self.status()), ..Response::default() },
            Request::Events { limit, .. } => {
                Response { ok: true, events: Some(self.journal.recent(limit.unwrap_or(100))), ..Response::default() }
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
                        self.apply_actions(now);
                        // A hold (forced onto an unhealthy uplink) reaches the kernel's policy.
                        self.sync_group(g, now);
                        let message = match done {
                            SwitchDone::Switched => format!("group {group}: traffic now on {uplink}"),
                            SwitchDone::AlreadyActive => format!("group {group}: {uplink} is already active"),
                        };
                        Response { ok: true, message: Some(message), ..Response::default() }
                    }
                    Err(e) => Response::error(format!("group {group:?}, uplink {uplink:?}: {e}")),
                }
            }
        }
    }
}
