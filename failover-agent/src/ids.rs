//! The names of things as the datapath and Open vSwitch know them: hashes
//! of the configuration's names, never positions (see
//! [`crate::agent::topology`] for how they are used). A room of its own,
//! below the configuration, so that validating a file can check them.

/// FNV-1a (32 bits) over `parts`, each followed by a 0 byte.
pub fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for &b in part.iter().chain(&[0u8]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// A group's identity: FNV-1a of its name (never 0). The key of its state
/// in the datapath and the low 32 bits of its OVS cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

impl GroupId {
    /// The id of the group named `name`.
    pub fn of(name: &str) -> Self {
        Self(fnv1a(&[b"group", name.as_bytes()]).max(1))
    }
}
