//! The real datapath: the embedded eBPF object, loaded with aya.
//!
//! Pins (under [`DatapathOptions::pin_dir`], which must be on a bpffs):
//! - `maps/UPLINKS`, `maps/GROUPS`, `maps/STATS`, `maps/PROBES`, `maps/DEVS`,
//!   `maps/KEVENTS`: reused by every later load, so a restarted agent sees
//!   and steers the same datapath;
//! - `layout-v<N>/`: the maps' layout version ([`LAYOUT_VERSION`]). Pins of
//!   another layout (an older agent) are not reused: their programs are
//!   detached and their maps removed before the new ones are pinned, so new
//!   user space is never paired with old programs or old map layouts;
//! - `links/<hook>-<ifname>-<ifindex>`: one per program attached to an
//!   uplink ([`Pin`]: `xdp`, `xdpn`, `tci`, `tc` are pinned links; `tcinl`,
//!   `tcnl` mark a netlink tc filter, found again by its priority and
//!   handle, with its program pinned). A pin keeps its program attached
//!   after the agent exits; a later attach gives the same link (or filter)
//!   its own program in one atomic replace. The ifindex in the name tells a
//!   re-created interface from the old one.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{
        Link as _, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use failover_common::{
    DEV_WINDOW_LEN, DevRef, GLOBAL_CARRIER_READS, GLOBAL_DEV_FLAGS, GLOBAL_DEV_IFINDEX, GLOBAL_DEV_STATE,
    GLOBAL_DEV_WINDOW, GLOBAL_SKB_DEV, GroupState, KernelSwitch, LAYOUT_VERSION, MAP_DEVS, MAP_GROUPS, MAP_GWFRAMES,
    MAP_KEVENTS, MAP_PROBES, MAP_STATS, MAP_UPLINKS, MAPS, MAX_UPLINKS, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP,
    PROG_XDP_FRAGS, ProbeCount, UplinkConfig, UplinkStats,
};
use tracing::{debug, info, warn};

use super::{
    AttachOutcome, Counters, Datapath, DatapathError, DatapathOptions, ENV_TC_ATTACH, Hooks, IngressMode,
    KernelCarrier, TcAttach, TcKind, btf,
};

/// The eBPF object built by `build.rs`.
#[cfg(not(failover_ebpf_missing))]
pub fn object() -> Result<&'static [u8], DatapathError> {
    Ok(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failover-ebpf.o")))
}

/// The eBPF object was not built (toolchain missing at build time).
#[cfg(failover_ebpf_missing)]
pub fn object() -> Result<&'static [u8], DatapathError> {
    Err(DatapathError::ObjectMissing)
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The aya-backed [`Datapath`].
pub struct EbpfDatapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    hooks: Hooks,
    /// Programs loaded into the kernel so far (by name).
    loaded: Vec<&'static str>,
    /// Pins whose hook runs this process's program (attached or replaced
    /// by it): a later attach leaves them alone.
    current: std::collections::BTreeSet<PathBuf>,
    kevents: Option<RingBuf<MapData>>,
    carrier: KernelCarrier,
}

/// One program attached to an uplink, as its pin under `links/` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Generic XDP, a pinned link (the first agents' `xdp-` pins too).
    XdpGeneric,
    /// Native XDP (frags), a pinned link.
    XdpNative,
    /// TC ingress, a pinned TCX link.
    TcxIngress,
    /// TC egress, a pinned TCX link.
    TcxEgress,
    /// TC ingress, a netlink filter (its program pinned).
    NlIngress,
    /// TC egress, a netlink filter (its program pinned).
    NlEgress,
}

/// The priority and handle of the agent's netlink tc filters: first in
/// line, and found again by them after a restart.
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: TcHandle = TcHandle::new(0, 0xfa11);

impl Pin {
    /// Longest prefix first, so that `tcnl-` is not read as `tc-`... (each
    /// prefix is followed by `-`, which already keeps them apart).
    const ALL: [Self; 6] =
        [Self::NlIngress, Self::NlEgress, Self::XdpNative, Self::TcxIngress, Self::XdpGeneric, Self::TcxEgress];

    pub fn prefix(self) -> &'static str {
        match self {
            Self::XdpGeneric => "xdp",
            Self::XdpNative => "xdpn",
            Self::TcxIngress => "tci",
            Self::TcxEgress => "tc",
            Self::NlIngress => "tcinl",
            Self::NlEgress => "tcnl",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::XdpGeneric => PROG_XDP,
            Self::XdpNative => PROG_XDP_FRAGS,
            Self::TcxIngress | Self::NlIngress => PROG_TC_INGRESS,
            Self::TcxEgress | Self::NlEgress => PROG_TC_EGRESS,
        }
    }

    fn tc_type(self) -> TcAttachType {
        match self {
            Self::TcxIngress | Self::NlIngress => TcAttachType::Ingress,
            _ => TcAttachType::Egress,
        }
    }

    /// The pins an uplink has under these hooks: ingress first.
    pub fn wanted(hooks: Hooks) -> [Self; 2] {
        let netlink = hooks.tc == TcKind::Netlink;
        let ingress = match hooks.ingress {
            IngressMode::XdpGeneric => Self::XdpGeneric,
            IngressMode::XdpNative => Self::XdpNative,
            IngressMode::Tc if netlink => Self::NlIngress,
            IngressMode::Tc => Self::TcxIngress,
        };
        [ingress, if netlink { Self::NlEgress } else { Self::TcxEgress }]
    }
}

