//! Prometheus metrics: counters moved as things happen (probes, replies,
//! switchovers), gauges set from the core's view when a scrape asks for
//! them ([`Telemetry::refresh`], a collector read at scrape time), not on
//! every wakeup of the loop.

use std::time::Duration;

use crate::{
    config::Config,
    datapath::Counters,
    failover::{AlarmKind, Core, Decider, Gateway, Link, Part, Proof, Reason},
    metrics::Metrics,
};

/// The metrics and what they are derived from.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Metrics,
    /// The last one of each group.
    pub last_duration: Vec<Option<Duration>>,
}

/// Per-uplink facts the gauges need besides the core's view.
#[derive(Clone, Copy, Debug, Default)]
pub struct UplinkFacts {
    pub kernel_carrier: bool,
    pub attached: bool,
    /// The ingress mode and TC attach kind, as metric label values.
    pub hooks: (&'static str, &'static str),
}

impl Telemetry {
    pub fn new(groups: usize) -> Self {
        let metrics = Metrics::new();
        metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self { metrics, last_duration: vec![None; groups] }
    }

    /// New kernel counters of an uplink: the deltas go to the counters, the
    /// RTT of a new reply to the histogram.
    pub fn counters(&self, labels: &[&str; 2], old: &Counters, new: &Counters, last_probe: Option<Duration>) {
        // Kernel counters start over when programs are attached anew.
        let delta = |new: u64, old: u64| if new >= old { new - old } else { new };
        let m = &self.metrics;
        m.probe_replies.with_label_values(labels).inc_by(delta(new.valid_replies, old.valid_replies));
        m.gateway_frames.with_label_values(labels).inc_by(delta(new.gateway_frames, old.gateway_frames));
        m.probe_replies_rejected.with_label_values(labels).inc_by(delta(new.rejected_replies, old.rejected_replies));
        if new.valid_replies != old.valid_replies
            && let (Some(reply), Some(sent)) = (new.last_reply, last_probe)
            && let Some(rtt) = reply.checked_sub(sent)
        {
            m.probe_rtt.with_label_values(labels).observe(rtt.as_secs_f64());
        }
    }

    /// A probe went out.
    pub fn probe_sent(&self, labels: &[&str; 2]) {
        self.metrics.probes_sent.with_label_values(labels).inc();
    }

    /// A switchover reached the datapath `took` after its decision.
    pub fn switchover(&mut self, g: usize, labels: [&str; 3], reason: Reason, by: Decider, took: Option<Duration>) {
        let [group, from, to] = labels;
        self.metrics.switchovers.with_label_values(&[group, from, to, reason.as_str(), by.as_str()]).inc();
        self.last_duration[g] = took;
        if let Some(took) = took {
            self.metrics.switchover_duration.with_label_values(&[group]).observe(took.as_secs_f64());
        }
    }

