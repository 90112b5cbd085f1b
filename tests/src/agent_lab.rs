//! The agent's lab: a Linux bridge standing in for OVS, two uplinks to two
//! gateway namespaces that share the gateway address (distinct MACs), a VM
//! namespace on the bridge, and the real `failover-agent` binary running in
//! the host namespace (`nsenter --net`, so its pins stay on the machine's
//! bpffs and survive a restart).
//!
//! ```text
//!  ns vm: eth0 192.0.2.10 ── vmp ┐
//!                                ├ br0 (ns host) ── up1 ── gw1 (ns gw1) 192.0.2.1 / 2001:db8::1
//!                                └               ── up2 ── gw2 (ns gw2) 192.0.2.1 / 2001:db8::1
//! ```

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use failover_agent::control::{self, Request, Response, Status};

use crate::{
    Netns, PinDir,
    udp::{self, PORT, Report, Sink, Source},
    unique_name,
};

pub const UP1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x01];
pub const UP2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x01, 0x02];
pub const GW1_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x01];
pub const GW2_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0a, 0x02];
pub const VM_MAC: [u8; 6] = [0x02, 0xfa, 0, 0, 0x0b, 0x01];

/// How the lab is built.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Probe the gateways over IPv6 (`2001:db8::1`) instead of IPv4.
    pub ipv6: bool,
    pub probe_interval_ms: u64,
    pub down_after: u32,
    pub up_after: u32,
    pub failback: &'static str,
    pub hold_down_ms: u64,
    /// More lines for the `[agent]` table (e.g. `tc_attach = "netlink"`).
    pub agent_extra: String,
    /// More lines for the `[[group]]` table (e.g. `data_plane_liveness = false`).
    pub group_extra: String,
    /// More lines for the standby's `[[group.uplink]]` table.
    pub standby_extra: String,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            ipv6: false,
            probe_interval_ms: 20,
            down_after: 3,
            up_after: 3,
            failback: "never",
            hold_down_ms: 1000,
            agent_extra: String::new(),
            group_extra: String::new(),
            standby_extra: String::new(),
        }
    }
}

/// The path of the `failover-agent` binary, built (once per test process)
/// so the tests never run a stale one.
pub fn agent_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    let exe = std::env::current_exe().expect("own binary path");
    // Tests live in target/<profile>/deps, binaries in target/<profile>.
    let parent = exe.parent().expect("target/<profile>/...");
    let dir = if parent.ends_with("deps") { parent.parent().expect("target/<profile>") } else { parent };
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The same selection as `cargo xtask demo|lab` and `./dev test`
        // build, so that feature unification does not rebuild the agent
        // back and forth between them.
        cmd.args(["build", "--quiet", "-p", "failover-agent", "-p", "failover-tests", "--bins"]);
        // End-to-end tests need the datapath in the binary.
        cmd.env("FAILOVER_EBPF_REQUIRED", "1");
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building failover-agent failed");
    });
    dir.join("failover-agent")
}

/// Starts the agent in `host` (with `nsenter --net`, so its pins stay on the
/// machine's bpffs), its log in `log`, and waits until it answers on `socket`.
pub fn spawn_agent(host: &Netns, config: &Path, socket: &Path, log: PathBuf) -> AgentProcess {
    spawn_agent_with(host, config, socket, log, &[])
}

/// [`spawn_agent`] with more environment variables for the agent.
pub fn spawn_agent_with(
    host: &Netns,
    config: &Path,
    socket: &Path,
    log: PathBuf,
    env: &[(&str, &str)],
) -> AgentProcess {
    spawn_binary(&agent_binary(), host, config, socket, log, env)
}