/// What [`TcAttach`] resolves to on this kernel ([`ENV_TC_ATTACH`] first).
pub fn tc_kind(asked: TcAttach) -> Result<TcKind, String> {
    let asked = match std::env::var(ENV_TC_ATTACH) {
        Ok(v) => v.parse::<TcAttach>().map_err(|e| format!("{ENV_TC_ATTACH}: {e}"))?,
        Err(_) => asked,
    };
    Ok(match asked {
        TcAttach::Tcx => TcKind::Tcx,
        TcAttach::Netlink => TcKind::Netlink,
        TcAttach::Auto => match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => TcKind::Tcx,
            _ => TcKind::Netlink,
        },
    })
}

/// The globals that turn the programs' carrier reads on: offsets within a
/// `net_device` window of [`DEV_WINDOW_LEN`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarrierGlobals {
    pub skb_dev: u32,
    pub window: u32,
    pub state: u32,
    pub flags: u32,
    pub ifindex: u32,
}

impl CarrierGlobals {
    /// The window and the offsets in it, if `state`, `flags` and `ifindex`
    /// fit in one read.
    pub fn from_offsets(o: &btf::KernelOffsets) -> Result<Self, String> {
        let fields = [(o.dev_state, 8u32), (o.dev_flags, 4), (o.dev_ifindex, 4)];
        let start = fields.iter().map(|f| f.0).min().unwrap_or(0);
        let end = fields.iter().map(|f| f.0 + f.1).max().unwrap_or(0);
        if end - start > DEV_WINDOW_LEN as u32 {
            return Err(format!(
                "net_device.state, .flags and .ifindex span {} bytes (offsets {}, {}, {}): more than the {DEV_WINDOW_LEN} read at once",
                end - start,
                o.dev_state,
                o.dev_flags,
                o.dev_ifindex
            ));
        }
        Ok(Self {
            skb_dev: o.skb_dev,
            window: start,
            state: o.dev_state - start,
            flags: o.dev_flags - start,
            ifindex: o.dev_ifindex - start,
        })
    }
}

/// The values of the programs' globals: carrier reads on at these offsets,
/// or off (`None`). Hand each to `EbpfLoader::override_global`.
pub fn global_values(globals: Option<CarrierGlobals>) -> [(&'static str, u32); 6] {
    let g = globals.unwrap_or(CarrierGlobals { skb_dev: 0, window: 0, state: 0, flags: 0, ifindex: 0 });
    [
        (GLOBAL_CARRIER_READS, u32::from(globals.is_some())),
        (GLOBAL_SKB_DEV, g.skb_dev),
        (GLOBAL_DEV_WINDOW, g.window),
        (GLOBAL_DEV_STATE, g.state),
        (GLOBAL_DEV_FLAGS, g.flags),
        (GLOBAL_DEV_IFINDEX, g.ifindex),
    ]
}

/// The carrier globals for this kernel, or why there are none.
pub fn carrier_globals(wanted: bool) -> Result<CarrierGlobals, String> {
    if !wanted {
        return Err("turned off".into());
    }
    if std::env::var(super::ENV_KERNEL_CARRIER).is_ok_and(|v| v == "off" || v == "0") {
        return Err(format!("turned off by {}", super::ENV_KERNEL_CARRIER));
    }
    let offsets = btf::kernel_offsets().map_err(|e| format!("reading the kernel's BTF: {e}"))?;
    CarrierGlobals::from_offsets(&offsets)
}

/// The directory whose name carries the layout version (a bpffs holds
/// only pins and directories, no plain files).
fn layout_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("layout-v{LAYOUT_VERSION}"))
}

/// The layout of the datapath pinned in `pin_dir` when it is not this
/// agent's: maps or links pinned without a `layout-v*` directory (the
/// first agents made none) are layout 1.
fn foreign_layout(pin_dir: &Path) -> Option<u32> {
    let names: Vec<String> = fs::read_dir(pin_dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let mine = format!("layout-v{LAYOUT_VERSION}");
    if names.contains(&mine) {
        return None;
    }
    if let Some(other) = names.iter().find_map(|n| n.strip_prefix("layout-v")?.parse().ok()) {
        return Some(other);
    }
    let any = |sub: &str| fs::read_dir(pin_dir.join(sub)).is_ok_and(|mut d| d.next().is_some());
    (any("maps") || any("links")).then_some(1)
}

/// Makes way for this agent's maps over an older layout: its map pins and
/// layout directory go; its program pins stay, so each uplink's programs
/// are replaced in place (atomically) when it is attached, and traffic
/// never meets an uplink without programs. (The old programs keep their
/// old maps until then.)
fn retire_layout(pin_dir: &Path) -> Result<(), DatapathError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DatapathError::PinDir { path, source }
    };
    let maps = pin_dir.join("maps");
    if let Ok(entries) = fs::read_dir(&maps) {
        for entry in entries.flatten() {
            fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    for entry in fs::read_dir(pin_dir).map_err(io(pin_dir))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("layout-v") {
            fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

impl std::fmt::Debug for EbpfDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfDatapath").field("pin_dir", &self.pin_dir).finish_non_exhaustive()
    }
}

/// Whether `path` (or its nearest existing ancestor) is on a bpffs.
fn on_bpffs(path: &Path) -> bool {
    let mut probe = Some(path);
    while let Some(p) = probe {
        if p.exists() {
            let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: `c` is a valid C string; `st` is plain data written by statfs.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
                return false;
            }
            return st.f_type == BPF_FS_MAGIC;
        }
        probe = p.parent();
    }
    false
}

