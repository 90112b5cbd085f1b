//! The driver against fakes of the datapath and the probe transport: what
//! reaches the kernel, in which order, and what survives a reload that
//! changes the topology.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use failover_common::{
    DevRef, GROUP_DATA_PLANE, GROUP_HOLD, GROUP_KERNEL_FAILOVER, GroupState, KernelSwitch, SWITCH_CARRIER,
    UplinkConfig,
    rule::{Policy, choose},
};
use proptest::prelude::*;

use super::{topology::GroupId, *};
use crate::{control::Request, failover::Decider};
use crate::{
    datapath::{Counters, DatapathError, KernelCarrier},
    link::{LinkEvent, LinkState},
    probe::{ProbeError, ProbeTransport},
};

/// One call the driver made into the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Attach(String, u32),
    Update(String),
    Detach(String),
    SetGroup(u32, u32),
    RemoveGroup(u32),
}

/// The kernel, as far as the driver can tell.
#[derive(Debug, Default)]
struct World {
    /// Interface name -> ifindex (those present).
    ifaces: BTreeMap<String, u32>,
    /// Interfaces whose gateway answers probes.
    answering: BTreeSet<String>,
    uplinks: BTreeMap<u32, UplinkConfig>,
    groups: BTreeMap<u32, GroupState>,
    counters: BTreeMap<u32, Counters>,
    attached: BTreeSet<(String, u32)>,
    kernel: Vec<KernelSwitch>,
    calls: Vec<Call>,
}

#[derive(Clone, Debug, Default)]
struct FakeDp(Rc<RefCell<World>>);

impl Datapath for FakeDp {
    fn attach_uplink(&mut self, ifname: &str, config: &UplinkConfig) -> Result<AttachOutcome, DatapathError> {
        let mut w = self.0.borrow_mut();
        let ifindex = *w.ifaces.get(ifname).ok_or(DatapathError::NoSuchInterface { ifname: ifname.into() })?;
        let same = w.uplinks.get(&ifindex).is_some_and(|p| p.ident == config.ident && p.slot == config.slot);
        let reuse = w.attached.contains(&(ifname.to_string(), ifindex)) && same;
        if !reuse {
            w.counters.insert(config.slot, Counters::default());
        }
        w.uplinks.insert(ifindex, *config);
        w.attached.insert((ifname.to_string(), ifindex));
        w.calls.push(Call::Attach(ifname.into(), config.slot));
        Ok(if reuse { AttachOutcome::Reused } else { AttachOutcome::Attached })
    }
    fn update_uplink(&mut self, ifname: &str, config: &UplinkConfig) -> Result<(), DatapathError> {
        let mut w = self.0.borrow_mut();
        let ifindex = *w.ifaces.get(ifname).ok_or(DatapathError::NoSuchInterface { ifname: ifname.into() })?;
        w.uplinks.insert(ifindex, *config);
        w.calls.push(Call::Update(ifname.into()));
        Ok(())
    }
    fn uplink(&mut self, ifname: &str) -> Result<Option<UplinkConfig>, DatapathError> {
        let w = self.0.borrow();
        Ok(w.ifaces.get(ifname).and_then(|i| w.uplinks.get(i)).copied())
    }
    fn detach_uplink(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let ifindex = self.0.borrow().ifaces.get(ifname).copied().unwrap_or(0);
        self.detach_interface(ifname, ifindex)
    }
    fn set_group(&mut self, group: u32, state: &GroupState) -> Result<(), DatapathError> {
        let mut w = self.0.borrow_mut();
        w.groups.insert(group, *state);
        w.calls.push(Call::SetGroup(group, state.active_ifindex));
        Ok(())
    }
    fn group(&self, group: u32) -> Result<Option<GroupState>, DatapathError> {
        Ok(self.0.borrow().groups.get(&group).copied())
    }
    fn counters(&self, slot: u32) -> Result<Counters, DatapathError> {
        Ok(self.0.borrow().counters.get(&slot).copied().unwrap_or_default())
    }
    fn repair_pins(&mut self) -> Result<Vec<PathBuf>, DatapathError> {
        Ok(Vec::new())
    }
    fn pinned_uplinks(&self) -> Result<Vec<(u32, UplinkConfig)>, DatapathError> {
        Ok(self.0.borrow().uplinks.iter().map(|(i, c)| (*i, *c)).collect())
    }
    fn pinned_groups(&self) -> Result<Vec<u32>, DatapathError> {
        Ok(self.0.borrow().groups.keys().copied().collect())
    }
    fn remove_group(&mut self, group: u32) -> Result<(), DatapathError> {
        let mut w = self.0.borrow_mut();
        w.groups.remove(&group);
        w.calls.push(Call::RemoveGroup(group));
        Ok(())
    }
    fn attached_interfaces(&self) -> Vec<(String, u32)> {
        self.0.borrow().attached.iter().cloned().collect()
    }
    fn detach_interface(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        let mut w = self.0.borrow_mut();
        w.attached.retain(|(n, _)| n != ifname);
        w.uplinks.remove(&ifindex);
        w.calls.push(Call::Detach(ifname.into()));
        Ok(())
    }
    fn device(&self, _slot: u32) -> Result<DevRef, DatapathError> {
        Ok(DevRef::default())
    }
    fn kernel_switches(&mut self) -> Vec<KernelSwitch> {
        std::mem::take(&mut self.0.borrow_mut().kernel)
    }
    fn kernel_switch_fd(&self) -> Option<OwnedFd> {
        None
    }
    fn kernel_carrier(&self) -> KernelCarrier {
        KernelCarrier::On
    }

