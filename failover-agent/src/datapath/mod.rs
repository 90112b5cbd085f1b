//! The kernel datapath, seen from the agent: attach the programs to an
//! uplink, flip a group with one map update, read an uplink's counters.
//!
//! [`Datapath`] is what the rest of the agent uses; [`ebpf::EbpfDatapath`] is
//! the real one (the only code in the agent that touches aya).

pub mod btf;
pub mod ebpf;

use std::{path::PathBuf, time::Duration};

use failover_common::{DevRef, GroupState, KernelSwitch, UplinkConfig, UplinkStats};

pub use ebpf::EbpfDatapath;

/// Where the datapath sees the frames arriving on an uplink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IngressMode {
    /// TC ingress (`"tc"`, the default): works on every device and kernel
    /// from 5.15, never copies a packet (GRO'd skbs pass as they are), and
    /// sees a VLAN tag the NIC took out of the frame (`skb->vlan_tci`). It
    /// runs before the kernel OVS datapath; OVS's userspace datapath reads
    /// its ports with `AF_PACKET`, which sees a frame before TC does.
    #[default]
    Tc,
    /// Native XDP in the driver (`"xdp"`), multi-buffer aware so a jumbo
    /// MTU attaches (kernel >= 5.18). No copy; attaching it can reconfigure
    /// a NIC's rings, and on a veth it turns off the peer's TSO.
    XdpNative,
    /// Generic (skb) XDP (`"xdp-generic"`), on request only: it linearises
    /// GRO'd skbs (measured: 85 % of the throughput into the host), and the
    /// frame it sees has no out-of-band VLAN tag.
    XdpGeneric,
}

impl IngressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::XdpNative => "xdp",
            Self::XdpGeneric => "xdp-generic",
        }
    }
}

impl std::str::FromStr for IngressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tc" => Ok(Self::Tc),
            "xdp" => Ok(Self::XdpNative),
            "xdp-generic" => Ok(Self::XdpGeneric),
            other => Err(format!("unknown ingress mode {other:?}: expected \"tc\", \"xdp\" or \"xdp-generic\"")),
        }
    }
}

impl std::fmt::Display for IngressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the TC programs are attached, as asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX where the kernel has it (>= 6.6), else a clsact qdisc and a
    /// netlink tc filter.
    #[default]
    Auto,
    /// TCX links (kernel >= 6.6), pinned.
    Tcx,
    /// A `clsact` qdisc and a `cls_bpf` filter (every kernel the agent
    /// supports): the filter has no pinnable link; it is found again by
    /// its priority and handle.
    Netlink,
}

impl std::str::FromStr for TcAttach {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tcx" => Ok(Self::Tcx),
            "netlink" => Ok(Self::Netlink),
            other => Err(format!("unknown TC attach mode {other:?}: expected \"auto\", \"tcx\" or \"netlink\"")),
        }
    }
}

/// How the TC programs were attached (what [`TcAttach::Auto`] chose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcKind {
    Tcx,
    Netlink,
}

impl TcKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// Environment variable that overrides how TC programs are attached
/// (`auto`, `tcx`, `netlink`): to run the legacy path on a kernel with TCX.
pub const ENV_TC_ATTACH: &str = "FAILOVER_TC_ATTACH";

/// Where and how the datapath lives.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// bpffs directory for pinned maps (`maps/`) and program links (`links/`).
    pub pin_dir: PathBuf,
    pub ingress: IngressMode,
    pub tc_attach: TcAttach,
    /// Whether the programs may read the uplinks' carrier from kernel memory
    /// (the carrier half of the kernel's fast rule).
    pub carrier_reads: bool,
}

impl DatapathOptions {
    /// The defaults (TC ingress, TC attached as the kernel allows, carrier
    /// reads on) with pins under `pin_dir`.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            ingress: IngressMode::default(),
            tc_attach: TcAttach::default(),
            carrier_reads: true,
        }
    }
}

/// How the programs are attached, for `status` and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hooks {
    pub ingress: IngressMode,
    pub tc: TcKind,
}

/// Whether the kernel reads the uplinks' carrier itself, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelCarrier {
    /// The programs read `net_device.state` at these offsets.
    On,
    /// Not read: the reason (turned off, no BTF, refused by the kernel...).
    Off(String),
}

