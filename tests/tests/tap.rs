//! The OVS lab with a TAP uplink (`LabSpec::tap_uplink`, `failover_tests::tap`)
//! and no agent: traffic crosses the tap and its forwarder, and a carrier
//! dropped with `TUNSETCARRIER` reaches user space as late as on a physical
//! NIC (linkwatch's one-second batching), which a veth lab never shows.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use failover_tests::{
    ovs_lab::{LabSpec, OvsLab},
    privileged,
    tap::{LinkEvent, LinkMonitor, ifindex_in, iflink_is_ifindex, link_flags},
    udp, unique_name,
};

const RATE: u64 = 1000;

/// Linkwatch's one-second timer is shared by every device of the machine:
/// the tests here take turns, so that one's link events do not move the
/// other's measurement.
static LINKWATCH: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LINKWATCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lab with uplink 1 a TAP, without an agent (`OvsLab::up` starts none):
/// OVS switches with its one NORMAL flow.
fn tap_lab() -> OvsLab {
    let name = unique_name("tap");
    let spec = LabSpec { dir: std::env::temp_dir().join(&name), tap_uplink: Some(1), ..LabSpec::named(&name) };
    OvsLab::up(spec).expect("lab up")
}

#[test]
fn traffic_crosses_the_tap_uplink_and_stops_with_its_carrier() {
    if !privileged("traffic_crosses_the_tap_uplink_and_stops_with_its_carrier") {
        return;
    }
    let _turn = serial();
    let lab = tap_lab();
    eprintln!("{}", lab.describe());
    // Only gateway 1 answers ARP, so the VM's traffic is gateway 1's.
    lab.silence_gateway(2);
    let echo = udp::echo(&lab.gw1, 47_002);
    let to = std::net::SocketAddr::from(([192, 0, 2, 1], 47_002));
    let rtts = udp::ping(&lab.vms[0], to, 20, Duration::from_millis(10));
    echo.stop();
    assert!(rtts.len() >= 18, "VM 1 <-> gateway 1 over the tap, round trips: {rtts:?}");

    let t = lab.gateway_traffic(1, RATE);
    std::thread::sleep(Duration::from_secs(2));
    let r = t.finish();
    let fwd = lab.tap(1).expect("uplink 1 is the tap").forwarded();
    eprintln!("VM 1 -> gateway 1 over the TAP uplink: {r}; forwarder {fwd:?}");
    assert_eq!((r.lost, r.duplicates, r.per_receiver[1]), (0, 0, 0), "{r}");
    assert!(r.sent >= RATE, "{r}");
    assert!(fwd.to_wire >= r.sent && fwd.to_tap > 0, "{fwd:?}");

    // A dead link carries nothing, either way.
    lab.set_link(1, false);
    let t = lab.gateway_traffic(2, RATE);
    std::thread::sleep(Duration::from_millis(500));
    let r = t.finish();
    let dropped = lab.tap(1).expect("tap").forwarded().dropped_no_carrier;
    eprintln!("with the carrier off: {r}; {dropped} frames dropped by the dead wire");
    assert_eq!(r.per_receiver, vec![0, 0], "{r}");

    lab.set_link(1, true);
    let t = lab.gateway_traffic(3, RATE);
    std::thread::sleep(Duration::from_secs(1));
    let r = t.finish();
    eprintln!("with the carrier back: {r}");
    assert!(r.per_receiver[0] > RATE / 2, "{r}");
    assert!(lab.tap(1).expect("tap").forwarding());
}

