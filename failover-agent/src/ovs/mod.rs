//! Open vSwitch: the agent's OpenFlow rules on each group's bridge. The only
//! code in the agent that touches OVS.
//!
//! - [`plan`] (pure) turns a group's state into the rules it needs: VM
//!   frames to any gateway MAC go to the active uplink, readdressed to the
//!   active gateway; traffic from the active uplink is switched normally
//!   (and never sent back out of it). VM-to-VM traffic and every rule with
//!   another cookie are left alone.
//!
//!   Rules that bypass NORMAL must also do its VLAN work ([`vlan`]): when
//!   no port of the bridge has a VLAN setting (`tag`, `trunks`,
//!   `vlan_mode`), one rule per gateway MAC serves every port; otherwise
//!   each VM port gets its own, pushing, rewriting or popping the tag as
//!   NORMAL would between it and the active uplink, and frames of a VLAN
//!   the active uplink does not carry get no rule (the bridge's switching
//!   keeps them, and does not send them there either).
//!
//!   What OVS rules cannot do without a gap is left to the datapath, which
//!   does it from the instant of the switchover: nothing arriving on an
//!   inactive uplink reaches the bridge (XDP), and VM broadcast (ARP, DHCP,
//!   ...), flooded by the bridge as usual, leaves only through the active
//!   uplink (TC). Rules for those were tried and measured: an ingress drop
//!   rule for the standby, and `no-flood` on it, both lag the switchover by
//!   an `ovs-ofctl` run (20-40 ms, more under load); in that window the new
//!   gateway's first ARP reply to a VM was dropped, or the VM's ARP request
//!   went nowhere, and the VM lost a second to its ARP retry.
//! - [`OvsCli`] applies a plan with `ovs-ofctl`: the group's rules are
//!   replaced in one bundle, atomically. Three short-lived processes per
//!   change (the port list, the ports' VLAN settings from OVSDB with
//!   `ovs-vsctl`, the bundle), never per probe.
//! - [`openflow`] keeps an OpenFlow connection to each bridge, so the agent
//!   learns at once that ovs-vswitchd went away or came back.

pub mod openflow;
pub mod vlan;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

pub use self::vlan::PortVlan;
use self::vlan::steer;
use crate::config::format_mac;

/// Cookies of the agent's rules: this base, plus the group's id (a hash of
/// its name) in the low 32 bits.
pub const COOKIE_BASE: u64 = 0xfa11_0000_0000_0000;
/// The bits of a cookie that say it is the agent's.
pub const COOKIE_MASK: u64 = 0xffff_ffff_0000_0000;

/// The cookie of the rules of the group with id `group`.
pub fn cookie(group: u32) -> u64 {
    COOKIE_BASE | u64::from(group)
}

/// The cookie of the rules of the group named `name`.
pub fn group_cookie(name: &str) -> u64 {
    cookie(crate::ids::GroupId::of(name).0)
}

/// The cookies in `ovs-ofctl dump-flows` output.
pub fn parse_cookies(text: &str) -> Vec<u64> {
    let mut out: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cookie=0x"))
        .filter_map(|rest| u64::from_str_radix(rest.split(',').next().unwrap_or_default(), 16).ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What the rules of one group follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupFlows {
    pub group: u32,
    pub bridge: String,
    /// The uplinks' OVS port names (their interfaces), in priority order.
    pub uplinks: Vec<String>,
    pub active: usize,
    /// Every gateway MAC known in the group.
    pub gateway_macs: Vec<[u8; 6]>,
    /// The active gateway's MAC, if known.
    pub active_mac: Option<[u8; 6]>,
}

/// The rules of one group, in `ovs-ofctl`'s canonical form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// `priority=N,MATCH actions=ACTIONS`, sorted.
    pub flows: Vec<String>,
}

/// Errors at the OVS boundary, each naming the bridge.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("bridge {bridge}: port {port} is not on the bridge")]
    MissingPort { bridge: String, port: String },
    #[error("bridge {bridge}: running {command}")]
    Spawn {
        bridge: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bridge {bridge}: {command} failed: {stderr}")]
    Failed { bridge: String, command: String, stderr: String },
}

/// A port of the bridge as the rules need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgePort {
    /// Its OpenFlow port number.
    pub ofport: u32,
    /// Its VLAN settings in OVSDB.
    pub vlan: PortVlan,
}