    fn hooks(&self) -> crate::datapath::Hooks {
        crate::datapath::Hooks { ingress: crate::datapath::IngressMode::Tc, tc: crate::datapath::TcKind::Tcx }
    }
}

/// Probes that are answered, in the fake kernel's counters, by the
/// gateways that answer.
#[derive(Clone, Debug, Default)]
struct FakeProbes(Rc<RefCell<World>>);

impl ProbeTransport for FakeProbes {
    fn send(&mut self, ifname: &str, _frame: &[u8]) -> Result<(), ProbeError> {
        let mut w = self.0.borrow_mut();
        let Some(ifindex) = w.ifaces.get(ifname).copied() else {
            return Err(ProbeError::NoSuchInterface { ifname: ifname.into() });
        };
        if w.answering.contains(ifname)
            && let Some(slot) = w.uplinks.get(&ifindex).map(|c| c.slot)
        {
            let c = w.counters.entry(slot).or_default();
            c.valid_replies += 1;
            c.gateway_mac = Some([2, 0, 0, 0, 0, (ifindex & 0xff) as u8]);
        }
        Ok(())
    }
}

fn config(groups: &[(&str, &[(&str, &str)])]) -> Config {
    let mut text = String::from("[agent]\novs_flows = false\n");
    for (name, uplinks) in groups {
        text += &format!("[[group]]\nname = \"{name}\"\nbridge = \"br0\"\nprobe_interval_ms = 100\n");
        for (uplink, iface) in *uplinks {
            text += &format!(
                "[[group.uplink]]\nname = \"{uplink}\"\ninterface = \"{iface}\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n"
            );
        }
    }
    crate::config::parse(&text, Path::new("t.toml")).expect("valid test config")
}

struct Rig {
    world: Rc<RefCell<World>>,
    agent: Agent<FakeDp, FakeProbes>,
    now: Instant,
}

impl Rig {
    fn start(world: &Rc<RefCell<World>>, config: Config, now: Instant) -> Self {
        let dump: Vec<LinkEvent> = world
            .borrow()
            .ifaces
            .iter()
            .map(|(n, i)| LinkEvent {
                ifname: n.clone(),
                ifindex: *i,
                mac: Some([2, 0, 0, 0, 1, *i as u8]),
                state: LinkState::Up,
            })
            .collect();
        let mut agent = Agent::new(config, FakeDp(world.clone()), FakeProbes(world.clone()), now).unwrap();
        agent.start(&dump, None, now);
        Self { world: world.clone(), agent, now }
    }

