use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel_buf, bpf_redirect, bpf_skb_pull_data},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use failover_common::{
    DEV_WINDOW_LEN, DevRef, GroupState, KEVENTS_BYTES, KernelSwitch, MAX_GROUP_UPLINKS, MAX_GROUPS, MAX_UPLINKS,
    PROBE_MARK, ProbeCount, UPLINK_GATEWAY_MAC_KNOWN, UplinkConfig, UplinkStats,
    frame::{ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV6, Egress, Frame, Ingress, classify_ingress, egress_action, mac_eq},
    rule::{Fault, Policy, choose, link_lost, probes_unanswered, proof_grain, silent, unanswered_needed},
};

/// The map flag that makes a hash map allocate each element on update, so an
/// update replaces the whole value at once under RCU.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "UPLINKS")]
static UPLINKS: HashMap<u32, UplinkConfig> = HashMap::pinned(MAX_UPLINKS, 0);

#[map(name = "GROUPS")]
static GROUPS: HashMap<u32, GroupState> = HashMap::pinned(MAX_GROUPS, BPF_F_NO_PREALLOC);

#[map(name = "STATS")]
static STATS: PerCpuArray<UplinkStats> = PerCpuArray::pinned(MAX_UPLINKS, 0);

#[map(name = "PROBES")]
static PROBES: Array<ProbeCount> = Array::pinned(MAX_UPLINKS, 0);

#[map(name = "DEVS")]
static DEVS: Array<DevRef> = Array::pinned(MAX_UPLINKS, 0);

