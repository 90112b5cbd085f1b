//! The agent's configuration file (TOML): parsing and validation.
//!
//! Pure: reads nothing but the text it is given (and [`load`] the file).
//! Every error names the group, uplink and field it is about.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use failover_common::{MAX_GROUP_UPLINKS, MAX_GROUPS, MAX_UPLINKS};
use serde::Deserialize;

use crate::datapath::{IngressMode, TcAttach};

/// The metrics endpoint's default port (loopback only by default).
pub const DEFAULT_METRICS_PORT: u16 = 9731;
/// Longest probe interval accepted.
pub const MAX_PROBE_INTERVAL_MS: u64 = 60_000;
/// Most consecutive probes `down_after` / `up_after` may ask for.
pub const MAX_PROBE_COUNT: u32 = 100;
/// Longest hold-down accepted (one hour).
pub const MAX_HOLD_DOWN_MS: u64 = 3_600_000;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub agent: Agent,
    pub groups: Vec<Group>,
}

/// `[agent]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub state_dir: PathBuf,
    pub bpf_pin_dir: PathBuf,
    pub control_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    /// Where the datapath sees arriving frames (`ingress`).
    pub ingress: IngressMode,
    /// How the TC programs are attached (`tc_attach`).
    pub tc_attach: TcAttach,
    /// Keep the agent's OpenFlow rules on each group's bridge.
    pub ovs_flows: bool,
    /// Where ovs-vswitchd keeps its sockets (`<bridge>.mgmt`).
    pub ovs_rundir: PathBuf,
    /// Let the datapath fail over by itself on carrier loss and silent
    /// gateways (the agent ratifies); off: only the agent decides.
    pub kernel_failover: bool,
}

/// What happens when a higher-priority uplink is healthy again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failback {
    /// Stay where traffic is: the repaired uplink serves as the standby.
    Never,
    /// Go back after `hold_down` of continuous health.
    Auto,
}

/// `[[group]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub name: String,
    pub bridge: String,
    pub probe_interval: Duration,
    pub down_after: u32,
    pub up_after: u32,
    pub failback: Failback,
    pub hold_down: Duration,
    /// Health changes of one uplink within `flap_window` above which it is
    /// flapping (alarm; not chosen while another healthy uplink exists).
    pub flap_threshold: u32,
    pub flap_window: Duration,
    /// How long a gateway must have been down before its learned MAC is
    /// forgotten (a replacement gateway is then learned); zero: never.
    pub relearn_after: Duration,
    /// A frame from the gateway proves it alive as a reply does: an uplink
    /// with such traffic since the last round is not probed (`true`, the
    /// default); `false`: every uplink probed every round, replies alone
    /// prove life. Detection is the same either way: down when probes went
    /// unanswered and nothing came from the gateway for `down_after` x
    /// interval (the kernel counts the quiet round before the first probe
    /// as a miss, [`failover_common::rule::unanswered_needed`]).
    pub data_plane_liveness: bool,
    /// In priority order: the first is the primary.
    pub uplinks: Vec<Uplink>,
}

/// `[[group.uplink]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub interface: String,
    pub gateway: IpAddr,
    pub probe_source: IpAddr,
    pub gateway_mac: Option<[u8; 6]>,
    pub vlan: Option<u16>,
    /// How often the uplink is probed while it is not the active one (None:
    /// as the active, every `probe_interval`); a multiple of the group's
    /// interval (rounded up).
    pub standby_probe_interval: Option<Duration>,
}

/// A configuration error: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {place}: {message}")]
    Invalid { path: PathBuf, place: Place, message: String },
}

