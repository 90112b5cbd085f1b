//! The Debian package, installed the way an operator installs it: built
//! with `cargo xtask deb`, installed with dpkg into a fresh Debian 12 root
//! (debootstrap, minbase and systemd, cached under target/package-test/),
//! checked there with the tools operators use (systemd-analyze, promtool),
//! removed and purged; its binary runs the OVS-lab demo; and the root boots
//! under systemd-nspawn, where systemd starts the service and the test
//! scrapes its metrics.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Instant,
};

use failover_tests::{have, privileged, unique_name};

/// The name `cargo xtask deb` gives the package (the docs show it).
const DEB: &str = "failover-agent_0.1.0-1_amd64.deb";
/// How the package is installed, in the root as on a host (the docs show it).
const INSTALL: &str = "dpkg -i target/debian/failover-agent_0.1.0-1_amd64.deb";

fn workspace() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).canonicalize().expect("package test: setting up")
}

fn ready(test: &str) -> bool {
    privileged(test) && ["debootstrap", "dpkg", "systemd-analyze", "promtool"].iter().all(|t| have(t, test))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `sh -c script` inside `root` (chroot): what an operator types there.
fn chroot(root: &Path, script: &str) -> (bool, String) {
    run(Command::new("chroot").arg(root).args(["sh", "-c", script]).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
}

/// The Debian mirror this machine's apt uses (deb822 or one-line sources).
fn mirror() -> String {
    let mut text = String::new();
    for p in std::fs::read_dir("/etc/apt/sources.list.d").into_iter().flatten().flatten().map(|e| e.path()) {
        text += &std::fs::read_to_string(p).unwrap_or_default();
    }
    text += &std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let urls = text.lines().filter_map(|l| {
        let l = l.trim();
        l.strip_prefix("URIs:").or_else(|| l.strip_prefix("deb ").and_then(|r| r.split_whitespace().next()))
    });
    urls.map(str::trim)
        .find(|u| u.ends_with("/debian") || u.ends_with("/debian/"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// A Debian 12 root made once by debootstrap and kept under target/.
fn base_root() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = workspace().join("target/package-test");
    let root = dir.join("debian12");
    // procps: the package depends on it (/bin/kill for ExecReload).
    let include = "--include=systemd,systemd-sysv,dbus,procps";
    if std::fs::read_to_string(root.join(".complete")).is_ok_and(|made| made == include) {
        return root;
    }
    let tmp = dir.join("debian12.partial");
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&dir).expect("package test: setting up");
    let started = Instant::now();
    let (ok, out) =
        run(Command::new("debootstrap").args(["--variant=minbase", include, "bookworm"]).arg(&tmp).arg(mirror()));
    assert!(ok, "debootstrap: {out}");
    std::fs::write(tmp.join(".complete"), include).expect("package test: setting up");
    std::fs::rename(&tmp, &root).expect("package test: setting up");
    eprintln!("debootstrap made {} in {:.0} s", root.display(), started.elapsed().as_secs_f64());
    root
}

/// A copy of the base root for one test, removed on drop.
struct Root(PathBuf);

impl Root {
    fn fresh(kind: &str) -> Root {
        let base = base_root();
        let path = base.parent().expect("package test: setting up").join(unique_name(kind));
        let root = Root(path); // removed on drop, also after a failed copy
        let (ok, out) = run(Command::new("cp").arg("-a").arg(&base).arg(&root.0));
        assert!(ok, "copying the root: {out}");
        root
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }

    /// The package in the root at `/target/debian/`, as `cargo xtask deb` leaves it.
    fn with_package(self) -> Root {
        std::fs::create_dir_all(self.join("target/debian")).expect("package test: setting up");
        std::fs::copy(package(), self.join(&format!("target/debian/{DEB}"))).expect("package test: setting up");
        self
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The package, built once per test run by `cargo xtask deb`.
fn package() -> PathBuf {
    static DEB_PATH: OnceLock<PathBuf> = OnceLock::new();
    DEB_PATH
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let started = Instant::now();
            let out = Command::new(cargo)
                .current_dir(workspace())
                .args(["xtask", "deb"])
                .output()
                .expect("package test: setting up");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "cargo xtask deb: {stdout}{}", String::from_utf8_lossy(&out.stderr));
            let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
            eprintln!("cargo xtask deb: {} in {:.0} s", path.display(), started.elapsed().as_secs_f64());
            assert_eq!(
                path.file_name().expect("package test: setting up").to_string_lossy(),
                DEB,
                "the docs name the package {DEB}"
            );
            path
        })
        .clone()
}

fn dpkg_status(root: &Root) -> String {
    chroot(&root.0, "dpkg-query -W -f='${Status}' failover-agent").1
}

/// What `dpkg -i` leaves: every file where the unit and the docs say.
fn check_installed_files(root: &Root) {
    for (path, what) in [
        ("/usr/bin/failover-agent", "the binary the unit runs"),
        ("/lib/systemd/system/failover-agent.service", "the unit"),
        ("/etc/failover-agent/failover-agent.toml", "the configuration the unit names"),
        ("/etc/systemd/system/multi-user.target.wants/failover-agent.service", "the unit enabled"),
        ("/usr/share/failover-agent/prometheus/alerts.yml", "the alert rules"),
        ("/usr/share/failover-agent/prometheus/alerts_test.yml", "their tests"),
        ("/usr/share/man/man1/failover-agent.1.gz", "the man page"),
        ("/usr/share/man/man1/failover-agent-switch.1.gz", "a subcommand's man page"),
        ("/usr/share/bash-completion/completions/failover-agent", "bash completion"),
        ("/usr/share/zsh/vendor-completions/_failover-agent", "zsh completion"),
        ("/usr/share/fish/vendor_completions.d/failover-agent.fish", "fish completion"),
        ("/usr/share/doc/failover-agent/README.md", "the README"),
        ("/usr/share/doc/failover-agent/copyright", "the copyright file"),
        ("/usr/share/doc/failover-agent/examples/failover-agent.example.toml", "the example"),
    ] {
        // (symlink_metadata: the enablement is a symlink to a path inside the root.)
        assert!(root.join(path).symlink_metadata().is_ok(), "{what}: {path} is not installed");
    }
    for dir in ["/usr/share/failover-agent/grafana", "/usr/share/failover-agent/alertmanager"] {
        if workspace().join("deploy").join(Path::new(dir).file_name().expect("package test: setting up")).is_dir() {
            assert!(std::fs::read_dir(root.join(dir)).is_ok_and(|mut d| d.next().is_some()), "{dir} is empty");
        }
    }
    for doc in std::fs::read_dir(workspace().join("docs")).into_iter().flatten().flatten() {
        let name = doc.file_name().to_string_lossy().into_owned();
        let installed = root.join(&format!("/usr/share/doc/failover-agent/docs/{name}"));
        let markdown = Path::new(&name).extension().is_some_and(|e| e == "md");
        assert!(!markdown || installed.exists(), "docs/{name} is not installed");
    }
    let (ok, out) = run(Command::new("gzip").arg("-t").arg(root.join("/usr/share/man/man1/failover-agent.1.gz")));
    assert!(ok, "the man page is not gzip: {out}");
    let (_, conffiles) = chroot(&root.0, "dpkg-query -W -f='${Conffiles}' failover-agent");
    assert!(conffiles.contains("/etc/failover-agent/failover-agent.toml"), "not a conffile: {conffiles}");
}

/// What operators run on the installed files.
fn check_with_operator_tools(root: &Root) {
    let (ok, out) = chroot(&root.0, "failover-agent --version");
    assert!(ok && out.starts_with("failover-agent 0.1.0"), "failover-agent --version: {out}");
    let (ok, out) =
        chroot(&root.0, "failover-agent check-config /etc/failover-agent/failover-agent.toml; echo exit=$?");
    assert!(ok && out.contains("no [[group]] configured") && out.contains("exit=2"), "the shipped config: {out}");
    let (ok, out) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.0.display()))
        .arg("failover-agent.service"));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify on the installed unit: {out}");
    let rules = root.join("/usr/share/failover-agent/prometheus");
    let (ok, out) = run(Command::new("promtool").arg("check").arg("rules").arg(rules.join("alerts.yml")));
    assert!(ok && out.contains("SUCCESS"), "promtool check rules: {out}");
    let mut tests: Vec<String> = std::fs::read_dir(&rules)
        .expect("package test: setting up")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_test.yml"))
        .collect();
    tests.sort();
    assert!(tests.iter().any(|t| t == "alerts_test.yml"), "{tests:?}");
    let (ok, out) = run(Command::new("promtool").current_dir(&rules).args(["test", "rules"]).args(&tests));
    assert!(ok, "promtool test rules {tests:?}: {out}");
}