    /// Sets every gauge from the current state (at scrape time).
    pub fn refresh(
        &self,
        config: &Config,
        core: &Core,
        facts: impl Fn(usize, usize) -> UplinkFacts,
        bridge_reachable: Option<&dyn Fn(&str) -> bool>,
    ) {
        let m = &self.metrics;
        gateway_info(m, config);
        for (g, group) in config.groups.iter().enumerate() {
            let active = core.active(g);
            let mut flapping = false;
            for (u, uplink) in group.uplinks.iter().enumerate() {
                let labels = [group.name.as_str(), uplink.name.as_str()];
                let view = core.uplink(g, u);
                m.active_uplink.with_label_values(&labels).set(i64::from(active == Some(u)));
                m.uplink_carrier_up.with_label_values(&labels).set(i64::from(view.is_some_and(|v| v.link == Link::Up)));
                m.gateway_reachable
                    .with_label_values(&labels)
                    .set(i64::from(view.is_some_and(|v| v.gateway == Gateway::Up)));
                let f = facts(g, u);
                m.kernel_carrier.with_label_values(&labels).set(i64::from(f.kernel_carrier));
                m.datapath_attached
                    .with_label_values(&[group.name.as_str(), uplink.name.as_str(), f.hooks.0, f.hooks.1])
                    .set(i64::from(f.attached));
                flapping |= view.is_some_and(|v| v.flapping);
                let proof = view.and_then(|v| v.last_proof);
                for source in [Proof::Reply, Proof::Traffic] {
                    m.liveness_proof
                        .with_label_values(&[group.name.as_str(), uplink.name.as_str(), source.as_str()])
                        .set(i64::from(proof == Some(source)));
                }
                for (part, kind) in [("nic", Part::Nic), ("gateway", Part::Gateway)] {
                    let raised = core
                        .alarms()
                        .any(|a| a.group == g && a.uplink == Some(u) && a.kind == AlarmKind::Replace(kind));
                    m.alarm
                        .with_label_values(&[group.name.as_str(), uplink.name.as_str(), part])
                        .set(i64::from(raised));
                }
            }
            let no_healthy = core.alarms().any(|a| a.group == g && a.kind == AlarmKind::NoHealthyUplink);
            m.no_healthy_uplink.with_label_values(&[group.name.as_str()]).set(i64::from(no_healthy));
            m.flapping.with_label_values(&[group.name.as_str()]).set(i64::from(flapping));
        }
        let mut all_reachable = true;
        if let Some(reachable) = bridge_reachable {
            for group in &config.groups {
                let up = reachable(&group.bridge);
                all_reachable &= up;
                m.ovs_bridge_reachable.with_label_values(&[group.bridge.as_str()]).set(i64::from(up));
            }
        }
        m.ovs_reachable.set(i64::from(all_reachable));
    }
}

/// One `failover_gateway_info` series per configured uplink; one a reload
/// took away (or whose gateway changed) is removed, without a moment in
/// which a scrape finds none for an uplink.
fn gateway_info(m: &Metrics, config: &Config) {
    use prometheus::core::Collector as _;
    let wanted: Vec<[String; 3]> = config
        .groups
        .iter()
        .flat_map(|g| g.uplinks.iter().map(|u| [g.name.clone(), u.name.clone(), u.gateway.to_string()]))
        .collect();
    for family in m.gateway_info.collect() {
        for metric in family.get_metric() {
            let value = |name: &str| {
                metric.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string()).unwrap_or_default()
            };
            let have = [value("group"), value("uplink"), value("gateway")];
            if !wanted.contains(&have) {
                let labels: Vec<&str> = have.iter().map(String::as_str).collect();
                let _ = m.gateway_info.remove_label_values(&labels);
            }
        }
    }
    for labels in &wanted {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        m.gateway_info.with_label_values(&labels).set(1);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(standby_gateway: &str) -> Config {
        let text = format!(
            "[[group]]\nname = \"ext\"\nbridge = \"br\"\n\
             [[group.uplink]]\nname = \"primary\"\ninterface = \"eth0\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\
             [[group.uplink]]\nname = \"standby\"\ninterface = \"eth1\"\ngateway = \"{standby_gateway}\"\nprobe_source = \"2001:db8::250\"\n"
        );
        crate::config::parse(&text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn one_gateway_info_per_uplink_and_a_changed_gateway_replaces_its_series() {
        let m = Metrics::new();
        gateway_info(&m, &config("2001:db8::1"));
        let text = m.encode();
        assert!(
            text.contains("failover_gateway_info{gateway=\"192.0.2.1\",group=\"ext\",uplink=\"primary\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("failover_gateway_info{gateway=\"2001:db8::1\",group=\"ext\",uplink=\"standby\"} 1"),
            "{text}"
        );
        // A reload gives the standby another gateway: the old address goes.
        gateway_info(&m, &config("2001:db8::2"));
        let text = m.encode();
        assert!(
            text.contains("failover_gateway_info{gateway=\"2001:db8::2\",group=\"ext\",uplink=\"standby\"} 1"),
            "{text}"
        );
        assert!(!text.contains("2001:db8::1\""), "{text}");
        assert_eq!(text.matches("failover_gateway_info{").count(), 2, "{text}");
    }
}