/// The ifindex of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, DatapathError> {
    let missing = || DatapathError::NoSuchInterface { ifname: ifname.to_string() };
    let c = CString::new(ifname).map_err(|_| missing())?;
    // SAFETY: `c` is a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}

fn map_err(map: &'static str, op: impl Into<String>) -> impl FnOnce(MapError) -> DatapathError {
    let op = op.into();
    move |source| DatapathError::Map { map, op, source }
}

/// [`map_err`] for reading slot `slot`, its text made only on an error (the
/// counters are read every round).
fn read_err(map: &'static str, slot: u32) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op: format!("read slot {slot}"), source }
}

fn missing_map(name: &'static str) -> DatapathError {
    DatapathError::Map {
        map: name,
        op: "find in the object".into(),
        source: MapError::InvalidName { name: name.into() },
    }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, DatapathError> {
    ebpf.map_mut(name).ok_or_else(|| missing_map(name))
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, DatapathError> {
    ebpf.map(name).ok_or_else(|| missing_map(name))
}

fn link_pin(pin_dir: &Path, pin: Pin, ifname: &str, ifindex: u32) -> PathBuf {
    pin_dir.join("links").join(format!("{}-{ifname}-{ifindex}", pin.prefix()))
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Detaches what the pin at `path` holds and removes the pin: a link is
/// unpinned and closed (nobody else holds it: the agent keeps no link fds
/// besides the pins); a netlink filter is deleted by priority and handle
/// (if `ifname` still is the interface of that ifindex) and its program
/// pin removed.
fn detach_pin(path: &Path, pin: Pin, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Detach {
        ifname: ifname.to_string(),
        path: path.to_path_buf(),
        source,
    };
    match pin {
        Pin::NlIngress | Pin::NlEgress => {
            if ifindex_of(ifname) == Some(ifindex) {
                let link = SchedClassifierLink::attached(ifname, pin.tc_type(), NL_PRIORITY, NL_HANDLE, None)
                    .map_err(|e| err(boxed(e)))?;
                match link.detach() {
                    Ok(()) => {}
                    // Already gone (the qdisc was removed): nothing to detach.
                    Err(e) if is_errno(&e, libc::ENOENT) => {}
                    Err(e) => return Err(err(boxed(e))),
                }
            } else {
                // Deleted (its filter went with it), or in another network
                // namespace than this process (the filter stays there).
                warn!(
                    ifname,
                    ifindex,
                    "no such interface here: if it lives in another network namespace, its tc filter (pref {NL_PRIORITY}, handle 0xfa11) stays there"
                );
            }
            fs::remove_file(path).map_err(|e| err(boxed(e)))
        }
        _ => {
            let pinned = PinnedLink::from_pin(path).map_err(|e| err(boxed(e)))?;
            let link = pinned.unpin().map_err(|e| err(boxed(e)))?;
            drop(link);
            Ok(())
        }
    }
}

/// Whether the kernel's answer somewhere in `e`'s chain is `errno`.
fn is_errno(e: &aya::programs::ProgramError, errno: i32) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(errno)
        {
            return true;
        }
        if let Some(tc::TcError::NetlinkError(nl)) = s.downcast_ref::<tc::TcError>()
            && nl.raw_os_error() == Some(errno)
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn ifindex_of(ifname: &str) -> Option<u32> {
    ifindex(ifname).ok()
}

/// Every pin under `links/`: its path, hook, interface name and ifindex.
fn pins(pin_dir: &Path) -> Vec<(PathBuf, Pin, String, u32)> {
    let Ok(entries) = fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let (pin, ifname, ifindex) = parse_link_pin(&e.file_name().to_string_lossy())?;
            Some((e.path(), pin, ifname, ifindex))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl EbpfDatapath {
    /// Loads the object, reusing the maps pinned under `pin_dir` (or pinning
    /// new ones). Nothing is attached yet.
    pub fn open(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        let object = object()?;
        if !on_bpffs(&opts.pin_dir) {
            return Err(DatapathError::NotBpffs { path: opts.pin_dir.clone() });
        }
        let tc = tc_kind(opts.tc_attach).map_err(DatapathError::TcAttach)?;
        let hooks = Hooks { ingress: opts.ingress, tc };
        match foreign_layout(&opts.pin_dir) {
            None => {}
            Some(found) if found > LAYOUT_VERSION => {
                return Err(DatapathError::Downgrade { path: opts.pin_dir.clone(), found, want: LAYOUT_VERSION });
            }
            Some(found) => {
                // An older agent's datapath: its programs read maps of
                // another layout. New maps; the old programs are replaced
                // in their links as each uplink is attached.
                warn!(pin_dir = %opts.pin_dir.display(), found, want = LAYOUT_VERSION, "upgrading a datapath of an older layout");
                retire_layout(&opts.pin_dir).map_err(|e| DatapathError::Upgrade {
                    path: opts.pin_dir.clone(),
                    found: found.to_string(),
                    want: LAYOUT_VERSION,
                    source: Box::new(e),
                })?;
            }
        }
        for sub in ["maps", "links"] {
            let path = opts.pin_dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| DatapathError::PinDir { path, source })?;
        }
        let layout = layout_dir(&opts.pin_dir);
        fs::create_dir_all(&layout).map_err(|source| DatapathError::PinDir { path: layout, source })?;
        // With the carrier reads if this kernel has what they need and
        // accepts them (lockdown refuses `bpf_probe_read_kernel`), else
        // without: the agent then decides link faults itself.
        let loaded = carrier_globals(opts.carrier_reads).and_then(|g| {
            Self::load(opts, hooks, object, Some(g))
                .map_err(|e| format!("the kernel refused the programs that read carrier: {}", anyhow::Error::from(e)))
        });
        let mut this = match loaded {
            Ok(this) => this,
            Err(why) => {
                warn!(reason = %why, "the kernel does not read carrier; the agent decides link faults itself");
                let mut this = Self::load(opts, hooks, object, None)?;
                this.carrier = KernelCarrier::Off(why);
                this
            }
        };
        let kevents = this.ebpf.take_map(MAP_KEVENTS).ok_or_else(|| missing_map(MAP_KEVENTS))?;
        this.kevents = Some(RingBuf::try_from(kevents).map_err(map_err(MAP_KEVENTS, "open"))?);
        // Loading read the kernel's BTF twice (aya's and ours, ~6 MB each):
        // give the freed heap back rather than keep it resident for ever.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        Ok(this)
    }

    /// Loads the object (with the carrier globals, if given) and the
    /// programs the hooks need (only those: a kernel without XDP frags
    /// need not load the native XDP program).
    fn load(
        opts: &DatapathOptions,
        hooks: Hooks,
        object: &[u8],
        globals: Option<CarrierGlobals>,
    ) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(opts.pin_dir.join("maps"));
        let values = global_values(globals);
        for (name, value) in &values {
            loader.override_global(name, value, true);
        }
        let ebpf = loader.load(object).map_err(DatapathError::Load)?;
        debug!(pin_dir = %opts.pin_dir.display(), carrier_reads = globals.is_some(), "datapath object loaded");
        let mut this = Self {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            hooks,
            loaded: Vec::new(),
            current: std::collections::BTreeSet::new(),
            kevents: None,
            carrier: KernelCarrier::On,
        };
        for pin in Pin::wanted(hooks) {
            match pin {
                Pin::XdpGeneric | Pin::XdpNative => drop(this.xdp(pin.program())?),
                _ => drop(this.tc(pin.program())?),
            }
        }
        Ok(this)
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Detaches every program pinned under `pin_dir` and removes the pins,
    /// maps included: the datapath is gone after this.
    pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
        let mut removed = Vec::new();
        for (path, pin, ifname, ifindex) in pins(pin_dir) {
            detach_pin(&path, pin, &ifname, ifindex)?;
            removed.push(path);
        }
        // Anything else under links/ has a name we do not know: a link is
        // detached by closing it, anything else just unpinned.
        if let Ok(entries) = fs::read_dir(pin_dir.join("links")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(pinned) = PinnedLink::from_pin(&path)
                    && let Ok(link) = pinned.unpin()
                {
                    drop(link);
                } else {
                    fs::remove_file(&path).map_err(|source| DatapathError::PinDir { path: path.clone(), source })?;
                }
                removed.push(path);
            }
        }
        if pin_dir.exists() {
            fs::remove_dir_all(pin_dir)
                .map_err(|source| DatapathError::PinDir { path: pin_dir.to_path_buf(), source })?;
        }
        Ok(removed)
    }

    /// The XDP program `name`, loaded into the kernel on first use.
    fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp, DatapathError> {
        let err = |source| DatapathError::LoadProgram { program: name, source };
        let first = !self.loaded.contains(&name);
        let prog: &mut Xdp =
            self.ebpf.program_mut(name).ok_or(err(aya::programs::ProgramError::NotLoaded))?.try_into().map_err(err)?;
        if first {
            prog.load().map_err(err)?;
            self.loaded.push(name);
        }
        Ok(prog)
    }

    /// The TC program `name`, loaded into the kernel on first use.
    fn tc(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        let err = |source| DatapathError::LoadProgram { program: name, source };
        let first = !self.loaded.contains(&name);
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(name).ok_or(err(aya::programs::ProgramError::NotLoaded))?.try_into().map_err(err)?;
        if first {
            prog.load().map_err(err)?;
            self.loaded.push(name);
        }
        Ok(prog)
    }

    /// Attaches `pin`'s program to `ifname` anew and pins it at `path`.
    fn attach_pin(&mut self, pin: Pin, ifname: &str, ifindex: u32, path: &Path) -> Result<(), DatapathError> {
        let program = pin.program();
        let attach_err = |source| DatapathError::Attach { ifname: ifname.to_string(), program, source };
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::PinLink {
            ifname: ifname.to_string(),
            program,
            path: path.to_path_buf(),
            source,
        };
        let link = match pin {
            Pin::XdpGeneric | Pin::XdpNative => {
                let mode = if pin == Pin::XdpNative { XdpMode::Driver } else { XdpMode::Skb };
                let prog = self.xdp(program)?;
                let id = prog.attach_to_if_index(ifindex, mode).map_err(attach_err)?;
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(|e| pin_err(boxed(e)))?
            }
            Pin::TcxIngress | Pin::TcxEgress => {
                let prog = self.tc(program)?;
                let options = TcAttachOptions::TcxOrder(LinkOrder::default());
                let id = prog.attach_with_options(ifname, pin.tc_type(), options).map_err(attach_err)?;
                FdLink::try_from(prog.take_link(id).map_err(attach_err)?).map_err(|e| pin_err(boxed(e)))?
            }
            Pin::NlIngress | Pin::NlEgress => {
                match tc::qdisc_add_clsact(ifname) {
                    Ok(()) => {}
                    Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(source) => return Err(DatapathError::Clsact { ifname: ifname.to_string(), source }),
                }
                let prog = self.tc(program)?;
                let options = TcAttachOptions::Netlink(NlOptions {
                    priority: NL_PRIORITY,
                    handle: NL_HANDLE,
                    ..NlOptions::default()
                });
                let id = match prog.attach_with_options(ifname, pin.tc_type(), options) {
                    Ok(id) => id,
                    // Our filter is there, its pin lost: take it over.
                    Err(e) if is_errno(&e, libc::EEXIST) => {
                        let link = SchedClassifierLink::attached(ifname, pin.tc_type(), NL_PRIORITY, NL_HANDLE, None)
                            .map_err(|e| attach_err(aya::programs::ProgramError::IOError(e)))?;
                        prog.attach_to_link(link).map_err(attach_err)?
                    }
                    Err(e) => return Err(attach_err(e)),
                };
                let link = prog.take_link(id).map_err(attach_err)?;
                if let Err(e) = prog.pin(path) {
                    drop(link); // detaches the filter: nothing half-attached
                    return Err(pin_err(boxed(e)));
                }
                // The filter outlives this process (it holds the program);
                // dropping the link would delete it.
                std::mem::forget(link);
                return Ok(());
            }
        };
        link.pin(path).map_err(|e| pin_err(boxed(e)))?;
        Ok(())
    }

    /// Gives the link (or filter) pinned at `path` this agent's program, in
    /// one atomic replace: the hook never runs without a program.
    fn replace_pin(&mut self, pin: Pin, ifname: &str, path: &Path) -> Result<(), DatapathError> {
        let program = pin.program();
        let attach_err = |source| DatapathError::Attach { ifname: ifname.to_string(), program, source };
        let link_err = |e: aya::programs::links::LinkError| DatapathError::Replace {
            ifname: ifname.to_string(),
            program,
            path: path.to_path_buf(),
            source: boxed(e),
        };
        match pin {
            Pin::XdpGeneric | Pin::XdpNative => {
                let link =
                    XdpLink::try_from(FdLink::from(PinnedLink::from_pin(path).map_err(link_err)?)).map_err(link_err)?;
                let prog = self.xdp(program)?;
                let id = prog.attach_to_link(link).map_err(attach_err)?;
                drop(prog.take_link(id).map_err(attach_err)?); // the pin holds it
            }
            Pin::TcxIngress | Pin::TcxEgress => {
                let link = SchedClassifierLink::try_from(FdLink::from(PinnedLink::from_pin(path).map_err(link_err)?))
                    .map_err(link_err)?;
                let prog = self.tc(program)?;
                let id = prog.attach_to_link(link).map_err(attach_err)?;
                drop(prog.take_link(id).map_err(attach_err)?);
            }
            Pin::NlIngress | Pin::NlEgress => {
                let link = SchedClassifierLink::attached(ifname, pin.tc_type(), NL_PRIORITY, NL_HANDLE, None)
                    .map_err(|e| attach_err(aya::programs::ProgramError::IOError(e)))?;
                let prog = self.tc(program)?;
                let id = prog.attach_to_link(link).map_err(attach_err)?;
                std::mem::forget(prog.take_link(id).map_err(attach_err)?);
                // The pin names the program the filter runs.
                let _ = fs::remove_file(path);
                prog.pin(path).map_err(|e| DatapathError::PinLink {
                    ifname: ifname.to_string(),
                    program,
                    path: path.to_path_buf(),
                    source: boxed(e),
                })?;
            }
        }
        Ok(())
    }

    fn uplinks(&mut self) -> Result<HashMap<&mut MapData, u32, UplinkConfig>, DatapathError> {
        let map = map_mut(&mut self.ebpf, MAP_UPLINKS)?;
        HashMap::try_from(map).map_err(map_err(MAP_UPLINKS, "open"))
    }

    fn reset_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            map: MAP_STATS,
            op: "count possible CPUs".into(),
            source: MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: e }),
        })?;
        self.zero_per_cpu::<UplinkStats>(MAP_STATS, slot, cpus)?;
        self.zero_per_cpu::<u64>(MAP_GWFRAMES, slot, cpus)?;
        let mut probes: Array<_, ProbeCount> =
            Array::try_from(map_mut(&mut self.ebpf, MAP_PROBES)?).map_err(map_err(MAP_PROBES, "open"))?;
        probes.set(slot, ProbeCount::default(), 0).map_err(map_err(MAP_PROBES, format!("zero slot {slot}")))?;
        let mut devs: Array<_, DevRef> =
            Array::try_from(map_mut(&mut self.ebpf, MAP_DEVS)?).map_err(map_err(MAP_DEVS, "open"))?;
        devs.set(slot, DevRef::default(), 0).map_err(map_err(MAP_DEVS, format!("zero slot {slot}")))
    }

    /// Sets slot `slot` of the per-CPU array `map` to `T::default()` on
    /// each of `cpus` CPUs.
    fn zero_per_cpu<T: aya::Pod + Default>(
        &mut self,
        map: &'static str,
        slot: u32,
        cpus: usize,
    ) -> Result<(), DatapathError> {
        let mut array: PerCpuArray<_, T> =
            PerCpuArray::try_from(map_mut(&mut self.ebpf, map)?).map_err(map_err(map, "open"))?;
        let zeros = PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| DatapathError::Map {
            map,
            op: format!("zero slot {slot}"),
            source: MapError::SyscallError(aya::sys::SyscallError { call: "PerCpuValues", io_error: e }),
        })?;
        array.set(slot, zeros, 0).map_err(map_err(map, format!("zero slot {slot}")))
    }

    /// Removes pins of `ifname` left from an interface with another ifindex
    /// (deleted and re-created since): their links are dead.
    fn remove_stale_pins(&self, ifname: &str, ifindex: u32) {
        for (path, pin, name, index) in pins(&self.pin_dir) {
            if name == ifname && index != ifindex {
                debug!(pin = %path.display(), "removing the pin of a re-created interface");
                let _ = detach_pin(&path, pin, ifname, index);
            }
        }
    }
}

