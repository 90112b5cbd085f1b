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
    udp::{self, PORT, Report, Sink, Source},
};

pub const BRIDGE: &str = "br-ext";
pub const GW1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x01];
pub const GW2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x02];
pub const UP1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x01];
pub const UP2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x02];

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
}

impl OvsLab {
    /// Builds the lab, or says why not (and leaves nothing behind).
    pub fn up(spec: LabSpec) -> Result<Self, String> {
        crate::net::clean_stale();
        crate::net::ensure_bpffs();
        let mut names = vec![spec.ns("host"), spec.ns("gw1"), spec.ns("gw2")];
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
        host.veth("up1", UP1_MAC, &gw1, "gw1", GW1_MAC);
        host.veth("up2", UP2_MAC, &gw2, "gw2", gw2_mac);
        for (ns, dev) in [(&gw1, "gw1"), (&gw2, "gw2")] {
            ns.ip(&["addr", "add", "192.0.2.1/24", "dev", dev]);
            offloads_off(ns, dev);
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
        let lab = Self { spec, host, gw1, gw2, vms, starts: 0 };
        lab.start_ovsdb()?;
        lab.start_vswitchd()?;
        let mut add = vec!["--timeout=10", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev"];
        let ports: Vec<String> = ["up1".to_string(), "up2".to_string()]
            .into_iter()
            .chain((1..=lab.vms.len()).map(|i| format!("vm{i}p")))
            .collect();
        let detect = match lab.spec.bond {
            Some(BondDetect::Carrier) => "other_config:bond-detect-mode=carrier",
            Some(BondDetect::Miimon100) => "other_config:bond-detect-mode=miimon",
            None => "",
        };
        for p in &ports {
            if lab.spec.bond.is_some() && (p == "up1" || p == "up2") {
                continue;
            }
            add.extend(["--", "add-port", BRIDGE, p.as_str()]);
        }
        if lab.spec.bond.is_some() {
            add.extend([
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
            ]);
        }
        lab.vsctl(&add)?;
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
        let dump = self
            .ofctl(&["-O", "OpenFlow14", "dump-flows", "BRIDGE", "cookie=0xfa11000000000000/-1", "--no-stats"])
            .unwrap_or_default();
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
             metrics_listen = \"127.0.0.1:0\"\novs_rundir = \"{d}\"\n{xdp}\n\
             [[group]]\nname = \"ext\"\nbridge = \"{BRIDGE}\"\nprobe_interval_ms = {pi}\ndown_after = 3\nup_after = 3\n\n\
             [[group.uplink]]\nname = \"primary\"\ninterface = \"up1\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n\n\
             [[group.uplink]]\nname = \"standby\"\ninterface = \"up2\"\ngateway = \"192.0.2.1\"\nprobe_source = \"192.0.2.250\"\n",
            state = d.join("state").display(),
            pins = self.spec.pin_dir().display(),
            sock = self.socket_path().display(),
            d = d.display(),
            pi = self.spec.probe_interval_ms,
            xdp = self.spec.xdp_mode.map(|m| format!("xdp_mode = \"{m}\"\n")).unwrap_or_default(),
        );
        fs::write(self.config_path(), text).expect("writing the agent's config");
    }

    /// Starts the agent in the host namespace (its pins on the machine's
    /// bpffs) and waits until it answers.
    pub fn start_agent(&mut self) -> AgentProcess {
        self.write_config();
        self.starts += 1;
        let log = self.spec.dir.join(format!("agent-{}.log", self.starts));
        let agent = agent_lab::spawn_agent(&self.host, &self.config_path(), &self.socket_path(), log);
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

    /// Traffic from VM 1 to VM 2.
    pub fn vm_traffic(&self, stream: u32, rate: u64) -> LabTraffic {
        let sinks = vec![udp::sink(&self.vms[1], stream, 0)];
        let to = SocketAddr::from((vm_ip(2), PORT));
        LabTraffic { sinks, source: udp::source(&self.vms[0], to, stream, rate, rate * 120) }
    }

    /// Cuts or restores uplink `n`'s link (1 or 2) from the gateway's end.
    pub fn set_link(&self, n: u32, up: bool) {
        let (ns, dev) = self.gw(n);
        ns.ip(&["link", "set", dev, if up { "up" } else { "down" }]);
        if up {
            offloads_off(ns, dev);
        }
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
        format!(
            "namespaces {}-{{host,gw1,gw2,vm1..vm{}}}, OVS bridge {BRIDGE} (userspace datapath) in {}, files in {}",
            self.spec.name,
            self.vms.len(),
            self.host.name(),
            self.spec.dir.display()
        )
    }
}

impl Drop for OvsLab {
    fn drop(&mut self) {
        // Daemons, pins and files here; the namespaces' own guards delete them.
        down_files(&self.spec, &mut Vec::new());
    }
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