    /// `n` probe rounds.
    fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            self.now += Duration::from_millis(100);
            self.agent.on_timeout(self.now);
        }
    }

    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.world.borrow_mut().calls)
    }

    fn slot_of(&self, iface: &str) -> u32 {
        let w = self.world.borrow();
        w.uplinks[&w.ifaces[iface]].slot
    }
}

fn world(ifaces: &[&str]) -> Rc<RefCell<World>> {
    let w = World {
        ifaces: ifaces.iter().enumerate().map(|(i, n)| (n.to_string(), 10 + i as u32)).collect(),
        answering: ifaces.iter().map(ToString::to_string).collect(),
        ..World::default()
    };
    Rc::new(RefCell::new(w))
}

/// Group "ext" on e1 (p) and e2 (s), both healthy after five rounds; its id.
fn two_uplinks() -> (Rc<RefCell<World>>, Rig, u32) {
    let w = world(&["e1", "e2"]);
    let mut rig = Rig::start(&w, config(&[("ext", &[("p", "e1"), ("s", "e2")])]), Instant::now());
    rig.rounds(5);
    (w, rig, GroupId::of("ext").0)
}

/// The kernel moves group `id` to its second uplink by itself (its own map
/// write), as the fast rule does.
fn kernel_moves(w: &Rc<RefCell<World>>, id: u32) {
    let mut world = w.borrow_mut();
    let moved = world.groups[&id].switched_to(1);
    world.groups.insert(id, moved);
}

#[test]
fn a_fault_reaches_the_map_before_anything_else() {
    let (w, mut rig, id) = two_uplinks();
    assert_eq!(w.borrow().groups[&id].active_ifindex, 10);
    rig.calls();
    let down = LinkEvent { ifname: "e1".into(), ifindex: 10, mac: None, state: LinkState::Down };
    rig.agent.on_link(&down, rig.now);
    let calls = rig.calls();
    assert_eq!(calls.first(), Some(&Call::SetGroup(id, 11)), "the map update comes first: {calls:?}");
}

#[test]
fn a_kernel_switch_is_ratified_and_not_undone() {
    let (w, mut rig, id) = two_uplinks();
    // The kernel moved the group by itself (its own map write) and reported it.
    kernel_moves(&w, id);
    {
        w.borrow_mut().kernel.push(KernelSwitch {
            group: id,
            from_ifindex: 10,
            to_ifindex: 11,
            reason: SWITCH_CARRIER,
            at_ns: 0,
        });
    }
    // A probe round before the report is read must not write the old active back.
    rig.rounds(1);
    assert_eq!(w.borrow().groups[&id].active_ifindex, 11, "not undone");
    rig.agent.on_kernel_switches(rig.now);
    let s = rig.agent.status();
    assert_eq!(s.groups[0].active.as_deref(), Some("s"));
    assert_eq!(s.groups[0].last_switchover.as_ref().map(|x| x.decided_by), Some(Decider::Kernel));
    assert!(s.alarms.iter().any(|a| a.kind == "nic" && a.uplink.as_deref() == Some("p")), "{:?}", s.alarms);
    assert!(rig.agent.take_link_queries().contains(&10), "the link of the NIC reported lost is read anew");
}

#[test]
fn the_kernel_gets_the_policy_and_a_hold() {
    let (w, mut rig, id) = two_uplinks();
    let g = w.borrow().groups[&id];
    assert_eq!((g.member_count, g.allowed, g.preferred), (2, 0b11, 0b11));
    assert_ne!(g.flags & GROUP_KERNEL_FAILOVER, 0);
    assert_ne!(g.flags & GROUP_DATA_PLANE, 0, "data-plane liveness by default");
    assert_eq!(g.down_after, 3);
    assert_eq!(g.silence_ns, 300_250_000, "3 x 100 ms + a grain (250 µs)");
    // Forced onto an unhealthy uplink: the kernel must not move it.
    w.borrow_mut().answering.remove("e2");
    rig.rounds(4);
    rig.agent.on_request(Request::Switch { group: "ext".into(), uplink: "s".into(), force: true }, rig.now);
    let g = w.borrow().groups[&id];
    assert_eq!(g.active_ifindex, 11);
    assert_ne!(g.flags & GROUP_HOLD, 0);
}

