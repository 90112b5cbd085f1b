//! The agent's persisted state: each group's active uplink and the open
//! alarms, in `<state_dir>/state.json`, written atomically (temporary file,
//! fsync, rename, fsync of the directory), by name so that a reordered
//! configuration still finds its uplinks.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file name inside `state_dir`.
pub const STATE_FILE: &str = "state.json";
const VERSION: u32 = 1;

/// What survives a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Group name -> its active uplink's name.
    pub active: BTreeMap<String, String>,
    pub alarms: Vec<PersistedAlarm>,
    /// The bridges the agent kept OpenFlow rules on: a bridge no longer
    /// configured gets its rules removed at the next start.
    #[serde(default)]
    pub bridges: Vec<String>,
}

/// An open alarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedAlarm {
    pub group: String,
    pub uplink: Option<String>,
    pub kind: crate::control::AlarmCode,
    /// When it was raised (Unix time, milliseconds).
    pub since_unix_ms: u64,
}

/// Errors reading or writing the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a state file of this agent: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Reads the state; `Ok(None)` when there is none yet.
pub fn load(state_dir: &Path) -> Result<Option<State>, StateError> {
    let path = state_dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let state: State =
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt { path: path.clone(), message: e.to_string() })?;
    if state.version != VERSION {
        return Err(StateError::Corrupt {
            path,
            message: format!("version {} (this agent writes {VERSION})", state.version),
        });
    }
    Ok(Some(state))
}

/// Writes the state atomically: a reader (or a restart after a crash at any
/// moment) sees the old file or the new one, whole.
pub fn save(state_dir: &Path, state: &State) -> Result<(), StateError> {
    fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let path = state_dir.join(STATE_FILE);
    let tmp = state_dir.join(format!(".{STATE_FILE}.tmp"));
    let mut body = serde_json::to_vec_pretty(&State { version: VERSION, ..state.clone() })
        .map_err(|e| StateError::Corrupt { path: path.clone(), message: e.to_string() })?;
    body.push(b'\n');
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&body).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(state_dir).and_then(|d| d.sync_all()).map_err(io(state_dir))?;
    Ok(())
}

/// Removes the state file (uninstall).
pub fn remove(state_dir: &Path) -> Result<(), StateError> {
    let path = state_dir.join(STATE_FILE);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fa-state-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tmpdir("rt");
        assert_eq!(load(&dir).unwrap(), None);
        let state = State {
            version: VERSION,
            active: [("ext".to_string(), "standby".to_string())].into(),
            alarms: vec![PersistedAlarm {
                group: "ext".into(),
                uplink: Some("primary".into()),
                kind: crate::control::AlarmCode::Nic,
                since_unix_ms: 1_700_000_000_000,
            }],
            bridges: vec!["br-ext".into()],
        };
        save(&dir, &state).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(state));
        assert!(!dir.join(".state.json.tmp").exists(), "no temporary file left");
        remove(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let dir = tmpdir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), "{\"version\": 1, \"active\": 7}").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("not a state file"), "{e}");
        fs::write(dir.join(STATE_FILE), "{\"version\": 9, \"active\": {}, \"alarms\": []}").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