/// The first notification for `ifindex` that says its carrier is `up`.
fn wait_carrier(mon: &mut LinkMonitor, ifindex: u32, up: bool, what: &str) -> LinkEvent {
    mon.wait_for(Duration::from_secs(3), |e| e.kind == libc::RTM_NEWLINK && e.ifindex == ifindex && e.lower_up() == up)
        .expect("reading link notifications")
        .unwrap_or_else(|| panic!("no RTM_NEWLINK with carrier {} for {what} within 3 s", u8::from(up)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The tap's link notifications, and another device of our own (a veth
/// pair, `lw0`) for "another link event" before the fault.
struct Watch {
    mon: LinkMonitor,
    up1: u32,
    lw0: u32,
}

impl Watch {
    fn new(lab: &OvsLab) -> Self {
        let host = &lab.host;
        host.ip(&["link", "add", "lw0", "type", "veth", "peer", "name", "lw1"]);
        host.ip(&["link", "set", "lw1", "up"]);
        let up1 = ifindex_in(host, "up1").expect("up1");
        let lw0 = ifindex_in(host, "lw0").expect("lw0");
        Self { mon: LinkMonitor::open(host).expect("netlink link notifications"), up1, lw0 }
    }

    /// After 2.2 s quiet, `lw0` comes up; 100 ms after its notification the
    /// tap's carrier drops. Returns `lw0`'s event, the ioctl's instant and
    /// the tap's carrier-0 notification.
    fn cut_after_another_link_event(&mut self, lab: &OvsLab) -> (LinkEvent, Instant, LinkEvent) {
        // Linkwatch runs its non-urgent events at most once a second, and
        // each such run starts the next second: a non-urgent event queued
        // at t runs by t + 1 s and holds the next ones until t + 2 s (lw0
        // going down is one: a device that is down is never urgent). After
        // 2.2 s quiet, lw0's (urgent) carrier-on runs everything and starts
        // a fresh second; up1's carrier loss 100 ms later waits ~900 ms.
        // Nothing here asks for up1's state meanwhile (that would flush
        // linkwatch and end the wait).
        std::thread::sleep(Duration::from_millis(2200));
        self.mon.drain().expect("netlink");
        lab.host.ip(&["link", "set", "lw0", "up"]);
        let event = wait_carrier(&mut self.mon, self.lw0, true, "lw0");
        std::thread::sleep((event.at + Duration::from_millis(100)).saturating_duration_since(Instant::now()));
        let cut = lab.set_carrier(1, false);
        let down = wait_carrier(&mut self.mon, self.up1, false, "up1");
        (event, cut, down)
    }
}

#[test]
fn tap_carrier_loss_reaches_user_space_about_a_second_late() {
    if !privileged("tap_carrier_loss_reaches_user_space_about_a_second_late") {
        return;
    }
    let _turn = serial();
    let lab = tap_lab();
    let host = &lab.host;
    assert!(iflink_is_ifindex(host, "up1").expect("ip link"), "a tap has iflink == ifindex, like a NIC");
    let mut watch = Watch::new(&lab);

    let mut delays = Vec::new();
    for round in 1..=3 {
        let (event, cut, down) = watch.cut_after_another_link_event(&lab);
        let delay = down.at.saturating_duration_since(cut);

        let restore = lab.set_carrier(1, true);
        let back = wait_carrier(&mut watch.mon, watch.up1, true, "up1");
        eprintln!(
            "round {round}: RTM_NEWLINK carrier 0 (operstate {:?}) {:.1} ms after TUNSETCARRIER, {:.1} ms after lw0's \
             event; carrier 1 notified {:.2} ms after the ioctl",
            down.operstate,
            ms(delay),
            ms(down.at.saturating_duration_since(event.at)),
            ms(back.at.saturating_duration_since(restore)),
        );
        let flags = link_flags(host, "up1").expect("ip link");
        assert!(flags.iter().any(|f| f == "LOWER_UP"), "up1 has its carrier back: {flags:?}");
        host.ip(&["link", "set", "lw0", "down"]);
        delays.push(delay);
    }
    let shown: Vec<String> = delays.iter().map(|d| format!("{:.1}", ms(*d))).collect();
    eprintln!("TAP carrier loss -> RTM_NEWLINK, 100 ms after another link event: {} ms", shown.join(", "));
    // Link events of other processes on the machine share the timer and
    // can shorten one round (a batch of theirs 0.8-1 s before lw0's event
    // leaves up1's loss for their second's end); an urgent event would
    // make every round ~0.1 ms.
    let late = delays.iter().filter(|d| **d > Duration::from_millis(100)).count();
    assert!(
        late >= 2,
        "linkwatch held the TAP's carrier loss back (not urgent, like a NIC) in 2 of 3 rounds: {shown:?} ms"
    );
}

/// A TAP uplink (a NIC towards linkwatch) loses its carrier 100 ms after
/// another link event, with the agent running; returns the traffic report,
/// the delay of the `RTM_NEWLINK` and the final status.
fn tap_fault_with_agent(env: &[(&str, &str)]) -> (udp::Report, Duration, failover_agent::control::Status) {
    let mut lab = tap_lab();
    let _agent = lab.start_agent_with(env);
    lab.wait_ready();
    let mut watch = Watch::new(&lab);
    let t = lab.gateway_traffic(1, RATE);
    let (_, cut, down) = watch.cut_after_another_link_event(&lab);
    std::thread::sleep(Duration::from_secs(1));
    let r = t.finish();
    let s = lab.wait_for("standby active, NIC alarm", Duration::from_secs(2), |s| {
        s.groups[0].active.as_deref() == Some("standby")
            && s.alarms.iter().any(|a| a.kind == "nic" && a.uplink.as_deref() == Some("primary"))
    });
    (r, down.at.saturating_duration_since(cut), s)
}

/// With the agent: the kernel leaves the TAP uplink on the next frame,
/// while the notification is held back.
#[test]
fn a_tap_uplink_losing_its_carrier_is_left_by_the_kernel_at_once() {
    if !privileged("a_tap_uplink_losing_its_carrier_is_left_by_the_kernel_at_once") {
        return;
    }
    let _turn = serial();
    let (r, notified, s) = tap_fault_with_agent(&[]);
    let by = s.groups[0].last_switchover.as_ref().map(|x| x.decided_by);
    eprintln!(
        "TAP uplink carrier lost 100 ms after another link event: RTM_NEWLINK {:.1} ms after the ioctl (the \
         agent's read on the kernel's report releases it); VM traffic {r}; switched by {by:?}",
        ms(notified)
    );
    assert!(s.agent.as_ref().is_some_and(|a| a.kernel_carrier_off.is_none()), "{:?}", s.agent);
    assert!(s.groups[0].uplinks.iter().all(|u| u.kernel_carrier), "the kernel reads both carriers");
    assert_eq!(by, Some(failover_agent::control::Decider::Kernel));
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.per_receiver[1] > 0, "traffic moved to the standby: {r}");
    assert!(r.max_gap < Duration::from_millis(50), "the kernel left the dead NIC on the next frame: {r}");
}

/// Without the kernel's carrier reads (as under lockdown; forced here):
/// the agent reads each link every probe round, which releases linkwatch's
/// held-back notification, and decides itself within a few probe rounds;
/// `status` says why.
#[test]
fn without_kernel_carrier_reads_the_agent_reads_the_links_itself() {
    if !privileged("without_kernel_carrier_reads_the_agent_reads_the_links_itself") {
        return;
    }
    let _turn = serial();
    let (r, notified, s) = tap_fault_with_agent(&[("FAILOVER_KERNEL_CARRIER", "off")]);
    let sw = s.groups[0].last_switchover.clone();
    eprintln!(
        "kernel carrier reads off, TAP uplink carrier lost: RTM_NEWLINK {:.1} ms after the ioctl; VM traffic {r}; \
         switchover {sw:?}",
        ms(notified)
    );
    let off = s.agent.as_ref().and_then(|a| a.kernel_carrier_off.clone()).unwrap_or_default();
    assert!(off.contains("FAILOVER_KERNEL_CARRIER"), "status says why: {off:?}");
    assert!(s.groups[0].uplinks.iter().all(|u| !u.kernel_carrier));
    assert!(notified < Duration::from_millis(100), "the agent's own reads released the notification");
    assert_eq!(r.duplicates, 0, "{r}");
    assert!(r.max_gap < Duration::from_millis(100), "{r}");
}
