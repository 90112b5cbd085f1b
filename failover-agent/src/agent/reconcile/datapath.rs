//! The datapath's side of the agent's decisions: what each group's state
//! and each uplink's entry in the kernel should be (pure plans from the
//! core's view), writing them where they differ, and removing what belongs
//! to groups and uplinks no longer configured.

use std::{collections::BTreeSet, net::IpAddr};

use failover_common::{
    FAMILY_IPV4, FAMILY_IPV6, GROUP_ACTIVE_MAC_KNOWN, GROUP_DATA_PLANE, GROUP_HOLD, GROUP_KERNEL_FAILOVER,
    GROUP_KERNEL_SWITCHED, GROUP_REDIRECT_INACTIVE, GroupState, MAX_GROUP_UPLINKS, Member, UPLINK_GATEWAY_MAC_KNOWN,
    UplinkConfig, rule,
};

use crate::{
    agent::topology::{GroupId, Topology},
    config::Config,
    datapath::{Datapath, DatapathError},
    failover::Core,
};

/// Where the bridge's rules send a group's VM traffic (from the OVS side).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steer {
    /// The uplink the installed rules point at (None: not known, or the
    /// agent keeps no rules).
    pub rules_uplink: Option<usize>,
    /// The rules point at the active uplink and have for long enough that
    /// the switch forwards by them: nothing needs redirecting.
    pub settled: bool,
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The kernel's entry for uplink `u` of group `g`.
pub fn uplink_config(config: &Config, topo: &Topology, core: &Core, g: usize, u: usize) -> UplinkConfig {
    let cfg = &config.groups[g].uplinks[u];
    let rt = topo.rt(g, u);
    let gateway_mac = core.uplink(g, u).and_then(|v| v.gateway_mac);
    UplinkConfig {
        group: topo.ids[g].0,
        slot: rt.slot.0,
        ident: rt.ident.map_or(0, |i| i.0),
        own_mac: rt.mac.unwrap_or([0; 6]),
        gateway_mac: gateway_mac.unwrap_or([0; 6]),
        gateway_ip: ip_bytes(cfg.gateway),
        probe_source: ip_bytes(cfg.probe_source),
        vlan: cfg.vlan.unwrap_or(0),
        family: if cfg.gateway.is_ipv4() { FAMILY_IPV4 } else { FAMILY_IPV6 },
        flags: if gateway_mac.is_some() { UPLINK_GATEWAY_MAC_KNOWN } else { 0 },
    }
}

/// The kernel's state for group `g`: the core's active uplink, the gateway
/// MACs to readdress, where the bridge's rules point, and what the fast
/// rule may choose from.
pub fn group_plan(config: &Config, topo: &Topology, core: &Core, g: usize, steer: Steer) -> GroupState {
    let group = &config.groups[g];
    let mut state = GroupState::inactive();
    let active = core.active(g);
    let ifindex_of = |u: usize| topo.rt(g, u).ifindex.unwrap_or(0);
    state.active_ifindex = active.map_or(0, ifindex_of);
    let n = group.uplinks.len().min(MAX_GROUP_UPLINKS);
    state.member_count = n as u32;
    for u in 0..n {
        state.members[u] = Member { ifindex: ifindex_of(u), slot: topo.rt(g, u).slot.0 };
        // Readdressing uses every gateway MAC seen, also one no longer
        // accepted for liveness: VMs may still send to it.
        if let Some(mac) = core.uplink(g, u).and_then(|v| v.last_gateway_mac) {
            state.gateway_macs[u] = mac;
            state.mac_known |= 1 << u;
            if Some(u) == active {
                state.active_gateway_mac = mac;
                state.flags |= GROUP_ACTIVE_MAC_KNOWN;
            }
        }
    }
    if !steer.settled {
        state.flags |= GROUP_REDIRECT_INACTIVE;
    }
    // Where the rules have settled, only the uplink they point at may
    // redirect (should the kernel switch by itself, flooded copies leaving
    // other inactive uplinks are dropped); while they are being changed,
    // frames cached flows still send out of the old uplink go along too.
    state.steer_ifindex = if steer.settled { steer.rules_uplink.map_or(0, ifindex_of) } else { 0 };
    if config.agent.kernel_failover {
        state.flags |= GROUP_KERNEL_FAILOVER;
    }
    if let Some(p) = core.kernel_policy(g) {
        state.allowed = p.allowed;
        state.preferred = p.preferred;
        if p.hold {
            state.flags |= GROUP_HOLD;
        }
    }
    if group.data_plane_liveness {
        state.flags |= GROUP_DATA_PLANE;
    }
    state.down_after = group.down_after.min(u32::from(u16::MAX)) as u16;
    let interval_ns = u64::try_from(group.probe_interval.as_nanos()).unwrap_or(u64::MAX);
    state.silence_ns = rule::silence_ns(interval_ns, group.down_after);
    state
}

