//! Level-triggered reconciliation: for each part the agent keeps in step
//! with its decisions, the desired state is computed from the core's view
//! (a pure plan), compared with what is there, and written only where it
//! differs. One change is one write, however many actions led to it; a map
//! or a rule changed by hand is put right on the next comparison.
//!
//! - [`datapath`]: each group's state in the kernel (the active uplink, the
//!   fast rule's policy, the gateway MACs) and each uplink's entry;
//!   attaching, re-attaching, and removing what is no longer configured.
//! - [`ovs`]: each group's OpenFlow rules on its bridge.

pub mod datapath;
pub mod ovs;