/// Room for one read of a `net_device` (see `read_dev`).
#[map(name = "WINDOW")]
static WINDOW: PerCpuArray<[u8; DEV_WINDOW_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Room for the group state the kernel writes when it switches by itself
/// (too big for the BPF stack next to everything else).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<GroupState> = PerCpuArray::with_max_entries(1, 0);

/// Frames from each uplink's gateway (its validated MAC, arriving on that
/// uplink): data-plane liveness, read by the agent like the replies.
#[map(name = "GWFRAMES")]
static GWFRAMES: PerCpuArray<u64> = PerCpuArray::pinned(MAX_UPLINKS, 0);

#[map(name = "KEVENTS")]
static KEVENTS: RingBuf = RingBuf::pinned(KEVENTS_BYTES, 0);

// Set by the agent at load time from the running kernel's BTF (`.rodata`:
// the verifier sees constants). With FA_CARRIER_READS = 0 no kernel memory
// is read and the carrier half of the fast rule is off.
#[unsafe(no_mangle)]
static FA_CARRIER_READS: u32 = 0;
#[unsafe(no_mangle)]
static FA_OFF_SKB_DEV: u32 = 0;
#[unsafe(no_mangle)]
static FA_DEV_WINDOW: u32 = 0;
#[unsafe(no_mangle)]
static FA_DEV_STATE: u32 = 0;
#[unsafe(no_mangle)]
static FA_DEV_FLAGS: u32 = 0;
#[unsafe(no_mangle)]
static FA_DEV_IFINDEX: u32 = 0;

#[inline(always)]
fn global(g: &'static u32) -> u32 {
    // SAFETY: a global of the object; volatile so the value the agent set
    // at load time is read, not the compile-time zero.
    unsafe { core::ptr::read_volatile(g) }
}

/// What a read of a `net_device` says about an uplink's carrier.
const DEV_UNKNOWN: u32 = 0;
const DEV_USABLE: u32 = 1;
const DEV_LOST: u32 = 2;

/// Reads the `net_device` at `addr`: [`DEV_UNKNOWN`] when the read fails
/// or the device there is not `ifindex` (the memory was reused), else
/// [`DEV_USABLE`] or [`DEV_LOST`] (down, not present, no carrier).
#[inline(always)]
fn read_dev(addr: u64, ifindex: u32) -> u32 {
    let Some(base) = addr.checked_add(u64::from(global(&FA_DEV_WINDOW))) else {
        return DEV_UNKNOWN;
    };
    // Read into a per-CPU buffer: the BPF stack is short, and XDP's own
    // frame plus the rule's subprograms must fit in it.
    let Some(buf) = WINDOW.get_ptr_mut(0) else {
        return DEV_UNKNOWN;
    };
    // SAFETY: a per-CPU value only this program run uses.
    let win = unsafe { &mut *buf };
    // SAFETY: bpf_probe_read_kernel copes with any address (it fails
    // rather than faults); the ifindex read back is checked below.
    if unsafe { bpf_probe_read_kernel_buf(base as *const u8, win) }.is_err() {
        return DEV_UNKNOWN;
    }
    let (st, fl, ix) =
        (global(&FA_DEV_STATE) as usize, global(&FA_DEV_FLAGS) as usize, global(&FA_DEV_IFINDEX) as usize);
    if st + 8 > DEV_WINDOW_LEN || fl + 4 > DEV_WINDOW_LEN || ix + 4 > DEV_WINDOW_LEN {
        return DEV_UNKNOWN;
    }
    let read_ifindex = u32::from_ne_bytes([win[ix], win[ix + 1], win[ix + 2], win[ix + 3]]);
    if read_ifindex != ifindex {
        return DEV_UNKNOWN;
    }
    // `state` is an unsigned long: its low byte holds the bits used here.
    let state = u64::from(win[st]);
    let flags = u32::from_ne_bytes([win[fl], win[fl + 1], win[fl + 2], win[fl + 3]]);
    if link_lost(state, flags) { DEV_LOST } else { DEV_USABLE }
}

/// Whether the device of the uplink in `slot` (ifindex `ifindex`) has lost
/// its carrier, gone down or away. `false` when not known: the kernel only
/// acts on what it has read.
///
/// `active`: the uplink traffic leaves by now, checked on every frame. Its
/// `state` and `flags` are read in one short read without the ifindex
/// check: if that device was deleted (the only way its memory can be
/// reused), leaving it is right whatever the read says. Every other uplink
/// is read whole and checked against its ifindex before it is trusted.
#[inline(always)]
fn carrier_lost(slot: u32, ifindex: u32, active: bool) -> bool {
    if global(&FA_CARRIER_READS) == 0 {
        return false;
    }
    let Some(dev) = DEVS.get(slot) else {
        return false;
    };
    if dev.addr == 0 || dev.ifindex != ifindex {
        return false;
    }
    let (st, fl) = (global(&FA_DEV_STATE), global(&FA_DEV_FLAGS));
    if active && fl >= st && fl - st + 4 <= 16 {
        let Some(base) = dev.addr.checked_add(u64::from(global(&FA_DEV_WINDOW)) + u64::from(st)) else {
            return false;
        };
        let mut win = [0u8; 16];
        // SAFETY: as in `read_dev`: a failed read is "not known".
        if unsafe { bpf_probe_read_kernel_buf(base as *const u8, &mut win) }.is_err() {
            return false;
        }
        let f = (fl - st) as usize;
        if f + 4 > 16 {
            return false;
        }
        return link_lost(u64::from(win[0]), u32::from_ne_bytes([win[f], win[f + 1], win[f + 2], win[f + 3]]));
    }
    read_dev(dev.addr, ifindex) == DEV_LOST
}

/// Records where the kernel keeps the device `ctx` leaves by, if it is not
/// recorded yet (run for probes: once per probe interval per uplink).
#[inline(never)]
fn record_dev(skb: u64, slot: u32, ifindex: u32) {
    if global(&FA_CARRIER_READS) == 0 {
        return;
    }
    let Some(p) = DEVS.get_ptr_mut(slot) else {
        return;
    };
    let at = skb.wrapping_add(u64::from(global(&FA_OFF_SKB_DEV)));
    let mut raw = [0u8; 8];
    // SAFETY: reads the skb's `dev` pointer; a failed read records nothing.
    if unsafe { bpf_probe_read_kernel_buf(at as *const u8, &mut raw) }.is_err() {
        return;
    }
    let addr = u64::from_ne_bytes(raw);
    // SAFETY: a valid map value.
    let known = unsafe { (*p).addr == addr && (*p).ifindex == ifindex };
    if known || addr == 0 || read_dev(addr, ifindex) == DEV_UNKNOWN {
        return;
    }
    // SAFETY: a valid map value; a torn read by another CPU is caught by
    // the ifindex check before any use.
    unsafe {
        (*p).addr = addr;
        (*p).ifindex = ifindex;
    }
}

/// Results of the fast rule's reads, kept out of the verifier's sight: a
/// subprogram's return value is known to the verifier path by path, and
/// eight of them multiply into millions of paths. Written to and read back
/// from this map, a result is one unknown value: bit i set when member i
/// is faulty.
#[map(name = "FAULTS")]
static FAULTS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// [`Fault::code`] of member (`slot`, `ifindex`) now, or 0: its link
/// lost (the active one read short, see [`carrier_lost`]), or its gateway
/// silent. The clock is read only when enough probes are out.
#[inline(always)]
fn fault_code(slot: u32, ifindex: u32, needed: u16, silence_ns: u64, active: bool) -> u32 {
    if ifindex == 0 || carrier_lost(slot, ifindex, active) {
        return Fault::Carrier.code();
    }
    match PROBES.get(slot) {
        Some(p) if probes_unanswered(p, needed) => {
            // SAFETY: helper without preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            if silent(p, needed, silence_ns, now) { Fault::Silence.code() } else { 0 }
        }
        _ => 0,
    }
}

/// Looks at one member other than the active one: sets `bit` in
/// `FAULTS[0]` when it is faulty. A subprogram of its own (scalars in,
/// nothing out): its stack is not repeated for every member the rule
/// looks at, and its result reaches the caller as one unknown value.
#[inline(never)]
fn member_fault(slot: u32, ifindex: u32, needed: u32, silence_ns: u64, bit: u32) {
    if fault_code(slot, ifindex, needed as u16, silence_ns, false) != 0
        && let Some(out) = FAULTS.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU value only this program run uses.
        unsafe { *out |= bit };
    }
}