/// The ports of a bridge, by name.
pub type BridgePorts = BTreeMap<String, BridgePort>;

/// The ports `numbers` (name -> OpenFlow port) with the VLAN settings in
/// `vlans` (a port not there has none).
pub fn bridge_ports(numbers: &BTreeMap<String, u32>, vlans: &BTreeMap<String, PortVlan>) -> BridgePorts {
    numbers
        .iter()
        .map(|(name, &ofport)| {
            (name.clone(), BridgePort { ofport, vlan: vlans.get(name).cloned().unwrap_or_default() })
        })
        .collect()
}

/// The plan for `g`, given the bridge's ports.
pub fn plan(g: &GroupFlows, ports: &BridgePorts) -> Result<Plan, OvsError> {
    let port = |name: &String| {
        ports.get(name).ok_or_else(|| OvsError::MissingPort { bridge: g.bridge.clone(), port: name.clone() })
    };
    let active_name = &g.uplinks[g.active];
    let active_port = port(active_name)?;
    let active = active_port.ofport;
    let mut flows = vec![format!("priority=250,in_port={active} actions=NORMAL")];
    if let Some(active_mac) = g.active_mac {
        let mut macs = g.gateway_macs.clone();
        macs.push(active_mac);
        macs.sort_unstable();
        macs.dedup();
        let readdress = |mac: [u8; 6]| {
            if mac == active_mac { String::new() } else { format!("set_field:{}->eth_dst,", format_mac(&active_mac)) }
        };
        // VM ports: every port but the group's uplinks.
        let vms: Vec<(&String, &BridgePort)> = ports.iter().filter(|(name, _)| !g.uplinks.contains(name)).collect();
        if active_port.vlan.is_plain() && vms.iter().all(|(_, p)| p.vlan.is_plain()) {
            // No VLAN processing anywhere: one rule per MAC for every port.
            for &mac in &macs {
                flows.push(format!(
                    "priority=200,dl_dst={} actions={}output:{active}",
                    format_mac(&mac),
                    readdress(mac)
                ));
            }
        } else if let Ok(to) = active_port.vlan.resolve() {
            for (_, vm) in vms {
                let Ok(from) = vm.vlan.resolve() else {
                    continue; // not modelled: the bridge's switching keeps it
                };
                for (vlan_match, vlan_action) in steer(&from, &to) {
                    let priority = if vlan_match.specific() { 202 } else { 201 };
                    for &mac in &macs {
                        flows.push(format!(
                            "priority={priority},in_port={},{}dl_dst={} actions={}{}output:{active}",
                            vm.ofport,
                            vlan_match.ofctl(),
                            format_mac(&mac),
                            vlan_action.ofctl(),
                            readdress(mac),
                        ));
                    }
                }
            }
        }
        // An active uplink whose VLAN mode is not modelled gets no steering.
    }
    flows.sort();
    Ok(Plan { flows })
}

/// Parses `ovs-vsctl --format=json --columns=name,tag,trunks,vlan_mode
/// list Port`: port name -> its VLAN settings.
pub fn parse_port_vlans(text: &str) -> Result<BTreeMap<String, PortVlan>, String> {
    use serde_json::Value;
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let headings: Vec<&str> =
        doc["headings"].as_array().ok_or("no headings")?.iter().map(|h| h.as_str().unwrap_or_default()).collect();
    let col = |name: &str| headings.iter().position(|h| *h == name).ok_or(format!("no column {name}"));
    let (name_at, tag_at, trunks_at, mode_at) = (col("name")?, col("tag")?, col("trunks")?, col("vlan_mode")?);
    // An OVSDB value: an atom, or ["set", [atoms]] (empty: none).
    let atoms = |v: &Value| -> Vec<Value> {
        match v.as_array().map(Vec::as_slice) {
            Some([kind, Value::Array(items)]) if kind == "set" => items.clone(),
            _ => vec![v.clone()],
        }
    };
    let vid = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|&n| n <= 4095);
    let mut out = BTreeMap::new();
    for row in doc["data"].as_array().ok_or("no data")? {
        let cell = |i: usize| row.get(i).cloned().unwrap_or(Value::Null);
        let name = cell(name_at).as_str().ok_or("a port without a name")?.to_string();
        let tag = atoms(&cell(tag_at)).first().and_then(vid);
        let trunks = atoms(&cell(trunks_at)).iter().filter_map(vid).collect();
        let mode = atoms(&cell(mode_at)).first().and_then(|m| m.as_str().map(str::to_string));
        out.insert(name, PortVlan { tag, trunks, mode });
    }
    Ok(out)
}

