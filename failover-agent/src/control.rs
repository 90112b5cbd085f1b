//! The control socket: a unix stream socket (mode 0600, root only) that
//! serves `status`, `switch` and `events`, one JSON request and one JSON
//! response per connection, each a line.
//!
//! The protocol types are the contract of `failover-agent status --json`.

use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::failover::{AlarmKind as CoreAlarm, Part};
pub use crate::failover::{Decider, Gateway, Link, Reason};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
};
use tracing::{debug, warn};

/// Longest request accepted.
pub const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Switch {
        group: String,
        uplink: String,
        #[serde(default)]
        force: bool,
    },
    /// Recent events; with `follow`, the connection stays open and every
    /// new event follows as a JSON line.
    Events {
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        follow: bool,
    },
}

/// What an alarm is about, on the wire (`status`, the state file, events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AlarmCode {
    /// Replace the uplink's NIC.
    #[default]
    Nic,
    /// Replace the uplink's gateway.
    Gateway,
    NoHealthyUplink,
    Flapping,
    /// A bridge's ovs-vswitchd does not answer.
    OvsUnreachable,
    /// The datapath could not be attached to an uplink (not the NIC's fault).
    NotAttached,
}

impl AlarmCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nic => "nic",
            Self::Gateway => "gateway",
            Self::NoHealthyUplink => "no_healthy_uplink",
            Self::Flapping => "flapping",
            Self::OvsUnreachable => "ovs_unreachable",
            Self::NotAttached => "not_attached",
        }
    }

    /// The core's alarm of this kind, if it is one of the core's.
    pub fn core(self) -> Option<CoreAlarm> {
        Some(match self {
            Self::Nic => CoreAlarm::Replace(Part::Nic),
            Self::Gateway => CoreAlarm::Replace(Part::Gateway),
            Self::NoHealthyUplink => CoreAlarm::NoHealthyUplink,
            Self::Flapping => CoreAlarm::Flapping,
            Self::NotAttached => CoreAlarm::NotAttached,
            Self::OvsUnreachable => return None,
        })
    }
}

impl From<CoreAlarm> for AlarmCode {
    fn from(k: CoreAlarm) -> Self {
        match k {
            CoreAlarm::Replace(Part::Nic) => Self::Nic,
            CoreAlarm::Replace(Part::Gateway) => Self::Gateway,
            CoreAlarm::NoHealthyUplink => Self::NoHealthyUplink,
            CoreAlarm::Flapping => Self::Flapping,
            CoreAlarm::NotAttached => Self::NotAttached,
        }
    }
}

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Switchover,
    AlarmRaised,
    AlarmCleared,
    Link,
    Gateway,
    Ovs,
    #[default]
    Agent,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Switchover => "switchover",
            Self::AlarmRaised => "alarm_raised",
            Self::AlarmCleared => "alarm_cleared",
            Self::Link => "link",
            Self::Gateway => "gateway",
            Self::Ovs => "ovs",
            Self::Agent => "agent",
        }
    }
}

/// The wire enums compare with their names (`status.kind == "nic"`).
macro_rules! eq_str {
    ($($t:ty),*) => {$(
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}
eq_str!(AlarmCode, EventKind, Link, Gateway, Reason, Decider);

/// A response: `ok` and one of the payloads, or `ok: false` and `error`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
}

impl Response {
    pub fn error(e: impl Into<String>) -> Self {
        Self { ok: false, error: Some(e.into()), ..Self::default() }
    }
}

/// The agent's state (`failover-agent status --json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    pub groups: Vec<GroupStatus>,
    pub alarms: Vec<AlarmStatus>,
}