/// Where in the file an error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub group: Option<String>,
    pub uplink: Option<String>,
    pub field: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(g) = &self.group {
            write!(f, "group {g:?}, ")?;
        }
        if let Some(u) = &self.uplink {
            write!(f, "uplink {u:?}, ")?;
        }
        write!(f, "{}", self.field)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default, rename = "group")]
    groups: Vec<RawGroup>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    state_dir: Option<PathBuf>,
    bpf_pin_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    metrics_listen: Option<String>,
    ingress: Option<String>,
    /// The first agents' key: `skb` = `ingress = "xdp-generic"`, `native` = `"xdp"`.
    xdp_mode: Option<String>,
    tc_attach: Option<String>,
    ovs_flows: Option<bool>,
    ovs_rundir: Option<PathBuf>,
    kernel_failover: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    bridge: String,
    #[serde(default = "default_probe_interval_ms")]
    probe_interval_ms: u64,
    #[serde(default = "default_three")]
    down_after: u32,
    #[serde(default = "default_three")]
    up_after: u32,
    #[serde(default = "default_failback")]
    failback: String,
    #[serde(default = "default_hold_down_ms")]
    hold_down_ms: u64,
    #[serde(default = "default_flap_threshold")]
    flap_threshold: u32,
    #[serde(default = "default_flap_window_ms")]
    flap_window_ms: u64,
    #[serde(default = "default_relearn_after_ms")]
    relearn_after_ms: u64,
    #[serde(default = "default_true")]
    data_plane_liveness: bool,
    #[serde(default, rename = "uplink")]
    uplinks: Vec<RawUplink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    name: String,
    interface: String,
    gateway: String,
    probe_source: String,
    gateway_mac: Option<String>,
    vlan: Option<i64>,
    standby_probe_interval_ms: Option<u64>,
}

fn default_probe_interval_ms() -> u64 {
    100
}
fn default_three() -> u32 {
    3
}
fn default_failback() -> String {
    "never".into()
}
fn default_hold_down_ms() -> u64 {
    10_000
}
fn default_flap_threshold() -> u32 {
    4
}
fn default_flap_window_ms() -> u64 {
    60_000
}
fn default_true() -> bool {
    true
}

fn default_relearn_after_ms() -> u64 {
    30_000
}

/// Every key the parser accepts, by table (`agent`, `group`,
/// `group.uplink`), from the field lists serde's derive hands the parser
/// itself, so the list cannot drift from what [`parse`] accepts. Keys that
/// are tables of their own (`agent`, `group`, `group.uplink`) are left out.
/// The docs test checks the configuration reference and the example
/// against it.
pub fn accepted_keys() -> Vec<(&'static str, Vec<&'static str>)> {
    let top = serde_fields::<RawConfig>();
    let group = serde_fields::<RawGroup>();
    let without = |fields: &[&'static str], tables: &[&str]| -> Vec<&'static str> {
        fields.iter().copied().filter(|f| !tables.contains(f)).collect()
    };
    let mut tables = vec![
        ("agent", serde_fields::<RawAgent>().to_vec()),
        ("group", without(group, &["uplink"])),
        ("group.uplink", serde_fields::<RawUplink>().to_vec()),
    ];
    // Nothing but the two tables at the top; a new top-level key shows up here.
    let loose = without(top, &["agent", "group"]);
    if !loose.is_empty() {
        tables.insert(0, ("", loose));
    }
    tables
}

/// The field names serde's derive gives `T`'s `deserialize_struct`.
fn serde_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    /// A deserializer that only records the field list it is asked for.
    struct FieldNames<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct's field names are read"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only a struct's field names are read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    // Refused by design: the field list is all that is wanted.
    let refused = T::deserialize(FieldNames(&mut fields)).is_err();
    debug_assert!(refused, "FieldNames never produces a value");
    fields
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn valid_ifname(s: &str) -> bool {
    // IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' and whitespace.
    (1..=15).contains(&s.len())
        && !s.contains(['/', ':'])
        && !s.chars().any(char::is_whitespace)
        && s != "."
        && s != ".."
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, path)
}