/// Parses `ovs-ofctl dump-flows --no-stats` output into canonical rules
/// (`priority=N,MATCH actions=ACTIONS`, sorted), the cookie dropped.
pub fn parse_dump(text: &str) -> Vec<String> {
    let mut flows: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cookie=") || l.starts_with("priority="))
        .map(|l| match l.split_once(", ") {
            Some((first, rest)) if first.starts_with("cookie=") => rest.to_string(),
            _ => l.to_string(),
        })
        .collect();
    flows.sort();
    flows
}

/// Parses `ovs-ofctl dump-ports-desc` output: port name -> number.
pub fn parse_ports(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let (num, rest) = l.split_once('(')?;
            let (name, _) = rest.split_once("):")?;
            Some((name.to_string(), num.parse().ok()?))
        })
        .collect()
}

/// Open vSwitch through `ovs-ofctl`, reaching each bridge at
/// `<rundir>/<bridge>.mgmt`.
/// Its database at `<rundir>/db.sock`.
#[derive(Clone, Debug)]
pub struct OvsCli {
    rundir: PathBuf,
    /// The ports' VLAN settings last read from OVSDB: used while
    /// ovsdb-server does not answer (ovs-vswitchd, and so the rules, work
    /// on without it).
    last_vlans: Arc<Mutex<Option<BTreeMap<String, PortVlan>>>>,
}

impl OvsCli {
    pub fn new(rundir: &Path) -> Self {
        Self { rundir: rundir.to_path_buf(), last_vlans: Arc::default() }
    }

    /// The bridge's management socket.
    pub fn socket(&self, bridge: &str) -> PathBuf {
        self.rundir.join(format!("{bridge}.mgmt"))
    }

