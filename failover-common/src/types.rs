//! Map keys and values shared by the kernel and the user side.
//!
//! Maps (all pinned by name under the agent's bpffs directory):
//! - [`MAP_UPLINKS`]: hash, key = ifindex (`u32`), value = [`UplinkConfig`].
//!   Present for every interface the programs are attached to.
//! - [`MAP_GROUPS`]: hash (no pre-allocation, so an update swaps the whole
//!   value under RCU and readers never see half of it), key = group id
//!   (`u32`), value = [`GroupState`]. Writing one entry flips a group.
//! - [`MAP_STATS`]: per-CPU array, index = uplink slot, value = [`UplinkStats`].
//! - [`MAP_PROBES`]: array (shared by all CPUs), index = uplink slot, value =
//!   [`ProbeCount`]: probes seen leaving, replies counted for them, the time
//!   of the last one (the gateway's liveness as the kernel judges it).
//! - [`MAP_DEVS`]: array, index = uplink slot, value = [`DevRef`]: where the
//!   kernel keeps the uplink's device, for carrier reads.
//! - [`MAP_KEVENTS`]: ring buffer of [`KernelSwitch`]: switchovers the
//!   kernel made by itself, for the agent to ratify.

/// Name of the uplink configuration map.
pub const MAP_UPLINKS: &str = "UPLINKS";
/// Name of the group state map.
pub const MAP_GROUPS: &str = "GROUPS";
/// Name of the per-uplink counter map.
pub const MAP_STATS: &str = "STATS";
/// Name of the probe/reply balance map.
pub const MAP_PROBES: &str = "PROBES";
/// Name of the map of each uplink's kernel device, for carrier reads.
pub const MAP_DEVS: &str = "DEVS";
/// Name of the ring buffer of the kernel's own switchovers.
pub const MAP_KEVENTS: &str = "KEVENTS";
/// Name of the per-CPU array of frames from each uplink's gateway (slot ->
/// count): data-plane liveness. A map of its own, so that adding it left
/// the other maps' layout (and [`LAYOUT_VERSION`]) as it was.
pub const MAP_GWFRAMES: &str = "GWFRAMES";
/// Every map, in the order they are pinned.
pub const MAPS: [&str; 7] = [MAP_UPLINKS, MAP_GROUPS, MAP_STATS, MAP_PROBES, MAP_DEVS, MAP_KEVENTS, MAP_GWFRAMES];
/// Name of the XDP program in the object.
pub const PROG_XDP: &str = "failover_xdp";
/// Name of the TC egress program in the object.
pub const PROG_TC_EGRESS: &str = "failover_tc_egress";
/// The TC ingress program's name (the default ingress hook).
pub const PROG_TC_INGRESS: &str = "failover_tc_ingress";
/// The native-XDP program's name (`xdp.frags`: attaches on jumbo MTU).
pub const PROG_XDP_FRAGS: &str = "failover_xdp_frags";
/// Bytes of the [`MAP_KEVENTS`] ring buffer (a power-of-two multiple of the page size).
pub const KEVENTS_BYTES: u32 = 64 * 1024;
/// Layout version of the maps above: the pinned maps and programs of
/// another version are not reused (see the agent's datapath room).
pub const LAYOUT_VERSION: u32 = 2;

/// Globals the agent sets at load time (`.rodata`, so the verifier sees
/// them as constants): where the kernel keeps the fields the programs read
/// with `bpf_probe_read_kernel`, computed from the running kernel's BTF.
/// Offsets of the device fields are relative to `GLOBAL_DEV_WINDOW`.
pub const GLOBAL_CARRIER_READS: &str = "FA_CARRIER_READS";
pub const GLOBAL_SKB_DEV: &str = "FA_OFF_SKB_DEV";
pub const GLOBAL_DEV_WINDOW: &str = "FA_DEV_WINDOW";
pub const GLOBAL_DEV_STATE: &str = "FA_DEV_STATE";
pub const GLOBAL_DEV_FLAGS: &str = "FA_DEV_FLAGS";
pub const GLOBAL_DEV_IFINDEX: &str = "FA_DEV_IFINDEX";

