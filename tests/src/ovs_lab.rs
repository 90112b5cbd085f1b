//! The OVS lab: a private ovsdb-server and ovs-vswitchd (userspace
//! datapath) in a host namespace, bridge `br-ext` with two uplinks to two
//! gateway namespaces that share the gateway address, and N VM namespaces.
//!
//! ```text
//!  <name>-vm1: eth0 192.0.2.11 ─ vm1p ┐
//!  <name>-vm2: eth0 192.0.2.12 ─ vm2p ┤ br-ext (OVS, <name>-host) ─ up1 ─ gw1 (<name>-gw1) 192.0.2.1, 2001:db8::1
//!                                     ┘                          ─ up2 ─ gw2 (<name>-gw2) 192.0.2.1, 2001:db8::1
//! ```
//! Everything lives under one name: namespaces `<name>-*`, the directory
//! `<dir>` (OVS database, sockets, logs, pid files, the agent's config and
//! state) and the pin directory `/sys/fs/bpf/<name>`. [`OvsLab::up`]
//! refuses to clobber an existing lab; [`down`] removes all of it, also what
//! a crashed run left. Addresses only from 192.0.2.0/24 and `2001:db8::/32`,
//! only inside the lab's namespaces.
//!
//! With [`LabSpec::tap_uplink`] one uplink is a TAP device instead of a
//! veth (a physical NIC as linkwatch sees it, see [`crate::tap`]): `upN` in
//! the host namespace is the tap, and a forwarder thread moves its frames
//! to and from `wire`, a veth end in `<name>-tapN` whose peer is `gwN`.
//! [`OvsLab::set_link`] then drops the tap's carrier (`TUNSETCARRIER`).
//!
//! VLANs: [`LabSpec::vm_tag`] makes the VM ports OVS access ports,
//! [`LabSpec::uplink_trunks`] the uplinks trunks, and
//! [`LabSpec::gateway_vlan`] makes both gateways tag, with the TC programs
//! of [`crate::tagger`] on their interfaces (this kernel has no 8021q),
//! the tag crossing the veth in band or out of band.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use failover_agent::control::{Request, Response, Status};

use crate::{
    Netns,
    agent_lab::{self, AgentProcess},
    tagger::{self, TagCount, Tagger},
    tap::{self, TapUplink},
    udp::{self, PORT, Report, Sink, Source},
};

pub const BRIDGE: &str = "br-ext";
pub const GW1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x01];
pub const GW2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x02];
pub const UP1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x01];
pub const UP2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x02];
/// The forwarder's veth end of a TAP uplink, in `<name>-tapN`.
pub const TAP_WIRE_DEV: &str = "wire";
/// `other_config:stats-update-interval` of a lab with a TAP uplink (ms).
pub const TAP_STATS_UPDATE_MS: u32 = 3_600_000;

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Prefix of everything the lab makes.
    pub name: String,
    /// Where its files go.
    pub dir: PathBuf,
    pub vms: usize,
    /// Both gateways use one MAC (as some redundant gateway pairs do).
    pub shared_mac: bool,
    pub probe_interval_ms: u64,
    /// Put the uplinks in an OVS active-backup bond (the baseline the
    /// benchmark compares with) instead of two ports for the agent.
    pub bond: Option<BondDetect>,
    /// The agent's `xdp_mode` ("skb" or "native"), if not the default.
    pub xdp_mode: Option<&'static str>,
    /// Which uplink (1 or 2), if any, is a TAP device with a forwarder
    /// instead of a veth (see [`crate::tap`]). Such a lab also sets OVS's
    /// `stats-update-interval` to an hour ([`TAP_STATS_UPDATE_MS`]): the
    /// 5 s stats poll asks for each port's state, which flushes a pending
    /// carrier event (up1's late notification would come early 1 time in 5).
    pub tap_uplink: Option<u32>,
    /// The VM ports are OVS access ports of this VLAN (`tag=`).
    pub vm_tag: Option<u16>,
    /// The uplinks' OVS `trunks` (empty: no VLAN setting).
    pub uplink_trunks: Vec<u16>,
    /// Both gateways tag their frames (and take only frames so tagged).
    pub gateway_vlan: Option<GatewayVlan>,
    /// `vlan = N` on both uplinks in the agent's configuration.
    pub agent_vlan: Option<u16>,
    /// `[agent] ingress = "..."` in the agent's configuration, if set.
    pub ingress: Option<&'static str>,
    /// More lines for the agent's `[[group]]` table (e.g.
    /// `data_plane_liveness = false`).
    pub group_extra: &'static str,
}

