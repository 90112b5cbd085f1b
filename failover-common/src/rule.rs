//! The fast rule: when the datapath moves a group off its active uplink by
//! itself, and to which uplink. One pure function, run by the TC program in
//! the kernel (on the frames it sends, with no user space on the path) and
//! by the agent's decision core, so that both always choose alike.
//!
//! - The rule only ever moves *away from a faulty active uplink*: one whose
//!   carrier is lost, or whose gateway is silent. Failback, hold-down and
//!   flapping are the agent's decisions, made in user space.
//! - It moves to the first uplink in priority order that the policy allows
//!   and prefers (healthy in the agent's view and not flapping) and that is
//!   not faulty itself; failing that, the first allowed one; failing that,
//!   traffic stays.
//! - A gateway is *silent* when at least `down_after` probes left its uplink
//!   unanswered **and** `silence` (`down_after` x interval plus a grain,
//!   [`silence_ns`]) passed since its last proof of life, a valid reply or any frame
//!   from it: BFD's semantics (RFC 5880, down one detection time after the
//!   last packet received). An agent that is stopped sends no probes, so it
//!   never makes gateways read as silent.
//! - With data-plane liveness the agent probes only after a whole interval
//!   without frames from the gateway, so that interval stands for the first
//!   unanswered probe: `down_after - 1` are needed
//!   ([`unanswered_needed`]). Detection then counts from the gateway's last
//!   frame, and is as fast as with probes every interval.

use crate::{
    GROUP_DATA_PLANE, GROUP_HOLD, GROUP_KERNEL_FAILOVER, GroupState, MAX_GROUP_UPLINKS, ProbeCount, SWITCH_CARRIER,
    SWITCH_SILENCE,
};

/// Why an uplink cannot carry traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Its device lost its carrier, went down or away: replace the NIC.
    Carrier,
    /// Its gateway stopped answering: replace the gateway.
    Silence,
}

impl Fault {
    /// The code the kernel reports in [`crate::KernelSwitch::reason`].
    pub const fn code(self) -> u32 {
        match self {
            Self::Carrier => SWITCH_CARRIER,
            Self::Silence => SWITCH_SILENCE,
        }
    }

    /// The fault for a reported code.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            SWITCH_CARRIER => Some(Self::Carrier),
            SWITCH_SILENCE => Some(Self::Silence),
            _ => None,
        }
    }
}

/// What the agent lets the rule choose from (the kernel reads it from
/// [`GroupState`]; the core builds it from its own view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Members, in priority order (at most [`MAX_GROUP_UPLINKS`]).
    pub count: usize,
    /// Bit i: member i may take the traffic.
    pub allowed: u8,
    /// Bit i: member i is preferred among the allowed.
    pub preferred: u8,
    /// The group is held where it is (an operator's forced switch), or the
    /// rule is off for it: never move.
    pub hold: bool,
}

impl Policy {
    /// The policy the agent wrote into a group's datapath state.
    #[inline(always)]
    pub fn of(group: &GroupState) -> Self {
        Self {
            count: group.member_count as usize,
            allowed: group.allowed,
            preferred: group.preferred,
            hold: group.flags & GROUP_HOLD != 0 || group.flags & GROUP_KERNEL_FAILOVER == 0,
        }
    }
}

/// The live state of a group's members, as whoever runs the rule sees it.
pub trait Liveness {
    /// Why member `i` cannot carry traffic now, if it cannot; `None` also
    /// when nothing is known against it.
    fn fault(&self, i: usize) -> Option<Fault>;
}

/// Where a group's traffic must go now, if away from `active`: the member
/// chosen and the fault of the active one. `None`: stay.
#[inline(always)]
pub fn fail_over<L: Liveness + ?Sized>(policy: &Policy, active: usize, live: &L) -> Option<(usize, Fault)> {
    if policy.hold || active >= policy.count || active >= MAX_GROUP_UPLINKS {
        return None;
    }
    let fault = live.fault(active)?;
    let mut faulty = 0u8;
    let mut i = 0;
    while i < MAX_GROUP_UPLINKS {
        if i < policy.count && i != active && policy.allowed & (1 << i) != 0 && live.fault(i).is_some() {
            faulty |= 1 << i;
        }
        i += 1;
    }
    choose(policy, active, faulty).map(|t| (t, fault))
}

/// The second half of [`fail_over`], on bits: where the traffic of a group
/// whose `active` uplink is faulty goes, given which other uplinks are
/// faulty now (bit i of `faulty`). The kernel runs this half on its own
/// reads (each member read once, into a mask).
#[inline(always)]
pub fn choose(policy: &Policy, active: usize, faulty: u8) -> Option<usize> {
    if policy.hold || active >= MAX_GROUP_UPLINKS {
        return None;
    }
    let members = if policy.count >= MAX_GROUP_UPLINKS { 0xff } else { (1u8 << policy.count) - 1 };
    let usable = policy.allowed & members & !faulty & !(1 << active);
    let preferred = usable & policy.preferred;
    let chosen = if preferred != 0 { preferred } else { usable };
    if chosen == 0 {
        return None;
    }
    Some(lowest_bit(chosen))
}