#[test]
fn the_package_installs_upgrades_removes_and_purges_as_debian_policy_says() {
    let test = "the_package_installs_upgrades_removes_and_purges_as_debian_policy_says";
    if !ready(test) {
        return;
    }
    let started = Instant::now();
    let root = Root::fresh("deb").with_package();
    let (ok, out) = chroot(&root.0, INSTALL);
    assert!(ok, "dpkg -i: {out}");
    assert!(out.contains("enabled, not started"), "first install without a valid config says so: {out}");
    assert_eq!(dpkg_status(&root), "install ok installed");
    check_installed_files(&root);
    check_with_operator_tools(&root);

    // An upgrade (the same package again) keeps the operator's configuration.
    let conf = root.join("/etc/failover-agent/failover-agent.toml");
    let edited = format!("{}\n# edited by the operator\n", std::fs::read_to_string(&conf).unwrap());
    std::fs::write(&conf, &edited).unwrap();
    let (ok, out) = chroot(&root.0, INSTALL);
    assert!(ok && !out.contains("enabled, not started"), "an upgrade is no first install: {out}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited, "the upgrade replaced the operator's file");

    // Remove: the program goes, the configuration stays, nothing is detached.
    let pins = root.join("/sys/fs/bpf/failover-agent/links");
    std::fs::create_dir_all(&pins).unwrap();
    let (ok, out) = chroot(&root.0, "dpkg -r failover-agent");
    assert!(ok && out.contains("nothing detached") && out.contains("failover-agent uninstall"), "dpkg -r: {out}");
    assert!(!root.join("/usr/bin/failover-agent").exists(), "the binary stays after dpkg -r");
    assert!(!root.join("/lib/systemd/system/failover-agent.service").exists(), "the unit stays after dpkg -r");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited, "dpkg -r removed the conffile");
    assert!(pins.exists(), "dpkg -r detached the datapath");
    assert_eq!(dpkg_status(&root), "deinstall ok config-files");

    // Purge: the configuration, the state and the pinned datapath go.
    std::fs::create_dir_all(root.join("/var/lib/failover-agent")).unwrap();
    let (ok, out) = chroot(&root.0, "dpkg -P failover-agent");
    assert!(ok && out.contains("removed the pinned datapath"), "dpkg -P: {out}");
    for gone in ["/etc/failover-agent", "/var/lib/failover-agent", "/sys/fs/bpf/failover-agent"] {
        assert!(!root.join(gone).exists(), "{gone} stays after dpkg -P");
    }
    let wants = root.join("/etc/systemd/system/multi-user.target.wants/failover-agent.service");
    assert!(!wants.exists() && !wants.is_symlink(), "the enablement stays after dpkg -P");
    assert!(!chroot(&root.0, "dpkg-query -W failover-agent").0, "dpkg still knows the package after dpkg -P");
    eprintln!("{test}: {:.0} s", started.elapsed().as_secs_f64());
}