/// The mask `member_fault` built.
#[inline(always)]
fn faulty_mask() -> u8 {
    // SAFETY: a per-CPU value only this program run uses.
    FAULTS.get(0).map_or(0, |v| unsafe { core::ptr::read_volatile(v) }) as u8
}

/// The fast rule, on a frame about to leave by the group's active uplink:
/// if that uplink is faulty, the kernel moves the group by itself (one map
/// update) and tells the agent. Returns 1 when it did; the new state is
/// then in `SCRATCH[0]`. The active uplink's health is checked inline
/// (every frame pays for it); the rest only runs when it is faulty.
#[inline(always)]
fn fast_rule(group_id: u32, group: &GroupState) -> u32 {
    if Policy::of(group).hold {
        return 0;
    }
    let Some(active) = group.active_index() else {
        return 0;
    };
    let m = group.members[active];
    let code = fault_code(m.slot, m.ifindex, unanswered_needed(group), group.silence_ns, true);
    if code == 0 {
        return 0;
    }
    fail_over_from(group_id, group, active as u32, code)
}

/// The active member `active` is faulty (`code`): chooses the uplink to
/// move to from the others' state, writes the group and reports it.
/// (A subprogram of its own, scalars out: it keeps the entry point's stack
/// small and is verified apart from the frame path.)
#[inline(never)]
fn fail_over_from(group_id: u32, group: &GroupState, active: u32, code: u32) -> u32 {
    let policy = Policy::of(group);
    let active = active as usize;
    if let Some(out) = FAULTS.get_ptr_mut(0) {
        // SAFETY: a per-CPU value only this program run uses.
        unsafe { *out = 0 };
    }
    let (needed, silence_ns) = (u32::from(unanswered_needed(group)), group.silence_ns);
    let mut i = 0;
    while i < MAX_GROUP_UPLINKS {
        if i < policy.count && i != active && policy.allowed & (1 << i) != 0 {
            let m = group.members[i];
            member_fault(m.slot, m.ifindex, needed, silence_ns, 1 << i);
        }
        i += 1;
    }
    let Some(to) = choose(&policy, active, faulty_mask()) else {
        return 0;
    };
    let Some(next) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU value only this program run uses.
    let next = unsafe {
        *next = *group;
        (*next).switch_to(to);
        &*next
    };
    if GROUPS.insert(&group_id, next, 0).is_err() {
        return 0;
    }
    // Written in place in the ring (no room on the stack). A full ring
    // (the agent away for long): the map says it all the same.
    if let Some(mut entry) = KEVENTS.reserve::<KernelSwitch>(0) {
        entry.write(KernelSwitch {
            group: group_id,
            from_ifindex: group.active_ifindex,
            to_ifindex: next.active_ifindex,
            reason: code,
            // SAFETY: helper without preconditions.
            at_ns: unsafe { bpf_ktime_get_ns() },
        });
        entry.submit(0);
    }
    1
}

