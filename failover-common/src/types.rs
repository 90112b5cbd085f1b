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
//!   [`ProbeCount`]: probes seen leaving, replies counted for them.

/// Name of the uplink configuration map.
pub const MAP_UPLINKS: &str = "UPLINKS";
/// Name of the group state map.
pub const MAP_GROUPS: &str = "GROUPS";
/// Name of the per-uplink counter map.
pub const MAP_STATS: &str = "STATS";
/// Name of the probe/reply balance map.
pub const MAP_PROBES: &str = "PROBES";
/// Name of the XDP program in the object.
pub const PROG_XDP: &str = "failover_xdp";
/// Name of the TC egress program in the object.
pub const PROG_TC_EGRESS: &str = "failover_tc_egress";

/// Most uplinks the datapath keeps at once (all groups together): the size
/// of [`MAP_UPLINKS`] and [`MAP_STATS`]; a slot is an index below it.
pub const MAX_UPLINKS: u32 = 256;
/// Most groups the datapath keeps at once: the size of [`MAP_GROUPS`].
pub const MAX_GROUPS: u32 = 64;
/// Most uplinks in one group (the gateway MACs a [`GroupState`] can hold).
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

/// [`GroupState::flags`]: unicast leaving an inactive uplink is redirected
/// to the active one. The agent sets it from a switchover until the bridge's
/// flows follow (and always when it does not manage the bridge's flows);
/// without it such frames are dropped, so that a bridge that floods unknown
/// unicast (after an OVS restart, say) does not deliver a frame twice.
pub const GROUP_REDIRECT_INACTIVE: u16 = 2;

/// What the kernel needs to know about one uplink (value of [`MAP_UPLINKS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkConfig {
    /// Group id: key of this uplink's [`GroupState`] in [`MAP_GROUPS`].
    pub group: u32,
    /// Index of this uplink's counters in [`MAP_STATS`].
    pub slot: u32,
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

/// The state of one group (value of [`MAP_GROUPS`]). The agent writes the
/// whole value at once: that single update is the switchover.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupState {
    /// Ifindex of the active uplink; 0 = none chosen (everything passes).
    pub active_ifindex: u32,
    /// How many entries of `gateway_macs` are valid.
    pub gateway_count: u32,
    /// MAC of the active uplink's gateway, if [`GROUP_ACTIVE_MAC_KNOWN`].
    pub active_gateway_mac: [u8; 6],
    /// `GROUP_*` flags.
    pub flags: u16,
    /// MACs of every gateway of the group: a unicast frame addressed to any
    /// of them is readdressed to `active_gateway_mac`.
    pub gateway_macs: [[u8; 6]; MAX_GROUP_UPLINKS],
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
/// [`MAP_PROBES`]): a reply counts only while `answered < sent`, so no more
/// replies count than probes left; the others are unsolicited, rejected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCount {
    /// Probes (frames with [`PROBE_MARK`]) seen leaving the uplink.
    pub sent: u64,
    /// Valid replies counted.
    pub answered: u64,
}

impl UplinkConfig {
    /// A zeroed configuration (no gateway MAC known, untagged).
    pub const fn zeroed() -> Self {
        Self {
            group: 0,
            slot: 0,
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
            gateway_count: 0,
            active_gateway_mac: [0; 6],
            flags: 0,
            gateway_macs: [[0; 6]; MAX_GROUP_UPLINKS],
        }
    }

    /// Whether `mac` is the MAC of any gateway of the group.
    #[inline(always)]
    pub fn is_gateway_mac(&self, mac: &[u8; 6]) -> bool {
        let mut i = 0;
        while i < MAX_GROUP_UPLINKS {
            if (i as u32) < self.gateway_count && crate::frame::mac_eq(&self.gateway_macs[i], mac) {
                return true;
            }
            i += 1;
        }
        false
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

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn uplink_config_layout_has_no_padding() {
        assert_eq!(offset_of!(UplinkConfig, group), 0);
        assert_eq!(offset_of!(UplinkConfig, slot), 4);
        assert_eq!(offset_of!(UplinkConfig, own_mac), 8);
        assert_eq!(offset_of!(UplinkConfig, gateway_mac), 14);
        assert_eq!(offset_of!(UplinkConfig, gateway_ip), 20);
        assert_eq!(offset_of!(UplinkConfig, probe_source), 36);
        assert_eq!(offset_of!(UplinkConfig, vlan), 52);
        assert_eq!(offset_of!(UplinkConfig, family), 54);
        assert_eq!(offset_of!(UplinkConfig, flags), 55);
        // The fields add up to the size: nothing implicit in between or after.
        assert_eq!(size_of::<UplinkConfig>(), 4 + 4 + 6 + 6 + 16 + 16 + 2 + 1 + 1);
        assert_eq!(align_of::<UplinkConfig>(), 4);
    }

    #[test]
    fn group_state_layout_has_no_padding() {
        assert_eq!(offset_of!(GroupState, active_ifindex), 0);
        assert_eq!(offset_of!(GroupState, gateway_count), 4);
        assert_eq!(offset_of!(GroupState, active_gateway_mac), 8);
        assert_eq!(offset_of!(GroupState, flags), 14);
        assert_eq!(offset_of!(GroupState, gateway_macs), 16);
        assert_eq!(size_of::<GroupState>(), 4 + 4 + 6 + 2 + 6 * MAX_GROUP_UPLINKS);
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
        assert_eq!(size_of::<ProbeCount>(), 16);
    }

    #[test]
    fn gateway_mac_lookup_honours_count() {
        let mut g = GroupState::inactive();
        g.gateway_macs[0] = [2, 0, 0, 0, 0, 1];
        g.gateway_macs[1] = [2, 0, 0, 0, 0, 2];
        g.gateway_count = 1;
        assert!(g.is_gateway_mac(&[2, 0, 0, 0, 0, 1]));
        assert!(!g.is_gateway_mac(&[2, 0, 0, 0, 0, 2]), "beyond gateway_count");
        g.gateway_count = 2;
        assert!(g.is_gateway_mac(&[2, 0, 0, 0, 0, 2]));
        assert!(!g.is_gateway_mac(&[0; 6]));
    }

    #[test]
    fn probe_mark_spells_fapr() {
        assert_eq!(&PROBE_MARK.to_be_bytes(), b"FAPR");
    }
}
