use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use failover_common::{
    GroupState, MAX_GROUPS, MAX_UPLINKS, PROBE_MARK, ProbeCount, UplinkConfig, UplinkStats,
    frame::{Egress, Frame, Ingress, classify_ingress, egress_action},
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

/// Whether a reply on `slot` answers a probe not answered yet; if so, it
/// is counted as the answer.
#[inline(always)]
fn reply_solicited(slot: u32) -> bool {
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
    }
    true
}

/// The XDP frame, read with a bounds check against `data_end` on every load.
struct XdpFrame<'a>(&'a XdpContext);

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize, out: &mut [u8; N]) -> bool {
        let start = self.0.data();
        let end = self.0.data_end();
        if start + off + N > end {
            return false;
        }
        let mut i = 0;
        while i < N {
            // SAFETY: `start + off + i` lies inside the frame (checked above,
            // and the verifier checks it again).
            out[i] = unsafe { *((start + off + i) as *const u8) };
            i += 1;
        }
        true
    }
}

#[inline(always)]
fn stats(slot: u32) -> Option<&'static mut UplinkStats> {
    // SAFETY: per-CPU value, only this CPU writes it while we run.
    STATS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

#[xdp]
pub fn failover_xdp(ctx: XdpContext) -> u32 {
    try_xdp(&ctx)
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is only read; the agent replaces entries whole.
    let Some(cfg) = (unsafe { UPLINKS.get(&ifindex) }) else {
        return xdp_action::XDP_PASS; // not an uplink we know: fail open
    };
    let cfg = *cfg;
    // SAFETY: as above.
    let active = match unsafe { GROUPS.get(&cfg.group) } {
        Some(group) => group.active_ifindex == 0 || group.active_ifindex == ifindex,
        None => true, // no decision yet: behave as active (fail open)
    };
    match classify_ingress(&XdpFrame(ctx), &cfg) {
        Ingress::Malformed => xdp_action::XDP_PASS,
        Ingress::ValidReply { .. } if !reply_solicited(cfg.slot) => {
            // More replies than probes: unsolicited, whoever sent them.
            if let Some(s) = stats(cfg.slot) {
                s.rejected_replies += 1;
            }
            if active { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
        }
        Ingress::ValidReply { gateway_mac } => {
            if let Some(s) = stats(cfg.slot) {
                s.valid_replies += 1;
                // SAFETY: helper without preconditions.
                s.last_reply_ns = unsafe { bpf_ktime_get_ns() };
                s.gateway_mac = gateway_mac;
            }
            xdp_action::XDP_DROP // the agent's, not the VMs'
        }
        Ingress::Rejected(_) => {
            if let Some(s) = stats(cfg.slot) {
                s.rejected_replies += 1;
            }
            if active { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
        }
        Ingress::Other => {
            if active {
                xdp_action::XDP_PASS
            } else {
                if let Some(s) = stats(cfg.slot) {
                    s.ingress_dropped_inactive += 1;
                }
                xdp_action::XDP_DROP
            }
        }
    }
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
        return TC_ACT_OK as i32;
    }
    // SAFETY: as above.
    let Some(group) = (unsafe { GROUPS.get(&group_id) }) else {
        return TC_ACT_OK as i32;
    };
    let Ok(dst) = ctx.load::<[u8; 6]>(0) else {
        return TC_ACT_OK as i32; // shorter than a MAC: not ours to judge
    };
    match egress_action(ifindex, &dst, group) {
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
