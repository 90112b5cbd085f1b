//! The single-instance lock: `failover-agent run` holds an exclusive
//! `flock` on `failover-agent.lock` in its runtime directory (the control
//! socket's directory) for as long as it runs, and writes its pid and its
//! pin directory into it. A second `run`, and `uninstall`, find it held and
//! name the pid.
//!
//! `flock` through `nix` (already in the build, with its `fs` feature, by
//! rtnetlink): a safe, maintained wrapper that releases the lock on drop;
//! std's `File::try_lock` would need Rust 1.89, above the workspace's
//! `rust-version`. The file is never removed: removing a lock file races
//! with a process that opened it just before (two holders of two inodes).

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, RawFd},
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicI32, Ordering},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, FdFlag, Flock, FlockArg, fcntl},
};

/// The lock file's name, in the control socket's directory.
pub const LOCK_FILE: &str = "failover-agent.lock";
/// Carries the held lock's descriptor across the agent's own `exec` (a
/// reload), so that no other `run` can take the lock in between.
pub const LOCK_FD_ENV: &str = "FAILOVER_AGENT_LOCK_FD";

/// The descriptor of the lock this process holds (-1: none).
static HELD: AtomicI32 = AtomicI32::new(-1);

/// Errors taking or reading the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("failover-agent is already running ({}, lock {})", pid_text(*.pid), .path.display())]
    Held { pid: Option<u32>, path: PathBuf },
    #[error("lock {}: {what}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".into(), |p| format!("pid {p}"))
}

/// Where the lock of the agent with this control socket is.
pub fn path_for(control_socket: &Path) -> PathBuf {
    control_socket.parent().unwrap_or_else(|| Path::new("/")).join(LOCK_FILE)
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    file: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = HELD.compare_exchange(self.file.as_raw_fd(), -1, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Takes the lock next to `control_socket` without waiting, and records
/// this process's pid and `pin_dir` in it. Creates the directory if need
/// be, and nothing else. [`LockError::Held`] names the holder's pid.
pub fn acquire(control_socket: &Path, pin_dir: &Path) -> Result<InstanceLock, LockError> {
    let path = path_for(control_socket);
    let io = |what| {
        let path = path.clone();
        move |source| LockError::Io { path, what, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
    }
    let file = match inherited(&path) {
        Some(file) => file,
        // Never truncated on open: the holder's pid is in it.
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io("opening"))?,
    };
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        Err((_, Errno::EWOULDBLOCK)) => return Err(LockError::Held { pid: holder(&path), path }),
        Err((_, e)) => return Err(io("flock")(std::io::Error::from(e))),
    };
    // The descriptor stays out of children (ovs-ofctl) but for a reload's exec.
    fcntl(&*file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| io("setting FD_CLOEXEC")(e.into()))?;
    let text = format!("{}\n{}\n", std::process::id(), pin_dir.display());
    file.set_len(0).map_err(io("writing the pid"))?;
    file.rewind().map_err(io("writing the pid"))?;
    file.write_all(text.as_bytes()).map_err(io("writing the pid"))?;
    HELD.store(file.as_raw_fd(), Ordering::SeqCst);
    Ok(InstanceLock { file, path })
}

/// The lock descriptor a previous image of this process handed over
/// (see [`hand_over`]), if it is the lock file at `path`.
fn inherited(path: &Path) -> Option<File> {
    let fd: RawFd = std::env::var(LOCK_FD_ENV).ok()?.parse().ok()?;
    if fd <= 2 {
        return None;
    }
    // Open at all? (F_GETFD on a closed descriptor fails; nothing is changed.)
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor was left open for this image by `hand_over`
    // and nothing else in this process knows it; it is owned from here on.
    let file = unsafe { File::from_raw_fd(fd) };
    let (ours, theirs) = (file.metadata().ok()?, std::fs::metadata(path).ok()?);
    (ours.dev() == theirs.dev() && ours.ino() == theirs.ino()).then_some(file)
}

/// Lets the held lock pass to the image `cmd` executes in place of this
/// process (the agent's reload): the descriptor stays open across the
/// exec and its number goes in the environment.
pub fn hand_over(cmd: &mut std::process::Command) {
    let fd = HELD.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: clears FD_CLOEXEC on a descriptor this process owns (the lock).
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0 {
        cmd.env(LOCK_FD_ENV, fd.to_string());
    }
}

/// The pid of the process holding the lock at `path`: the one written in
/// it, else the one the kernel lists (`/proc/locks`) for its inode.
pub fn holder(path: &Path) -> Option<u32> {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    flock_holders(&locks).into_iter().find(|h| h.dev == meta.dev() && h.ino == meta.ino()).map(|h| h.pid)
}

/// An agent running with the pin directory `pin_dir`, other than this
/// process (an `uninstall` holding the lock): its pid and lock file. Found
/// from the kernel's list of `flock` holders and, for each, the lock file
/// it has open (whatever its runtime directory).
pub fn agent_using_pins(pin_dir: &Path) -> Option<(u32, PathBuf)> {
    holder_of_pins(pin_dir, Some(std::process::id()))
}

fn holder_of_pins(pin_dir: &Path, except: Option<u32>) -> Option<(u32, PathBuf)> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    for h in flock_holders(&locks) {
        if Some(h.pid) == except {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", h.pid)) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if target.file_name().is_none_or(|n| n != LOCK_FILE) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(fd.path()) else { continue };
            if meta.dev() != h.dev || meta.ino() != h.ino {
                continue;
            }
            let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
            if text.lines().nth(1).is_some_and(|p| Path::new(p) == pin_dir) {
                return Some((h.pid, target));
            }
        }
    }
    None
}