/// Environment variable that turns the kernel's carrier reads off (`off`):
/// for kernels that refuse `bpf_probe_read_kernel` (lockdown), and to test
/// the fallback on a kernel that allows it.
pub const ENV_KERNEL_CARRIER: &str = "FAILOVER_KERNEL_CARRIER";

/// What attaching to an uplink did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// The programs (or some of them) were attached now.
    Attached,
    /// Every hook was already attached by an earlier run (pinned link, or
    /// our tc filter): each was given this agent's program in place, in one
    /// atomic replace (`bpf_link_update`, or a tc filter replace): nothing
    /// was detached, no packet lost.
    Reused,
}

/// An uplink's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub valid_replies: u64,
    pub rejected_replies: u64,
    /// `CLOCK_MONOTONIC` time of the last valid reply, if any.
    pub last_reply: Option<Duration>,
    /// Sender MAC of the last valid reply, if any.
    pub gateway_mac: Option<[u8; 6]>,
    pub ingress_dropped_inactive: u64,
    pub egress_redirected: u64,
    pub egress_dropped: u64,
    pub egress_rewritten: u64,
    pub probes_out: u64,
    /// Frames from the uplink's gateway (data-plane liveness).
    pub gateway_frames: u64,
}

impl Counters {
    /// Sums per-CPU counters: counts add up; the newest reply (and its MAC) wins.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a UplinkStats>) -> Self {
        let mut out = Self::default();
        let mut newest = 0u64;
        for s in per_cpu {
            out.valid_replies += s.valid_replies;
            out.rejected_replies += s.rejected_replies;
            out.ingress_dropped_inactive += s.ingress_dropped_inactive;
            out.egress_redirected += s.egress_redirected;
            out.egress_dropped += s.egress_dropped;
            out.egress_rewritten += s.egress_rewritten;
            out.probes_out += s.probes_out;
            if s.valid_replies > 0 && s.last_reply_ns >= newest {
                newest = s.last_reply_ns;
                out.last_reply = Some(Duration::from_nanos(s.last_reply_ns));
                out.gateway_mac = Some(s.gateway_mac);
            }
        }
        out
    }
}

/// Errors at the datapath boundary. Each names the interface, map or path
/// concerned and what failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this failover-agent was built without the eBPF datapath (the eBPF toolchain was \
         missing at build time): run `./dev setup`, then rebuild"
    )]
    ObjectMissing,
    #[error("{path} is not on a bpffs: mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs { path: PathBuf },
    #[error("pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("loading program {program} into the kernel")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {ifname}: no such interface")]
    NoSuchInterface { ifname: String },
    #[error("how to attach TC: {0}")]
    TcAttach(String),
    #[error("interface {ifname}: adding the clsact qdisc")]
    Clsact {
        ifname: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error(
        "pin directory {path}: the datapath there is of layout {found}, newer than this agent's ({want}): \
         refusing to downgrade it; run the newer failover-agent, or `failover-agent uninstall` first"
    )]
    Downgrade { path: PathBuf, found: u32, want: u32 },
    #[error("interface {ifname}: attaching {program}")]
    Attach {
        ifname: String,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {ifname}: pinning the {program} link at {path}")]
    PinLink {
        ifname: String,
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("interface {ifname}: opening the link pinned at {path} to give it the new {program}")]
    Replace {
        ifname: String,
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map}: pinning it again at {path}")]
    PinMap {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("interface {ifname}: detaching the link pinned at {path}")]
    Detach {
        ifname: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map}: {op}")]
    Map {
        map: &'static str,
        op: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("interface {ifname}: uplink slot {slot} is out of range (at most {max})")]
    SlotOutOfRange { ifname: String, slot: u32, max: u32 },
    #[error(
        "pin directory {path}: the pinned datapath is of layout {found}, this agent's is {want}; replacing it failed"
    )]
    Upgrade {
        path: PathBuf,
        found: String,
        want: u32,
        #[source]
        source: Box<DatapathError>,
    },
}

