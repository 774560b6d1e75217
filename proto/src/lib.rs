//! weft's wire formats and protocol state machines.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock:
//! every entry point that cares about time takes `now: Instant`, so the
//! whole protocol can be driven deterministically in tests and fuzzers.
//! The router crate owns all I/O and feeds bytes and time in here.

pub mod backoff;
pub mod codec;
pub mod control;
pub mod crypto;
pub mod ethernet;
pub mod fastdp;
pub mod icmp;
pub mod ipam;
pub mod mac_table;
pub mod offload;
pub mod peer_name;
pub mod reclaim;
pub mod sleeve;
pub mod topology;

pub use peer_name::{PeerName, PeerNameParseError};
