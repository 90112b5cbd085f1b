//! Persisting the agent's decisions and alarms off the latency path: the
//! driver hands snapshots to a writer thread, which writes the newest one
//! (atomically, with fsync: [`crate::state::save`]). Nothing between a
//! fault and the map update waits for a disk.

use std::{path::PathBuf, sync::mpsc, thread::JoinHandle};

use tracing::error;

use crate::state::{self, State};

/// The writer thread and the way to it.
#[derive(Debug)]
pub struct Persister {
    tx: Option<mpsc::Sender<State>>,
    thread: Option<JoinHandle<()>>,
}

impl Persister {
    /// Starts the writer for `state_dir`.
    pub fn start(state_dir: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel::<State>();
        let thread = std::thread::Builder::new()
            .name("persist".into())
            .spawn(move || {
                while let Ok(mut state) = rx.recv() {
                    // Only the newest snapshot matters.
                    while let Ok(newer) = rx.try_recv() {
                        state = newer;
                    }
                    if let Err(e) = state::save(&state_dir, &state) {
                        error!(error = %e, "persisting the state");
                    }
                }
            })
            .ok();
        Self { tx: Some(tx), thread }
    }

    /// Hands a snapshot to the writer (never blocks).
    pub fn save(&self, state: State) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(state);
        }
    }

    /// Writes what is pending and stops the writer.
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_snapshot_is_on_disk_after_finish() {
        let dir = std::env::temp_dir().join(format!("fa-persist-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut p = Persister::start(dir.clone());
        for i in 0..20 {
            let mut s = State::default();
            s.active.insert("ext".into(), format!("u{i}"));
            p.save(s);
        }
        p.finish();
        let saved = state::load(&dir).unwrap().unwrap();
        assert_eq!(saved.active.get("ext").map(String::as_str), Some("u19"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
