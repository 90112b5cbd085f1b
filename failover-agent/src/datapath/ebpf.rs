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
//! - `links/xdp-<ifname>-<ifindex>`, `links/tc-<ifname>-<ifindex>`: the
//!   program links. A link pin keeps its program attached after the agent
//!   exits; a later attach finds the pin and leaves the link alone. The
//!   ifindex in the name tells a re-created interface from the old one.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use failover_common::{
    DEV_WINDOW_LEN, DevRef, GLOBAL_CARRIER_READS, GLOBAL_DEV_FLAGS, GLOBAL_DEV_IFINDEX, GLOBAL_DEV_STATE,
    GLOBAL_DEV_WINDOW, GLOBAL_SKB_DEV, GroupState, KernelSwitch, LAYOUT_VERSION, MAP_DEVS, MAP_GROUPS, MAP_KEVENTS,
    MAP_PROBES, MAP_STATS, MAP_UPLINKS, MAPS, MAX_UPLINKS, PROG_TC_EGRESS, PROG_XDP, ProbeCount, UplinkConfig,
    UplinkStats,
};
use tracing::{debug, info, warn};

use super::{AttachOutcome, Counters, Datapath, DatapathError, DatapathOptions, KernelCarrier, XdpAttachMode, btf};

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
    xdp_mode: XdpAttachMode,
    xdp_loaded: bool,
    tc_loaded: bool,
    kevents: Option<RingBuf<MapData>>,
    carrier: KernelCarrier,
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

