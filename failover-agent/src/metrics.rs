//! Prometheus metrics (the `prometheus` crate) and the small HTTP endpoint
//! that serves them: `GET /metrics`, `GET /healthz`, nothing else.
//!
//! Names and labels are a contract (alert rules and dashboards use them):
//! see the README's "Metrics" section.

use std::time::Duration;

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request or read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub active_uplink: IntGaugeVec,
    pub uplink_carrier_up: IntGaugeVec,
    pub gateway_reachable: IntGaugeVec,
    pub alarm: IntGaugeVec,
    pub no_healthy_uplink: IntGaugeVec,
    pub flapping: IntGaugeVec,
    pub ovs_reachable: IntGauge,
    pub ovs_bridge_reachable: IntGaugeVec,
    pub switchovers: IntCounterVec,
    pub probes_sent: IntCounterVec,
    pub probe_replies: IntCounterVec,
    pub probe_replies_rejected: IntCounterVec,
    pub probe_rtt: HistogramVec,
    pub switchover_duration: HistogramVec,
    pub build_info: IntGaugeVec,
    pub kernel_carrier: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const GU: &[&str] = &["group", "uplink"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics, registered in a registry of their own.
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let ovs_reachable = IntGauge::new(
            "failover_ovs_reachable",
            "1 while every bridge the agent manages answers over OpenFlow (1 as well when it manages none)",
        )
        .expect("valid metric");
        registry.register(Box::new(ovs_reachable.clone())).expect("registered once");
        Self {
            active_uplink: gauge("failover_active_uplink", "1 for the group's active uplink, else 0", GU),
            uplink_carrier_up: gauge("failover_uplink_carrier_up", "1 while the uplink's link is up with carrier", GU),
            gateway_reachable: gauge(
                "failover_gateway_reachable",
                "1 while the uplink's gateway answers its probes",
                GU,
            ),
            alarm: gauge(
                "failover_alarm",
                "1 while a part of an uplink needs replacing (part: nic or gateway)",
                &["group", "uplink", "part"],
            ),
            no_healthy_uplink: gauge(
                "failover_no_healthy_uplink",
                "1 while no uplink of the group is healthy",
                &["group"],
            ),
            flapping: gauge("failover_flapping", "1 while an uplink of the group is flapping", &["group"]),
            ovs_reachable,
            ovs_bridge_reachable: gauge(
                "failover_ovs_bridge_reachable",
                "1 while the bridge answers over OpenFlow",
                &["bridge"],
            ),
            kernel_carrier: gauge(
                "failover_kernel_carrier_reads",
                "1 while the datapath reads this uplink's carrier itself (its fast rule covers link faults); 0: the agent decides them",
                &["group", "uplink"],
            ),
            switchovers: counter(
                "failover_switchovers_total",
                "Switchovers of the active uplink",
                &["group", "from", "to", "reason", "decided_by"],
            ),
            probes_sent: counter(
                "failover_probes_sent_total",
                "Probes (ARP requests or neighbor solicitations) sent",
                GU,
            ),
            probe_replies: counter("failover_probe_replies_total", "Valid probe replies counted by the datapath", GU),
            probe_replies_rejected: counter(
                "failover_probe_replies_rejected_total",
                "Replies addressed to the agent that failed validation (spoofed, misdirected, wrong VLAN, ...)",
                GU,
            ),
            probe_rtt: histogram(
                "failover_probe_rtt_seconds",
                "Time from sending a probe to the datapath seeing its reply",
                GU,
                vec![5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0],
            ),
            switchover_duration: histogram(
                "failover_switchover_duration_seconds",
                "Time from the decision to switch to the datapath map update",
                &["group"],
                vec![1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1],
            ),
            build_info: gauge("failover_build_info", "Always 1; the agent's version in a label", &["version"]),
            registry,
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).unwrap_or_default();
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// What the endpoint answers to a request head.
pub fn respond(head: &str, metrics: &Metrics) -> (u16, &'static str, String) {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return (400, "text/plain; charset=utf-8", "bad request\n".into());
    }
    let path = target.unwrap_or_default().split('?').next().unwrap_or_default();
    match (method, path) {
        (Some("GET"), "/metrics") => (200, "text/plain; version=0.0.4; charset=utf-8", metrics.encode()),
        (Some("GET"), "/healthz") => (200, "text/plain; charset=utf-8", "ok\n".into()),
        (Some("GET"), _) => (404, "text/plain; charset=utf-8", "not found: try /metrics or /healthz\n".into()),
        _ => (405, "text/plain; charset=utf-8", "method not allowed: only GET\n".into()),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Asks the agent to bring the gauges up to date before a scrape; the
/// answer comes back on the oneshot.
pub type Refresh = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>;

/// How long a scrape waits for the agent's refresh before it answers with
/// the gauges as they are.
pub const REFRESH_TIMEOUT: Duration = Duration::from_millis(500);

async fn handle(mut stream: TcpStream, metrics: Metrics, refresh: Option<Refresh>) {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let read = tokio::time::timeout(CLIENT_TIMEOUT, async {
        loop {
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || buf[..len].windows(2).any(|w| w == b"\n\n") {
                return Some(true);
            }
            if len == buf.len() {
                return Some(false);
            }
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => len += n,
            }
        }
    })
    .await;
    let (code, ctype, body) = match read {
        Err(_) => (408, "text/plain; charset=utf-8", "request timeout\n".to_string()),
        Ok(None) => return,
        Ok(Some(false)) => (431, "text/plain; charset=utf-8", "request head too large\n".to_string()),
        Ok(Some(true)) => {
            let head = String::from_utf8_lossy(&buf[..len]).into_owned();
            // The gauges are read at scrape time (a collector), not kept
            // up to date on every wakeup of the agent.
            if head.starts_with("GET /metrics")
                && let Some(refresh) = &refresh
            {
                let (done, wait) = tokio::sync::oneshot::channel();
                if refresh.send(done).await.is_ok() {
                    let _ = tokio::time::timeout(REFRESH_TIMEOUT, wait).await;
                }
            }
            respond(&head, &metrics)
        }
    };
    let mut answer = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    if code == 405 {
        answer.push_str("Allow: GET\r\n");
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Serves `metrics` on `listener`, each client on its own task with
/// timeouts, so a slow client holds up nobody; before each scrape the agent
/// is asked (`refresh`) to bring its gauges up to date.
pub async fn serve(listener: TcpListener, metrics: Metrics, refresh: Option<Refresh>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "metrics request");
                tokio::spawn(handle(stream, metrics.clone(), refresh.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exposed_with_its_labels() {
        let m = Metrics::new();
        m.active_uplink.with_label_values(&["ext", "primary"]).set(1);
        m.uplink_carrier_up.with_label_values(&["ext", "primary"]).set(1);
        m.gateway_reachable.with_label_values(&["ext", "primary"]).set(1);
        m.alarm.with_label_values(&["ext", "standby", "nic"]).set(1);
        m.no_healthy_uplink.with_label_values(&["ext"]).set(0);
        m.flapping.with_label_values(&["ext"]).set(0);
        m.ovs_reachable.set(1);
        m.switchovers.with_label_values(&["ext", "primary", "standby", "nic_fault", "kernel"]).inc();
        m.kernel_carrier.with_label_values(&["ext", "primary"]).set(1);
        m.probes_sent.with_label_values(&["ext", "primary"]).inc_by(10);
        m.probe_replies.with_label_values(&["ext", "primary"]).inc_by(9);
        m.probe_replies_rejected.with_label_values(&["ext", "primary"]).inc();
        m.probe_rtt.with_label_values(&["ext", "primary"]).observe(0.0003);
        m.switchover_duration.with_label_values(&["ext"]).observe(0.00002);
        let text = m.encode();
        for line in [
            "failover_active_uplink{group=\"ext\",uplink=\"primary\"} 1",
            "failover_uplink_carrier_up{group=\"ext\",uplink=\"primary\"} 1",
            "failover_gateway_reachable{group=\"ext\",uplink=\"primary\"} 1",
            "failover_alarm{group=\"ext\",part=\"nic\",uplink=\"standby\"} 1",
            "failover_no_healthy_uplink{group=\"ext\"} 0",
            "failover_flapping{group=\"ext\"} 0",
            "failover_ovs_reachable 1",
            "failover_kernel_carrier_reads{group=\"ext\",uplink=\"primary\"} 1",
            "failover_switchovers_total{decided_by=\"kernel\",from=\"primary\",group=\"ext\",reason=\"nic_fault\",to=\"standby\"} 1",
            "failover_probes_sent_total{group=\"ext\",uplink=\"primary\"} 10",
            "failover_probe_replies_total{group=\"ext\",uplink=\"primary\"} 9",
            "failover_probe_replies_rejected_total{group=\"ext\",uplink=\"primary\"} 1",
            "failover_probe_rtt_seconds_bucket{group=\"ext\",uplink=\"primary\",le=\"0.0005\"} 1",
            "failover_switchover_duration_seconds_count{group=\"ext\"} 1",
            "# TYPE failover_probe_rtt_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn only_get_of_metrics_and_health_is_served() {
        let m = Metrics::new();
        assert_eq!(respond("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m).0, 200);
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.0\r\n\r\n", &m).0, 200);
        assert_eq!(respond("GET /healthz HTTP/1.1\r\n\r\n", &m), (200, "text/plain; charset=utf-8", "ok\n".into()));
        assert_eq!(respond("GET / HTTP/1.1\r\n\r\n", &m).0, 404);
        assert_eq!(respond("POST /metrics HTTP/1.1\r\n\r\n", &m).0, 405);
        assert_eq!(respond("DELETE /healthz HTTP/1.1\r\n\r\n", &m).0, 405);
        assert_eq!(respond("garbage\r\n\r\n", &m).0, 400);
        assert_eq!(respond("", &m).0, 400);
    }

    #[tokio::test]
    async fn the_endpoint_answers_over_tcp_and_slow_clients_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new();
        m.ovs_reachable.set(1);
        tokio::spawn(serve(listener, m, None));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("failover_ovs_reachable 1"));
        // A client that never finishes its request does not block another.
        let _slow = TcpStream::connect(addr).await.unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PUT /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && out.contains("Allow: GET"), "{out}");
    }
}