impl Datapath for EbpfDatapath {
    fn attach_uplink(&mut self, ifname: &str, config: &UplinkConfig) -> Result<AttachOutcome, DatapathError> {
        if config.slot >= MAX_UPLINKS {
            return Err(DatapathError::SlotOutOfRange {
                ifname: ifname.to_string(),
                slot: config.slot,
                max: MAX_UPLINKS - 1,
            });
        }
        let ifindex = ifindex(ifname)?;
        self.remove_stale_pins(ifname, ifindex);
        let wanted = Pin::wanted(self.hooks);
        let paths = wanted.map(|pin| link_pin(&self.pin_dir, pin, ifname, ifindex));
        let present = paths.clone().map(|p| p.exists());
        let all_present = present.iter().all(|p| *p);

        let previous = self.uplinks()?.get(&ifindex, 0).ok();
        // Counters belong to one uplink in one slot: never inherited by
        // another identity, nor kept across programs attached anew.
        let same = previous.is_some_and(|p| p.ident == config.ident && p.slot == config.slot);
        if !(all_present && same) {
            self.reset_stats(config.slot)?;
        }
        self.uplinks()?
            .insert(ifindex, *config, 0)
            .map_err(map_err(MAP_UPLINKS, format!("write the entry of {ifname}")))?;

        let mut fresh = Vec::new();
        let mut result = Ok(());
        for ((pin, path), present) in wanted.into_iter().zip(&paths).zip(present) {
            if present && self.current.contains(path) {
                continue;
            }
            if present {
                match self.replace_pin(pin, ifname, path) {
                    Ok(()) => {
                        self.current.insert(path.clone());
                        continue;
                    }
                    Err(e) => {
                        // A link the kernel will not update (dead, or of
                        // another kind): attach anew instead.
                        warn!(ifname, pin = %path.display(), error = %anyhow::Error::from(e), "replacing the program failed; attaching anew");
                        let _ = detach_pin(path, pin, ifname, ifindex);
                    }
                }
            }
            if let Err(e) = self.attach_pin(pin, ifname, ifindex, path) {
                result = Err(e);
                break;
            }
            fresh.push((pin, path.clone()));
        }
        for (_, path) in &fresh {
            self.current.insert(path.clone());
        }
        if let Err(e) = result {
            // Undo: nothing half-attached is left behind.
            for (pin, path) in fresh {
                let _ = detach_pin(&path, pin, ifname, ifindex);
            }
            if let Ok(mut uplinks) = self.uplinks() {
                let _ = match previous {
                    Some(old) => uplinks.insert(ifindex, old, 0),
                    None => uplinks.remove(&ifindex),
                };
            }
            return Err(e);
        }
        // Hooks of another mode (the ingress mode or TC attach changed):
        // detached only now that this mode's programs run.
        for (path, pin, name, index) in pins(&self.pin_dir) {
            if name == ifname && index == ifindex && !wanted.contains(&pin) {
                info!(ifname, pin = %path.display(), "detaching the program of another mode");
                detach_pin(&path, pin, ifname, ifindex)?;
            }
        }
        let outcome = if all_present && fresh.is_empty() { AttachOutcome::Reused } else { AttachOutcome::Attached };
        if outcome == AttachOutcome::Attached {
            info!(ifname, ifindex, ingress = %self.hooks.ingress, tc = self.hooks.tc.as_str(), "uplink datapath attached");
        } else {
            debug!(ifname, ifindex, "uplink datapath in place, programs replaced");
        }
        Ok(outcome)
    }