/// How a gateway of the lab tags (see [`crate::tagger`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayVlan {
    pub vid: u16,
    /// tx-vlan offload on the gateway's veth: the tag reaches the host out
    /// of band (in `skb->vlan_tci`, as a real NIC's rx-vlan offload
    /// delivers it); off, in the frame.
    pub out_of_band: bool,
}

/// How an OVS active-backup bond notices a dead uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BondDetect {
    /// `bond-detect-mode=carrier`.
    Carrier,
    /// `bond-detect-mode=miimon`, `bond-miimon-interval=100`.
    Miimon100,
}

impl LabSpec {
    /// A lab named `name` with its files under `/run/failover-lab/<name>`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            dir: Path::new("/run/failover-lab").join(name),
            vms: 2,
            shared_mac: false,
            probe_interval_ms: 20,
            bond: None,
            xdp_mode: None,
            tap_uplink: None,
            vm_tag: None,
            uplink_trunks: Vec::new(),
            gateway_vlan: None,
            agent_vlan: None,
            ingress: None,
            group_extra: "",
        }
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf").join(&self.name)
    }
}

fn vm_mac(i: usize) -> [u8; 6] {
    [0x02, 0xfa, 0, 0, 0x0b, i as u8]
}

/// The address of VM `i` (1-based).
pub fn vm_ip(i: usize) -> [u8; 4] {
    [192, 0, 2, 10 + i as u8]
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Stops a daemon of the lab by the pid in its pid file (only if that
/// process is an Open vSwitch daemon), waiting until it is gone.
fn stop_pidfile(pidfile: &Path) {
    let Some(pid) = fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !(cmdline.contains("ovs-vswitchd") || cmdline.contains("ovsdb-server")) {
        return; // not ours (stale pid file, pid reused)
    }
    // SAFETY: signalling a daemon this lab started, by its own pid file.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::pid_alive(pid.unsigned_abs()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if crate::pid_alive(pid.unsigned_abs()) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = fs::remove_file(pidfile);
}

/// Stops the lab's daemons and agent, removes its pins and its directory.
fn down_files(spec: &LabSpec, removed: &mut Vec<String>) {
    for pidfile in ["ovs-vswitchd.pid", "ovsdb-server.pid"] {
        let path = spec.dir.join(pidfile);
        if path.exists() {
            stop_pidfile(&path);
            removed.push(format!("stopped {}", pidfile.trim_end_matches(".pid")));
        }
    }
    // An agent the lab started records its pid too.
    if let Some(pid) = fs::read_to_string(spec.dir.join("agent.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("failover-agent") {
            // SAFETY: the lab's own agent, by the pid it recorded.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            removed.push("stopped failover-agent".into());
        }
    }
    if spec.pin_dir().exists() {
        let _ = failover_agent::datapath::EbpfDatapath::uninstall(&spec.pin_dir());
        removed.push(format!("pins {}", spec.pin_dir().display()));
    }
    if spec.dir.exists() {
        let _ = fs::remove_dir_all(&spec.dir);
        removed.push(format!("directory {}", spec.dir.display()));
    }
}

/// Removes everything a lab named like `spec` made, whether it is running,
/// half built or left by a crash. Returns what it removed.
pub fn down(spec: &LabSpec) -> Vec<String> {
    let mut removed = Vec::new();
    down_files(spec, &mut removed);
    if let Ok(entries) = fs::read_dir("/run/netns") {
        let prefix = format!("{}-", spec.name);
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix)
                && Command::new("ip").args(["netns", "del", &n]).status().is_ok_and(|s| s.success())
            {
                removed.push(format!("namespace {n}"));
            }
        }
    }
    removed
}