/// Parses and validates configuration text (`path` is only for messages).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    Validator { path }.config(raw)
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, group: Option<&str>, uplink: Option<&str>, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            place: Place {
                group: group.map(str::to_string),
                uplink: uplink.map(str::to_string),
                field: field.to_string(),
            },
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let agent = self.agent(raw.agent)?;
        if raw.groups.is_empty() {
            return Err(self.err(None, None, "group", "no [[group]] configured: at least one is needed"));
        }
        if raw.groups.len() > MAX_GROUPS as usize {
            return Err(self.err(
                None,
                None,
                "group",
                format!("{} groups configured; at most {MAX_GROUPS} are supported", raw.groups.len()),
            ));
        }
        let mut names = HashSet::new();
        let mut interfaces: HashMap<String, (String, String)> = HashMap::new();
        let mut groups = Vec::with_capacity(raw.groups.len());
        for g in raw.groups {
            let group = self.group(g)?;
            if !names.insert(group.name.clone()) {
                return Err(self.err(Some(&group.name), None, "name", "two groups have this name"));
            }
            // The datapath and OVS know a group by a hash of its name.
            let id = crate::ids::GroupId::of(&group.name);
            if let Some(other) = groups.iter().find(|o: &&Group| crate::ids::GroupId::of(&o.name) == id) {
                return Err(self.err(
                    Some(&group.name),
                    None,
                    "name",
                    format!("its id (a hash of the name) is that of group {:?}: rename one of them", other.name),
                ));
            }
            for u in &group.uplinks {
                if let Some((g2, u2)) = interfaces.insert(u.interface.clone(), (group.name.clone(), u.name.clone())) {
                    return Err(self.err(
                        Some(&group.name),
                        Some(&u.name),
                        "interface",
                        format!("{:?} is already uplink {u2:?} of group {g2:?}", u.interface),
                    ));
                }
            }
            groups.push(group);
        }
        if interfaces.len() > MAX_UPLINKS as usize {
            return Err(self.err(
                None,
                None,
                "group",
                format!("{} uplinks configured in all; at most {MAX_UPLINKS} are supported", interfaces.len()),
            ));
        }
        Ok(Config { agent, groups })
    }

    fn agent(&self, raw: RawAgent) -> Result<Agent, ConfigError> {
        let metrics_listen = match raw.metrics_listen {
            None => SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
            Some(s) => s.parse().map_err(|_| {
                self.err(
                    None,
                    None,
                    "agent.metrics_listen",
                    format!("{s:?} is not an address:port such as \"127.0.0.1:{DEFAULT_METRICS_PORT}\""),
                )
            })?,
        };
        let ingress = match (raw.ingress, raw.xdp_mode) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    None,
                    None,
                    "agent.xdp_mode",
                    "set either ingress or xdp_mode (its old name), not both".to_string(),
                ));
            }
            (Some(s), None) => s.parse().map_err(|e: String| self.err(None, None, "agent.ingress", e))?,
            (None, Some(s)) => match s.as_str() {
                "skb" => IngressMode::XdpGeneric,
                "native" => IngressMode::XdpNative,
                other => {
                    return Err(self.err(
                        None,
                        None,
                        "agent.xdp_mode",
                        format!(
                            "unknown XDP mode {other:?}: expected \"native\" or \"skb\" (better: ingress = \"tc\", \"xdp\" or \"xdp-generic\")"
                        ),
                    ));
                }
            },
            (None, None) => IngressMode::default(),
        };
        let tc_attach = match raw.tc_attach {
            None => TcAttach::default(),
            Some(s) => s.parse().map_err(|e: String| self.err(None, None, "agent.tc_attach", e))?,
        };
        let absolute = |p: Option<PathBuf>, default: &str, field: &str| -> Result<PathBuf, ConfigError> {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(self.err(None, None, field, format!("{} is not an absolute path", p.display())))
            }
        };
        Ok(Agent {
            state_dir: absolute(raw.state_dir, "/var/lib/failover-agent", "agent.state_dir")?,
            bpf_pin_dir: absolute(raw.bpf_pin_dir, "/sys/fs/bpf/failover-agent", "agent.bpf_pin_dir")?,
            control_socket: absolute(raw.control_socket, "/run/failover-agent/control.sock", "agent.control_socket")?,
            metrics_listen,
            ingress,
            tc_attach,
            ovs_flows: raw.ovs_flows.unwrap_or(true),
            ovs_rundir: absolute(
                raw.ovs_rundir.or_else(|| std::env::var_os("OVS_RUNDIR").map(PathBuf::from)),
                "/var/run/openvswitch",
                "agent.ovs_rundir",
            )?,
            kernel_failover: raw.kernel_failover.unwrap_or(true),
        })
    }

    fn group(&self, g: RawGroup) -> Result<Group, ConfigError> {
        let name = g.name;
        let at = Some(name.as_str());
        if !valid_name(&name) {
            return Err(self.err(at, None, "name", "must be 1-32 characters of A-Z a-z 0-9 - _ ."));
        }
        if g.bridge.is_empty() {
            return Err(self.err(at, None, "bridge", "must name the OVS bridge"));
        }
        if g.probe_interval_ms == 0 || g.probe_interval_ms > MAX_PROBE_INTERVAL_MS {
            return Err(self.err(
                at,
                None,
                "probe_interval_ms",
                format!("{} is out of range 1..={MAX_PROBE_INTERVAL_MS}", g.probe_interval_ms),
            ));
        }
        for (field, v) in [("down_after", g.down_after), ("up_after", g.up_after)] {
            if v == 0 || v > MAX_PROBE_COUNT {
                return Err(self.err(at, None, field, format!("{v} is out of range 1..={MAX_PROBE_COUNT}")));
            }
        }
        let failback = match g.failback.as_str() {
            "never" => Failback::Never,
            "auto" => Failback::Auto,
            other => return Err(self.err(at, None, "failback", format!("{other:?}: expected \"never\" or \"auto\""))),
        };
        if g.hold_down_ms > MAX_HOLD_DOWN_MS {
            return Err(self.err(
                at,
                None,
                "hold_down_ms",
                format!("{} is more than {MAX_HOLD_DOWN_MS} (one hour)", g.hold_down_ms),
            ));
        }
        if g.flap_threshold < 2 || g.flap_threshold > 1000 {
            return Err(self.err(at, None, "flap_threshold", format!("{} is out of range 2..=1000", g.flap_threshold)));
        }
        if g.flap_window_ms == 0 || g.flap_window_ms > MAX_HOLD_DOWN_MS {
            return Err(self.err(
                at,
                None,
                "flap_window_ms",
                format!("{} is out of range 1..={MAX_HOLD_DOWN_MS}", g.flap_window_ms),
            ));
        }
        if g.relearn_after_ms > MAX_HOLD_DOWN_MS {
            return Err(self.err(
                at,
                None,
                "relearn_after_ms",
                format!("{} is out of range 0..={MAX_HOLD_DOWN_MS}", g.relearn_after_ms),
            ));
        }
        if g.uplinks.len() < 2 {
            return Err(self.err(
                at,
                None,
                "uplink",
                format!("{} uplink(s) configured: a group needs at least two", g.uplinks.len()),
            ));
        }
        if g.uplinks.len() > MAX_GROUP_UPLINKS {
            return Err(self.err(
                at,
                None,
                "uplink",
                format!("{} uplinks configured: at most {MAX_GROUP_UPLINKS} per group are supported", g.uplinks.len()),
            ));
        }
        let mut uplinks = Vec::with_capacity(g.uplinks.len());
        let mut seen = HashSet::new();
        for u in g.uplinks {
            let mut uplink = self.uplink(&name, u)?;
            self.standby_interval(&name, &mut uplink, g.probe_interval_ms)?;
            if !seen.insert(uplink.name.clone()) {
                return Err(self.err(at, Some(&uplink.name), "name", "two uplinks of this group have this name"));
            }
            uplinks.push(uplink);
        }
        Ok(Group {
            name,
            bridge: g.bridge,
            probe_interval: Duration::from_millis(g.probe_interval_ms),
            down_after: g.down_after,
            up_after: g.up_after,
            failback,
            hold_down: Duration::from_millis(g.hold_down_ms),
            flap_threshold: g.flap_threshold,
            flap_window: Duration::from_millis(g.flap_window_ms),
            relearn_after: Duration::from_millis(g.relearn_after_ms),
            data_plane_liveness: g.data_plane_liveness,
            uplinks,
        })
    }

    /// Checks an uplink's `standby_probe_interval_ms` against the group's
    /// interval and rounds it up to a multiple of it.
    fn standby_interval(&self, group: &str, uplink: &mut Uplink, interval_ms: u64) -> Result<(), ConfigError> {
        let Some(ms) = uplink.standby_probe_interval.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)) else {
            return Ok(());
        };
        if ms < interval_ms || ms > MAX_PROBE_INTERVAL_MS {
            return Err(self.err(
                Some(group),
                Some(&uplink.name),
                "standby_probe_interval_ms",
                format!("{ms} is out of range {interval_ms}..={MAX_PROBE_INTERVAL_MS} (at least the group's probe_interval_ms)"),
            ));
        }
        uplink.standby_probe_interval = Some(Duration::from_millis(ms.div_ceil(interval_ms) * interval_ms));
        Ok(())
    }

    fn uplink(&self, group: &str, u: RawUplink) -> Result<Uplink, ConfigError> {
        let g = Some(group);
        let at = Some(u.name.as_str());
        if !valid_name(&u.name) {
            return Err(self.err(g, at, "name", "must be 1-32 characters of A-Z a-z 0-9 - _ ."));
        }
        if !valid_ifname(&u.interface) {
            return Err(self.err(g, at, "interface", format!("{:?} is not a valid interface name", u.interface)));
        }
        let ip = |field: &str, s: &str| -> Result<IpAddr, ConfigError> {
            let addr: IpAddr =
                s.parse().map_err(|_| self.err(g, at, field, format!("{s:?} is not an IPv4 or IPv6 address")))?;
            if addr.is_unspecified()
                || addr.is_multicast()
                || addr.is_loopback()
                || addr == IpAddr::from([255, 255, 255, 255])
            {
                return Err(self.err(g, at, field, format!("{addr} cannot be a unicast neighbour")));
            }
            Ok(addr)
        };
        let gateway = ip("gateway", &u.gateway)?;
        let probe_source = ip("probe_source", &u.probe_source)?;
        if gateway.is_ipv4() != probe_source.is_ipv4() {
            return Err(self.err(
                g,
                at,
                "probe_source",
                format!("{probe_source} is not of the gateway's family ({gateway})"),
            ));
        }
        if gateway == probe_source {
            return Err(self.err(g, at, "probe_source", "is the gateway's own address"));
        }
        let gateway_mac = match u.gateway_mac {
            None => None,
            Some(s) => {
                let mac = parse_mac(&s).ok_or_else(|| {
                    self.err(g, at, "gateway_mac", format!("{s:?} is not a MAC such as \"02:00:5e:00:53:01\""))
                })?;
                if mac[0] & 1 != 0 || mac == [0; 6] {
                    return Err(self.err(g, at, "gateway_mac", format!("{s} is not a unicast MAC")));
                }
                Some(mac)
            }
        };
        let vlan = match u.vlan {
            None => None,
            Some(v @ 1..=4094) => u16::try_from(v).ok(),
            Some(v) => return Err(self.err(g, at, "vlan", format!("{v} is out of range 1..=4094"))),
        };
        let standby_probe_interval = u.standby_probe_interval_ms.map(Duration::from_millis);
        Ok(Uplink {
            name: u.name,
            interface: u.interface,
            gateway,
            probe_source,
            gateway_mac,
            vlan,
            standby_probe_interval,
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

/// The probes a gateway gets from this host, at most (per second): for
/// each gateway address, the sum over the uplinks that probe it. An uplink
/// probes every `probe_interval` while it is active (or has no
/// `standby_probe_interval`), every `standby_probe_interval` while it is
/// not; with `data_plane_liveness` an uplink whose gateway sends it frames
/// is not probed at all, so under traffic the active uplinks' share is
/// about 0. The bound is for a host whose uplinks carry no traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeLoad {
    pub gateway: IpAddr,
    /// Probes/s at most, every uplink active-rate (no traffic).
    pub quiet: f64,
    /// Probes/s with traffic from every active uplink's gateway (only the
    /// standbys probe, at their rate); with `data_plane_liveness = false`
    /// the same as `quiet`.
    pub busy: f64,
}

impl Config {
    /// The probe load per gateway address, in order of first appearance.
    pub fn probe_load(&self) -> Vec<ProbeLoad> {
        let mut out: Vec<ProbeLoad> = Vec::new();
        for g in &self.groups {
            let rate = |d: Duration| 1.0 / d.as_secs_f64();
            for (i, u) in g.uplinks.iter().enumerate() {
                let active_rate = rate(g.probe_interval);
                let standby_rate = u.standby_probe_interval.map_or(active_rate, rate);
                // The first uplink is the active one where all are healthy.
                let busy = if !g.data_plane_liveness {
                    active_rate
                } else if i == 0 {
                    0.0
                } else {
                    standby_rate
                };
                if !out.iter().any(|l| l.gateway == u.gateway) {
                    out.push(ProbeLoad { gateway: u.gateway, quiet: 0.0, busy: 0.0 });
                }
                let Some(entry) = out.iter_mut().find(|l| l.gateway == u.gateway) else {
                    continue;
                };
                entry.quiet += active_rate;
                entry.busy += busy;
            }
        }
        out
    }
}
