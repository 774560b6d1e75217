//! What IPAM reports for `weft status` and metrics.

use crate::PeerName;

use super::range::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub name: PeerName,
    /// Usable addresses the peer owns in our view of the ring.
    pub owned: u64,
    /// Of those, how many are free, as the owner last gossiped (exact for
    /// ourselves).
    pub free: u64,
    pub reachable: bool,
    pub tombstoned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamStatus {
    pub range: Range,
    /// A ring exists and this peer may allocate.
    pub ready: bool,
    /// The peers the ring was seeded with (empty before consensus).
    pub seeds: Vec<PeerName>,
    /// Every peer IPAM knows of (ring owners, gossiping peers, topology),
    /// by name.
    pub peers: Vec<PeerStatus>,
    /// Usable addresses in the range.
    pub total: u64,
    /// Owned but not free, summed over all owners.
    pub used: u64,
    pub free: u64,
    /// Usable addresses owned by peers we can't reach (including removed
    /// peers whose space no heir has taken over yet).
    pub unreachable: u64,
    pub local_allocations: usize,
    /// An allocation is waiting for consensus on the initial ring.
    pub awaiting_consensus: bool,
    /// We have asked a peer for space and not received it yet.
    pub awaiting_space: bool,
    pub conflicts: usize,
}