#[test]
fn the_installed_binary_passes_the_lab_demo() {
    let test = "the_installed_binary_passes_the_lab_demo";
    if !ready(test) {
        return;
    }
    let root = Root::fresh("demo").with_package();
    let (ok, out) = chroot(&root.0, INSTALL);
    assert!(ok, "dpkg -i: {out}");
    let agent = root.join("/usr/bin/failover-agent");
    let started = Instant::now();
    let (ok, out) = run(Command::new(workspace().join("dev")).arg("demo").arg("--agent").arg(&agent));
    assert!(ok, "./dev demo --agent {}: {out}", agent.display());
    assert!(out.contains(&format!("agent: {}", agent.display())), "the demo ran another agent: {out}");
    assert!(out.contains("nothing left behind"), "{out}");
    eprintln!("{test}: the demo with the installed agent passed in {:.0} s", started.elapsed().as_secs_f64());
}

/// A configuration for the container: two uplinks on the veths nspawn
/// makes (their gateways do not answer: NIC alarms, which is enough here).
const CONTAINER_CONFIG: &str = r#"[agent]
ovs_flows = false
[[group]]
name = "ext"
bridge = "br-ext"
[[group.uplink]]
name = "primary"
interface = "up1"
gateway = "192.0.2.1"
probe_source = "192.0.2.250"
[[group.uplink]]
name = "standby"
interface = "up2"
gateway = "192.0.2.1"
probe_source = "192.0.2.250"
"#;