    fn ofctl(&self, bridge: &str, args: &[&str], stdin: Option<&str>) -> Result<String, OvsError> {
        let target = format!("unix:{}", self.socket(bridge).display());
        let command = format!("ovs-ofctl {}", args.join(" "));
        let mut cmd = Command::new("ovs-ofctl");
        cmd.args(["--timeout=2"]).args(args.iter().map(|a| if *a == "BRIDGE" { target.as_str() } else { a }));
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| OvsError::Spawn { bridge: bridge.to_string(), command: command.clone(), source };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(OvsError::Failed {
                bridge: bridge.to_string(),
                command,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The bridge's ports.
    pub fn ports(&self, bridge: &str) -> Result<BTreeMap<String, u32>, OvsError> {
        self.ofctl(bridge, &["-O", "OpenFlow14", "dump-ports-desc", "BRIDGE"], None).map(|t| parse_ports(&t))
    }

    /// The VLAN settings of every port in OVSDB (`ovs-vsctl`). If
    /// ovsdb-server does not answer, those last read, if any.
    pub fn port_vlans(&self, bridge: &str) -> Result<BTreeMap<String, PortVlan>, OvsError> {
        let db = format!("--db=unix:{}", self.rundir.join("db.sock").display());
        let args = [db.as_str(), "--timeout=2", "--format=json", "--columns=name,tag,trunks,vlan_mode", "list", "Port"];
        let command = "ovs-vsctl list Port".to_string();
        let read = Command::new("ovs-vsctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| OvsError::Spawn { bridge: bridge.to_string(), command: command.clone(), source })
            .and_then(|out| {
                if out.status.success() {
                    parse_port_vlans(&String::from_utf8_lossy(&out.stdout)).map_err(|stderr| OvsError::Failed {
                        bridge: bridge.to_string(),
                        command: command.clone(),
                        stderr,
                    })
                } else {
                    Err(OvsError::Failed {
                        bridge: bridge.to_string(),
                        command: command.clone(),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    })
                }
            });
        let mut last = self.last_vlans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match read {
            Ok(vlans) => {
                *last = Some(vlans.clone());
                Ok(vlans)
            }
            Err(e) => last.clone().ok_or(e),
        }
    }

    /// The bridge's ports with their VLAN settings.
    pub fn bridge_ports(&self, bridge: &str) -> Result<BridgePorts, OvsError> {
        let numbers = self.ports(bridge)?;
        Ok(bridge_ports(&numbers, &self.port_vlans(bridge)?))
    }

    /// Replaces the group's rules in one bundle.
    pub fn apply(&self, bridge: &str, group: u32, plan: &Plan) -> Result<(), OvsError> {
        let c = cookie(group);
        let mut bundle = format!("delete cookie={c:#x}/-1\n");
        for flow in &plan.flows {
            let (m, actions) = flow.split_once(' ').unwrap_or((flow, ""));
            bundle += &format!("add cookie={c:#x},{m},{actions}\n");
        }
        self.ofctl(bridge, &["-O", "OpenFlow14", "--bundle", "add-flows", "BRIDGE", "-"], Some(&bundle))?;
        Ok(())
    }

    /// The group's rules as they are on the bridge (canonical, sorted).
    pub fn dump(&self, bridge: &str, group: u32) -> Result<Vec<String>, OvsError> {
        let filter = format!("cookie={:#x}/-1", cookie(group));
        self.ofctl(bridge, &["-O", "OpenFlow14", "dump-flows", "BRIDGE", &filter, "--no-stats"], None)
            .map(|t| parse_dump(&t))
    }

    /// Removes the group's rules.
    pub fn remove(&self, bridge: &str, group: u32) -> Result<(), OvsError> {
        self.remove_cookie(bridge, cookie(group))
    }

    /// Removes the rules with this cookie.
    pub fn remove_cookie(&self, bridge: &str, cookie: u64) -> Result<(), OvsError> {
        let filter = format!("cookie={cookie:#x}/-1");
        self.ofctl(bridge, &["del-flows", "BRIDGE", &filter], None).map(drop)
    }

    /// The cookies of every rule of the agent on the bridge (any group).
    pub fn agent_cookies(&self, bridge: &str) -> Result<Vec<u64>, OvsError> {
        let filter = format!("cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}");
        self.ofctl(bridge, &["-O", "OpenFlow14", "dump-flows", "BRIDGE", &filter], None).map(|t| parse_cookies(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW1: [u8; 6] = [2, 0xfa, 0, 0, 0xa, 1];
    const GW2: [u8; 6] = [2, 0xfa, 0, 0, 0xa, 2];

    fn numbers() -> BTreeMap<String, u32> {
        [("up1", 1), ("up2", 2), ("vm1", 3)].into_iter().map(|(n, p)| (n.to_string(), p)).collect()
    }

    fn ports() -> BridgePorts {
        bridge_ports(&numbers(), &BTreeMap::new())
    }

    /// The lab's ports with these VLAN settings (vm2 is port 4).
    fn vlan_ports(settings: &[(&str, PortVlan)]) -> BridgePorts {
        let mut n = numbers();
        n.insert("vm2".into(), 4);
        bridge_ports(&n, &settings.iter().map(|(name, v)| (name.to_string(), v.clone())).collect())
    }

    fn group(active: usize, active_mac: Option<[u8; 6]>) -> GroupFlows {
        GroupFlows {
            group: 0,
            bridge: "br0".into(),
            uplinks: vec!["up1".into(), "up2".into()],
            active,
            gateway_macs: vec![GW1, GW2],
            active_mac,
        }
    }

    #[test]
    fn plan_steers_everything_to_the_active_uplink() {
        let p = plan(&group(1, Some(GW2)), &ports()).unwrap();
        assert_eq!(
            p.flows,
            vec![
                "priority=200,dl_dst=02:fa:00:00:0a:01 actions=set_field:02:fa:00:00:0a:02->eth_dst,output:2",
                "priority=200,dl_dst=02:fa:00:00:0a:02 actions=output:2",
                "priority=250,in_port=2 actions=NORMAL",
            ]
        );
    }

    #[test]
    fn without_a_known_gateway_mac_there_is_nothing_to_readdress() {
        let p = plan(&group(0, None), &ports()).unwrap();
        assert_eq!(p.flows, vec!["priority=250,in_port=1 actions=NORMAL"]);
    }

    #[test]
    fn a_missing_active_port_is_an_error_and_a_missing_inactive_one_does_not_matter() {
        let mut only_up2 = ports();
        only_up2.remove("up1");
        let e = plan(&group(0, Some(GW1)), &only_up2).unwrap_err();
        assert_eq!(e.to_string(), "bridge br0: port up1 is not on the bridge");
        assert!(plan(&group(1, Some(GW2)), &only_up2).is_ok());
    }

    #[test]
    fn access_ports_with_trunk_uplinks_get_their_tag_pushed() {
        let ports = vlan_ports(&[
            ("vm1", PortVlan::access(100)),
            ("vm2", PortVlan::access(200)),
            ("up1", PortVlan::trunk(&[100])),
            ("up2", PortVlan::trunk(&[100])),
        ]);
        let p = plan(&group(1, Some(GW2)), &ports).unwrap();
        assert_eq!(
            p.flows,
            vec![
                "priority=202,in_port=3,vlan_tci=0x0000/0x1fff,dl_dst=02:fa:00:00:0a:01 \
                 actions=push_vlan:0x8100,set_field:4196->vlan_vid,set_field:02:fa:00:00:0a:02->eth_dst,output:2",
                "priority=202,in_port=3,vlan_tci=0x0000/0x1fff,dl_dst=02:fa:00:00:0a:02 \
                 actions=push_vlan:0x8100,set_field:4196->vlan_vid,output:2",
                "priority=250,in_port=2 actions=NORMAL",
            ],
            "vm2's VLAN 200 is not carried by the uplink: no rule sends it there"
        );
    }

    #[test]
    fn trunk_vm_ports_keep_their_tags_and_an_access_uplink_pops_its_vlan() {
        let trunk_vm = [("vm1", PortVlan::trunk(&[100, 200]))];
        let to_trunk = vlan_ports(&[trunk_vm[0].clone(), ("up1", PortVlan::trunk(&[100, 300]))]);
        assert_eq!(
            plan(&group(0, Some(GW1)), &to_trunk).unwrap().flows,
            vec![
                "priority=202,in_port=3,dl_vlan=100,dl_dst=02:fa:00:00:0a:01 actions=output:1",
                "priority=202,in_port=3,dl_vlan=100,dl_dst=02:fa:00:00:0a:02 \
                 actions=set_field:02:fa:00:00:0a:01->eth_dst,output:1",
                "priority=202,in_port=4,dl_vlan=100,dl_dst=02:fa:00:00:0a:01 actions=output:1",
                "priority=202,in_port=4,dl_vlan=100,dl_dst=02:fa:00:00:0a:02 \
                 actions=set_field:02:fa:00:00:0a:01->eth_dst,output:1",
                "priority=202,in_port=4,dl_vlan=300,dl_dst=02:fa:00:00:0a:01 actions=output:1",
                "priority=202,in_port=4,dl_vlan=300,dl_dst=02:fa:00:00:0a:02 \
                 actions=set_field:02:fa:00:00:0a:01->eth_dst,output:1",
                "priority=250,in_port=1 actions=NORMAL",
            ],
            "vm1's VLAN 200 is not carried; vm2 (no setting, all VLANs) gets the uplink's 100 and 300, \
             and its untagged frames (VLAN 0) are not carried"
        );
        let to_access = vlan_ports(&[trunk_vm[0].clone(), ("up1", PortVlan::access(100))]);
        assert_eq!(
            plan(&group(0, Some(GW1)), &to_access).unwrap().flows,
            vec![
                "priority=202,in_port=3,dl_vlan=100,dl_dst=02:fa:00:00:0a:01 actions=pop_vlan,output:1",
                "priority=202,in_port=3,dl_vlan=100,dl_dst=02:fa:00:00:0a:02 \
                 actions=pop_vlan,set_field:02:fa:00:00:0a:01->eth_dst,output:1",
                "priority=202,in_port=4,dl_vlan=100,dl_dst=02:fa:00:00:0a:01 actions=pop_vlan,output:1",
                "priority=202,in_port=4,dl_vlan=100,dl_dst=02:fa:00:00:0a:02 \
                 actions=pop_vlan,set_field:02:fa:00:00:0a:01->eth_dst,output:1",
                "priority=250,in_port=1 actions=NORMAL",
            ],
        );
    }

    #[test]
    fn plain_ports_beside_vlan_ports_pass_through_unchanged() {
        let ports = vlan_ports(&[("vm1", PortVlan::access(100))]);
        let flows = plan(&group(0, Some(GW1)), &ports).unwrap().flows;
        assert!(flows.contains(&"priority=201,in_port=4,dl_dst=02:fa:00:00:0a:01 actions=output:1".to_string()));
        assert!(
            flows.contains(
                &"priority=202,in_port=3,vlan_tci=0x0000/0x1fff,dl_dst=02:fa:00:00:0a:01 \
              actions=push_vlan:0x8100,set_field:4196->vlan_vid,output:1"
                    .to_string()
            )
        );
        assert_eq!(flows.len(), 5, "{flows:#?}");
        // An uplink not modelled (802.1ad tunnel) gets no steering at all.
        let qinq = PortVlan { mode: Some("dot1q-tunnel".into()), ..PortVlan::access(5) };
        let flows = plan(&group(0, Some(GW1)), &vlan_ports(&[("up1", qinq)])).unwrap().flows;
        assert_eq!(flows, vec!["priority=250,in_port=1 actions=NORMAL"]);
    }

    #[test]
    fn ovsdb_port_vlans_parse() {
        let text = r#"{"data":[["a",100,["set",[]],["set",[]]],["b",["set",[]],["set",[100,200]],["set",[]]],
            ["c",5,7,"native-untagged"]],"headings":["name","tag","trunks","vlan_mode"]}"#;
        let v = parse_port_vlans(text).unwrap();
        assert_eq!(v["a"], PortVlan::access(100));
        assert_eq!(v["b"], PortVlan::trunk(&[100, 200]));
        assert_eq!(v["c"], PortVlan { tag: Some(5), trunks: [7].into(), mode: Some("native-untagged".into()) });
        assert!(parse_port_vlans("{}").is_err());
    }

    #[test]
    fn dumps_and_port_lists_parse() {
        let dump = " cookie=0xfa11000000000000, priority=300,in_port=1 actions=drop\n\
                    cookie=0xfa11000000000000, priority=250,in_port=2 actions=NORMAL\n";
        assert_eq!(
            parse_dump(dump),
            vec!["priority=250,in_port=2 actions=NORMAL", "priority=300,in_port=1 actions=drop"]
        );
        assert_eq!(parse_dump("NXST_FLOW reply (xid=0x4):\n"), Vec::<String>::new());
        let desc = "OFPST_PORT_DESC reply (OF1.4) (xid=0x2):\n 1(up1): addr:ae:83:13:2b:f4:0d\n     config:     0\n \
                    2(up2): addr:ae:83:13:2b:f4:0e\n LOCAL(br0): addr:aa:c7:db:12:f3:4e\n";
        let p = parse_ports(desc);
        assert_eq!(p.get("up1"), Some(&1));
        assert_eq!(p.get("up2"), Some(&2));
        assert_eq!(p.get("br0"), None, "LOCAL is not a numbered port");
    }

    #[test]
    fn cookies_are_found_in_dumps() {
        let dump = " cookie=0xfa11000012345678, duration=1.2s, table=0, priority=250,in_port=2 actions=NORMAL\n\
                    cookie=0xfa11000000000001, priority=200 actions=output:2\n\
                    cookie=0xfa11000012345678, priority=200 actions=output:2\n";
        assert_eq!(parse_cookies(dump), vec![0xfa11_0000_0000_0001, 0xfa11_0000_1234_5678]);
    }

    #[test]
    fn cookies_carry_the_group() {
        assert_eq!(cookie(0), 0xfa11_0000_0000_0000);
        assert_eq!(cookie(5), 0xfa11_0000_0000_0005);
    }
}