/// The index of the lowest bit set in a non-zero `mask`.
#[inline(always)]
fn lowest_bit(mask: u8) -> usize {
    let mut i = 0;
    while i < MAX_GROUP_UPLINKS - 1 && mask & (1 << i) == 0 {
        i += 1;
    }
    i
}

/// `net_device.flags`: administratively up.
pub const IFF_UP: u32 = 1;
/// `net_device.state` bits (`enum netdev_state_t`): the device is open,
/// present, and without carrier.
pub const LINK_STATE_START: u64 = 1 << 0;
pub const LINK_STATE_PRESENT: u64 = 1 << 1;
pub const LINK_STATE_NOCARRIER: u64 = 1 << 2;

/// Whether a device whose `net_device.state` and `.flags` read so has lost
/// its link: down, not open, not present, or without carrier. (Not
/// `operstate` nor `IFF_RUNNING`: linkwatch sets those, late.)
#[inline(always)]
pub fn link_lost(state: u64, flags: u32) -> bool {
    flags & IFF_UP == 0
        || state & LINK_STATE_START == 0
        || state & LINK_STATE_PRESENT == 0
        || state & LINK_STATE_NOCARRIER != 0
}

/// Whether the gateway behind an uplink is silent at `now_ns`
/// (`CLOCK_MONOTONIC`): `needed` probes unanswered ([`unanswered_needed`])
/// and `silence_ns` since the last proof of life.
#[inline(always)]
pub fn silent(p: &ProbeCount, needed: u16, silence_ns: u64, now_ns: u64) -> bool {
    probes_unanswered(p, needed) && now_ns.saturating_sub(p.last_reply_ns) >= silence_ns
}

/// Whether probes are outstanding enough for [`silent`] to hold at some time
/// (the cheap half of it: the kernel reads the clock only when this holds).
#[inline(always)]
pub fn probes_unanswered(p: &ProbeCount, needed: u16) -> bool {
    needed != 0 && p.sent.wrapping_sub(p.acked) >= u64::from(needed)
}

/// Unanswered probes a group's gateway needs before it can be silent: its
/// `down_after`, or one fewer with data-plane liveness (the agent's quiet
/// interval before its first probe stands for the first miss). Never 0
/// unless `down_after` is (never silent).
#[inline(always)]
pub fn unanswered_needed(group: &GroupState) -> u16 {
    if group.flags & GROUP_DATA_PLANE != 0 && group.down_after > 1 { group.down_after - 1 } else { group.down_after }
}

/// The coarsest a gateway frame's time is recorded with: frames closer than
/// this to the recorded proof are not written again (one shared write per
/// grain, not one per frame).
pub const MAX_PROOF_GRAIN_NS: u64 = 250_000;

/// Added to `down_after` x interval for the silence time: a frame's time
/// may be recorded up to a grain early, so that a gateway is never silent
/// before `down_after` x interval passed since its last frame or reply
/// (BFD's detection time).
pub const SILENCE_SLACK_NS: u64 = MAX_PROOF_GRAIN_NS;

/// The silence time of a group probing every `interval_ns` and down after
/// `down_after` misses.
pub const fn silence_ns(interval_ns: u64, down_after: u32) -> u64 {
    interval_ns.saturating_mul(down_after as u64).saturating_add(SILENCE_SLACK_NS)
}

/// [`MAX_PROOF_GRAIN_NS`], or a 32nd of the silence time if shorter.
#[inline(always)]
pub fn proof_grain(silence_ns: u64) -> u64 {
    let g = silence_ns / 32;
    if g < MAX_PROOF_GRAIN_NS { g } else { MAX_PROOF_GRAIN_NS }
}