/// What a running lab looks like (`lab status`).
pub fn status(spec: &LabSpec) -> String {
    let mut out = String::new();
    let prefix = format!("{}-", spec.name);
    let namespaces: Vec<String> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if namespaces.is_empty() && !spec.dir.exists() {
        return format!("lab {} is down\n", spec.name);
    }
    out += &format!("lab {}: namespaces {}\n", spec.name, namespaces.join(" "));
    for daemon in ["ovsdb-server", "ovs-vswitchd", "agent"] {
        let pid =
            fs::read_to_string(spec.dir.join(format!("{daemon}.pid"))).ok().and_then(|s| s.trim().parse::<u32>().ok());
        let state = match pid {
            Some(p) if crate::pid_alive(p) => format!("running (pid {p})"),
            Some(_) => "dead".to_string(),
            None => "not started".to_string(),
        };
        out += &format!("  {daemon}: {state}\n");
    }
    out += &format!("  files: {}\n  pins: {}\n", spec.dir.display(), spec.pin_dir().display());
    out
}

/// A running lab; torn down completely when dropped.
pub struct OvsLab {
    pub spec: LabSpec,
    pub host: Netns,
    pub gw1: Netns,
    pub gw2: Netns,
    pub vms: Vec<Netns>,
    starts: u32,
    /// The TAP uplink's forwarder, and the namespace of its veth end.
    tap: Option<(TapUplink, Netns)>,
    /// The gateways' tagging programs, if they tag.
    taggers: Vec<Tagger>,
}

impl OvsLab {
    /// Builds the lab, or says why not (and leaves nothing behind).
    pub fn up(spec: LabSpec) -> Result<Self, String> {
        crate::net::clean_stale();
        crate::net::ensure_bpffs();
        if spec.tap_uplink.is_some_and(|n| n != 1 && n != 2) {
            return Err(format!("tap_uplink {:?}: the lab has uplinks 1 and 2", spec.tap_uplink));
        }
        let mut names = vec![spec.ns("host"), spec.ns("gw1"), spec.ns("gw2")];
        names.extend(spec.tap_uplink.map(|n| spec.ns(&format!("tap{n}"))));
        names.extend((1..=spec.vms).map(|i| spec.ns(&format!("vm{i}"))));
        if let Some(taken) = names.iter().find(|n| ns_exists(n)) {
            return Err(format!(
                "namespace {taken} exists: a lab named {} is up (or was left behind); `down` removes it",
                spec.name
            ));
        }
        if spec.dir.exists() {
            return Err(format!("{} exists: `down` removes the lab that left it", spec.dir.display()));
        }
        let cleanup = spec.clone();
        Self::build(spec).inspect_err(|_| {
            down(&cleanup);
        })
    }

