//! Who is who: the configuration's groups and uplinks, their identities in
//! the datapath and in OVS, and what the driver knows about each uplink's
//! interface.
//!
//! Identities are derived from **names**, never from positions, so that a
//! reload that inserts, removes or reorders groups and uplinks moves no
//! state from one to another:
//! - [`GroupId`]: a hash of the group's name; the key of its datapath state
//!   and the low 32 bits of its OVS cookie.
//! - [`UplinkIdent`]: a hash of the group's name and the uplink's name,
//!   interface, gateway, VLAN and probe source: an uplink whose gateway or
//!   interface changed is another uplink (its counters and learned MAC
//!   belong to another gateway).
//! - [`Slot`]: the uplink's index in the datapath's counter arrays. Slots
//!   are allocated, not derived (256 of them would collide); an uplink keeps
//!   the slot the datapath already holds for its identity, a new one takes
//!   a free slot and starts from zeroed counters.

use std::collections::BTreeSet;

use failover_common::{MAX_UPLINKS, UplinkConfig};

pub use crate::ids::GroupId;
use crate::{
    config::{Config, Uplink as UplinkCfg},
    datapath::Counters,
    ids::fnv1a,
};

/// An uplink's identity (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UplinkIdent(pub u32);

/// An uplink's index in the datapath's per-uplink maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Slot(pub u32);

impl UplinkIdent {
    /// The identity of uplink `u` of group `group`.
    pub fn of(group: &str, u: &UplinkCfg) -> Self {
        let vlan = u.vlan.unwrap_or(0).to_be_bytes();
        Self(fnv1a(&[
            group.as_bytes(),
            u.name.as_bytes(),
            u.interface.as_bytes(),
            u.gateway.to_string().as_bytes(),
            &vlan,
            u.probe_source.to_string().as_bytes(),
        ]))
    }
}

/// What the driver keeps about one uplink.
#[derive(Debug, Default)]
pub struct UplinkRt {
    pub slot: Slot,
    pub ident: Option<UplinkIdent>,
    pub ifindex: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub attached: bool,
    /// Why the datapath could not be attached (the last attempt's error).
    pub attach_error: Option<String>,
    pub probes_sent: u64,
    pub probe_failing: bool,
    pub counters: Counters,
    /// `CLOCK_MONOTONIC` time the last probe was sent (for the RTT).
    pub last_probe_mono: Option<std::time::Duration>,
}

/// The configuration's groups and uplinks with their identities.
#[derive(Debug)]
pub struct Topology {
    pub ids: Vec<GroupId>,
    pub uplinks: Vec<Vec<UplinkRt>>,
}

/// No slot is free for another uplink.
#[derive(Debug, thiserror::Error)]
#[error("no free datapath slot for uplink {uplink:?} of group {group:?} (at most {MAX_UPLINKS} uplinks)")]
pub struct NoSlot {
    pub group: String,
    pub uplink: String,
}

impl Topology {
    /// Identities for `config`; slots reused from `pinned` (the datapath's
    /// uplink entries, ifindex -> configuration) where the identity matches,
    /// free ones otherwise.
    pub fn new(config: &Config, pinned: &[(u32, UplinkConfig)]) -> Result<Self, NoSlot> {
        let idents: Vec<Vec<UplinkIdent>> =
            config.groups.iter().map(|g| g.uplinks.iter().map(|u| UplinkIdent::of(&g.name, u)).collect()).collect();
        let wanted: BTreeSet<UplinkIdent> = idents.iter().flatten().copied().collect();
        // Every slot the datapath's entries name is taken: an entry of
        // another identity may still be in use by programs on its interface
        // until that interface is attached anew or its entry removed, and
        // its counters must not land in a new uplink's slot meanwhile. Slots
        // of entries no longer wanted are given out only when no other is
        // left (they are free from the next start on, once removed).
        let mut taken: BTreeSet<u32> = pinned.iter().map(|(_, c)| c.slot).collect();
        let mut spare: Vec<u32> =
            pinned.iter().filter(|(_, c)| !wanted.contains(&UplinkIdent(c.ident))).map(|(_, c)| c.slot).collect();
        spare.sort_unstable();
        spare.dedup();
        let mut uplinks = Vec::new();
        for (g, group) in config.groups.iter().enumerate() {
            let mut rts = Vec::new();
            for (u, uplink) in group.uplinks.iter().enumerate() {
                let ident = idents[g][u];
                let reused = pinned.iter().find(|(_, c)| c.ident == ident.0).map(|(_, c)| c.slot);
                let slot = if let Some(s) = reused {
                    s
                } else {
                    let free = (0..MAX_UPLINKS)
                        .find(|s| !taken.contains(s))
                        .or_else(|| (!spare.is_empty()).then(|| spare.remove(0)))
                        .ok_or_else(|| NoSlot { group: group.name.clone(), uplink: uplink.name.clone() })?;
                    taken.insert(free);
                    free
                };
                rts.push(UplinkRt { slot: Slot(slot), ident: Some(ident), ..UplinkRt::default() });
            }
            uplinks.push(rts);
        }
        Ok(Self { ids: config.groups.iter().map(|g| GroupId::of(&g.name)).collect(), uplinks })
    }