/// Whether the pin directory holds a datapath of another layout: maps or
/// links pinned without a `layout-v*` directory (the first agents made
/// none), or another version's.
fn foreign_layout(pin_dir: &Path) -> Option<String> {
    let names: Vec<String> = fs::read_dir(pin_dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let mine = format!("layout-v{LAYOUT_VERSION}");
    if names.contains(&mine) {
        return None;
    }
    if let Some(other) = names.iter().find_map(|n| n.strip_prefix("layout-v")) {
        return Some(other.to_string());
    }
    let any = |sub: &str| fs::read_dir(pin_dir.join(sub)).is_ok_and(|mut d| d.next().is_some());
    (any("maps") || any("links")).then(|| "1 (no layout directory)".to_string())
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

fn link_pin(pin_dir: &Path, kind: &str, ifname: &str, ifindex: u32) -> PathBuf {
    pin_dir.join("links").join(format!("{kind}-{ifname}-{ifindex}"))
}

/// Unpins a link and closes it, which detaches its program (nobody else
/// holds it: the agent never keeps link fds besides the pins).
fn detach_pinned(path: &Path, ifname: &str) -> Result<(), DatapathError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Detach {
        ifname: ifname.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let pinned = PinnedLink::from_pin(path).map_err(|e| err(Box::new(e)))?;
    let link = pinned.unpin().map_err(|e| err(Box::new(e)))?;
    drop(link);
    Ok(())
}

impl EbpfDatapath {
    /// Loads the object, reusing the maps pinned under `pin_dir` (or pinning
    /// new ones). Nothing is attached yet.
    pub fn open(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        let object = object()?;
        if !on_bpffs(&opts.pin_dir) {
            return Err(DatapathError::NotBpffs { path: opts.pin_dir.clone() });
        }
        if let Some(found) = foreign_layout(&opts.pin_dir) {
            // An older agent's datapath: its programs read maps of another
            // layout. Replace it whole (traffic passes untouched meanwhile:
            // the programs fail open, the bridge's rules keep steering).
            warn!(pin_dir = %opts.pin_dir.display(), found, want = LAYOUT_VERSION, "replacing a datapath of another layout");
            Self::uninstall(&opts.pin_dir).map_err(|e| DatapathError::Upgrade {
                path: opts.pin_dir.clone(),
                found: found.clone(),
                want: LAYOUT_VERSION,
                source: Box::new(e),
            })?;
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
            Self::load(opts, object, Some(g))
                .map_err(|e| format!("the kernel refused the programs that read carrier: {}", anyhow::Error::from(e)))
        });
        let mut this = match loaded {
            Ok(this) => this,
            Err(why) => {
                warn!(reason = %why, "the kernel does not read carrier; the agent decides link faults itself");
                let mut this = Self::load(opts, object, None)?;
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

    /// Loads the object (with the carrier globals, if given) and both programs.
    fn load(opts: &DatapathOptions, object: &[u8], globals: Option<CarrierGlobals>) -> Result<Self, DatapathError> {
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
            xdp_mode: opts.xdp_mode,
            xdp_loaded: false,
            tc_loaded: false,
            kevents: None,
            carrier: KernelCarrier::On,
        };
        this.xdp()?;
        this.tc()?;
        Ok(this)
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Detaches every pinned link under `pin_dir` and removes the pins,
    /// maps included: the datapath is gone after this.
    pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
        let mut removed = Vec::new();
        let links = pin_dir.join("links");
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                detach_pinned(&path, &name)?;
                removed.push(path);
            }
        }
        if pin_dir.exists() {
            fs::remove_dir_all(pin_dir)
                .map_err(|source| DatapathError::PinDir { path: pin_dir.to_path_buf(), source })?;
        }
        Ok(removed)
    }

    fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_XDP)
            .ok_or(DatapathError::LoadProgram { program: PROG_XDP, source: aya::programs::ProgramError::NotLoaded })?
            .try_into()
            .map_err(|source| DatapathError::LoadProgram { program: PROG_XDP, source })?;
        if !self.xdp_loaded {
            prog.load().map_err(|source| DatapathError::LoadProgram { program: PROG_XDP, source })?;
            self.xdp_loaded = true;
        }
        Ok(prog)
    }

    fn tc(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(PROG_TC_EGRESS)
            .ok_or(DatapathError::LoadProgram {
                program: PROG_TC_EGRESS,
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::LoadProgram { program: PROG_TC_EGRESS, source })?;
        if !self.tc_loaded {
            prog.load().map_err(|source| DatapathError::LoadProgram { program: PROG_TC_EGRESS, source })?;
            self.tc_loaded = true;
        }
        Ok(prog)
    }

    /// Attaches the XDP program to `ifname` and pins its link at `pin`.
    fn attach_xdp(&mut self, ifname: &str, ifindex: u32, pin: &Path) -> Result<(), DatapathError> {
        let flags = match self.xdp_mode {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Skb => XdpMode::Skb,
        };
        let attach_err = |source| DatapathError::Attach { ifname: ifname.to_string(), program: PROG_XDP, source };
        let prog = self.xdp()?;
        let id = prog.attach_to_if_index(ifindex, flags).map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::PinLink {
            ifname: ifname.to_string(),
            program: PROG_XDP,
            path: pin.to_path_buf(),
            source,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
        fd_link.pin(pin).map_err(|e| pin_err(Box::new(e)))?;
        Ok(())
    }

    /// Attaches the TC egress program (TCX) to `ifname` and pins its link at `pin`.
    fn attach_tc(&mut self, ifname: &str, pin: &Path) -> Result<(), DatapathError> {
        let attach_err = |source| DatapathError::Attach { ifname: ifname.to_string(), program: PROG_TC_EGRESS, source };
        let prog = self.tc()?;
        let id = prog.attach(ifname, TcAttachType::Egress).map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::PinLink {
            ifname: ifname.to_string(),
            program: PROG_TC_EGRESS,
            path: pin.to_path_buf(),
            source,
        };
        let fd_link = FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?;
        fd_link.pin(pin).map_err(|e| pin_err(Box::new(e)))?;
        Ok(())
    }

    fn uplinks(&mut self) -> Result<HashMap<&mut MapData, u32, UplinkConfig>, DatapathError> {
        let map = map_mut(&mut self.ebpf, MAP_UPLINKS)?;
        HashMap::try_from(map).map_err(map_err(MAP_UPLINKS, "open"))
    }

    fn reset_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        let map = map_mut(&mut self.ebpf, MAP_STATS)?;
        let mut stats: PerCpuArray<_, UplinkStats> = PerCpuArray::try_from(map).map_err(map_err(MAP_STATS, "open"))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            map: MAP_STATS,
            op: "count possible CPUs".into(),
            source: MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: e }),
        })?;
        let zeros = PerCpuValues::try_from(vec![UplinkStats::default(); cpus]).map_err(|e| DatapathError::Map {
            map: MAP_STATS,
            op: format!("zero slot {slot}"),
            source: MapError::SyscallError(aya::sys::SyscallError { call: "PerCpuValues", io_error: e }),
        })?;
        stats.set(slot, zeros, 0).map_err(map_err(MAP_STATS, format!("zero slot {slot}")))?;
        let mut probes: Array<_, ProbeCount> =
            Array::try_from(map_mut(&mut self.ebpf, MAP_PROBES)?).map_err(map_err(MAP_PROBES, "open"))?;
        probes.set(slot, ProbeCount::default(), 0).map_err(map_err(MAP_PROBES, format!("zero slot {slot}")))?;
        let mut devs: Array<_, DevRef> =
            Array::try_from(map_mut(&mut self.ebpf, MAP_DEVS)?).map_err(map_err(MAP_DEVS, "open"))?;
        devs.set(slot, DevRef::default(), 0).map_err(map_err(MAP_DEVS, format!("zero slot {slot}")))
    }

    /// Removes pins of `ifname` left from an interface with another ifindex
    /// (deleted and re-created since): their links are dead.
    fn remove_stale_pins(&self, ifname: &str, ifindex: u32) {
        let Ok(entries) = fs::read_dir(self.pin_dir.join("links")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            for kind in ["xdp", "tc"] {
                if let Some(index) = name
                    .strip_prefix(kind)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|rest| rest.strip_prefix(ifname))
                    .and_then(|rest| rest.strip_prefix('-'))
                    && index.parse::<u32>().is_ok_and(|i| i != ifindex)
                {
                    debug!(pin = %entry.path().display(), "removing the pin of a re-created interface");
                    let _ = detach_pinned(&entry.path(), ifname);
                }
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
        let xdp_pin = link_pin(&self.pin_dir, "xdp", ifname, ifindex);
        let tc_pin = link_pin(&self.pin_dir, "tc", ifname, ifindex);
        let xdp_reuse = xdp_pin.exists();
        let tc_reuse = tc_pin.exists();

        let previous = self.uplinks()?.get(&ifindex, 0).ok();
        // Counters belong to one uplink in one slot: never inherited by
        // another identity, nor kept across programs attached anew.
        let same = previous.is_some_and(|p| p.ident == config.ident && p.slot == config.slot);
        if !(xdp_reuse && tc_reuse && same) {
            self.reset_stats(config.slot)?;
        }
        self.uplinks()?
            .insert(ifindex, *config, 0)
            .map_err(map_err(MAP_UPLINKS, format!("write the entry of {ifname}")))?;

        // Undo on failure: nothing half-attached is left behind.
        let restore = |this: &mut Self| {
            if let Ok(mut uplinks) = this.uplinks() {
                let _ = match previous {
                    Some(old) => uplinks.insert(ifindex, old, 0),
                    None => uplinks.remove(&ifindex),
                };
            }
        };
        if !xdp_reuse && let Err(e) = self.attach_xdp(ifname, ifindex, &xdp_pin) {
            restore(self);
            return Err(e);
        }
        if !tc_reuse && let Err(e) = self.attach_tc(ifname, &tc_pin) {
            if !xdp_reuse {
                let _ = detach_pinned(&xdp_pin, ifname);
            }
            restore(self);
            return Err(e);
        }
        let outcome = if xdp_reuse && tc_reuse { AttachOutcome::Reused } else { AttachOutcome::Attached };
        if outcome == AttachOutcome::Attached {
            info!(ifname, ifindex, "uplink datapath attached");
        } else {
            debug!(ifname, ifindex, "uplink datapath in place");
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
        for kind in ["xdp", "tc"] {
            let pin = link_pin(&self.pin_dir, kind, ifname, ifindex);
            if pin.exists() {
                detach_pinned(&pin, ifname)?;
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
        let values = stats.get(&slot, 0).map_err(map_err(MAP_STATS, format!("read slot {slot}")))?;
        Ok(Counters::sum(values.iter()))
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
        let Ok(entries) = fs::read_dir(self.pin_dir.join("links")) else {
            return Vec::new();
        };
        let mut out: Vec<(String, u32)> = entries
            .flatten()
            .filter_map(|e| parse_link_pin(&e.file_name().to_string_lossy()))
            .map(|(_, ifname, ifindex)| (ifname, ifindex))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn detach_interface(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        if let Ok(entries) = fs::read_dir(self.pin_dir.join("links")) {
            for entry in entries.flatten() {
                if parse_link_pin(&entry.file_name().to_string_lossy()).is_some_and(|(_, name, _)| name == ifname) {
                    detach_pinned(&entry.path(), ifname)?;
                }
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
        devs.get(&slot, 0).map_err(map_err(MAP_DEVS, format!("read slot {slot}")))
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
}

/// `<kind>-<ifname>-<ifindex>` -> its parts.
fn parse_link_pin(name: &str) -> Option<(&'static str, String, u32)> {
    let (kind, rest) =
        if let Some(r) = name.strip_prefix("xdp-") { ("xdp", r) } else { ("tc", name.strip_prefix("tc-")?) };
    let (ifname, ifindex) = rest.rsplit_once('-')?;
    Some((kind, ifname.to_string(), ifindex.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_parse_with_dashes_in_the_interface() {
        assert_eq!(parse_link_pin("xdp-up1-7"), Some(("xdp", "up1".into(), 7)));
        assert_eq!(parse_link_pin("tc-br-ext-up-12"), Some(("tc", "br-ext-up".into(), 12)));
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