/// Bytes of a `net_device` read at once: `state`, `flags` and `ifindex`
/// must lie within this many bytes of each other.
pub const DEV_WINDOW_LEN: usize = 64;

/// Most uplinks the datapath keeps at once (all groups together): the size
/// of [`MAP_UPLINKS`] and [`MAP_STATS`]; a slot is an index below it.
pub const MAX_UPLINKS: u32 = 256;
/// Most groups the datapath keeps at once: the size of [`MAP_GROUPS`].
pub const MAX_GROUPS: u32 = 64;
/// Most uplinks in one group (the members a [`GroupState`] can hold).
pub const MAX_GROUP_UPLINKS: usize = 8;

/// `skb->mark` the agent's probe socket sets (`SO_MARK`): frames carrying it
/// leave on the uplink they were sent on, active or not. "FAPR" in ASCII.
pub const PROBE_MARK: u32 = 0x4641_5052;

/// Address family of an uplink's gateway: IPv4, probed with ARP.
pub const FAMILY_IPV4: u8 = 4;
/// Address family of an uplink's gateway: IPv6, probed with Neighbor Solicitation.
pub const FAMILY_IPV6: u8 = 6;

/// [`UplinkConfig::flags`]: `gateway_mac` holds the gateway's MAC; replies
/// from any other MAC are rejected.
pub const UPLINK_GATEWAY_MAC_KNOWN: u8 = 1;

/// [`GroupState::flags`]: `active_gateway_mac` is known, so frames to any
/// gateway of the group are rewritten to it.
pub const GROUP_ACTIVE_MAC_KNOWN: u16 = 1;

/// [`GroupState::flags`]: unicast leaving the uplink the bridge's rules
/// point at ([`GroupState::steer_ifindex`]), when that is not the active
/// one, is redirected to the active one. The agent sets it from a
/// switchover until the bridge's flows follow (and always when it does not
/// manage the bridge's flows); the kernel sets it when it switches by
/// itself. Without it such frames are dropped, so that a bridge that floods
/// unknown unicast (after an OVS restart, say) does not deliver a frame twice.
pub const GROUP_REDIRECT_INACTIVE: u16 = 2;

/// [`GroupState::flags`]: the kernel may move the group off an active uplink
/// that lost its carrier or whose gateway went silent (the fast rule,
/// [`crate::rule`]).
pub const GROUP_KERNEL_FAILOVER: u16 = 4;

/// [`GroupState::flags`]: an operator holds the group on its active uplink
/// (a forced switch): the kernel never moves it.
pub const GROUP_HOLD: u16 = 8;

/// [`GroupState::flags`]: the kernel itself made the last switchover and
/// the agent has not written the group since.
pub const GROUP_KERNEL_SWITCHED: u16 = 16;

/// [`GroupState::flags`]: the group's agent takes frames from a gateway as
/// proof of its life (`data_plane_liveness`) and probes an uplink only after
/// a whole interval without them; that quiet interval counts as the first
/// unanswered probe ([`crate::rule::unanswered_needed`]).
pub const GROUP_DATA_PLANE: u16 = 32;

/// [`KernelSwitch::reason`]: the active uplink's device lost its carrier
/// (or went down, or away).
pub const SWITCH_CARRIER: u32 = 1;
/// [`KernelSwitch::reason`]: the active uplink's gateway went silent.
pub const SWITCH_SILENCE: u32 = 2;