#[test]
fn a_reload_that_changes_the_topology_moves_no_state_between_uplinks() {
    let w = world(&["e1", "e2", "e3", "e4"]);
    let before = config(&[("a", &[("p", "e1"), ("s", "e2"), ("t", "e3")]), ("b", &[("x", "e4"), ("y", "e2x")])]);
    // e2x does not exist: group b starts with one uplink missing.
    let mut rig = Rig::start(&w, before, Instant::now());
    rig.rounds(5);
    let slot_s = rig.slot_of("e2");
    let replies_s = w.borrow().counters[&slot_s].valid_replies;
    assert!(replies_s >= 5);
    drop(rig);
    // The new configuration: an uplink added in front of group a (e5), one
    // removed (t on e3), one moved to group b (s on e2); group c new.
    w.borrow_mut().ifaces.insert("e5".into(), 15);
    w.borrow_mut().answering.insert("e5".into());
    let after = config(&[("a", &[("n", "e5"), ("p", "e1")]), ("b", &[("x", "e4"), ("s", "e2")])]);
    let mut rig = Rig::start(&w, after, Instant::now());
    let calls = rig.calls();
    assert!(calls.contains(&Call::Detach("e3".into())), "the removed uplink is detached: {calls:?}");
    assert!(!w.borrow().attached.iter().any(|(n, _)| n == "e3"));
    // e2 is another uplink now (another group): new identity, counters from zero.
    let slot_s2 = rig.slot_of("e2");
    let counters_s2 = w.borrow().counters[&slot_s2].valid_replies;
    assert_eq!(counters_s2, 0, "no counters inherited by the moved uplink");
    // The new uplink got a slot nobody else uses, and zeroed counters.
    let slot_n = rig.slot_of("e5");
    assert_ne!(slot_n, rig.slot_of("e1"));
    assert_ne!(slot_n, rig.slot_of("e4"));
    assert_ne!(slot_n, slot_s2);
    rig.rounds(5);
    // Each uplink reports its own gateway's MAC (the fake derives it from the ifindex).
    let s = rig.agent.status();
    for g in &s.groups {
        for u in &g.uplinks {
            let ifindex = u.ifindex.unwrap();
            assert_eq!(u.gateway_mac.as_deref(), Some(format!("02:00:00:00:00:{ifindex:02x}").as_str()), "{u:?}");
        }
    }
    let groups: Vec<u32> = w.borrow().groups.keys().copied().collect();
    assert_eq!(groups.len(), 2, "only the configured groups have state: {groups:?}");
}

#[test]
fn a_removed_group_loses_its_datapath_state() {
    let w = world(&["e1", "e2", "e3", "e4"]);
    let mut rig = Rig::start(
        &w,
        config(&[("a", &[("p", "e1"), ("s", "e2")]), ("b", &[("x", "e3"), ("y", "e4")])]),
        Instant::now(),
    );
    rig.rounds(3);
    drop(rig);
    let rig = Rig::start(&w, config(&[("a", &[("p", "e1"), ("s", "e2")])]), Instant::now());
    let calls = rig.calls();
    assert!(calls.contains(&Call::RemoveGroup(GroupId::of("b").0)), "{calls:?}");
    assert!(calls.contains(&Call::Detach("e3".into())) && calls.contains(&Call::Detach("e4".into())));
}

#[test]
fn an_ovs_outage_lets_the_loop_sleep() {
    let w = world(&["e1", "e2"]);
    let mut cfg = config(&[("ext", &[("p", "e1"), ("s", "e2")])]);
    cfg.agent.ovs_flows = true;
    cfg.groups[0].probe_interval = Duration::from_secs(1);
    let t0 = Instant::now();
    let mut rig = Rig::start(&w, cfg, t0);
    rig.agent.ovs_reachability("br0", false, t0);
    // 10 s without OVS: the loop wakes for probe rounds and the alarm only.
    let end = t0 + Duration::from_secs(10);
    let mut now = t0;
    let mut wakeups = 0;
    while now < end {
        now = rig.agent.next_deadline(now).unwrap_or(end).min(end).max(now);
        rig.agent.on_timeout(now);
        assert!(rig.agent.ovs_job(now).is_none());
        wakeups += 1;
        let next = rig.agent.next_deadline(now).unwrap_or(end);
        assert!(next > now, "after a wakeup at {:?} the next deadline is not later: the loop would spin", now - t0);
    }
    assert!(wakeups <= 12, "{wakeups} wakeups in 10 s of outage at 1 s probes");
}