/// A `flock` held (not waited for), as `/proc/locks` lists it.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    pid: u32,
    dev: u64,
    ino: u64,
}

/// `1: FLOCK  ADVISORY  WRITE 4242 00:1a:12345 0 EOF`; waiters (`->`) skipped.
fn flock_holders(locks: &str) -> Vec<Held> {
    locks
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&"FLOCK") || f.get(3) != Some(&"WRITE") {
                return None;
            }
            let pid = f.get(4)?.parse().ok()?;
            let mut id = f.get(5)?.split(':');
            let major = u64::from_str_radix(id.next()?, 16).ok()?;
            let minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let ino = id.next()?.parse().ok()?;
            // glibc's makedev, as st_dev is encoded.
            let dev = ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12);
            Some(Held { pid, dev, ino })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        static N: AtomicI32 = AtomicI32::new(0);
        let d =
            std::env::temp_dir().join(format!("fa-lock-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let d = dir();
        let socket = d.join("run/control.sock");
        let first = acquire(&socket, Path::new("/sys/fs/bpf/x")).unwrap();
        assert_eq!(first.path(), d.join("run/failover-agent.lock"));
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text, format!("{}\n/sys/fs/bpf/x\n", std::process::id()));
        // flock conflicts between two open file descriptions, even in one process.
        let err = acquire(&socket, Path::new("/sys/fs/bpf/y")).unwrap_err();
        assert!(matches!(&err, LockError::Held { pid: Some(p), .. } if *p == std::process::id()), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("failover-agent is already running (pid {}, lock {})", std::process::id(), first.path().display())
        );
        assert_eq!(std::fs::read_to_string(first.path()).unwrap(), text, "the refused one wrote nothing");
        drop(first);
        let again = acquire(&socket, Path::new("/sys/fs/bpf/y")).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_kernels_list_of_locks_is_read_and_waiters_skipped() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:1a:12345 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 00:1a:12345 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 08:01:77 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 5 08:01:78 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 7 103:02:9 0 EOF\n";
        assert_eq!(
            flock_holders(locks),
            vec![Held { pid: 4242, dev: 0x1a, ino: 12345 }, Held { pid: 7, dev: (0x103 << 8) | 2, ino: 9 }]
        );
    }

    #[test]
    fn a_held_lock_is_found_by_its_pin_directory() {
        let d = dir();
        let pins = d.join("pins");
        let lock = acquire(&d.join("control.sock"), &pins).unwrap();
        let found = holder_of_pins(&pins, None);
        assert_eq!(found, Some((std::process::id(), lock.path().to_path_buf())));
        assert_eq!(holder_of_pins(&d.join("other"), None), None);
        assert_eq!(agent_using_pins(&pins), None, "this process (an uninstall holding the lock) is not counted");
        drop(lock);
        assert_eq!(holder_of_pins(&pins, None), None, "released");
        let _ = std::fs::remove_dir_all(&d);
    }
}
