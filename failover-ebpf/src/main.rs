//! The failover datapath, in the kernel.
//!
//! - `failover_xdp` (XDP, every uplink): counts valid probe replies from the
//!   uplink's gateway and consumes them; drops everything else arriving on an
//!   uplink that is not active in its group; passes the rest untouched.
//! - `failover_tc_egress` (TC egress, every uplink): lets the agent's probes
//!   (marked [`PROBE_MARK`]) leave where they were sent, and records where
//!   the kernel keeps each uplink's device; readdresses frames for any
//!   gateway of the group to the active gateway; moves unicast off the
//!   uplink the bridge's rules point at to the active one and drops
//!   broadcast on inactive uplinks.
//! - The fast rule (`failover_common::rule`), on every frame about to leave
//!   by the active uplink and every frame arriving on a standby: an active
//!   uplink whose carrier is lost (read from its `net_device`) or whose
//!   gateway is silent is left for the first allowed healthy uplink; the
//!   kernel writes the group's state and reports it on a ring buffer.
//!
//! Entry points are thin: the decisions are `failover_common`'s pure
//! functions, and every failure maps to an explicit fail-open action.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod datapath;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("failover-ebpf only builds for bpfel-unknown-none: run `cargo xtask build-ebpf`");
}