/// The agent itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    /// Where the metrics endpoint listens (`agent.metrics_listen`, resolved).
    pub metrics_listen: Option<String>,
    pub pid: u32,
    /// Whether the datapath fails over by itself (`agent.kernel_failover`).
    #[serde(default)]
    pub kernel_failover: bool,
    /// `None` when the datapath reads carrier itself; else why not (the
    /// agent then decides link faults, from netlink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_carrier_off: Option<String>,
    /// Where arriving frames are seen: `tc`, `xdp` or `xdp-generic`.
    #[serde(default)]
    pub ingress: String,
    /// How the TC programs are attached: `tcx` or `netlink`.
    #[serde(default)]
    pub tc_attach: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub bridge: String,
    pub active: Option<String>,
    /// A forced switch holds the group on an unhealthy uplink.
    pub operator_hold: bool,
    pub last_switchover: Option<SwitchoverStatus>,
    /// The OVS side (absent when `ovs_flows = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs: Option<OvsStatus>,
    pub uplinks: Vec<UplinkStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvsStatus {
    /// ovs-vswitchd answers on the bridge's management socket.
    pub reachable: bool,
    /// The agent's rules are on the bridge as the group's state wants them.
    pub rules_in_place: bool,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[expect(clippy::struct_excessive_bools, reason = "the wire format of `status --json`: one flag per fact")]
pub struct UplinkStatus {
    pub name: String,
    pub interface: String,
    pub ifindex: Option<u32>,
    pub link: Link,
    pub gateway: Gateway,
    pub gateway_ip: String,
    pub gateway_mac: Option<String>,
    pub healthy: bool,
    pub active: bool,
    pub flapping: bool,
    pub probes_sent: u64,
    pub replies: u64,
    pub replies_rejected: u64,
    /// The datapath reads this uplink's carrier itself.
    #[serde(default)]
    pub kernel_carrier: bool,
    /// Why the datapath is not attached to this uplink (None: attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverStatus {
    pub from: Option<String>,
    pub to: String,
    pub reason: Reason,
    /// The agent, or the kernel's fast rule (ratified by the agent).
    pub decided_by: Decider,
    pub at_unix_ms: u64,
    /// Decision to datapath map update, in microseconds.
    pub duration_us: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmStatus {
    pub group: String,
    pub uplink: Option<String>,
    pub kind: AlarmCode,
    pub message: String,
    pub since_unix_ms: u64,
}

/// A line of the agent's history (`failover-agent events`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Numbers events in the order they happened (from 1 in each run of
    /// the agent): `events --follow` resumes by it.
    #[serde(default)]
    pub seq: u64,
    pub at_unix_ms: u64,
    pub kind: EventKind,
    pub group: Option<String>,
    pub uplink: Option<String>,
    pub message: String,
}

/// A request from a client, with the way back.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {what}")]
    Setup {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {what} (is the agent running?)")]
    Client {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: the agent's answer is not understood: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// How long a follower may take to read one event before it is dropped.
pub const FOLLOW_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the socket (replacing a stale one), mode 0600, and serves it:
/// each request goes to `tx` and its answer back to the client; followers
/// of `events` get what `events` broadcasts.
pub fn serve(
    path: &Path,
    tx: mpsc::Sender<Incoming>,
    events: broadcast::Sender<Event>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let setup = |what| move |source| ControlError::Setup { path: path.to_path_buf(), what, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(setup("creating its directory"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed a stale control socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(setup("removing the old socket")(e)),
    }
    let listener = UnixListener::bind(path).map_err(setup("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(setup("setting mode 0600"))?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, tx.clone(), events.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Incoming>, events: broadcast::Sender<Event>) {
    // Only root (or the agent's own user) may steer the agent.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == euid => {}
        _ => return,
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut follow = None;
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Response::error(format!("no complete request within {} s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(e)) => Response::error(format!("reading the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Response::error(format!("request longer than {MAX_REQUEST} bytes")),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => Response::error(format!("malformed request: {e}")),
            Ok(request) => {
                if matches!(request, Request::Events { follow: true, .. }) {
                    // Subscribed before the history is read: nothing falls between.
                    follow = Some(events.subscribe());
                }
                let (reply, answer) = oneshot::channel();
                if tx.send(Incoming { request, reply }).await.is_err() {
                    Response::error("the agent is stopping")
                } else {
                    answer.await.unwrap_or_else(|_| Response::error("the agent is stopping"))
                }
            }
        },
    };
    let mut body = serde_json::to_string(&response).unwrap_or_else(|_| "{\"ok\":false}".into());
    body.push('\n');
    if !matches!(tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(body.as_bytes())).await, Ok(Ok(()))) {
        return;
    }
    let Some(mut rx) = follow.filter(|_| response.ok) else {
        return;
    };
    let last_sent = response.events.as_ref().and_then(|e| e.last()).map(|e| (e.at_unix_ms, e.message.clone()));
    let mut skipping = last_sent.is_some();
    loop {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // Events already in the history answer are not sent twice.
        if skipping {
            if last_sent.as_ref().is_some_and(|(t, m)| (event.at_unix_ms, &event.message) <= (*t, m)) {
                continue;
            }
            skipping = false;
        }
        let mut line = serde_json::to_string(&event).unwrap_or_default();
        line.push('\n');
        // A follower that stops reading is dropped; it holds up nobody.
        if !matches!(tokio::time::timeout(FOLLOW_WRITE_TIMEOUT, write.write_all(line.as_bytes())).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// A client's I/O error on the control socket, naming the step.
fn client_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> ControlError + 'a {
    move |source| ControlError::Client { path: path.to_path_buf(), what, source }
}

fn protocol_error(path: &Path, message: &dyn std::fmt::Display) -> ControlError {
    ControlError::Protocol { path: path.to_path_buf(), message: message.to_string() }
}

/// Connects, sends `request` as one line and returns the way to read the
/// answer lines (blocking).
fn send_request(
    path: &Path,
    request: &Request,
    read_timeout: Option<Duration>,
) -> Result<std::io::BufReader<std::os::unix::net::UnixStream>, ControlError> {
    use std::io::Write as _;
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(client_error(path, "connecting"))?;
    stream.set_read_timeout(read_timeout).map_err(client_error(path, "setting a timeout"))?;
    let mut line = serde_json::to_string(request).map_err(|e| protocol_error(path, &e))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(client_error(path, "sending"))?;
    Ok(std::io::BufReader::new(stream))
}

/// Sends an `events` request with `follow` and calls `each` with every
/// event, the recent ones first, until the agent goes away.
pub fn follow_events(path: &Path, limit: usize, mut each: impl FnMut(&Event)) -> Result<(), ControlError> {
    use std::io::BufRead as _;
    let request = Request::Events { limit: Some(limit), follow: true };
    let mut lines = send_request(path, &request, None)?.lines();
    let first =
        lines.next().ok_or_else(|| protocol_error(path, &"no answer"))?.map_err(client_error(path, "reading"))?;
    let response: Response = serde_json::from_str(&first).map_err(|e| protocol_error(path, &e))?;
    if !response.ok {
        return Err(protocol_error(path, &response.error.unwrap_or_default()));
    }
    for e in response.events.unwrap_or_default() {
        each(&e);
    }
    for l in lines {
        let l = l.map_err(client_error(path, "reading"))?;
        let e: Event = serde_json::from_str(&l).map_err(|e| protocol_error(path, &e))?;
        each(&e);
    }
    Ok(())
}

/// Sends one request and returns the agent's response (blocking).
pub fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    use std::io::BufRead as _;
    let mut reader = send_request(path, request, Some(Duration::from_secs(10)))?;
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(client_error(path, "reading the answer"))?;
    serde_json::from_str(answer.trim_end()).map_err(|e| protocol_error(path, &e))
}

/// `2026-11-26T09:57:49.197Z` (UTC) from Unix milliseconds.
pub fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// `status` as a table for a terminal.
pub fn render_status(status: &Status, now_unix_ms: u64) -> String {
    let mut out = String::new();
    if let Some(a) = &status.agent {
        if !a.kernel_failover {
            out.push_str("note: kernel_failover = false: the agent decides every switchover\n");
        } else if let Some(why) = &a.kernel_carrier_off {
            let _ = writeln!(
                out,
                "note: the datapath does not read carrier ({why}): the agent decides link faults, reading each link every probe round"
            );
        }
        if !a.ingress.is_empty() {
            let _ = writeln!(out, "datapath: ingress {}, TC attached by {}", a.ingress, a.tc_attach);
        }
    }
    for g in &status.groups {
        let _ = write!(out, "group {} (bridge {})", g.name, g.bridge);
        let _ = write!(out, "  active: {}", g.active.as_deref().unwrap_or("-"));
        if g.operator_hold {
            out.push_str("  [held by operator]");
        }
        if let Some(o) = &g.ovs {
            let state = match (o.reachable, o.rules_in_place) {
                (false, _) => "OVS unreachable",
                (true, true) => "OVS rules in place",
                (true, false) => "OVS rules pending",
            };
            let _ = write!(out, "  [{state}]");
        }
        out.push('\n');
        if let Some(s) = &g.last_switchover {
            let ago = now_unix_ms.saturating_sub(s.at_unix_ms) / 1000;
            let _ = writeln!(
                out,
                "  last switchover: {} -> {} ({}), {ago} s ago{}",
                s.from.as_deref().unwrap_or("-"),
                s.to,
                if s.decided_by == Decider::Kernel {
                    format!("{}, by the kernel", s.reason)
                } else {
                    s.reason.to_string()
                },
                s.duration_us.map_or(String::new(), |us| format!(", map updated in {us} us"))
            );
        }
        let rows: Vec<[String; 8]> = g
            .uplinks
            .iter()
            .map(|u| {
                [
                    format!("{}{}", if u.active { "* " } else { "  " }, u.name),
                    u.interface.clone(),
                    u.link.to_string(),
                    format!("{} {}", u.gateway_ip, u.gateway),
                    u.gateway_mac.clone().unwrap_or_else(|| "-".into()),
                    if u.healthy {
                        "healthy".into()
                    } else if u.flapping {
                        "flapping".into()
                    } else {
                        "faulty".into()
                    },
                    format!("{}/{}", u.replies, u.probes_sent),
                    u.replies_rejected.to_string(),
                ]
            })
            .collect();
        let header = ["  UPLINK", "IFACE", "LINK", "GATEWAY", "GATEWAY MAC", "STATE", "REPLIES/PROBES", "REJECTED"];
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut line = |cells: &[&str]| {
            let mut l = String::from("  ");
            for (c, w) in cells.iter().zip(widths) {
                let _ = write!(l, "{c:<w$}  ");
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&header);
        for r in &rows {
            line(&r.each_ref().map(String::as_str));
        }
    }
    if status.alarms.is_empty() {
        out.push_str("alarms: none\n");
    } else {
        out.push_str("alarms:\n");
        for a in &status.alarms {
            let ago = now_unix_ms.saturating_sub(a.since_unix_ms) / 1000;
            let _ = writeln!(out, "  ! {} (for {ago} s)", a.message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_format_as_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(1_795_687_069_197), "2026-11-26T09:57:49.197Z");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn requests_parse_and_bad_ones_are_named() {
        let r: Request = serde_json::from_str(r#"{"request":"switch","group":"ext","uplink":"standby"}"#).unwrap();
        assert_eq!(r, Request::Switch { group: "ext".into(), uplink: "standby".into(), force: false });
        assert_eq!(serde_json::from_str::<Request>(r#"{"request":"status"}"#).unwrap(), Request::Status);
        let e = serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).unwrap_err().to_string();
        assert!(e.contains("reboot"), "{e}");
        let e = serde_json::from_str::<Request>(r#"{"request":"switch","group":"ext"}"#).unwrap_err().to_string();
        assert!(e.contains("uplink"), "{e}");
    }

    #[test]
    fn status_renders_as_a_table() {
        let status = Status {
            agent: None,
            groups: vec![GroupStatus {
                name: "ext".into(),
                bridge: "br-ext".into(),
                active: Some("standby".into()),
                operator_hold: false,
                ovs: Some(OvsStatus { reachable: true, rules_in_place: true, last_error: None }),
                last_switchover: Some(SwitchoverStatus {
                    from: Some("primary".into()),
                    to: "standby".into(),
                    reason: Reason::NicFault,
                    decided_by: Decider::Agent,
                    at_unix_ms: 1_000,
                    duration_us: Some(42),
                }),
                uplinks: vec![
                    UplinkStatus {
                        name: "primary".into(),
                        interface: "eth1".into(),
                        link: Link::Down,
                        gateway: Gateway::Unknown,
                        gateway_ip: "192.0.2.1".into(),
                        ..UplinkStatus::default()
                    },
                    UplinkStatus {
                        name: "standby".into(),
                        interface: "eth2".into(),
                        link: Link::Up,
                        gateway: Gateway::Up,
                        gateway_ip: "192.0.2.1".into(),
                        gateway_mac: Some("02:00:00:00:0a:02".into()),
                        healthy: true,
                        active: true,
                        probes_sent: 10,
                        replies: 9,
                        ..UplinkStatus::default()
                    },
                ],
            }],
            alarms: vec![AlarmStatus {
                group: "ext".into(),
                uplink: Some("primary".into()),
                kind: AlarmCode::Nic,
                message: "replace NIC of uplink primary (eth1) in group ext".into(),
                since_unix_ms: 1_000,
            }],
        };
        let text = render_status(&status, 61_000);
        assert!(text.contains("group ext (bridge br-ext)  active: standby  [OVS rules in place]"), "{text}");
        assert!(
            text.contains("last switchover: primary -> standby (nic_fault), 60 s ago, map updated in 42 us"),
            "{text}"
        );
        assert!(text.contains("* standby"), "{text}");
        assert!(text.contains("9/10"), "{text}");
        assert!(text.contains("! replace NIC of uplink primary (eth1) in group ext (for 60 s)"), "{text}");
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status, "JSON round-trips");
    }
}