// The two counters are shared by all CPUs and updated without atomics (the
// target's core has none): `sent` has one writer in practice (the agent's
// probe thread, on whose CPU TC runs), and replies come one per probe
// interval, so a race costs at most one count either way, which
// `down_after`/`up_after` absorb.

/// Counts one more probe sent on `slot`.
#[inline(always)]
fn probe_sent(slot: u32) {
    if let Some(p) = PROBES.get_ptr_mut(slot) {
        // SAFETY: a valid map value.
        unsafe {
            let sent = core::ptr::read_volatile(&raw const (*p).sent);
            core::ptr::write_volatile(&raw mut (*p).sent, sent.wrapping_add(1));
        }
    }
}

/// Whether a reply on `slot` at `now` answers a probe not answered yet; if
/// so, it is counted as the answer, and every probe sent so far as
/// answered (the gateway's liveness: [`failover_common::rule::silent`]).
#[inline(always)]
fn reply_solicited(slot: u32, now: u64) -> bool {
    let Some(p) = PROBES.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: a valid map value.
    unsafe {
        let sent = core::ptr::read_volatile(&raw const (*p).sent);
        let answered = core::ptr::read_volatile(&raw const (*p).answered);
        if answered >= sent {
            return false;
        }
        core::ptr::write_volatile(&raw mut (*p).answered, answered + 1);
        proof_of_life(p, sent, now);
    }
    true
}

/// The gateway of the uplink whose `PROBES` entry is `p` proved alive at
/// `now` (a reply, or a frame from it): the `sent` probes so far count as
/// answered, and the silence counts from `now`.
///
/// # Safety
/// `p` points to a valid `PROBES` value.
#[inline(always)]
unsafe fn proof_of_life(p: *mut ProbeCount, sent: u64, now: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        core::ptr::write_volatile(&raw mut (*p).acked, sent);
        core::ptr::write_volatile(&raw mut (*p).last_reply_ns, now);
    }
}

/// A frame's bytes between `start` and `end` (XDP's `data`..`data_end`, or
/// an skb's linear part), read with a bounds check on every load, and the
/// VLAN tag that came out of band (0: none).
struct Linear {
    start: usize,
    end: usize,
    vlan: u16,
}

impl Frame for Linear {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize, out: &mut [u8; N]) -> bool {
        if self.start + off + N > self.end {
            return false;
        }
        let mut i = 0;
        while i < N {
            // SAFETY: `start + off + i` lies inside the frame (checked above,
            // and the verifier checks it again).
            out[i] = unsafe { *((self.start + off + i) as *const u8) };
            i += 1;
        }
        true
    }

    #[inline(always)]
    fn offloaded_vlan(&self) -> u16 {
        self.vlan
    }
}

#[inline(always)]
fn stats(slot: u32) -> Option<&'static mut UplinkStats> {
    // SAFETY: per-CPU value, only this CPU writes it while we run.
    STATS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// Generic (skb) XDP: `ingress = "xdp-generic"`.
#[xdp]
pub fn failover_xdp(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx)
}

/// Native XDP, multi-buffer aware (`xdp.frags`), so it attaches to an
/// uplink with a jumbo MTU: `ingress = "xdp"`. The headers it reads are in
/// the first buffer.
#[xdp(frags)]
pub fn failover_xdp_frags(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx)
}