/// What comparing a group's state with the kernel's did.
#[derive(Debug)]
pub enum Synced {
    /// Already as wanted.
    InPlace,
    /// Written.
    Written,
    /// The kernel switched the group by itself (to the uplink with this
    /// ifindex) and the agent has not ratified it yet: left alone (the
    /// report is on its way).
    KernelAhead(u32),
    Failed(DatapathError),
}

/// Writes group `id`'s state if it differs from the kernel's. The map, not a
/// copy of what was last written, is compared: a map re-pinned or written by
/// hand is put right, for one lookup (about a microsecond).
pub fn sync_group<D: Datapath>(dp: &mut D, id: GroupId, want: &GroupState) -> Synced {
    match dp.group(id.0) {
        Ok(Some(have)) if have == *want => Synced::InPlace,
        Ok(Some(have))
            if have.flags & GROUP_KERNEL_SWITCHED != 0
                && have.active_ifindex != want.active_ifindex
                && have.active_ifindex != 0 =>
        {
            Synced::KernelAhead(have.active_ifindex)
        }
        _ => match dp.set_group(id.0, want) {
            Ok(()) => Synced::Written,
            Err(e) => Synced::Failed(e),
        },
    }
}

/// Removes from the datapath what no configured group or uplink owns: the
/// programs on interfaces no longer configured, uplink entries of other
/// identities, group states of other groups. Returns what was removed, for
/// the log and the journal.
pub fn remove_orphans<D: Datapath>(dp: &mut D, config: &Config, topo: &Topology) -> Vec<String> {
    let mut removed = Vec::new();
    let interfaces: BTreeSet<&str> =
        config.groups.iter().flat_map(|g| g.uplinks.iter().map(|u| u.interface.as_str())).collect();
    for (ifname, ifindex) in dp.attached_interfaces() {
        if !interfaces.contains(ifname.as_str()) {
            match dp.detach_interface(&ifname, ifindex) {
                Ok(()) => removed.push(format!("detached the datapath from {ifname}: no longer configured")),
                Err(e) => removed.push(format!("detaching {ifname} failed: {}", anyhow::Error::from(e))),
            }
        }
    }
    let idents: BTreeSet<u32> = topo.positions().filter_map(|(g, u)| topo.rt(g, u).ident.map(|i| i.0)).collect();
    let live: BTreeSet<u32> = topo.positions().filter_map(|(g, u)| topo.rt(g, u).ifindex).collect();
    for (ifindex, cfg) in dp.pinned_uplinks().unwrap_or_default() {
        // An entry of a configured interface is rewritten when it is attached.
        if !idents.contains(&cfg.ident) && !live.contains(&ifindex) {
            match dp.detach_interface("", ifindex) {
                Ok(()) => removed
                    .push(format!("removed the entry of ifindex {ifindex} (slot {}): no longer configured", cfg.slot)),
                Err(e) => {
                    removed.push(format!("removing the entry of ifindex {ifindex} failed: {}", anyhow::Error::from(e)));
                }
            }
        }
    }
    let groups: BTreeSet<u32> = topo.ids.iter().map(|g| g.0).collect();
    for id in dp.pinned_groups().unwrap_or_default() {
        if !groups.contains(&id) {
            match dp.remove_group(id) {
                Ok(()) => removed.push(format!("removed the state of group id {id:#x}: no longer configured")),
                Err(e) => removed.push(format!("removing group id {id:#x} failed: {}", anyhow::Error::from(e))),
            }
        }
    }
    removed
}