/// What the kernel needs to know about one uplink (value of [`MAP_UPLINKS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkConfig {
    /// Group id: key of this uplink's [`GroupState`] in [`MAP_GROUPS`].
    pub group: u32,
    /// Index of this uplink's counters in [`MAP_STATS`] and [`MAP_PROBES`].
    pub slot: u32,
    /// Identity of the uplink (a hash of its group, name, interface and
    /// gateway): a slot, and the counters in it, belong to one identity;
    /// an uplink of another identity never inherits them.
    pub ident: u32,
    /// The uplink's own MAC: probes leave from it, replies must be sent to it.
    pub own_mac: [u8; 6],
    /// The gateway's MAC, if [`UPLINK_GATEWAY_MAC_KNOWN`] is set.
    pub gateway_mac: [u8; 6],
    /// The gateway's address: IPv4 in the first four bytes, or IPv6.
    pub gateway_ip: [u8; 16],
    /// The address probes are sent from, replies must be addressed to.
    pub probe_source: [u8; 16],
    /// 802.1Q VLAN id of probes and replies; 0 = untagged.
    pub vlan: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// `UPLINK_*` flags.
    pub flags: u8,
}

/// One uplink of a group, as the kernel finds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// The uplink's ifindex; 0 = its interface is not there.
    pub ifindex: u32,
    /// Its slot in [`MAP_STATS`], [`MAP_PROBES`] and [`MAP_DEVS`].
    pub slot: u32,
}

/// The state of one group (value of [`MAP_GROUPS`]). The agent writes the
/// whole value at once: that single update is the switchover. The kernel
/// writes it whole too when it fails over by itself (changing only the
/// active uplink and the flags).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupState {
    /// Ifindex of the active uplink; 0 = none chosen (everything passes).
    pub active_ifindex: u32,
    /// How many entries of `members` (and `gateway_macs`) are valid, in
    /// priority order.
    pub member_count: u32,
    /// MAC of the active uplink's gateway, if [`GROUP_ACTIVE_MAC_KNOWN`].
    pub active_gateway_mac: [u8; 6],
    /// `GROUP_*` flags.
    pub flags: u16,
    /// Each member's gateway MAC, valid where `mac_known` has its bit: a
    /// unicast frame addressed to any of them is readdressed to
    /// `active_gateway_mac`.
    pub gateway_macs: [[u8; 6]; MAX_GROUP_UPLINKS],
    /// The group's uplinks in priority order.
    pub members: [Member; MAX_GROUP_UPLINKS],
    /// The gateway of an uplink is silent when `down_after` probes left
    /// unanswered and this long passed since its last valid reply.
    pub silence_ns: u64,
    /// Ifindex of the uplink the bridge's rules send VM traffic to (0: not
    /// known, any inactive uplink may redirect).
    pub steer_ifindex: u32,
    /// Unanswered probes before a gateway can be silent (0: never).
    pub down_after: u16,
    /// Bit i: `gateway_macs[i]` is valid.
    pub mac_known: u8,
    /// Bit i: the kernel may move traffic to member i (the agent sees it
    /// healthy and not held out of service).
    pub allowed: u8,
    /// Bit i: member i is preferred among the allowed ones (not flapping).
    pub preferred: u8,
    /// Explicit padding (always zero).
    pub reserved: [u8; 7],
}

/// Per-CPU counters of one uplink (value of [`MAP_STATS`]). The user side
/// sums the counters over CPUs and takes the newest `last_reply_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkStats {
    /// Probe replies that passed validation (consumed by XDP).
    pub valid_replies: u64,
    /// Replies addressed to the probe source or the uplink's MAC that failed
    /// validation (wrong sender, wrong target, wrong VLAN, ...).
    pub rejected_replies: u64,
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) of the last valid reply.
    pub last_reply_ns: u64,
    /// Frames dropped at ingress because the uplink is not active.
    pub ingress_dropped_inactive: u64,
    /// Unicast frames leaving this (inactive) uplink redirected to the active one.
    pub egress_redirected: u64,
    /// Frames dropped at egress because the uplink is not active: broadcast
    /// and multicast always, unicast when not redirecting.
    pub egress_dropped: u64,
    /// Frames whose destination MAC was rewritten to the active gateway's.
    pub egress_rewritten: u64,
    /// Probes (frames with [`PROBE_MARK`]) seen leaving this uplink.
    pub probes_out: u64,
    /// Sender MAC of the last valid reply.
    pub gateway_mac: [u8; 6],
    /// Explicit padding (always zero) so the struct has none implicit.
    pub reserved: [u8; 2],
}

