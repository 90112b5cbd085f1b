//! What `failover-agent status` shows: the driver's state rendered into the
//! control protocol's types (no decisions here).

use crate::{
    control::{AgentInfo, AlarmCode, AlarmStatus, GroupStatus, OvsStatus, Status, SwitchoverStatus, UplinkStatus},
    datapath::{Datapath, KernelCarrier},
    failover::{Alarm, AlarmKind, Gateway, Link, alarm_message},
    probe::ProbeTransport,
};

use super::{Agent, ovs_alarm_message};

impl<D: Datapath, P: ProbeTransport> Agent<D, P> {
    /// Whether the kernel reads uplink (g, u)'s carrier itself now.
    pub(super) fn kernel_reads_carrier(&self, g: usize, u: usize) -> bool {
        let rt = self.topo.rt(g, u);
        self.kernel_carrier == KernelCarrier::On
            && rt.attached
            && rt.ifindex.is_some_and(|i| self.dp.device(rt.slot.0).is_ok_and(|d| d.addr != 0 && d.ifindex == i))
    }

    /// An alarm's text; for a datapath not attached, with the reason.
    pub(super) fn alarm_text(&self, a: &Alarm) -> String {
        let base = alarm_message(&self.config, a);
        match (a.kind, a.uplink) {
            (AlarmKind::NotAttached, Some(u)) => match &self.topo.rt(a.group, u).attach_error {
                Some(why) => format!("{base}: {why}"),
                None => base,
            },
            _ => base,
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
                    let (reachable, rules_in_place, last_error) = o.group_status(g);
                    OvsStatus { reachable, rules_in_place, last_error }
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
                        reason: s.reason,
                        decided_by: s.by,
                        at_unix_ms: self.at_unix_ms(s.at),
                        duration_us: self.telemetry.last_duration[g].map(|d| d.as_micros() as u64),
                    }),
                    uplinks: group
                        .uplinks
                        .iter()
                        .enumerate()
                        .map(|(u, cfg)| {
                            let view = self.core.uplink(g, u);
                            let rt = self.topo.rt(g, u);
                            UplinkStatus {
                                name: cfg.name.clone(),
                                interface: cfg.interface.clone(),
                                ifindex: rt.ifindex,
                                link: view.map_or(Link::Unknown, |v| v.link),
                                gateway: view.map_or(Gateway::Unknown, |v| v.gateway),
                                gateway_ip: cfg.gateway.to_string(),
                                gateway_mac: view.and_then(|v| v.gateway_mac).map(|m| crate::config::format_mac(&m)),
                                healthy: view.is_some_and(|v| v.healthy),
                                active: active == Some(u),
                                flapping: view.is_some_and(|v| v.flapping),
                                probes_sent: rt.probes_sent,
                                replies: rt.counters.valid_replies,
                                replies_rejected: rt.counters.rejected_replies,
                                kernel_carrier: self.kernel_reads_carrier(g, u),
                                attach_error: rt.attach_error.clone(),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        let ovs_alarms = self.ovs.iter().flat_map(super::reconcile::ovs::OvsSync::alarmed).map(|bridge| AlarmStatus {
            group: self.config.groups.iter().find(|g| &g.bridge == bridge).map(|g| g.name.clone()).unwrap_or_default(),
            uplink: None,
            kind: AlarmCode::OvsUnreachable,
            message: ovs_alarm_message(bridge),
            since_unix_ms: self.journal.ovs_alarm_since.get(bridge).copied().unwrap_or_default(),
        });
        let alarms = self
            .core
            .alarms()
            .map(|a| {
                let group = &self.config.groups[a.group];
                AlarmStatus {
                    group: group.name.clone(),
                    uplink: a.uplink.map(|u| group.uplinks[u].name.clone()),
                    kind: a.kind.into(),
                    message: self.alarm_text(a),
                    since_unix_ms: self.journal.alarm_since.get(a).copied().unwrap_or_default(),
                }
            })
            .chain(ovs_alarms)
            .collect();
        Status {
            agent: Some(AgentInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                metrics_listen: self.metrics_addr.map(|a| a.to_string()),
                pid: std::process::id(),
                kernel_failover: self.config.agent.kernel_failover,
                kernel_carrier_off: match &self.kernel_carrier {
                    KernelCarrier::On => None,
                    KernelCarrier::Off(why) => Some(why.clone()),
                },
                ingress: self.dp.hooks().ingress.as_str().to_string(),
                tc_attach: self.dp.hooks().tc.as_str().to_string(),
            }),
            groups,
            alarms,
        }
    }
}
