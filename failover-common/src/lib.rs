//! Types shared by the failover eBPF datapath (kernel side) and the agent
//! (user side), and the pure frame logic both sides run.
//!
//! Map values are `#[repr(C)]`, `Copy`, have no implicit padding, and hold
//! addresses as byte arrays in network order; `tests` below pin their layout.
//! The classifier in [`frame`] is the one the XDP program runs in the kernel;
//! the host tests and the agent use the very same code.
#![no_std]

pub mod frame;
pub mod rule;
pub mod types;

pub use types::*;