/// Probes and the replies counted for them, per uplink (value of
/// [`MAP_PROBES`], shared by all CPUs): a reply counts only while
/// `answered < sent`, so no more replies count than probes left; the
/// others are unsolicited, rejected. It is also the gateway's liveness as
/// the kernel's fast rule reads it ([`crate::rule::silent`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCount {
    /// Probes (frames with [`PROBE_MARK`]) seen leaving the uplink.
    pub sent: u64,
    /// Valid replies counted.
    pub answered: u64,
    /// `sent` when the last valid reply (or a frame from the gateway, with
    /// probes outstanding) was counted: `sent - acked` probes are
    /// unanswered since.
    pub acked: u64,
    /// `CLOCK_MONOTONIC` time of the last proof of life: a valid reply, or
    /// a frame from the gateway (recorded to within
    /// [`crate::rule::proof_grain`]). 0: none yet.
    pub last_reply_ns: u64,
}

/// An uplink's kernel device, as its TC program last saw it (value of
/// [`MAP_DEVS`]): the `struct net_device` address, checked against the
/// ifindex read at it before any use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevRef {
    /// Kernel address of the `net_device` (0: not seen yet).
    pub addr: u64,
    /// The ifindex read at `addr` when it was recorded.
    pub ifindex: u32,
    /// Explicit padding (always zero).
    pub reserved: u32,
}

/// A switchover the kernel made by itself (an entry of [`MAP_KEVENTS`]);
/// the agent ratifies it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSwitch {
    /// The group id.
    pub group: u32,
    /// Ifindex of the uplink left.
    pub from_ifindex: u32,
    /// Ifindex of the uplink now active.
    pub to_ifindex: u32,
    /// [`SWITCH_CARRIER`] or [`SWITCH_SILENCE`].
    pub reason: u32,
    /// `CLOCK_MONOTONIC` time of the switch.
    pub at_ns: u64,
}

impl UplinkConfig {
    /// A zeroed configuration (no gateway MAC known, untagged).
    pub const fn zeroed() -> Self {
        Self {
            group: 0,
            slot: 0,
            ident: 0,
            own_mac: [0; 6],
            gateway_mac: [0; 6],
            gateway_ip: [0; 16],
            probe_source: [0; 16],
            vlan: 0,
            family: 0,
            flags: 0,
        }
    }

    /// Whether replies must come from `gateway_mac`.
    pub const fn gateway_mac_known(&self) -> bool {
        self.flags & UPLINK_GATEWAY_MAC_KNOWN != 0
    }
}

impl GroupState {
    /// A group with no active uplink (the datapath passes everything).
    pub const fn inactive() -> Self {
        Self {
            active_ifindex: 0,
            member_count: 0,
            active_gateway_mac: [0; 6],
            flags: 0,
            gateway_macs: [[0; 6]; MAX_GROUP_UPLINKS],
            members: [Member { ifindex: 0, slot: 0 }; MAX_GROUP_UPLINKS],
            silence_ns: 0,
            steer_ifindex: 0,
            down_after: 0,
            mac_known: 0,
            allowed: 0,
            preferred: 0,
            reserved: [0; 7],
        }
    }