/// A Debian root booted by systemd-nspawn (its own network namespace with
/// two veths, up1 and up2; a bpffs of its own at /sys/fs/bpf), stopped and
/// its bpffs unmounted on drop.
struct Container {
    nspawn: std::process::Child,
    init: u32,
    bpffs: BpfMount,
    log: PathBuf,
}

impl Container {
    fn boot(root: &Root) -> Container {
        let id = std::process::id() % 100_000;
        let bpffs = BpfMount(std::env::temp_dir().join(unique_name("bpffs")));
        std::fs::create_dir_all(&bpffs.0).expect("package test: setting up");
        let (ok, out) = run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs.0));
        assert!(ok, "mounting a bpffs: {out}");
        let log = root.0.with_extension("nspawn.log");
        // --register=no --keep-unit: this machine's PID 1 is not systemd
        // (no machined, no system bus). nspawn's seccomp filter refuses
        // bpf(2) unless asked (--system-call-filter=bpf) and its capability
        // set lacks CAP_BPF and CAP_PERFMON.
        let nspawn = Command::new("systemd-nspawn")
            .args(["-q", "--boot", "--register=no", "--keep-unit", "--private-network"])
            .arg(format!("--machine=fa{id}"))
            .arg(format!("--network-veth-extra=fp{id}a:up1"))
            .arg(format!("--network-veth-extra=fp{id}b:up2"))
            .arg(format!("--bind={}:/sys/fs/bpf", bpffs.0.display()))
            .args(["--capability=CAP_BPF,CAP_PERFMON", "--system-call-filter=bpf", "-D"])
            .arg(&root.0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("package test: setting up"))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).expect("package test: setting up")))
            .spawn()
            .expect("package test: setting up");
        let mut c = Container { nspawn, init: 0, bpffs, log };
        c.init = c.wait_for_init();
        c
    }

    /// The container's PID 1 (the nspawn process's child), once it runs systemd.
    fn wait_for_init(&mut self) -> u32 {
        let deadline = Instant::now() + std::time::Duration::from_mins(1);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.nspawn.id())).unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse::<u32>().ok())
                && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "systemd")
            {
                return pid;
            }
            let exited = self.nspawn.try_wait().expect("package test: setting up");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "systemd-nspawn did not boot ({exited:?}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// `sh -c script` in the container (all its namespaces), as its root.
    fn sh(&self, script: &str) -> (bool, String) {
        run(Command::new("nsenter")
            .arg(format!("--target={}", self.init))
            .args(["--all", "sh", "-c", script])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    }

    /// Waits (at most 60 s) until `script` succeeds in the container.
    fn wait(&self, script: &str) -> String {
        let deadline = Instant::now() + std::time::Duration::from_mins(1);
        loop {
            let (ok, out) = self.sh(script);
            if ok {
                return out;
            }
            assert!(Instant::now() < deadline, "{script}: {out}");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    /// The agent's metrics, scraped in the container's network namespace.
    fn scrape(&self) -> String {
        let script = "exec 3<>/dev/tcp/127.0.0.1/9731 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";
        run(Command::new("nsenter").arg(format!("--target={}", self.init)).args(["--net", "bash", "-c", script])).1
    }

    fn main_pid(&self) -> String {
        self.sh("systemctl show -P MainPID failover-agent").1.trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM: nspawn shuts the container down cleanly.
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(i32::try_from(self.nspawn.id()).unwrap_or(0), libc::SIGTERM) };
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while self.nspawn.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let _ = std::fs::remove_file(&self.log);
        // The bpffs goes after nspawn (a field: dropped after this).
    }
}

/// The container's bpffs, a mount point of its own: unmounted and removed on
/// drop, also when the container never started.
struct BpfMount(PathBuf);

impl Drop for BpfMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Installs, configures, starts, reloads, upgrades and removes the package
/// under a real systemd (the root booted by systemd-nspawn), scraping the
/// service's metrics.
#[test]
fn the_service_runs_under_systemd_in_a_booted_root() {
    let test = "the_service_runs_under_systemd_in_a_booted_root";
    if !ready(test) || !have("systemd-nspawn", test) {
        return;
    }
    let started = Instant::now();
    let root = Root::fresh("boot").with_package();
    let c = Container::boot(&root);
    c.wait("systemctl is-system-running --wait >/dev/null; systemctl is-active multi-user.target");
    let (ok, out) = c.sh(INSTALL);
    assert!(ok && out.contains("enabled, not started"), "dpkg -i: {out}");
    let (_, state) = c.sh("systemctl is-active failover-agent; systemctl is-enabled failover-agent");
    assert_eq!(state.split_whitespace().collect::<Vec<_>>(), ["inactive", "enabled"], "after a first install");

    std::fs::write(root.join("/etc/failover-agent/failover-agent.toml"), CONTAINER_CONFIG).unwrap();
    let (ok, out) = c.sh("failover-agent check-config /etc/failover-agent/failover-agent.toml");
    assert!(ok, "{out}");
    let (ok, out) = c.sh("systemctl start failover-agent");
    assert!(ok, "systemctl start failover-agent: {out}");
    c.wait("failover-agent status");
    let metrics = c.scrape();
    for want in [
        "failover_build_info{version=\"0.1.0\"} 1",
        "failover_active_uplink{group=\"ext\",uplink=\"primary\"} 1",
        "failover_datapath_attached{group=\"ext\",ingress=\"tc\",tc_attach=\"tcx\",uplink=\"primary\"} 1",
    ] {
        assert!(metrics.contains(want), "the metrics under systemd lack {want}: {metrics}");
    }
    let pid = c.main_pid();
    let (ok, out) = c.sh("systemctl reload failover-agent");
    assert!(ok, "systemctl reload failover-agent: {out}");
    c.wait("journalctl -u failover-agent | grep -q 'SIGHUP: configuration unchanged'");

    // An upgrade restarts the agent; the pinned datapath stays meanwhile.
    let (ok, out) = c.sh(INSTALL);
    assert!(ok, "the upgrade: {out}");
    c.wait("systemctl is-active failover-agent");
    assert_ne!(c.main_pid(), pid, "the upgrade did not restart the agent");
    c.wait("failover-agent status");

    // Remove: stopped, and the datapath stays attached (its pins).
    let (ok, out) = c.sh("dpkg -r failover-agent");
    assert!(ok && out.contains("nothing detached"), "dpkg -r: {out}");
    let (_, state) = c.sh("systemctl is-active failover-agent");
    assert_ne!(state.trim(), "active", "dpkg -r left the agent running");
    let links = std::fs::read_dir(c.bpffs.0.join("failover-agent/links")).map_or(0, Iterator::count);
    assert!(links > 0, "dpkg -r detached the datapath");
    let (ok, out) = c.sh("dpkg -P failover-agent");
    assert!(ok && !c.bpffs.0.join("failover-agent").exists(), "dpkg -P left the pins: {out}");
    eprintln!("{test}: {:.0} s", started.elapsed().as_secs_f64());
}
