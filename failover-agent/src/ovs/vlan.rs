//! OVS's VLAN processing, as its NORMAL action does it, for the agent's
//! rules that bypass NORMAL (pure).
//!
//! The agent's rules send VM frames for a gateway straight to the active
//! uplink; NORMAL is where OVS would have pushed an access port's tag, or
//! refused a VLAN the uplink does not carry. So each VM port gets rules of
//! its own that do what NORMAL would do between that port and the active
//! uplink ([`Vlan::input`] then [`Vlan::output`], after OVS 3.1's
//! `ofproto-dpif-xlate.c` and `bridge.c`):
//!
//! - the port's `tag`, `trunks` and `vlan_mode` (OVSDB) give the VLAN a
//!   frame belongs to, or none (dropped by OVS);
//! - the active uplink carries that VLAN or not, tagged or untagged.
//!
//! Frames the active uplink would not carry get no rule: they stay with
//! the bridge's own switching, which does not send them there either.
//! `dot1q-tunnel` (802.1ad) ports are not modelled: frames from them stay
//! with the bridge's switching, and an active uplink in that mode gets no
//! steering rules at all.

use std::collections::BTreeSet;

/// A port's VLAN settings as OVSDB holds them (`Port` table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortVlan {
    /// `tag`.
    pub tag: Option<u16>,
    /// `trunks` (empty: every VLAN).
    pub trunks: BTreeSet<u16>,
    /// `vlan_mode` (None: implicit, access with a tag, trunk without).
    pub mode: Option<String>,
}

impl PortVlan {
    /// An access port of VLAN `tag`.
    pub fn access(tag: u16) -> Self {
        Self { tag: Some(tag), ..Self::default() }
    }

    /// A trunk of `trunks` (empty: every VLAN).
    pub fn trunk(trunks: &[u16]) -> Self {
        Self { trunks: trunks.iter().copied().collect(), ..Self::default() }
    }

    /// Whether the port passes every frame through untouched (no VLAN
    /// setting at all): the bridge's VLAN processing does nothing there.
    pub fn is_plain(&self) -> bool {
        self.tag.is_none() && self.trunks.is_empty() && self.mode.as_deref().is_none_or(|m| m == "trunk")
    }

    /// The port as NORMAL treats it, or why it is not modelled.
    pub fn resolve(&self) -> Result<Vlan, String> {
        let mode = match self.mode.as_deref() {
            None if self.tag.is_some() => Mode::Access,
            None | Some("trunk") => Mode::Trunk,
            Some("access") => Mode::Access,
            Some("native-tagged") => Mode::NativeTagged,
            Some("native-untagged") => Mode::NativeUntagged,
            Some(other) => return Err(format!("vlan_mode {other} is not supported")),
        };
        // bridge.c: an implicit access port ignores its trunks; ofproto:
        // a trunk has no native VLAN, and the native modes always trunk
        // their own VLAN and never VLAN 0.
        let tag = if mode == Mode::Trunk { 0 } else { self.tag.unwrap_or(0) & 0xfff };
        let trunks = match mode {
            Mode::Access => Trunks::None,
            Mode::Trunk if self.trunks.is_empty() => Trunks::All { zero: true },
            Mode::Trunk => Trunks::Set(self.trunks.clone()),
            Mode::NativeTagged | Mode::NativeUntagged if self.trunks.is_empty() => Trunks::All { zero: tag == 0 },
            Mode::NativeTagged | Mode::NativeUntagged => {
                let mut set = self.trunks.clone();
                if tag != 0 {
                    set.insert(tag);
                    set.remove(&0);
                }
                Trunks::Set(set)
            }
        };
        Ok(Vlan { mode, tag, trunks })
    }
}

/// `vlan_mode`, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Access,
    Trunk,
    NativeTagged,
    NativeUntagged,
}

/// The VLANs a port trunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trunks {
    None,
    /// Every VLAN; VLAN 0 (untagged) too if `zero`.
    All {
        zero: bool,
    },
    Set(BTreeSet<u16>),
}

/// A port as NORMAL treats it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vlan {
    pub mode: Mode,
    /// The access or native VLAN (0 for a trunk).
    pub tag: u16,
    pub trunks: Trunks,
}

impl Vlan {
    fn trunks_vlan(&self, vlan: u16) -> bool {
        match &self.trunks {
            Trunks::None => false,
            Trunks::All { zero } => vlan != 0 || *zero,
            Trunks::Set(s) => s.contains(&vlan),
        }
    }

    /// Whether the port carries `vlan` at all.
    fn includes(&self, vlan: u16) -> bool {
        (self.mode != Mode::Trunk && vlan == self.tag) || self.trunks_vlan(vlan)
    }

