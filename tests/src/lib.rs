//! Helpers for the privileged end-to-end tests: throwaway network
//! namespaces, veth links, bpffs pin directories, and raw packet sockets
//! with receive timestamps.
//!
//! Everything a test creates carries the test process's pid in its name
//! (`fa-t<pid>-<n>`), is removed when its guard drops (also when the test
//! fails), and anything left by a process that no longer exists (a crashed
//! or killed run) is removed by the next run.

pub mod agent_lab;
pub mod chaos;
pub mod lab;
pub mod net;
pub mod ovs_lab;
pub mod packet;
pub mod prom;
pub mod tagger;
pub mod tap;
pub mod udp;

use std::sync::atomic::{AtomicU32, Ordering};

pub use net::{Netns, PacketSocket, PinDir, ip};

/// Whether privileged tests can run here. When they cannot, says so plainly
/// and returns false (the caller returns early); under CI (`CI=true`) a test
/// that cannot run is a failure, never a skip.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true but this runner is not root; privileged tests must run under CI"
    );
    eprintln!("SKIPPED {test}: needs root (CAP_BPF, CAP_NET_ADMIN) to create namespaces and load eBPF");
    false
}

/// Whether the tool `tool` (run with `--version`) is installed. When it is
/// not, says so and returns false (the caller returns early); under CI
/// (`CI=true`) a missing tool is a failure, never a skip: `./dev` installs
/// every tool the tests use.
pub fn have(tool: &str, test: &str) -> bool {
    if std::process::Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {tool} is not installed (./dev installs it)");
    eprintln!("SKIPPED {test}: {tool} is not installed (./dev setup installs it)");
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique on this machine while this process lives: `fa-t<pid>-<n>`.
pub fn unique_name(kind: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("fa-t{}-{kind}{n}", std::process::id())
}

/// The pid a [`unique_name`] was made by.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("fa-t")?.split('-').next()?.parse().ok()
}

/// Whether a process with this pid exists (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
        }
        Err(_) => false,
    }
}

/// CPU time (user + system, in clock ticks) a process has used so far.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_carry_the_pid_and_differ() {
        let a = unique_name("h");
        let b = unique_name("h");
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
        assert!(a.len() <= 15 + 8, "{a}");
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not_ours() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