#[inline(always)]
fn xdp_verdict(ctx: &XdpContext) -> u32 {
    let frame = Linear { start: ctx.data(), end: ctx.data_end(), vlan: 0 };
    if ingress(&frame, ctx.ingress_ifindex() as u32) { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
}

/// Bytes of a probe reply's headers, at most (Ethernet, a tag, IPv6, an NA
/// and its first option): what TC ingress needs in the linear part.
const REPLY_HEADERS: u32 = 96;

/// TC ingress (`ingress = "tc"`, the default): the same decisions on the
/// skb, with no copy of a GRO'd packet, and the VLAN tag from
/// `skb->vlan_tci` when the NIC took it out of the frame.
#[classifier]
pub fn failover_tc_ingress(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context pointer the kernel passed in.
    let (ifindex, len, vlan_present, vlan_tci) =
        unsafe { ((*skb).ifindex, (*skb).len, (*skb).vlan_present, (*skb).vlan_tci) };
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < REPLY_HEADERS && len > linear && could_be_reply(&ctx, linear) {
        // Headers of a possible reply outside the linear part (a NIC that
        // receives into pages): make them readable. Only the headers, and
        // only for ARP, IPv6 or tagged frames.
        // SAFETY: helper; the packet pointers are taken anew below.
        unsafe { bpf_skb_pull_data(skb.cast(), len.min(REPLY_HEADERS)) };
    }
    let frame =
        Linear { start: ctx.data(), end: ctx.data_end(), vlan: if vlan_present != 0 { vlan_tci as u16 } else { 0 } };
    if ingress(&frame, ifindex) { TC_ACT_OK as i32 } else { TC_ACT_SHOT as i32 }
}

/// Whether a frame with `linear` bytes in its linear part may be a probe
/// reply (ARP, IPv6, or 802.1Q-tagged), or is too short to tell.
#[inline(always)]
fn could_be_reply(ctx: &TcContext, linear: u32) -> bool {
    if linear < 14 {
        return true;
    }
    let frame = Linear { start: ctx.data(), end: ctx.data_end(), vlan: 0 };
    let mut ethertype = [0u8; 2];
    if !frame.read(12, &mut ethertype) {
        return true;
    }
    matches!(u16::from_be_bytes(ethertype), ETH_P_ARP | ETH_P_IPV6 | ETH_P_8021Q)
}

/// What arrives on an uplink, whichever hook sees it: counts valid probe
/// replies (and consumes them), passes what the bridge should get, and
/// drops the rest on an inactive uplink. True: pass.
#[inline(always)]
fn ingress<F: Frame>(frame: &F, ifindex: u32) -> bool {
    // SAFETY: the value is only read; the agent replaces entries whole.
    let Some(cfg) = (unsafe { UPLINKS.get(&ifindex) }) else {
        return true; // not an uplink we know: fail open
    };
    let cfg = *cfg;
    // SAFETY: as above.
    let group = unsafe { GROUPS.get(&cfg.group) };
    let active = match group {
        Some(group) => group.active_ifindex == 0 || group.active_ifindex == ifindex,
        None => true, // no decision yet: behave as active (fail open)
    };
    match classify_ingress(frame, &cfg) {
        Ingress::Malformed => true,
        Ingress::ValidReply { gateway_mac } => {
            // SAFETY: helper without preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            if !reply_solicited(cfg.slot, now) {
                // More replies than probes: unsolicited, whoever sent them.
                if let Some(s) = stats(cfg.slot) {
                    s.rejected_replies += 1;
                }
                return active;
            }
            if let Some(s) = stats(cfg.slot) {
                s.valid_replies += 1;
                s.last_reply_ns = now;
                s.gateway_mac = gateway_mac;
            }
            false // the agent's, not the VMs'
        }
        Ingress::Rejected(_) => {
            if let Some(s) = stats(cfg.slot) {
                s.rejected_replies += 1;
            }
            active
        }
        Ingress::Other => {
            if cfg.flags & UPLINK_GATEWAY_MAC_KNOWN != 0 {
                let mut src = [0u8; 6];
                if frame.read(6, &mut src) && mac_eq(&src, &cfg.gateway_mac) {
                    gateway_frame(cfg.slot, group.map_or(0, |g| proof_grain(g.silence_ns)));
                }
            }
            if active || group.is_some_and(|g| standby_takes_over(cfg.group, g, ifindex)) {
                true
            } else {
                if let Some(s) = stats(cfg.slot) {
                    s.ingress_dropped_inactive += 1;
                }
                false
            }
        }
    }
}