    fn update_uplink(&mut self, ifname: &str, config: &UplinkConfig) -> Result<(), DatapathError> {
        let ifindex = ifindex(ifname)?;
        self.uplinks()?
            .insert(ifindex, *config, 0)
            .map_err(map_err(MAP_UPLINKS, format!("update the entry of {ifname}")))
    }

    fn uplink(&mut self, ifname: &str) -> Result<Option<UplinkConfig>, DatapathError> {
        let ifindex = ifindex(ifname)?;
        match self.uplinks()?.get(&ifindex, 0) {
            Ok(cfg) => Ok(Some(cfg)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_UPLINKS, format!("read the entry of {ifname}"))(e)),
        }
    }

    fn detach_uplink(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let ifindex = ifindex(ifname)?;
        for (path, pin, name, index) in pins(&self.pin_dir) {
            if name == ifname && index == ifindex {
                detach_pin(&path, pin, ifname, ifindex)?;
            }
        }
        match self.uplinks()?.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(MAP_UPLINKS, format!("remove the entry of {ifname}"))(e)),
        }
    }

    fn set_group(&mut self, group: u32, state: &GroupState) -> Result<(), DatapathError> {
        let map = map_mut(&mut self.ebpf, MAP_GROUPS)?;
        let mut groups: HashMap<_, u32, GroupState> = HashMap::try_from(map).map_err(map_err(MAP_GROUPS, "open"))?;
        groups.insert(group, *state, 0).map_err(map_err(MAP_GROUPS, format!("write group {group}")))
    }

    fn group(&self, group: u32) -> Result<Option<GroupState>, DatapathError> {
        let map = map_ref(&self.ebpf, MAP_GROUPS)?;
        let groups: HashMap<_, u32, GroupState> = HashMap::try_from(map).map_err(map_err(MAP_GROUPS, "open"))?;
        match groups.get(&group, 0) {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_GROUPS, format!("read group {group}"))(e)),
        }
    }

    fn repair_pins(&mut self) -> Result<Vec<PathBuf>, DatapathError> {
        let mut restored = Vec::new();
        for sub in ["maps", "links"] {
            let path = self.pin_dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| DatapathError::PinDir { path, source })?;
        }
        // (The ring buffer is held outside `ebpf` and is not re-pinned: a
        // restarted agent then misses only the reports, not the state.)
        for name in MAPS.into_iter().filter(|m| *m != MAP_KEVENTS) {
            let path = self.pin_dir.join("maps").join(name);
            if !path.exists() {
                map_ref(&self.ebpf, name)?.pin(&path).map_err(|source| DatapathError::PinMap {
                    map: name,
                    path: path.clone(),
                    source,
                })?;
                restored.push(path);
            }
        }
        Ok(restored)
    }

    fn counters(&self, slot: u32) -> Result<Counters, DatapathError> {
        let map = map_ref(&self.ebpf, MAP_STATS)?;
        let stats: PerCpuArray<_, UplinkStats> = PerCpuArray::try_from(map).map_err(map_err(MAP_STATS, "open"))?;
        let values = stats.get(&slot, 0).map_err(read_err(MAP_STATS, slot))?;
        let mut c = Counters::sum(values.iter());
        let map = map_ref(&self.ebpf, MAP_GWFRAMES)?;
        let frames: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err(MAP_GWFRAMES, "open"))?;
        c.gateway_frames = frames.get(&slot, 0).map_err(read_err(MAP_GWFRAMES, slot))?.iter().sum();
        Ok(c)
    }

    fn pinned_uplinks(&self) -> Result<Vec<(u32, UplinkConfig)>, DatapathError> {
        let map = map_ref(&self.ebpf, MAP_UPLINKS)?;
        let uplinks: HashMap<_, u32, UplinkConfig> = HashMap::try_from(map).map_err(map_err(MAP_UPLINKS, "open"))?;
        uplinks.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(MAP_UPLINKS, "list"))
    }

    fn pinned_groups(&self) -> Result<Vec<u32>, DatapathError> {
        let map = map_ref(&self.ebpf, MAP_GROUPS)?;
        let groups: HashMap<_, u32, GroupState> = HashMap::try_from(map).map_err(map_err(MAP_GROUPS, "open"))?;
        groups.keys().collect::<Result<Vec<_>, _>>().map_err(map_err(MAP_GROUPS, "list"))
    }

    fn remove_group(&mut self, group: u32) -> Result<(), DatapathError> {
        let map = map_mut(&mut self.ebpf, MAP_GROUPS)?;
        let mut groups: HashMap<_, u32, GroupState> = HashMap::try_from(map).map_err(map_err(MAP_GROUPS, "open"))?;
        match groups.remove(&group) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(MAP_GROUPS, format!("remove group {group}"))(e)),
        }
    }

    fn attached_interfaces(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> =
            pins(&self.pin_dir).into_iter().map(|(_, _, ifname, ifindex)| (ifname, ifindex)).collect();
        out.sort();
        out.dedup();
        out
    }

    fn detach_interface(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        for (path, pin, name, index) in pins(&self.pin_dir) {
            if name == ifname {
                detach_pin(&path, pin, ifname, index)?;
            }
        }
        match self.uplinks()?.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(MAP_UPLINKS, format!("remove the entry of {ifname}"))(e)),
        }
    }

    fn device(&self, slot: u32) -> Result<DevRef, DatapathError> {
        let map = map_ref(&self.ebpf, MAP_DEVS)?;
        let devs: Array<_, DevRef> = Array::try_from(map).map_err(map_err(MAP_DEVS, "open"))?;
        devs.get(&slot, 0).map_err(read_err(MAP_DEVS, slot))
    }

    fn kernel_switches(&mut self) -> Vec<KernelSwitch> {
        let mut out = Vec::new();
        if let Some(ring) = &mut self.kevents {
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<KernelSwitch>() {
                    // SAFETY: the kernel wrote a `KernelSwitch` (plain data,
                    // checked length); read unaligned from the ring.
                    out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<KernelSwitch>()) });
                }
            }
        }
        out
    }

    fn kernel_switch_fd(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd as _;
        self.kevents.as_ref().and_then(|r| r.as_fd().try_clone_to_owned().ok())
    }

    fn kernel_carrier(&self) -> KernelCarrier {
        self.carrier.clone()
    }

    fn hooks(&self) -> Hooks {
        self.hooks
    }
}