    /// The group and uplink whose interface is `ifname`.
    pub fn find(config: &Config, ifname: &str) -> Option<(usize, usize)> {
        config
            .groups
            .iter()
            .enumerate()
            .find_map(|(g, group)| group.uplinks.iter().position(|u| u.interface == ifname).map(|u| (g, u)))
    }

    /// The group with datapath id `id`.
    pub fn group_of(&self, id: u32) -> Option<usize> {
        self.ids.iter().position(|g| g.0 == id)
    }

    /// The uplink of group `g` whose interface has `ifindex` now.
    pub fn uplink_of(&self, g: usize, ifindex: u32) -> Option<usize> {
        self.uplinks.get(g)?.iter().position(|u| u.ifindex == Some(ifindex))
    }

    /// The uplink runtime state.
    pub fn rt(&self, g: usize, u: usize) -> &UplinkRt {
        &self.uplinks[g][u]
    }

    pub fn rt_mut(&mut self, g: usize, u: usize) -> &mut UplinkRt {
        &mut self.uplinks[g][u]
    }

    /// Every (group, uplink) position.
    pub fn positions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.uplinks.iter().enumerate().flat_map(|(g, us)| (0..us.len()).map(move |u| (g, u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, std::path::Path::new("t.toml")).expect("valid")
    }

    const BASE: &str = r#"
[[group]]
name = "a"
bridge = "br0"
[[group.uplink]]
name = "p"
interface = "e1"
gateway = "192.0.2.1"
probe_source = "192.0.2.250"
[[group.uplink]]
name = "s"
interface = "e2"
gateway = "192.0.2.1"
probe_source = "192.0.2.250"
"#;

    fn pinned(t: &Topology) -> Vec<(u32, UplinkConfig)> {
        t.positions()
            .enumerate()
            .map(|(i, (g, u))| {
                let rt = t.rt(g, u);
                let c = UplinkConfig {
                    group: t.ids[g].0,
                    slot: rt.slot.0,
                    ident: rt.ident.map_or(0, |x| x.0),
                    ..UplinkConfig::zeroed()
                };
                (i as u32 + 10, c)
            })
            .collect()
    }

    #[test]
    fn ids_come_from_names_and_slots_stay_with_their_uplink() {
        let a = config(BASE);
        let t = Topology::new(&a, &[]).unwrap();
        assert_eq!(t.ids[0], GroupId::of("a"));
        assert_eq!((t.rt(0, 0).slot, t.rt(0, 1).slot), (Slot(0), Slot(1)));
        // A new uplink in front, "s" moved behind it: "p" and "s" keep their slots.
        let b = config(&BASE.replace(
            "[[group.uplink]]\nname = \"p\"",
            "[[group.uplink]]\nname = \"n\"\ninterface = \"e3\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n[[group.uplink]]\nname = \"p\"",
        ));
        let t2 = Topology::new(&b, &pinned(&t)).unwrap();
        assert_eq!(b.groups[0].uplinks[0].name, "n");
        assert_eq!(t2.rt(0, 1).slot, Slot(0), "p keeps its slot");
        assert_eq!(t2.rt(0, 2).slot, Slot(1), "s keeps its slot");
        assert_eq!(t2.rt(0, 0).slot, Slot(2), "the new one takes a free slot");
    }

    #[test]
    fn another_gateway_is_another_uplink() {
        let a = config(BASE);
        let t = Topology::new(&a, &[]).unwrap();
        let b = config(&BASE.replacen("gateway = \"192.0.2.1\"", "gateway = \"192.0.2.2\"", 1));
        let t2 = Topology::new(&b, &pinned(&t)).unwrap();
        assert_ne!(t2.rt(0, 0).ident, t.rt(0, 0).ident);
        assert_eq!(
            t2.rt(0, 0).slot,
            Slot(2),
            "not the old entry's slot: its interface's programs may still count there"
        );
        assert_eq!(t2.rt(0, 1).slot, Slot(1));
    }

    #[test]
    fn group_ids_differ_and_are_never_zero() {
        assert_ne!(GroupId::of("ext"), GroupId::of("int"));
        assert_ne!(GroupId::of(""), GroupId(0));
    }
}
