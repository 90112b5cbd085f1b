//! The failover datapath, in the kernel.
//!
//! - `failover_xdp` (XDP, every uplink): counts valid probe replies from the
//!   uplink's gateway and consumes them; drops everything else arriving on an
//!   uplink that is not active in its group; passes the rest untouched.
//! - `failover_tc_egress` (TC egress, every uplink): lets the agent's probes
//!   (marked [`PROBE_MARK`]) leave where they were sent; readdresses frames
//!   for any gateway of the group to the active gateway; moves unicast off an
//!   inactive uplink to the active one and drops broadcast there.
//!
//! Entry points are thin: the decisions are `failover_common::frame`'s pure
//! functions, and every failure maps to an explicit fail-open action.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod datapath;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("failover-ebpf only builds for bpfel-unknown-none: run `cargo xtask build-ebpf`");
}
