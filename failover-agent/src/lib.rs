//! failover-agent: host-side active/standby gateway failover for Open vSwitch
//! hypervisors. See the README for what it does and how to run it.
//!
//! Rooms, each touching only its own part of the world:
//! - [`failover`]: the pure decision core (events and time in, actions out);
//! - [`agent`]: the driver, the only user of tokio, wiring the rest together;
//! - [`datapath`]: the eBPF programs (aya): attach, pin, flip, read counters;
//! - [`link`]: link state from rtnetlink;
//! - [`probe`]: probe frames (pure) and the raw socket that sends them;
//! - [`config`], [`state`], [`control`]: the file, the persisted decisions,
//!   the control socket; [`ids`]: the names of groups in the datapath and OVS.

pub mod agent;
pub mod config;
pub mod control;
pub mod datapath;
pub mod failover;
pub mod ids;
pub mod link;
pub mod lock;
pub mod metrics;
pub mod ovs;
pub mod probe;
pub mod state;
pub mod timer;