/// Bits of `MAX_GROUP_UPLINKS` members: a mask from a predicate.
pub fn mask(count: usize, pred: impl Fn(usize) -> bool) -> u8 {
    (0..count.min(MAX_GROUP_UPLINKS)).filter(|&i| pred(i)).fold(0u8, |m, i| m | (1 << i))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Faults([Option<Fault>; MAX_GROUP_UPLINKS]);
    impl Liveness for Faults {
        fn fault(&self, i: usize) -> Option<Fault> {
            self.0[i]
        }
    }

    fn policy(count: usize, allowed: u8, preferred: u8) -> Policy {
        Policy { count, allowed, preferred, hold: false }
    }

    const OK: [Option<Fault>; 8] = [None; 8];

    #[test]
    fn a_healthy_active_stays() {
        assert_eq!(fail_over(&policy(2, 0b11, 0b11), 0, &Faults(OK)), None);
    }

    #[test]
    fn carrier_loss_moves_to_the_first_allowed_healthy_uplink() {
        let mut f = OK;
        f[0] = Some(Fault::Carrier);
        assert_eq!(fail_over(&policy(3, 0b110, 0b110), 0, &Faults(f)), Some((1, Fault::Carrier)));
        f[1] = Some(Fault::Silence);
        assert_eq!(fail_over(&policy(3, 0b110, 0b110), 0, &Faults(f)), Some((2, Fault::Carrier)));
    }

    #[test]
    fn preferred_first_then_any_allowed_then_stay() {
        let mut f = OK;
        f[0] = Some(Fault::Silence);
        // Member 1 flapping (allowed, not preferred), member 2 preferred.
        assert_eq!(fail_over(&policy(3, 0b110, 0b100), 0, &Faults(f)), Some((2, Fault::Silence)));
        f[2] = Some(Fault::Carrier);
        assert_eq!(fail_over(&policy(3, 0b110, 0b100), 0, &Faults(f)), Some((1, Fault::Silence)));
        f[1] = Some(Fault::Carrier);
        assert_eq!(fail_over(&policy(3, 0b110, 0b100), 0, &Faults(f)), None, "all unhealthy: stay");
    }

    #[test]
    fn excluded_held_or_off_never_moves() {
        let mut f = OK;
        f[1] = Some(Fault::Carrier);
        assert_eq!(fail_over(&policy(2, 0b01, 0b01), 1, &Faults(f)), Some((0, Fault::Carrier)));
        assert_eq!(fail_over(&policy(2, 0b00, 0b00), 1, &Faults(f)), None, "nothing allowed");
        assert_eq!(fail_over(&Policy { hold: true, ..policy(2, 0b01, 0b01) }, 1, &Faults(f)), None, "held");
        assert_eq!(fail_over(&policy(2, 0b01, 0b01), 5, &Faults(f)), None, "active not a member");
        let mut g = GroupState::inactive();
        g.member_count = 2;
        g.allowed = 0b01;
        assert!(Policy::of(&g).hold, "kernel failover off unless flagged");
        g.flags = GROUP_KERNEL_FAILOVER;
        assert!(!Policy::of(&g).hold);
        g.flags |= GROUP_HOLD;
        assert!(Policy::of(&g).hold);
    }

    #[test]
    fn silence_needs_both_unanswered_probes_and_time() {
        let ms = 1_000_000;
        let p = ProbeCount { sent: 13, answered: 10, acked: 10, last_reply_ns: 100 * ms };
        assert!(silent(&p, 3, 31 * ms, 131 * ms));
        assert!(!silent(&p, 3, 31 * ms, 130 * ms), "not long enough");
        assert!(!silent(&p, 4, 31 * ms, 500 * ms), "not enough probes out: a stalled agent");
        assert!(!silent(&p, 0, 31 * ms, 500 * ms), "down_after 0: never");
        assert!(probes_unanswered(&p, 3) && !probes_unanswered(&p, 4));
        let never = ProbeCount { sent: 3, ..ProbeCount::default() };
        assert!(silent(&never, 3, 31 * ms, 40 * ms), "never answered");
    }

    #[test]
    fn data_plane_liveness_needs_one_probe_fewer() {
        let mut g = GroupState::inactive();
        g.down_after = 3;
        assert_eq!(unanswered_needed(&g), 3);
        g.flags |= GROUP_DATA_PLANE;
        assert_eq!(unanswered_needed(&g), 2);
        g.down_after = 1;
        assert_eq!(unanswered_needed(&g), 1, "never 0: one probe at least");
        g.down_after = 0;
        assert_eq!(unanswered_needed(&g), 0, "down_after 0: never silent");
    }

    #[test]
    fn a_frame_time_is_recorded_within_the_slack() {
        let ms = 1_000_000;
        assert_eq!(proof_grain(silence_ns(10 * ms, 3)), MAX_PROOF_GRAIN_NS);
        assert_eq!(proof_grain(4 * ms), 125_000);
        assert!(proof_grain(u64::MAX) <= SILENCE_SLACK_NS, "a grain early is still after the detection time");
        assert_eq!(proof_grain(0), 0);
        assert_eq!(silence_ns(10 * ms, 3), 30 * ms + 250_000);
        assert_eq!(silence_ns(u64::MAX, 3), u64::MAX);
    }

    #[test]
    fn a_link_is_lost_unless_up_open_present_and_with_carrier() {
        let fine = LINK_STATE_START | LINK_STATE_PRESENT;
        assert!(!link_lost(fine, IFF_UP));
        assert!(link_lost(fine | LINK_STATE_NOCARRIER, IFF_UP), "carrier lost");
        assert!(link_lost(fine, 0), "administratively down");
        assert!(link_lost(LINK_STATE_PRESENT, IFF_UP), "not open");
        assert!(link_lost(LINK_STATE_START, IFF_UP), "not present");
    }

    #[test]
    fn fault_codes_round_trip() {
        for f in [Fault::Carrier, Fault::Silence] {
            assert_eq!(Fault::from_code(f.code()), Some(f));
        }
        assert_eq!(Fault::from_code(0), None);
        assert_eq!(mask(3, |i| i != 1), 0b101);
    }
}