    /// The VLAN of a frame received with VLAN id `vid` (0: untagged), or
    /// None if OVS drops it.
    pub fn input(&self, vid: u16) -> Option<u16> {
        match self.mode {
            Mode::Access => (vid == 0).then_some(self.tag),
            Mode::NativeTagged | Mode::NativeUntagged if vid == 0 => Some(self.tag),
            _ => self.trunks_vlan(vid).then_some(vid),
        }
    }

    /// The VLAN id (0: untagged) a frame of `vlan` leaves with, or None if
    /// the port does not carry it.
    pub fn output(&self, vlan: u16) -> Option<u16> {
        if !self.includes(vlan) {
            return None;
        }
        Some(match self.mode {
            Mode::Access => 0,
            Mode::NativeUntagged if vlan == self.tag => 0,
            Mode::Trunk | Mode::NativeTagged | Mode::NativeUntagged => vlan,
        })
    }

    /// Whether every tagged VLAN (but the few named in its settings) is
    /// taken in, or carried out, unchanged.
    fn passes_other_tags(&self) -> bool {
        self.mode != Mode::Access && matches!(self.trunks, Trunks::All { .. })
    }

    /// The VLAN ids its settings name (0 always: untagged).
    fn named(&self) -> BTreeSet<u16> {
        let mut out = BTreeSet::from([0, self.tag]);
        if let Trunks::Set(s) = &self.trunks {
            out.extend(s);
        }
        out
    }
}

/// How a frame's VLAN is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VlanMatch {
    /// Any frame (no VLAN match).
    Any,
    /// Any tagged frame (`vlan_tci=0x1000/0x1000`).
    Tagged,
    /// Untagged (`vlan_tci=0x0000/0x1fff`).
    Untagged,
    /// Tagged with this VLAN id (`dl_vlan=N`).
    Vid(u16),
}

impl VlanMatch {
    /// The match in `ovs-ofctl dump-flows` canonical form, with a trailing
    /// comma ("" for [`VlanMatch::Any`]).
    pub fn ofctl(self) -> String {
        match self {
            Self::Any => String::new(),
            Self::Tagged => "vlan_tci=0x1000/0x1000,".into(),
            Self::Untagged => "vlan_tci=0x0000/0x1fff,".into(),
            Self::Vid(v) => format!("dl_vlan={v},"),
        }
    }

    /// More specific matches win: [`VlanMatch::Untagged`] and
    /// [`VlanMatch::Vid`] get one priority more than the others.
    pub fn specific(self) -> bool {
        matches!(self, Self::Untagged | Self::Vid(_))
    }
}

/// What to do to a frame's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VlanAction {
    Keep,
    Pop,
    Push(u16),
    Set(u16),
}

impl VlanAction {
    fn between(vid_in: u16, vid_out: u16) -> Self {
        match (vid_in, vid_out) {
            (i, o) if i == o => Self::Keep,
            (_, 0) => Self::Pop,
            (0, o) => Self::Push(o),
            (_, o) => Self::Set(o),
        }
    }

    /// The actions in `ovs-ofctl dump-flows` canonical form (OpenFlow 1.4),
    /// with a trailing comma ("" to keep the tag).
    pub fn ofctl(self) -> String {
        match self {
            Self::Keep => String::new(),
            Self::Pop => "pop_vlan,".into(),
            Self::Push(v) => format!("push_vlan:0x8100,set_field:{}->vlan_vid,", 0x1000 | u32::from(v)),
            Self::Set(v) => format!("set_field:{}->vlan_vid,", 0x1000 | u32::from(v)),
        }
    }
}

