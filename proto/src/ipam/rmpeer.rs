//! Taking over the space of a peer that is gone for good. `rmpeer`
//! tombstones the peer; every entry it owned then goes to the owner of the
//! nearest preceding entry whose owner is not tombstoned, and only that
//! heir writes the takeover. Running `rmpeer` on several peers at once is
//! therefore safe: they all add the same tombstone, and each entry still
//! has exactly one writer.

use std::collections::BTreeMap;

use crate::PeerName;

use super::ring::Ring;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RmpeerError {
    #[error("a peer cannot remove itself")]
    IsSelf,
    #[error("peer {0} is unknown to IPAM")]
    UnknownPeer(PeerName),
    #[error("peer {0} is reachable: only remove peers that are gone for good")]
    Reachable(PeerName),
    #[error("too many removed peers (limit {max})")]
    TooManyTombstones { max: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmpeerOutcome {
    /// False if the peer had already been removed (by us or anyone).
    pub newly_tombstoned: bool,
    /// Usable addresses this peer inherited right away; the rest of the
    /// removed peer's space goes to other heirs as they learn of it.
    pub addresses_taken_over: u64,
}

/// The spans `local` inherits from tombstoned owners in `ring`.
pub(crate) fn inherited(ring: &Ring, tombstones: &BTreeMap<PeerName, u64>, local: PeerName) -> Vec<(u32, u64)> {
    let dead = |p: &PeerName| tombstones.contains_key(p);
    ring.spans()
        .filter(|s| dead(&s.entry.owner) && ring.heir_of(s.start, dead) == Some(local))
        .map(|s| (s.start, s.end))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::ring::tests::{name, small_range};

    #[test]
    fn heirs_split_a_dead_peers_entries() {
        let mut ring = Ring::seeded(small_range(), &[name(1), name(2), name(3), name(4)]).unwrap();
        let first = small_range().first();
        // name(2) also owns a piece after name(3)'s.
        assert!(ring.grant(name(3), first + 160, u64::from(first) + 192, name(2)));
        let tombstones = BTreeMap::from([(name(2), 0)]);
        assert_eq!(inherited(&ring, &tombstones, name(1)), vec![(first + 64, u64::from(first) + 128)]);
        assert_eq!(inherited(&ring, &tombstones, name(3)), vec![(first + 160, u64::from(first) + 192)]);
        assert_eq!(inherited(&ring, &tombstones, name(4)), vec![]);
        assert_eq!(inherited(&ring, &BTreeMap::new(), name(1)), vec![]);
    }
}
