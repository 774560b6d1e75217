//! The kernel-VXLAN fast path ("fastdp"): which path each connection's pod
//! frames take, the heartbeats that prove it, and which kernel forwarding
//! entries that implies. Pure: the router owns the VXLAN device, sends and
//! receives the heartbeats, and applies the planned entries over netlink.

pub mod fdb;
pub mod heartbeat;
pub mod path;

pub use fdb::{desired_entries, plan, FdbEntry, FdbPlan};
pub use heartbeat::{FastDpHeartbeat, HeartbeatError};
pub use path::{Path, PathConfig, PathEvent, PathSelector, SleeveReason};