/// What NORMAL would do to frames from port `from` that it sends to port
/// `to`: which frames go (by their VLAN) and what happens to their tag.
/// Frames matched by nothing here are not carried by `to`.
pub fn steer(from: &Vlan, to: &Vlan) -> Vec<(VlanMatch, VlanAction)> {
    let through = |vid: u16| from.input(vid).and_then(|vlan| to.output(vlan)).map(|o| VlanAction::between(vid, o));
    let mut named: BTreeSet<u16> = from.named();
    named.extend(to.named());
    // Tagged frames of a VLAN neither port names go through unchanged, if
    // both ports take every VLAN (and then every named one goes somewhere).
    let others_pass =
        from.passes_other_tags() && to.passes_other_tags() && named.iter().all(|&v| v == 0 || through(v).is_some());
    let exact: Vec<(u16, VlanAction)> = named.iter().filter_map(|&v| through(v).map(|a| (v, a))).collect();
    if others_pass && exact.iter().all(|&(_, a)| a == VlanAction::Keep) && through(0) == Some(VlanAction::Keep) {
        return vec![(VlanMatch::Any, VlanAction::Keep)];
    }
    let mut out: Vec<(VlanMatch, VlanAction)> = exact
        .into_iter()
        .filter(|&(v, a)| v == 0 || !others_pass || a != VlanAction::Keep)
        .map(|(v, a)| (if v == 0 { VlanMatch::Untagged } else { VlanMatch::Vid(v) }, a))
        .collect();
    if others_pass {
        out.push((VlanMatch::Tagged, VlanAction::Keep));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &PortVlan) -> Vlan {
        p.resolve().unwrap()
    }

    #[test]
    fn implicit_modes_follow_ovsdb() {
        assert_eq!(r(&PortVlan::default()).mode, Mode::Trunk);
        assert_eq!(r(&PortVlan::access(100)).mode, Mode::Access);
        let ignored = PortVlan { trunks: [5].into(), ..PortVlan::access(100) };
        assert_eq!(r(&ignored).trunks, Trunks::None, "an implicit access port ignores its trunks");
        let native = PortVlan { mode: Some("native-untagged".into()), trunks: [0, 7].into(), ..PortVlan::access(5) };
        assert_eq!(r(&native).trunks, Trunks::Set([5, 7].into()), "native VLAN trunked, VLAN 0 never");
        assert!(PortVlan { mode: Some("dot1q-tunnel".into()), ..PortVlan::access(5) }.resolve().is_err());
        assert!(PortVlan::default().is_plain());
        assert!(!PortVlan::trunk(&[100]).is_plain());
    }

    #[test]
    fn input_and_output_as_normal() {
        let access = r(&PortVlan::access(100));
        assert_eq!((access.input(0), access.input(100)), (Some(100), None), "tagged frames on an access port drop");
        assert_eq!((access.output(100), access.output(200)), (Some(0), None));
        let trunk = r(&PortVlan::trunk(&[100, 200]));
        assert_eq!((trunk.input(0), trunk.input(100), trunk.input(300)), (None, Some(100), None));
        assert_eq!((trunk.output(100), trunk.output(0)), (Some(100), None));
        let all = r(&PortVlan::default());
        assert_eq!(
            (all.input(0), all.input(4094), all.output(0), all.output(7)),
            (Some(0), Some(4094), Some(0), Some(7))
        );
        let nu = r(&PortVlan { mode: Some("native-untagged".into()), ..PortVlan::access(5) });
        assert_eq!((nu.input(0), nu.input(9), nu.output(5), nu.output(9)), (Some(5), Some(9), Some(0), Some(9)));
        let nt = r(&PortVlan { mode: Some("native-tagged".into()), ..PortVlan::access(5) });
        assert_eq!((nt.input(0), nt.output(5), nt.output(0)), (Some(5), Some(5), None));
    }

    #[test]
    fn steering_between_port_kinds() {
        use VlanAction::*;
        use VlanMatch::*;
        let plain = r(&PortVlan::default());
        let access = r(&PortVlan::access(100));
        let trunk = r(&PortVlan::trunk(&[100, 200]));
        assert_eq!(steer(&plain, &plain), vec![(Any, Keep)]);
        assert_eq!(steer(&access, &trunk), vec![(Untagged, Push(100))]);
        assert_eq!(steer(&access, &plain), vec![(Untagged, Push(100))]);
        assert_eq!(steer(&access, &r(&PortVlan::trunk(&[200]))), vec![], "VLAN 100 not carried");
        assert_eq!(steer(&access, &access), vec![(Untagged, Keep)], "an access uplink of the same VLAN");
        assert_eq!(steer(&access, &r(&PortVlan::access(200))), vec![]);
        assert_eq!(steer(&trunk, &access), vec![(Vid(100), Pop)]);
        assert_eq!(steer(&trunk, &trunk), vec![(Vid(100), Keep), (Vid(200), Keep)]);
        assert_eq!(steer(&trunk, &plain), vec![(Vid(100), Keep), (Vid(200), Keep)]);
        assert_eq!(steer(&plain, &trunk), vec![(Vid(100), Keep), (Vid(200), Keep)]);
        assert_eq!(steer(&plain, &access), vec![(Vid(100), Pop)]);
        let nu = r(&PortVlan { mode: Some("native-untagged".into()), ..PortVlan::access(100) });
        assert_eq!(steer(&plain, &nu), vec![(Vid(100), Pop), (Tagged, Keep)], "VLAN 0 is not carried");
        assert_eq!(steer(&access, &nu), vec![(Untagged, Keep)]);
        assert_eq!(steer(&nu, &plain), vec![(Untagged, Push(100)), (Tagged, Keep)]);
    }
}