    /// Whether `mac` is the MAC of any gateway of the group.
    #[inline(always)]
    pub fn is_gateway_mac(&self, mac: &[u8; 6]) -> bool {
        let mut i = 0;
        while i < MAX_GROUP_UPLINKS {
            if (i as u32) < self.member_count
                && self.mac_known & (1 << i) != 0
                && crate::frame::mac_eq(&self.gateway_macs[i], mac)
            {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The position of the active uplink among the members.
    #[inline(always)]
    pub fn active_index(&self) -> Option<usize> {
        let mut i = 0;
        while i < MAX_GROUP_UPLINKS {
            if (i as u32) < self.member_count && self.members[i].ifindex == self.active_ifindex {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// The same group with member `to` active, as the kernel writes it when
    /// it fails over by itself: the active gateway's MAC follows, and
    /// unicast the bridge still sends out of the old uplink is redirected.
    #[must_use]
    pub fn switched_to(&self, to: usize) -> Self {
        let mut next = *self;
        next.switch_to(to);
        next
    }

    /// [`GroupState::switched_to`] in place (the kernel has no stack to
    /// spare for a copy).
    #[inline(always)]
    pub fn switch_to(&mut self, to: usize) {
        // Constant indices only: the kernel's verifier then need not know
        // `to` exactly (which would multiply the paths it walks).
        let mut i = 0;
        while i < MAX_GROUP_UPLINKS {
            if i == to {
                self.active_ifindex = self.members[i].ifindex;
                if self.mac_known & (1 << i) != 0 {
                    self.active_gateway_mac = self.gateway_macs[i];
                    self.flags |= GROUP_ACTIVE_MAC_KNOWN;
                } else {
                    self.flags &= !GROUP_ACTIVE_MAC_KNOWN;
                }
                self.flags |= GROUP_REDIRECT_INACTIVE | GROUP_KERNEL_SWITCHED;
            }
            i += 1;
        }
    }
}

// SAFETY: plain old data: `#[repr(C)]`, only integers and byte arrays, no
// implicit padding (checked by the layout tests below).
#[cfg(feature = "user")]
unsafe impl aya::Pod for UplinkConfig {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for GroupState {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for UplinkStats {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeCount {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DevRef {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelSwitch {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn uplink_config_layout_has_no_padding() {
        assert_eq!(offset_of!(UplinkConfig, group), 0);
        assert_eq!(offset_of!(UplinkConfig, slot), 4);
        assert_eq!(offset_of!(UplinkConfig, ident), 8);
        assert_eq!(offset_of!(UplinkConfig, own_mac), 12);
        assert_eq!(offset_of!(UplinkConfig, gateway_mac), 18);
        assert_eq!(offset_of!(UplinkConfig, gateway_ip), 24);
        assert_eq!(offset_of!(UplinkConfig, probe_source), 40);
        assert_eq!(offset_of!(UplinkConfig, vlan), 56);
        assert_eq!(offset_of!(UplinkConfig, family), 58);
        assert_eq!(offset_of!(UplinkConfig, flags), 59);
        // The fields add up to the size: nothing implicit in between or after.
        assert_eq!(size_of::<UplinkConfig>(), 4 + 4 + 4 + 6 + 6 + 16 + 16 + 2 + 1 + 1);
        assert_eq!(align_of::<UplinkConfig>(), 4);
    }

    #[test]
    fn group_state_layout_has_no_padding() {
        assert_eq!(offset_of!(GroupState, active_ifindex), 0);
        assert_eq!(offset_of!(GroupState, member_count), 4);
        assert_eq!(offset_of!(GroupState, active_gateway_mac), 8);
        assert_eq!(offset_of!(GroupState, flags), 14);
        assert_eq!(offset_of!(GroupState, gateway_macs), 16);
        assert_eq!(offset_of!(GroupState, members), 64);
        assert_eq!(offset_of!(GroupState, silence_ns), 128);
        assert_eq!(offset_of!(GroupState, steer_ifindex), 136);
        assert_eq!(offset_of!(GroupState, down_after), 140);
        assert_eq!(offset_of!(GroupState, mac_known), 142);
        assert_eq!(offset_of!(GroupState, allowed), 143);
        assert_eq!(offset_of!(GroupState, preferred), 144);
        assert_eq!(offset_of!(GroupState, reserved), 145);
        assert_eq!(
            size_of::<GroupState>(),
            4 + 4 + 6 + 2 + 6 * MAX_GROUP_UPLINKS + 8 * MAX_GROUP_UPLINKS + 8 + 4 + 2 + 3 + 7
        );
    }

    #[test]
    fn uplink_stats_layout_has_no_padding() {
        assert_eq!(offset_of!(UplinkStats, valid_replies), 0);
        assert_eq!(offset_of!(UplinkStats, last_reply_ns), 16);
        assert_eq!(offset_of!(UplinkStats, probes_out), 56);
        assert_eq!(offset_of!(UplinkStats, gateway_mac), 64);
        assert_eq!(offset_of!(UplinkStats, reserved), 70);
        assert_eq!(size_of::<UplinkStats>(), 8 * 8 + 6 + 2);
        assert_eq!(align_of::<UplinkStats>(), 8);
    }

    #[test]
    fn probe_count_layout_has_no_padding() {
        assert_eq!(offset_of!(ProbeCount, answered), 8);
        assert_eq!(offset_of!(ProbeCount, acked), 16);
        assert_eq!(offset_of!(ProbeCount, last_reply_ns), 24);
        assert_eq!(size_of::<ProbeCount>(), 32);
    }

    #[test]
    fn dev_ref_and_kernel_switch_layouts_have_no_padding() {
        assert_eq!(offset_of!(DevRef, ifindex), 8);
        assert_eq!(size_of::<DevRef>(), 16);
        assert_eq!(offset_of!(KernelSwitch, reason), 12);
        assert_eq!(offset_of!(KernelSwitch, at_ns), 16);
        assert_eq!(size_of::<KernelSwitch>(), 24);
    }

    #[test]
    fn a_kernel_switch_moves_the_active_mac_and_redirects() {
        let mut g = GroupState::inactive();
        g.member_count = 2;
        g.members[0] = Member { ifindex: 10, slot: 3 };
        g.members[1] = Member { ifindex: 11, slot: 4 };
        g.gateway_macs[0] = [2, 0, 0, 0, 0, 1];
        g.gateway_macs[1] = [2, 0, 0, 0, 0, 2];
        g.mac_known = 0b11;
        g.active_ifindex = 10;
        g.active_gateway_mac = g.gateway_macs[0];
        g.flags = GROUP_ACTIVE_MAC_KNOWN | GROUP_KERNEL_FAILOVER;
        assert_eq!(g.active_index(), Some(0));
        let n = g.switched_to(1);
        assert_eq!(n.active_ifindex, 11);
        assert_eq!(n.active_index(), Some(1));
        assert_eq!(n.active_gateway_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(
            n.flags,
            GROUP_ACTIVE_MAC_KNOWN | GROUP_KERNEL_FAILOVER | GROUP_REDIRECT_INACTIVE | GROUP_KERNEL_SWITCHED
        );
        g.mac_known = 0b01;
        assert_eq!(g.switched_to(1).flags & GROUP_ACTIVE_MAC_KNOWN, 0, "no MAC known for the new active");
    }

    #[test]
    fn gateway_mac_lookup_honours_count() {
        let mut g = GroupState::inactive();
        g.gateway_macs[0] = [2, 0, 0, 0, 0, 1];
        g.gateway_macs[1] = [2, 0, 0, 0, 0, 2];
        g.member_count = 2;
        g.mac_known = 0b01;
        assert!(g.is_gateway_mac(&[2, 0, 0, 0, 0, 1]));
        assert!(!g.is_gateway_mac(&[2, 0, 0, 0, 0, 2]), "not known");
        g.mac_known = 0b11;
        assert!(g.is_gateway_mac(&[2, 0, 0, 0, 0, 2]));
        g.member_count = 1;
        assert!(!g.is_gateway_mac(&[2, 0, 0, 0, 0, 2]), "beyond member_count");
        g.member_count = 2;
        assert!(g.is_gateway_mac(&[2, 0, 0, 0, 0, 2]));
        assert!(!g.is_gateway_mac(&[0; 6]));
    }

    #[test]
    fn probe_mark_spells_fapr() {
        assert_eq!(&PROBE_MARK.to_be_bytes(), b"FAPR");
    }
}