    fn build(spec: LabSpec) -> Result<Self, String> {
        fs::create_dir_all(&spec.dir).map_err(|e| format!("{}: {e}", spec.dir.display()))?;
        let host = Netns::named(&spec.ns("host"));
        let gw1 = Netns::named(&spec.ns("gw1"));
        let gw2 = Netns::named(&spec.ns("gw2"));
        let vms: Vec<Netns> = (1..=spec.vms).map(|i| Netns::named(&spec.ns(&format!("vm{i}")))).collect();
        for ns in [&host, &gw1, &gw2].into_iter().chain(vms.iter()) {
            ns.disable_ipv6();
        }
        let gw2_mac = if spec.shared_mac { GW1_MAC } else { GW2_MAC };
        let mut tap = None;
        for (n, up, up_mac, gw, gw_dev, gw_mac) in
            [(1, "up1", UP1_MAC, &gw1, "gw1", GW1_MAC), (2, "up2", UP2_MAC, &gw2, "gw2", gw2_mac)]
        {
            if spec.tap_uplink == Some(n) {
                tap = Some(tap_uplink(&spec, &host, n, up, up_mac, gw, gw_dev, gw_mac)?);
            } else {
                host.veth(up, up_mac, gw, gw_dev, gw_mac);
            }
        }
        let mut taggers = Vec::new();
        for (ns, dev) in [(&gw1, "gw1"), (&gw2, "gw2")] {
            ns.ip(&["addr", "add", "192.0.2.1/24", "dev", dev]);
            offloads_off(ns, dev);
            if let Some(v) = spec.gateway_vlan {
                taggers.push(Tagger::attach(ns, dev, v.vid, v.out_of_band).map_err(|e| format!("{dev}: {e}"))?);
            }
        }
        for (i, vm) in vms.iter().enumerate() {
            let port = format!("vm{}p", i + 1);
            host.veth(&port, [0x02, 0xfa, 0, 0, 0x0c, i as u8 + 1], vm, "eth0", vm_mac(i + 1));
            let ip = vm_ip(i + 1);
            vm.ip(&["addr", "add", &format!("{}.{}.{}.{}/24", ip[0], ip[1], ip[2], ip[3]), "dev", "eth0"]);
            offloads_off(vm, "eth0");
            offloads_off(&host, &port);
        }
        offloads_off(&host, "up1");
        offloads_off(&host, "up2");
        let lab = Self { spec, host, gw1, gw2, vms, starts: 0, tap, taggers };
        lab.start_ovsdb()?;
        lab.start_vswitchd()?;
        if lab.spec.tap_uplink.is_some() {
            let interval = format!("other_config:stats-update-interval={TAP_STATS_UPDATE_MS}");
            lab.vsctl(&["--timeout=10", "set", "Open_vSwitch", ".", &interval])?;
        }
        let mut add: Vec<String> =
            ["--timeout=10", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev"]
                .map(String::from)
                .into();
        let ports: Vec<String> = ["up1".to_string(), "up2".to_string()]
            .into_iter()
            .chain((1..=lab.vms.len()).map(|i| format!("vm{i}p")))
            .collect();
        let detect = match lab.spec.bond {
            Some(BondDetect::Carrier) => "other_config:bond-detect-mode=carrier",
            Some(BondDetect::Miimon100) => "other_config:bond-detect-mode=miimon",
            None => "",
        };
        let trunks = (!lab.spec.uplink_trunks.is_empty()).then(|| {
            let list: Vec<String> = lab.spec.uplink_trunks.iter().map(u16::to_string).collect();
            format!("trunks={}", list.join(","))
        });
        for p in &ports {
            let uplink = p == "up1" || p == "up2";
            if lab.spec.bond.is_some() && uplink {
                continue;
            }
            add.extend(["--", "add-port", BRIDGE, p.as_str()].map(String::from));
            match (uplink, &trunks, lab.spec.vm_tag) {
                (true, Some(t), _) => add.push(t.clone()),
                (false, _, Some(tag)) => add.push(format!("tag={tag}")),
                _ => {}
            }
        }
        if lab.spec.bond.is_some() {
            add.extend(
                [
                    "--",
                    "add-bond",
                    BRIDGE,
                    "bond0",
                    "up1",
                    "up2",
                    "bond_mode=active-backup",
                    detect,
                    "other_config:bond-miimon-interval=100",
                    "other_config:bond-primary=up1",
                ]
                .map(String::from),
            );
        }
        lab.vsctl(&add.iter().map(String::as_str).collect::<Vec<_>>())?;
        lab.wait_ports(&ports)?;
        Ok(lab)
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.spec.dir;
        cmd.env("OVS_RUNDIR", d).env("OVS_DBDIR", d).env("OVS_LOGDIR", d).env("OVS_SYSCONFDIR", d);
    }

    fn start_ovsdb(&self) -> Result<(), String> {
        let db = self.spec.dir.join("conf.db");
        run(Command::new("ovsdb-tool").arg("create").arg(&db).arg("/usr/share/openvswitch/vswitch.ovsschema"))?;
        self.run_ovsdb()?;
        self.vsctl(&["--no-wait", "init"]).map(drop)
    }

    /// Kills ovsdb-server (SIGKILL, as a crash) and starts it again on its database.
    pub fn crash_and_restart_ovsdb(&self) -> Result<(), String> {
        let pidfile = self.spec.dir.join("ovsdb-server.pid");
        if let Some(pid) = fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            // SAFETY: the lab's own ovsdb-server, by its pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while crate::pid_alive(pid.unsigned_abs()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = fs::remove_file(&pidfile);
        self.run_ovsdb()
    }

    fn run_ovsdb(&self) -> Result<(), String> {
        let d = &self.spec.dir;
        let db = d.join("conf.db");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name(), "ovsdb-server"])
            .arg(&db)
            .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
            .arg(format!("--pidfile={}", d.join("ovsdb-server.pid").display()))
            .arg(format!("--unixctl={}", d.join("ovsdb-server.ctl").display()))
            .args(["-vconsole:off", "--no-chdir", "--detach"])
            .arg(format!("--log-file={}", d.join("ovsdb-server.log").display()));
        self.env(&mut cmd);
        run(&mut cmd).map(drop)
    }

    /// Starts ovs-vswitchd (again).
    pub fn start_vswitchd(&self) -> Result<(), String> {
        let d = &self.spec.dir;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name(), "ovs-vswitchd"])
            .arg(format!("unix:{}", d.join("db.sock").display()))
            .arg(format!("--pidfile={}", d.join("ovs-vswitchd.pid").display()))
            .arg(format!("--unixctl={}", d.join("ovs-vswitchd.ctl").display()))
            .args(["-vconsole:off", "--no-chdir", "--detach"])
            .arg(format!("--log-file={}", d.join("ovs-vswitchd.log").display()));
        self.env(&mut cmd);
        run(&mut cmd).map(drop)
    }

    /// Stops ovs-vswitchd (its rules go with it).
    pub fn stop_vswitchd(&self) {
        stop_pidfile(&self.spec.dir.join("ovs-vswitchd.pid"));
    }

    /// Runs ovs-vsctl against the lab's database.
    pub fn vsctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("ovs-vsctl");
        cmd.arg(format!("--db=unix:{}", self.spec.dir.join("db.sock").display())).args(args);
        self.env(&mut cmd);
        run(&mut cmd)
    }

    /// Runs ovs-ofctl against the lab's bridge.
    pub fn ofctl(&self, args: &[&str]) -> Result<String, String> {
        let target = format!("unix:{}", self.spec.dir.join(format!("{BRIDGE}.mgmt")).display());
        let args: Vec<&str> = args.iter().map(|a| if *a == "BRIDGE" { target.as_str() } else { a }).collect();
        run(Command::new("ovs-ofctl").args(&args))
    }

    /// The agent's rules on the bridge (canonical, sorted), read with ovs-ofctl.
    pub fn agent_flows(&self) -> Vec<String> {
        let cookie = failover_agent::ovs::group_cookie("ext");
        let filter = format!("cookie={cookie:#x}/-1");
        let dump = self.ofctl(&["-O", "OpenFlow14", "dump-flows", "BRIDGE", &filter, "--no-stats"]).unwrap_or_default();
        failover_agent::ovs::parse_dump(&dump)
    }

    /// The OpenFlow port number of a port.
    pub fn ofport(&self, port: &str) -> Option<u32> {
        self.vsctl(&["get", "Interface", port, "ofport"]).ok()?.trim().parse().ok()
    }

    fn wait_ports(&self, ports: &[String]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ports.iter().all(|p| self.ofport(p).is_some_and(|n| n > 0)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("OVS did not bring the ports up within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until ovs-vswitchd answers on the bridge again.
    pub fn wait_vswitchd(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ofctl(&["show", "BRIDGE"]).is_err() {
            if Instant::now() > deadline {
                return Err("ovs-vswitchd did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn config_path(&self) -> PathBuf {
        self.spec.dir.join("failover-agent.toml")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.spec.dir.join("control.sock")
    }

    /// The agent's configuration for this lab.
    pub fn write_config(&self) {
        let d = &self.spec.dir;
        let text = format!(
            "[agent]\nstate_dir = \"{state}\"\nbpf_pin_dir = \"{pins}\"\ncontrol_socket = \"{sock}\"\n\
             metrics_listen = \"127.0.0.1:0\"\novs_rundir = \"{d}\"\n{xdp}{ingress}\n\
             [[group]]\nname = \"ext\"\nbridge = \"{BRIDGE}\"\nprobe_interval_ms = {pi}\ndown_after = 3\nup_after = 3\n{extra}\n\
             [[group.uplink]]\nname = \"primary\"\ninterface = \"up1\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n{vlan}\n\
             [[group.uplink]]\nname = \"standby\"\ninterface = \"up2\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n{vlan}",
            state = d.join("state").display(),
            pins = self.spec.pin_dir().display(),
            sock = self.socket_path().display(),
            d = d.display(),
            pi = self.spec.probe_interval_ms,
            extra = self.spec.group_extra,
            xdp = self.spec.xdp_mode.map(|m| format!("xdp_mode = \"{m}\"\n")).unwrap_or_default(),
            ingress = self.spec.ingress.map(|m| format!("ingress = \"{m}\"\n")).unwrap_or_default(),
            vlan = self.spec.agent_vlan.map(|v| format!("vlan = {v}\n")).unwrap_or_default(),
        );
        fs::write(self.config_path(), text).expect("writing the agent's config");
    }

    /// Starts the agent in the host namespace (its pins on the machine's
    /// bpffs) and waits until it answers.
    pub fn start_agent(&mut self) -> AgentProcess {
        self.start_agent_with(&[])
    }

    /// [`OvsLab::start_agent`] with more environment variables for the agent.
    pub fn start_agent_with(&mut self, env: &[(&str, &str)]) -> AgentProcess {
        self.write_config();
        self.starts += 1;
        let log = self.spec.dir.join(format!("agent-{}.log", self.starts));
        let agent = agent_lab::spawn_agent_with(&self.host, &self.config_path(), &self.socket_path(), log, env);
        let _ = fs::write(self.spec.dir.join("agent.pid"), agent.pid().to_string());
        agent
    }

    pub fn ask(&self, request: &Request) -> Response {
        agent_lab::ask(&self.socket_path(), request)
    }

    pub fn status(&self) -> Status {
        agent_lab::status(&self.socket_path())
    }

    /// Waits until `pred` holds; panics with the last status after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        agent_lab::wait_for(&self.socket_path(), what, timeout, pred)
    }

    /// Both uplinks healthy and the agent's rules in place.
    pub fn wait_ready(&self) -> Status {
        self.wait_for("both uplinks healthy, rules in place", Duration::from_secs(15), |s| {
            s.groups[0].uplinks.iter().all(|u| u.healthy) && s.groups[0].ovs.as_ref().is_some_and(|o| o.rules_in_place)
        })
    }

    /// Traffic from VM 1 to the gateway address, received on both gateways.
    pub fn gateway_traffic(&self, stream: u32, rate: u64) -> LabTraffic {
        let sinks = vec![udp::sink(&self.gw1, stream, 0), udp::sink(&self.gw2, stream, 1)];
        let to = SocketAddr::from(([192, 0, 2, 1], PORT));
        LabTraffic { sinks, source: udp::source(&self.vms[0], to, stream, rate, rate * 120) }
    }

    /// Traffic from gateway `n` (1 or 2) to VM 1.
    pub fn return_traffic(&self, n: u32, stream: u32, rate: u64) -> LabTraffic {
        let (gw, _) = self.gw(n);
        let sinks = vec![udp::sink(&self.vms[0], stream, 0)];
        let to = SocketAddr::from((vm_ip(1), PORT));
        LabTraffic { sinks, source: udp::source(gw, to, stream, rate, rate * 120) }
    }

    /// How the frames leaving gateway `n` during `window` carried their
    /// 802.1Q tag (a packet capture on its interface).
    pub fn gateway_tags(&self, n: u32, window: Duration) -> TagCount {
        let (ns, dev) = self.gw(n);
        tagger::capture_tags(ns, dev, window).unwrap_or_else(|e| panic!("capture on {dev}: {e}"))
    }

    /// Traffic from VM 1 to VM 2.
    pub fn vm_traffic(&self, stream: u32, rate: u64) -> LabTraffic {
        let sinks = vec![udp::sink(&self.vms[1], stream, 0)];
        let to = SocketAddr::from((vm_ip(2), PORT));
        LabTraffic { sinks, source: udp::source(&self.vms[0], to, stream, rate, rate * 120) }
    }

    /// Cuts or restores uplink `n`'s link (1 or 2): a veth uplink from the
    /// gateway's end (`ip link set gwN down`), a TAP uplink by its carrier
    /// ([`OvsLab::set_carrier`]).
    pub fn set_link(&self, n: u32, up: bool) {
        if self.spec.tap_uplink == Some(n) {
            self.set_carrier(n, up);
            return;
        }
        let (ns, dev) = self.gw(n);
        ns.ip(&["link", "set", dev, if up { "up" } else { "down" }]);
        if up {
            offloads_off(ns, dev);
        }
    }

    /// Drops or restores the carrier of TAP uplink `n` with `TUNSETCARRIER`
    /// on the tap fd, as a NIC losing its link; returns the instant taken
    /// right before the ioctl. Panics if uplink `n` is not the TAP uplink.
    pub fn set_carrier(&self, n: u32, up: bool) -> Instant {
        let tap = self.tap(n).unwrap_or_else(|| panic!("uplink {n} is a veth, not a TAP: use set_link"));
        tap.set_carrier(up).unwrap_or_else(|e| panic!("uplink {n}: {e}"))
    }

    /// TAP uplink `n`, if uplink `n` is the TAP one.
    pub fn tap(&self, n: u32) -> Option<&TapUplink> {
        self.tap.as_ref().filter(|_| self.spec.tap_uplink == Some(n)).map(|(t, _)| t)
    }

    /// Silences gateway `n` with its link up (its address goes).
    pub fn silence_gateway(&self, n: u32) {
        let (ns, dev) = self.gw(n);
        ns.ip(&["addr", "flush", "dev", dev]);
    }

    /// Brings a silenced gateway back.
    pub fn revive_gateway(&self, n: u32) {
        let (ns, dev) = self.gw(n);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", dev]);
    }

    fn gw(&self, n: u32) -> (&Netns, &'static str) {
        match n {
            1 => (&self.gw1, "gw1"),
            2 => (&self.gw2, "gw2"),
            other => panic!("no uplink {other}"),
        }
    }

    /// A one-line description of the lab.
    pub fn describe(&self) -> String {
        let mut d = format!(
            "namespaces {}-{{host,gw1,gw2,vm1..vm{}}}, OVS bridge {BRIDGE} (userspace datapath) in {}, files in {}",
            self.spec.name,
            self.vms.len(),
            self.host.name(),
            self.spec.dir.display()
        );
        if let (Some(n), Some((_, wire))) = (self.spec.tap_uplink, &self.tap) {
            d += &format!("; uplink up{n} is a TAP, forwarded to {TAP_WIRE_DEV} in {}", wire.name());
        }
        d
    }
}

impl Drop for OvsLab {
    fn drop(&mut self) {
        // Daemons, pins and files here; the namespaces' own guards delete them.
        down_files(&self.spec, &mut Vec::new());
        self.taggers.clear();
        // The forwarder holds the tap (and with it the host namespace)
        // open: stop it before the namespaces go.
        drop(self.tap.take());
    }
}

/// Uplink `n` as a TAP: `up` (the tap, with `up_mac`, up) in `host`, a
/// namespace `<name>-tapN` holding [`TAP_WIRE_DEV`], a veth whose peer
/// `gw_dev` goes to `gw`, and the forwarder between the tap and that end.
#[expect(clippy::too_many_arguments, reason = "the same parameters as a veth uplink, plus which one")]
fn tap_uplink(
    spec: &LabSpec,
    host: &Netns,
    n: u32,
    up: &str,
    up_mac: [u8; 6],
    gw: &Netns,
    gw_dev: &str,
    gw_mac: [u8; 6],
) -> Result<(TapUplink, Netns), String> {
    let wire = Netns::named(&spec.ns(&format!("tap{n}")));
    wire.disable_ipv6();
    wire.veth(TAP_WIRE_DEV, [0x02, 0xfa, 0, 0, 0x0d, n as u8], gw, gw_dev, gw_mac);
    offloads_off(&wire, TAP_WIRE_DEV);
    let tap = TapUplink::create(host, up, &wire, TAP_WIRE_DEV, tap::DEFAULT_DEADLINE)
        .map_err(|e| format!("TAP uplink {up}: {e}"))?;
    host.ip(&["link", "set", up, "address", &crate::net::mac_str(&up_mac), "up"]);
    Ok((tap, wire))
}

fn offloads_off(ns: &Netns, dev: &str) {
    // Checksum offload on veth leaves checksums for a NIC that is not there;
    // OVS's userspace datapath would forward them unfinished.
    let _ = Command::new("ip")
        .args(["netns", "exec", ns.name(), "ethtool", "-K", dev, "tx", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Traffic in the lab.
pub struct LabTraffic {
    sinks: Vec<Sink>,
    source: Source,
}

impl LabTraffic {
    /// Stops the sender and the receivers: how many were sent, and every arrival.
    pub fn finish_raw(self) -> (u64, Vec<udp::Arrival>) {
        let sent = self.source.stop();
        std::thread::sleep(Duration::from_millis(100));
        (sent, self.sinks.into_iter().flat_map(Sink::stop).collect())
    }

    /// Stops the sender, lets the last datagrams land, stops the receivers.
    pub fn finish(self) -> Report {
        let sent = self.source.stop();
        std::thread::sleep(Duration::from_millis(100));
        let n = self.sinks.len();
        let arrivals: Vec<udp::Arrival> = self.sinks.into_iter().flat_map(Sink::stop).collect();
        udp::report(sent, n, &arrivals)
    }
}