/// [`spawn_agent_with`], running the `failover-agent` binary at `bin`.
pub fn spawn_binary(
    bin: &Path,
    host: &Netns,
    config: &Path,
    socket: &Path,
    log: PathBuf,
    env: &[(&str, &str)],
) -> AgentProcess {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", host.name()))
        .arg(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("agent log"))
        .spawn()
        .expect("starting failover-agent");
    let agent = AgentProcess { child, log };
    let deadline = Instant::now() + Duration::from_secs(10);
    while control::request(socket, &Request::Status).is_err() {
        assert!(Instant::now() < deadline, "the agent did not open its control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// Asks the agent listening on `socket`.
pub fn ask(socket: &Path, request: &Request) -> Response {
    control::request(socket, request).expect("the agent answers")
}

/// The status of the agent listening on `socket`.
pub fn status(socket: &Path) -> Status {
    ask(socket, &Request::Status).status.expect("a status")
}

/// Waits until `pred` holds for the agent's status; panics with the last
/// status after `timeout`.
pub fn wait_for(socket: &Path, what: &str, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(socket);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The running agent; killed (SIGKILL) when dropped.
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Wraps a started agent whose stderr goes to `log`.
    pub fn new(child: Child, log: PathBuf) -> Self {
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as systemd stops it; returns its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(i32::try_from(self.child.id()).expect("pid"), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- agent log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The lab; everything is removed when it drops.
pub struct AgentLab {
    pub host: Netns,
    pub gw1: Netns,
    pub gw2: Netns,
    pub vm: Netns,
    pub pins: PinDir,
    pub dir: PathBuf,
    pub options: LabOptions,
    starts: u32,
}

impl AgentLab {
    pub fn new(options: LabOptions) -> Self {
        let host = Netns::new("h");
        let gw1 = Netns::new("g");
        let gw2 = Netns::new("g");
        let vm = Netns::new("v");
        for ns in [&host, &gw1, &gw2, &vm] {
            if !options.ipv6 {
                ns.disable_ipv6();
            }
        }
        if options.ipv6 {
            // The host's own chatter on the uplinks is not part of the test.
            host.disable_ipv6();
        }
        host.ip(&["link", "add", "br0", "type", "bridge"]);
        host.ip(&["link", "set", "br0", "up"]);
        host.veth("up1", UP1_MAC, &gw1, "gw1", GW1_MAC);
        host.veth("up2", UP2_MAC, &gw2, "gw2", GW2_MAC);
        host.veth("vmp", [0x02, 0xfa, 0, 0, 0x0c, 0x01], &vm, "eth0", VM_MAC);
        for port in ["up1", "up2", "vmp"] {
            host.ip(&["link", "set", port, "master", "br0"]);
        }
        for (ns, dev) in [(&gw1, "gw1"), (&gw2, "gw2")] {
            ns.ip(&["addr", "add", "192.0.2.1/24", "dev", dev]);
            if options.ipv6 {
                ns.ip(&["addr", "add", "2001:db8::1/64", "dev", dev, "nodad"]);
            }
        }
        vm.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"]);
        let dir = std::env::temp_dir().join(unique_name("lab"));
        fs::create_dir_all(&dir).expect("lab directory");
        Self { host, gw1, gw2, vm, pins: PinDir::new(), dir, options, starts: 0 }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("failover-agent.toml")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn write_config(&self) {
        let o = &self.options;
        let (gateway, source) = if o.ipv6 { ("2001:db8::1", "2001:db8::fa") } else { ("192.0.2.1", "192.0.2.250") };
        let text = format!(
            "[agent]\nstate_dir = \"{state}\"\nbpf_pin_dir = \"{pins}\"\ncontrol_socket = \"{sock}\"\nmetrics_listen = \"127.0.0.1:0\"\novs_flows = false\n{extra}\n\
             [[group]]\nname = \"ext\"\nbridge = \"br0\"\nprobe_interval_ms = {pi}\ndown_after = {down}\nup_after = {up}\n\
             failback = \"{fb}\"\nhold_down_ms = {hd}\n{gextra}\n\
             [[group.uplink]]\nname = \"primary\"\ninterface = \"up1\"\ngateway = \"{gateway}\"\nprobe_source = \"{source}\"\n\n\
             [[group.uplink]]\nname = \"standby\"\ninterface = \"up2\"\ngateway = \"{gateway}\"\nprobe_source = \"{source}\"\n{sextra}",
            state = self.dir.join("state").display(),
            pins = self.pins.path().display(),
            sock = self.socket_path().display(),
            pi = o.probe_interval_ms,
            down = o.down_after,
            up = o.up_after,
            fb = o.failback,
            hd = o.hold_down_ms,
            extra = o.agent_extra,
            gextra = o.group_extra,
            sextra = o.standby_extra,
        );
        fs::write(self.config_path(), text).expect("writing the lab config");
    }

    /// Starts the agent in the host namespace and waits until it answers.
    pub fn start_agent(&mut self) -> AgentProcess {
        self.start_binary(&agent_binary())
    }

    /// [`Self::start_agent`] with the `failover-agent` binary at `bin`.
    pub fn start_binary(&mut self, bin: &Path) -> AgentProcess {
        self.write_config();
        self.starts += 1;
        let log = self.dir.join(format!("agent-{}.log", self.starts));
        spawn_binary(bin, &self.host, &self.config_path(), &self.socket_path(), log, &[])
    }

    /// The pin names under `links/` (sorted).
    pub fn link_pins(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.pins.path().join("links"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Asks the running agent.
    pub fn ask(&self, request: &Request) -> Response {
        ask(&self.socket_path(), request)
    }

    pub fn status(&self) -> Status {
        status(&self.socket_path())
    }

    /// Waits until `pred` holds for the agent's status; panics with the last
    /// status after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        wait_for(&self.socket_path(), what, timeout, pred)
    }

    /// Waits until both gateways are proven healthy and the primary is active.
    pub fn wait_healthy(&self) -> Status {
        self.wait_for("both uplinks healthy", Duration::from_secs(10), |s| {
            s.groups[0].uplinks.iter().all(|u| u.healthy)
        })
    }

    /// Starts receivers on both gateways and a sender in the VM.
    pub fn traffic(&self, stream: u32, rate: u64) -> Traffic {
        let sinks = [udp::sink(&self.gw1, stream, 0), udp::sink(&self.gw2, stream, 1)];
        let to = SocketAddr::from(([192, 0, 2, 1], PORT));
        let source = udp::source(&self.vm, to, stream, rate, rate * 120);
        Traffic { sinks, source }
    }

    /// Takes the gateway of `uplink` (1 or 2) off the air with its link up:
    /// its address goes, so it answers neither probes nor VM traffic.
    pub fn silence_gateway(&self, uplink: u32) {
        let (ns, dev) = self.gw(uplink);
        ns.ip(&["addr", "flush", "dev", dev]);
    }

    /// Brings a silenced gateway back.
    pub fn revive_gateway(&self, uplink: u32) {
        let (ns, dev) = self.gw(uplink);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", dev]);
        if self.options.ipv6 {
            ns.ip(&["addr", "add", "2001:db8::1/64", "dev", dev, "nodad"]);
        }
    }

    /// Cuts or restores the link of `uplink` (1 or 2) from the gateway's end:
    /// the uplink loses carrier, as when a cable or NIC fails.
    pub fn set_link(&self, uplink: u32, up: bool) {
        let (ns, dev) = self.gw(uplink);
        ns.ip(&["link", "set", dev, if up { "up" } else { "down" }]);
    }

    fn gw(&self, uplink: u32) -> (&Netns, &'static str) {
        match uplink {
            1 => (&self.gw1, "gw1"),
            2 => (&self.gw2, "gw2"),
            other => panic!("no uplink {other}"),
        }
    }
}

impl Drop for AgentLab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Traffic from the VM to the gateway address, received on both gateways.
pub struct Traffic {
    sinks: [Sink; 2],
    source: Source,
}

impl Traffic {
    /// Stops the sender, lets the last datagrams land, stops the receivers.
    pub fn finish(self) -> Report {
        let sent = self.source.stop();
        std::thread::sleep(Duration::from_millis(100));
        let [a, b] = self.sinks;
        let mut arrivals = a.stop();
        arrivals.extend(b.stop());
        udp::report(sent, 2, &arrivals)
    }
}

/// The active uplink's name.
pub fn active(s: &Status) -> Option<&str> {
    s.groups[0].active.as_deref()
}

/// Whether an alarm of `kind` about `uplink` is open.
pub fn has_alarm(s: &Status, kind: &str, uplink: Option<&str>) -> bool {
    s.alarms.iter().any(|a| a.kind == kind && a.uplink.as_deref() == uplink)
}
