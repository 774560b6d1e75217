//! Inconsistencies between peers' views that IPAM detects but cannot
//! repair on its own. Each one means the "never the same address twice"
//! guarantee may already be broken (or about to be), so they are kept for
//! the operator instead of being merged away silently.

use std::net::Ipv4Addr;

use crate::PeerName;

/// Oldest first; each distinct conflict is kept once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// Two rings that were seeded independently met (isolated groups that
    /// each reached consensus, e.g. because `consensus_count` was too
    /// small). Ours is kept and theirs ignored; both groups may have handed
    /// out the same addresses.
    #[error("met a ring seeded independently of ours: theirs with {theirs:?}, ours with {ours:?}")]
    DifferentSeeds { ours: Vec<PeerName>, theirs: Vec<PeerName> },
    /// Two different owners wrote the same version of one ring entry.
    #[error("ring entry at {token} version {version} is claimed by both {first} and {second}")]
    InconsistentEntry { token: Ipv4Addr, version: u32, first: PeerName, second: PeerName },
    /// Another peer changed or split space that this peer owned: only an
    /// entry's owner may do that.
    #[error("peer {by} claims space at {token} that this peer owned")]
    SpaceTaken { token: Ipv4Addr, by: PeerName },
    /// Someone ran `rmpeer` on this peer while it was alive (or it came
    /// back): it no longer allocates.
    #[error("this peer was removed with rmpeer; it will not allocate addresses")]
    SelfTombstoned,
    /// A peer removed with `rmpeer` is reachable: still (or again) alive,
    /// and its space may have been reassigned while it still uses it.
    #[error("peer {peer} was removed with rmpeer but is reachable")]
    TombstonedPeerAlive { peer: PeerName },
    /// The ring we received says this peer had `in_use` addresses
    /// allocated that it has no record of: it restarted without its
    /// persisted state. Those addresses may be handed out again.
    #[error("this peer lost its persisted state: the ring says {in_use} of its addresses were in use")]
    LostState { in_use: u64 },
    /// One of our allocations lies in space that, by the merged ring, is
    /// no longer ours.
    #[error("allocated address {address} lies in space owned by {owner:?}")]
    AllocationOutsideOwnedSpace { address: Ipv4Addr, owner: Option<PeerName> },
}

/// Keeps the log bounded against a flood of distinct conflicts.
pub const MAX_CONFLICTS: usize = 100;

/// Appends `conflict` unless it is already recorded or the log is full;
/// returns whether it was new.
pub(crate) fn record(log: &mut Vec<Conflict>, conflict: Conflict) -> bool {
    if log.len() >= MAX_CONFLICTS || log.contains(&conflict) {
        return false;
    }
    log.push(conflict);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_conflict_once_and_stays_bounded() {
        let mut log = Vec::new();
        assert!(record(&mut log, Conflict::SelfTombstoned));
        assert!(!record(&mut log, Conflict::SelfTombstoned));
        for i in 0..(MAX_CONFLICTS as u32 * 2) {
            let address = Ipv4Addr::from(i);
            record(&mut log, Conflict::AllocationOutsideOwnedSpace { address, owner: None });
        }
        assert_eq!(log.len(), MAX_CONFLICTS);
        assert_eq!(log[0], Conflict::SelfTombstoned);
    }
}