/// The datapath as the agent drives it.
pub trait Datapath {
    /// Writes the uplink's configuration, then attaches the XDP and TC egress
    /// programs to `ifname` (or keeps the ones an earlier run pinned). On
    /// error nothing of this uplink is left attached.
    fn attach_uplink(&mut self, ifname: &str, config: &UplinkConfig) -> Result<AttachOutcome, DatapathError>;
    /// Replaces an attached uplink's configuration (e.g. its gateway MAC became known).
    fn update_uplink(&mut self, ifname: &str, config: &UplinkConfig) -> Result<(), DatapathError>;
    /// Reads an uplink's configuration as the kernel has it.
    fn uplink(&mut self, ifname: &str) -> Result<Option<UplinkConfig>, DatapathError>;
    /// Detaches both programs from `ifname` and forgets its configuration.
    fn detach_uplink(&mut self, ifname: &str) -> Result<(), DatapathError>;
    /// Writes a group's state in one map update: this is the switchover.
    fn set_group(&mut self, group: u32, state: &GroupState) -> Result<(), DatapathError>;
    /// Reads a group's state.
    fn group(&self, group: u32) -> Result<Option<GroupState>, DatapathError>;
    /// Reads an uplink's counters.
    fn counters(&self, slot: u32) -> Result<Counters, DatapathError>;
    /// Puts back map pins removed from under the datapath (from the maps
    /// this process holds); returns the paths restored.
    fn repair_pins(&mut self) -> Result<Vec<PathBuf>, DatapathError>;
    /// Every uplink entry in the datapath: ifindex and configuration.
    fn pinned_uplinks(&self) -> Result<Vec<(u32, UplinkConfig)>, DatapathError>;
    /// Every group id in the datapath.
    fn pinned_groups(&self) -> Result<Vec<u32>, DatapathError>;
    /// Removes a group's state (a group no longer configured).
    fn remove_group(&mut self, group: u32) -> Result<(), DatapathError>;
    /// Interfaces with pinned program links: name and ifindex.
    fn attached_interfaces(&self) -> Vec<(String, u32)>;
    /// Detaches the programs pinned for `ifname` (any ifindex) and removes
    /// the uplink entry of `ifindex` (an uplink no longer configured).
    fn detach_interface(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError>;
    /// Where the kernel found an uplink's device (for carrier reads).
    fn device(&self, slot: u32) -> Result<DevRef, DatapathError>;
    /// Switchovers the kernel made by itself since the last call, oldest first.
    fn kernel_switches(&mut self) -> Vec<KernelSwitch>;
    /// A file descriptor that becomes readable when the kernel reports a
    /// switchover (None: this datapath reports none).
    fn kernel_switch_fd(&self) -> Option<std::os::fd::OwnedFd>;
    /// Whether the kernel reads carrier itself.
    fn kernel_carrier(&self) -> KernelCarrier;
    /// How the programs are attached.
    fn hooks(&self) -> Hooks;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_cpus_and_keep_newest_reply() {
        let a = UplinkStats {
            valid_replies: 2,
            rejected_replies: 1,
            last_reply_ns: 500,
            gateway_mac: [2, 0, 0, 0, 0, 1],
            egress_redirected: 4,
            ..UplinkStats::default()
        };
        let b = UplinkStats {
            valid_replies: 3,
            last_reply_ns: 900,
            gateway_mac: [2, 0, 0, 0, 0, 2],
            probes_out: 7,
            ..UplinkStats::default()
        };
        let idle = UplinkStats::default();
        let c = Counters::sum([&a, &idle, &b]);
        assert_eq!(c.valid_replies, 5);
        assert_eq!(c.rejected_replies, 1);
        assert_eq!(c.egress_redirected, 4);
        assert_eq!(c.probes_out, 7);
        assert_eq!(c.last_reply, Some(Duration::from_nanos(900)));
        assert_eq!(c.gateway_mac, Some([2, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn counters_without_replies_have_no_time_or_mac() {
        let c = Counters::sum([&UplinkStats::default(), &UplinkStats::default()]);
        assert_eq!(c.last_reply, None);
        assert_eq!(c.gateway_mac, None);
    }

    #[test]
    fn modes_parse_and_name_bad_input() {
        for mode in [IngressMode::Tc, IngressMode::XdpNative, IngressMode::XdpGeneric] {
            assert_eq!(mode.as_str().parse::<IngressMode>(), Ok(mode));
        }
        let err = "driver".parse::<IngressMode>().unwrap_err();
        assert!(err.contains("\"driver\""), "{err}");
        assert_eq!("netlink".parse::<TcAttach>(), Ok(TcAttach::Netlink));
        assert_eq!("tcx".parse::<TcAttach>(), Ok(TcAttach::Tcx));
        assert!("tc".parse::<TcAttach>().unwrap_err().contains("\"tc\""));
    }
}
