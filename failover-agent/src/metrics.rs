//! Prometheus metrics (the `prometheus` crate) and the small HTTP endpoint
//! (hyper) that serves them: `GET /metrics`, `GET /healthz`, nothing else.
//!
//! Names and labels are a contract (alert rules and dashboards use them):
//! see docs/metrics.md.

use std::{sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::debug;

/// Longest request head accepted (hyper's smallest buffer; longer: 431).
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request head (then 408 and
/// closed); a connection is closed after twice this whatever it does.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 16;

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
    pub gateway_frames: IntCounterVec,
    pub liveness_proof: IntGaugeVec,
    pub probe_replies_rejected: IntCounterVec,
    pub probe_rtt: HistogramVec,
    pub switchover_duration: HistogramVec,
    pub build_info: IntGaugeVec,
    pub kernel_carrier: IntGaugeVec,
    pub datapath_attached: IntGaugeVec,
    /// Always 1 per uplink; its `gateway` label (the configured address)
    /// is what fleet-wide rules aggregate by (`on(instance, group, uplink)
    /// group_left(gateway)`): one series per uplink, no label added to
    /// every other metric.
    pub gateway_info: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const GU: &[&str] = &["group", "uplink"];
const GATEWAY_INFO_HELP: &str =
    "Always 1; the uplink's configured gateway address in a label (join on instance, group, uplink)";

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
            datapath_attached: gauge(
                "failover_datapath_attached",
                "1 while the datapath's programs are attached to the uplink (ingress: tc, xdp or xdp-generic; tc_attach: tcx or netlink); 0: not attached, see the not_attached alarm",
                &["group", "uplink", "ingress", "tc_attach"],
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
            gateway_frames: counter(
                "failover_gateway_frames_total",
                "Frames from the uplink's gateway (its MAC, on that uplink) counted by the datapath: data-plane liveness",
                GU,
            ),
            liveness_proof: gauge(
                "failover_liveness_proof",
                "1 for what proved the uplink's gateway alive last (source: reply or traffic)",
                &["group", "uplink", "source"],
            ),
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
            gateway_info: gauge("failover_gateway_info", GATEWAY_INFO_HELP, &["group", "uplink", "gateway"]),
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

/// What the endpoint answers to `method` on `path` (the query left out):
/// status, content type, body.
pub fn respond(method: &Method, path: &str, metrics: &Metrics) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.encode()),
        (&Method::GET, "/healthz") => (StatusCode::OK, TEXT, "ok\n".into()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, TEXT, "not found: try /metrics or /healthz\n".into()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed: only GET\n".into()),
    }
}

/// Asks the agent to bring the gauges up to date before a scrape; the
/// answer comes back on the oneshot.
pub type Refresh = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>;

/// How long a scrape waits for the agent's refresh before it answers with
/// the gauges as they are.
pub const REFRESH_TIMEOUT: Duration = Duration::from_millis(500);

async fn answer(req: Request<Incoming>, metrics: Metrics, refresh: Option<Refresh>) -> Response<Full<Bytes>> {
    // The gauges are read at scrape time (a collector), not kept up to
    // date on every wakeup of the agent.
    if req.method() == Method::GET
        && req.uri().path() == "/metrics"
        && let Some(refresh) = &refresh
    {
        let (done, wait) = tokio::sync::oneshot::channel();
        if refresh.send(done).await.is_ok() {
            let _ = tokio::time::timeout(REFRESH_TIMEOUT, wait).await;
        }
    }
    let (code, ctype, body) = respond(req.method(), req.uri().path(), &metrics);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if code == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

/// Serves one connection: one request (no keep-alive), its head within
/// [`CLIENT_TIMEOUT`], the whole within twice that.
async fn connection(stream: TcpStream, metrics: Metrics, refresh: Option<Refresh>) {
    let service = service_fn(move |req| {
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        async move { Ok::<_, std::convert::Infallible>(answer(req, metrics, refresh).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(2 * CLIENT_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "metrics connection"),
        Err(_) => debug!("metrics connection: timed out"),
    }
}

/// Serves `metrics` on `listener` (hyper, HTTP/1), each client on its own
/// task with timeouts, at most [`MAX_CONNECTIONS`] at once: one more is
/// closed at once, so slow or idle clients cost a bounded number of tasks
/// and each slot is freed within [`CLIENT_TIMEOUT`] (head not sent) or
/// twice that. Before each scrape the agent is asked (`refresh`) to bring
/// its gauges up to date.
pub async fn serve(listener: TcpListener, metrics: Metrics, refresh: Option<Refresh>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!(%peer, "metrics: {MAX_CONNECTIONS} connections already served; closing this one");
                    drop(stream);
                    continue;
                };
                debug!(%peer, "metrics request");
                let (metrics, refresh) = (metrics.clone(), refresh.clone());
                tokio::spawn(async move {
                    connection(stream, metrics, refresh).await;
                    drop(slot);
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
        m.gateway_info.with_label_values(&["ext", "primary", "2001:db8::1"]).set(1);
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
            "failover_gateway_info{gateway=\"2001:db8::1\",group=\"ext\",uplink=\"primary\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn only_get_of_metrics_and_health_is_served() {
        let m = Metrics::new();
        assert_eq!(respond(&Method::GET, "/metrics", &m).0, StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/healthz", &m), (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()));
        assert_eq!(respond(&Method::GET, "/", &m).0, StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/metrics", &m).0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(respond(&Method::DELETE, "/healthz", &m).0, StatusCode::METHOD_NOT_ALLOWED);
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn the_endpoint_answers_over_tcp_and_slow_clients_block_nobody() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Metrics::new();
        m.ovs_reachable.set(1);
        tokio::spawn(serve(listener, m, None));
        let out = exchange(addr, b"GET /metrics?x=1 HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{out}");
        assert!(out.contains("failover_ovs_reachable 1"), "{out}");
        let out = exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n") && out.ends_with("\r\n\r\nok\n"), "{out}");
        // A client that never finishes its request does not block another.
        let _slow = TcpStream::connect(addr).await.unwrap();
        let out = exchange(addr, b"PUT /metrics HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && out.contains("allow: GET"), "{out}");
        let out = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        let out = exchange(addr, b"garbage\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', 3 * MAX_REQUEST));
        big.extend(b"\r\n\r\n");
        let out = exchange(addr, &big).await;
        assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{out}");
    }

    #[tokio::test]
    async fn at_most_max_connections_are_served_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Metrics::new(), None));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Accepted (and holding their slots) once a request behind them is.
        let mut closed = false;
        for _ in 0..50 {
            if exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await.is_empty() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(closed, "one more than {MAX_CONNECTIONS} is closed without an answer");
        // Slots come back when their clients go.
        drop(idle);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let out = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
            if out.starts_with("HTTP/1.1 200 OK\r\n") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "slots not given back: {out:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
