//! failover-agent: host-side active/standby gateway failover for Open vSwitch
//! hypervisors. See the README for what it does and how to run it.
//!
//! Rooms, each touching only its own part of the world:
//! - [`datapath`]: the eBPF programs (aya): attach, pin, flip, read counters.

pub mod config;
pub mod datapath;
pub mod failover;
