//! The core's actions carried out: the datapath first (one map update is
//! the switchover), then the alarms, probes, learned MACs and OVS rules,
//! each through the room that owns it.

use std::time::Instant;

use tracing::{error, info, warn};

use super::{Agent, journal::unix_ms_now, monotonic, reconcile::datapath as dp_plan};
use crate::{
    config::format_mac,
    control::{self, EventKind},
    datapath::Datapath,
    failover::{Action, Decider},
    probe::{ProbeSpec, ProbeTransport, probe_frame},
};

impl<D: Datapath, P: ProbeTransport> Agent<D, P> {
    /// Carries out what the core decided, in order.
    pub(super) fn apply_actions(&mut self, now: Instant) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::SetActive { group, uplink, previous, reason, by, decided_at } => {
                    // The map update first: this is the switchover (ratified
                    // or not, the state is written whole).
                    let want = dp_plan::group_plan(&self.config, &self.topo, &self.core, group, self.steer(group, now));
                    let result = self.dp.set_group(self.topo.ids[group].0, &want);
                    let took = decided_at.elapsed();
                    let g = &self.config.groups[group];
                    let from = previous.map_or("-", |p| g.uplinks[p].name.as_str()).to_string();
                    let to = g.uplinks[uplink].name.clone();
                    let name = g.name.clone();
                    match result {
                        Ok(()) => {
                            let took = (by == Decider::Agent).then_some(took);
                            self.telemetry.switchover(group, [&name, &from, &to], reason, by, took);
                            if by == Decider::Agent {
                                let us = took.unwrap_or_default().as_micros() as u64;
                                info!(group = %name, from, to = %to, reason = reason.as_str(), duration_us = us, "switchover");
                                let msg = format!(
                                    "{from} -> {to} ({}), map updated {us} us after the decision",
                                    reason.as_str()
                                );
                                self.journal.record(EventKind::Switchover, Some(&name), Some(&to), msg);
                            }
                        }
                        Err(e) => {
                            error!(group = %name, to = %to, error = %anyhow::Error::from(e), "switchover: writing the datapath failed");
                        }
                    }
                    self.dirty = true;
                }
                Action::MirrorToOvs { group, .. } => self.ovs_desire(group),
                Action::RaiseAlarm(alarm) => {
                    let message = self.alarm_text(&alarm);
                    let group = self.config.groups[alarm.group].name.clone();
                    let kind = control::AlarmCode::from(alarm.kind);
                    warn!(target: "failover_agent::alarm", group = %group, kind = kind.as_str(), state = "raised", "{message}");
                    self.journal.alarm_since.insert(alarm, unix_ms_now());
                    let uplink = alarm.uplink.map(|u| self.config.groups[alarm.group].uplinks[u].name.clone());
                    self.journal.record(EventKind::AlarmRaised, Some(&group), uplink.as_deref(), message);
                    self.dirty = true;
                }
                Action::ClearAlarm(alarm) => {
                    let message = self.alarm_text(&alarm);
                    let group = self.config.groups[alarm.group].name.clone();
                    let kind = control::AlarmCode::from(alarm.kind);
                    info!(target: "failover_agent::alarm", group = %group, kind = kind.as_str(), state = "cleared", "{message}");
                    self.journal.alarm_since.remove(&alarm);
                    let uplink = alarm.uplink.map(|u| self.config.groups[alarm.group].uplinks[u].name.clone());
                    self.journal.record(EventKind::AlarmCleared, Some(&group), uplink.as_deref(), message);
                    self.dirty = true;
                }
                Action::SendProbe { group, uplink, gateway_mac } => self.send_probe(group, uplink, gateway_mac),
                Action::GatewayMac { group, uplink, mac, replaced } => {
                    self.gateway_mac(group, uplink, mac, replaced);
                    self.sync_group(group, now);
                    self.ovs_desire(group);
                }
            }
        }
    }

    pub(super) fn gateway_mac(&mut self, g: usize, u: usize, mac: Option<[u8; 6]>, replaced: Option<[u8; 6]>) {
        let (group, name) = self.names(g, u);
        let (group, name) = (group.to_string(), name.to_string());
        let mut what = mac.map_or_else(
            || "forgotten (accepting any until learned again)".to_string(),
            |m| format!("learned: {}", format_mac(&m)),
        );
        if let Some(old) = replaced {
            // A replaced gateway, or someone answering in its name: worth a look.
            what = format!("{what}, replacing {} (a new gateway? if not, look for a spoofer)", format_mac(&old));
            warn!(group = %group, uplink = %name, "gateway MAC {what}");
        } else {
            info!(group = %group, uplink = %name, "gateway MAC {what}");
        }
        self.journal.record(EventKind::Gateway, Some(&group), Some(&name), format!("{name} gateway MAC {what}"));
        if self.topo.rt(g, u).attached {
            let cfg = dp_plan::uplink_config(&self.config, &self.topo, &self.core, g, u);
            let ifname = self.config.groups[g].uplinks[u].interface.clone();
            if let Err(e) = self.dp.update_uplink(&ifname, &cfg) {
                warn!(interface = %ifname, error = %anyhow::Error::from(e), "updating the uplink's gateway MAC");
            }
        }
    }

    pub(super) fn send_probe(&mut self, g: usize, u: usize, gateway_mac: Option<[u8; 6]>) {
        let cfg = &self.config.groups[g].uplinks[u];
        let Some(own_mac) = self.topo.rt(g, u).mac else {
            return;
        };
        let spec = ProbeSpec { own_mac, source: cfg.probe_source, gateway: cfg.gateway, gateway_mac, vlan: cfg.vlan };
        let Some(frame) = probe_frame(&spec) else {
            return;
        };
        let ifname = cfg.interface.clone();
        // Taken before sending: on a veth the reply can be counted before send() returns.
        let sent_at = monotonic();
        match self.probes.send(&ifname, &frame) {
            Ok(()) => {
                let (group, uplink) = self.names(g, u);
                self.telemetry.probe_sent(&[group, uplink]);
                let rt = self.topo.rt_mut(g, u);
                rt.last_probe_mono = Some(sent_at);
                rt.probes_sent += 1;
                if rt.probe_failing {
                    rt.probe_failing = false;
                    info!(interface = %ifname, "probes are sent again");
                }
            }
            Err(e) => {
                let rt = self.topo.rt_mut(g, u);
                if !rt.probe_failing {
                    rt.probe_failing = true;
                    warn!(error = %e, "sending a probe failed (logged once until it works again)");
                }
            }
        }
    }
}