/// A frame from the uplink's gateway arrived on it: as good a proof that
/// the gateway lives as a reply. Counted per CPU; its time is the
/// gateway's last proof of life (the fast rule's silence counts from it),
/// and probes outstanding are acknowledged. The shared entry is written
/// only when probes are outstanding or the recorded time is older than
/// `grain` ([`failover_common::rule::proof_grain`]): once per grain under
/// traffic, not once per frame.
#[inline(always)]
fn gateway_frame(slot: u32, grain: u64) {
    if let Some(n) = GWFRAMES.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        unsafe { *n += 1 };
    }
    let Some(p) = PROBES.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a valid map value.
    unsafe {
        let sent = core::ptr::read_volatile(&raw const (*p).sent);
        if core::ptr::read_volatile(&raw const (*p).acked) < sent {
            proof_of_life(p, sent, now);
        } else if now.saturating_sub(core::ptr::read_volatile(&raw const (*p).last_reply_ns)) >= grain {
            core::ptr::write_volatile(&raw mut (*p).last_reply_ns, now);
        }
    }
}

/// A frame arrived on an inactive uplink of a group: before it is dropped,
/// the fast rule runs, so that traffic only the gateways send (nothing
/// leaving by the active uplink to trigger it) also moves off a dead
/// active. True when the rule made this uplink the active one.
#[inline(always)]
fn standby_takes_over(group_id: u32, group: &GroupState, ifindex: u32) -> bool {
    fast_rule(group_id, group) != 0 && SCRATCH.get(0).is_some_and(|next| next.active_ifindex == ifindex)
}

#[classifier]
pub fn failover_tc_egress(ctx: TcContext) -> i32 {
    try_tc_egress(&ctx)
}

#[inline(always)]
fn try_tc_egress(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel passed in.
    let (ifindex, mark) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).mark) };
    // SAFETY: read-only lookups; the agent replaces entries whole.
    let Some(cfg) = (unsafe { UPLINKS.get(&ifindex) }) else {
        return TC_ACT_OK as i32;
    };
    let slot = cfg.slot;
    let group_id = cfg.group;
    if mark == PROBE_MARK {
        if let Some(s) = stats(slot) {
            s.probes_out += 1;
        }
        probe_sent(slot);
        record_dev(ctx.skb.skb as u64, slot, ifindex);
        return TC_ACT_OK as i32;
    }
    // SAFETY: as above.
    let Some(group) = (unsafe { GROUPS.get(&group_id) }) else {
        return TC_ACT_OK as i32;
    };
    let Ok(dst) = ctx.load::<[u8; 6]>(0) else {
        return TC_ACT_OK as i32; // shorter than a MAC: not ours to judge
    };
    let mut action = egress_action(ifindex, &dst, group);
    // A frame about to leave by the active uplink (here, or redirected to
    // it): the fast rule first.
    let via_active = match action {
        Egress::Pass | Egress::Rewrite(_) => ifindex == group.active_ifindex,
        Egress::Redirect { .. } => true,
        Egress::Drop => false,
    };
    if via_active
        && fast_rule(group_id, group) != 0
        && let Some(next) = SCRATCH.get(0)
    {
        action = egress_action(ifindex, &dst, next);
    }
    match action {
        Egress::Pass => TC_ACT_OK as i32,
        Egress::Drop => {
            if let Some(s) = stats(slot) {
                s.egress_dropped += 1;
            }
            TC_ACT_SHOT as i32
        }
        Egress::Rewrite(mac) => {
            if ctx.store(0, &mac, 0).is_ok()
                && let Some(s) = stats(slot)
            {
                s.egress_rewritten += 1;
            }
            TC_ACT_OK as i32
        }
        Egress::Redirect { ifindex, new_dst } => {
            if let Some(mac) = new_dst
                && ctx.store(0, &mac, 0).is_ok()
                && let Some(s) = stats(slot)
            {
                s.egress_rewritten += 1;
            }
            if let Some(s) = stats(slot) {
                s.egress_redirected += 1;
            }
            // SAFETY: helper; returns TC_ACT_REDIRECT, or TC_ACT_SHOT on a bad ifindex.
            let verdict = unsafe { bpf_redirect(ifindex, 0) };
            if verdict == i64::from(TC_ACT_REDIRECT) { TC_ACT_REDIRECT } else { TC_ACT_SHOT as i32 }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