/// The state of one uplink in a generated world.
#[derive(Clone, Copy, Debug)]
struct Gen {
    link_up: bool,
    answering: bool,
}

proptest! {
    /// The kernel's fast rule and the core choose alike: after a random
    /// history, the active uplink's link fails; what the core chooses is what
    /// the kernel would choose from the state the agent wrote before the
    /// fault, with the same uplinks faulty.
    #[test]
    fn kernel_and_core_choose_alike(states in proptest::collection::vec((any::<bool>(), any::<bool>()), 2..=4), flap in any::<bool>()) {
        let names = ["e1", "e2", "e3", "e4"];
        let n = states.len();
        let gens: Vec<Gen> = states.iter().map(|&(link_up, answering)| Gen { link_up, answering }).collect();
        let w = world(&names[..n]);
        let uplinks: Vec<(&str, &str)> = [("u1", "e1"), ("u2", "e2"), ("u3", "e3"), ("u4", "e4")][..n].to_vec();
        let mut rig = Rig::start(&w, config(&[("ext", &uplinks)]), Instant::now());
        rig.rounds(5);
        // The primary (active) stays healthy until the fault; the others take their states.
        for (u, g) in gens.iter().enumerate().skip(1) {
            if !g.answering {
                w.borrow_mut().answering.remove(names[u]);
            }
            if !g.link_up {
                rig.agent.on_link(&LinkEvent { ifname: names[u].into(), ifindex: 10 + u as u32, mac: None, state: LinkState::Down }, rig.now);
            }
        }
        if flap && n > 2 {
            // Uplink 1 flaps: down and up twice.
            for _ in 0..2 {
                rig.agent.on_link(&LinkEvent { ifname: "e2".into(), ifindex: 11, mac: None, state: LinkState::Down }, rig.now);
                rig.agent.on_link(&LinkEvent { ifname: "e2".into(), ifindex: 11, mac: None, state: LinkState::Up }, rig.now);
                rig.rounds(4);
            }
        }
        rig.rounds(5);
        let id = GroupId::of("ext").0;
        let written = w.borrow().groups[&id];
        prop_assume!(written.active_ifindex == 10);
        // What is faulty now, as the kernel would read it.
        let mut faulty = 0u8;
        for u in 1..n {
            let link_up = rig.agent.core.uplink(0, u).is_some_and(|v| v.link == Link::Up);
            let silent = rig.agent.core.uplink(0, u).is_some_and(|v| v.gateway == crate::failover::Gateway::Down);
            if !link_up || silent {
                faulty |= 1 << u;
            }
        }
        let kernel = choose(&Policy::of(&written), 0, faulty);
        rig.agent.on_link(&LinkEvent { ifname: "e1".into(), ifindex: 10, mac: None, state: LinkState::Down }, rig.now);
        let core = rig.agent.core.active(0).filter(|&a| a != 0);
        prop_assert_eq!(kernel, core, "written {:?}, faulty {:#b}", written, faulty);
    }
}

#[test]
fn a_kernel_switch_whose_report_was_lost_is_ratified_from_the_map() {
    let (w, mut rig, id) = two_uplinks();
    kernel_moves(&w, id);
    rig.rounds(3);
    assert_eq!(w.borrow().groups[&id].active_ifindex, 11, "not undone");
    let s = rig.agent.status();
    assert_eq!(s.groups[0].active.as_deref(), Some("s"), "ratified from the map");
    assert_eq!(s.groups[0].last_switchover.as_ref().map(|x| x.decided_by), Some(Decider::Kernel));
}