/// `<hook>-<ifname>-<ifindex>` -> its parts.
fn parse_link_pin(name: &str) -> Option<(Pin, String, u32)> {
    let (pin, rest) =
        Pin::ALL.into_iter().find_map(|pin| Some((pin, name.strip_prefix(pin.prefix())?.strip_prefix('-')?)))?;
    let (ifname, ifindex) = rest.rsplit_once('-')?;
    Some((pin, ifname.to_string(), ifindex.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_parse_with_dashes_in_the_interface() {
        assert_eq!(parse_link_pin("xdp-up1-7"), Some((Pin::XdpGeneric, "up1".into(), 7)));
        assert_eq!(parse_link_pin("tc-br-ext-up-12"), Some((Pin::TcxEgress, "br-ext-up".into(), 12)));
        assert_eq!(parse_link_pin("tcnl-up1-7"), Some((Pin::NlEgress, "up1".into(), 7)));
        assert_eq!(parse_link_pin("tcinl-up1-7"), Some((Pin::NlIngress, "up1".into(), 7)));
        assert_eq!(parse_link_pin("tci-up1-7"), Some((Pin::TcxIngress, "up1".into(), 7)));
        assert_eq!(parse_link_pin("xdpn-up1-7"), Some((Pin::XdpNative, "up1".into(), 7)));
        assert_eq!(parse_link_pin("tc-i-up-7"), Some((Pin::TcxEgress, "i-up".into(), 7)));
        for pin in Pin::ALL {
            assert_eq!(parse_link_pin(&format!("{}-eth0-3", pin.prefix())), Some((pin, "eth0".into(), 3)));
        }
        assert_eq!(parse_link_pin("other"), None);
        assert_eq!(parse_link_pin("xdp-up1-x"), None);
    }

    #[test]
    fn the_device_window_covers_state_flags_and_ifindex() {
        let o = btf::KernelOffsets {
            skb_dev: 16,
            dev_state: 168,
            dev_flags: 176,
            dev_ifindex: 224,
            xdp_rxq: 32,
            rxq_dev: 0,
        };
        let g = CarrierGlobals::from_offsets(&o).unwrap();
        assert_eq!(g, CarrierGlobals { skb_dev: 16, window: 168, state: 0, flags: 8, ifindex: 56 });
        let far = btf::KernelOffsets { dev_ifindex: 400, ..o };
        let e = CarrierGlobals::from_offsets(&far).unwrap_err();
        assert!(e.contains("span 236 bytes"), "{e}");
    }
}
