//! Taking over the space of a peer that is gone for good. `rmpeer`
//! tombstones the peer; every entry it owned then goes to the owner of the
//! nearest preceding entry whose owner is not tombstoned, and only that
//! heir writes the takeover. Running `rmpeer` on several peers at once is
//! therefore safe: they all add the same tombstone, and each entry still
//! has exactly one writer.
//!
//! One more race needs closing: the removed peer's last writes (say, a
//! donation) may still be travelling when its space is reassigned, and an
//! heir that hasn't seen them would take over space that was given away.
//! So every peer publishes a digest of the entries each removed peer
//! still owns in its view (`Ack`), and an heir takes over only once every
//! other peer that isn't removed reports the digest it sees itself, both
//! for the entry's owner and for every removed peer between the heir and
//! the entry (earlier heirs, which may have taken it over before they in
//! turn died). A peer that is unreachable (or gone without being removed)
//! holds takeovers back until it is reachable again (or removed too).
//!
//! What remains is a removed peer's write that no surviving peer had
//! received when the removal reached it: run `rmpeer` only for peers that
//! are gone for good, not for ones that died a moment ago.

use std::collections::{BTreeMap, BTreeSet};

use crate::PeerName;

use super::peer_state::{Ack, MAX_ACKS};
use super::ring::Ring;
use super::shared::Shared;

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

/// Digest of the entries `peer` owns in `ring` (token and version, in
/// token order; FNV-1a), or None if it owns none.
pub(crate) fn digest(ring: &Ring, peer: PeerName) -> Option<u64> {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = None;
    for (token, entry) in ring.entries().filter(|(_, e)| e.owner == peer) {
        let mut h = hash.unwrap_or(OFFSET);
        for byte in token.to_be_bytes().into_iter().chain(entry.version.to_be_bytes()) {
            h = (h ^ u64::from(byte)).wrapping_mul(PRIME);
        }
        hash = Some(h);
    }
    hash
}

/// What a peer with this view publishes: one ack per removed peer that
/// still owns space in it.
pub(crate) fn acks(ring: &Ring, tombstones: &BTreeSet<PeerName>) -> Vec<Ack> {
    tombstones.iter().filter_map(|&peer| Some(Ack { peer, digest: digest(ring, peer)? })).take(MAX_ACKS).collect()
}

/// The spans `local` inherits now: entries of removed peers whose heir it
/// is, once every other peer has confirmed seeing what `local` sees.
pub(crate) fn inherited(shared: &Shared, local: PeerName) -> Vec<(u32, u64)> {
    let Some(ring) = &shared.ring else { return Vec::new() };
    let dead = |p: &PeerName| shared.tombstones.contains(p);
    let mut confirmed: BTreeMap<PeerName, bool> = BTreeMap::new();
    let mut is_confirmed = |removed: PeerName| {
        *confirmed.entry(removed).or_insert_with(|| {
            let Some(digest) = digest(ring, removed) else { return false };
            shared.peers.iter().filter(|(name, _)| **name != local && !dead(name)).all(|(_, state)| {
                state.acks.binary_search_by_key(&removed, |a| a.peer).is_ok_and(|i| state.acks[i].digest == digest)
            })
        })
    };
    // The heir is the owner of the address just before the run of removed
    // peers' entries, so peers that agree on who is removed agree on it.
    let mut spans = Vec::new();
    for span in ring.spans().filter(|s| dead(&s.entry.owner)) {
        let mut walked = vec![span.entry.owner];
        let mut heir = None;
        for entry in ring.predecessors(span.start) {
            if !dead(&entry.owner) {
                heir = Some(entry.owner);
                break;
            }
            walked.push(entry.owner);
        }
        if heir == Some(local) && walked.into_iter().all(&mut is_confirmed) {
            spans.push((span.start, span.end));
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::peer_state::PeerState;
    use crate::ipam::ring::tests::{name, small_range};

    fn shared(ring: Ring, tombstones: &[PeerName]) -> Shared {
        let mut s = Shared::new(small_range());
        s.ring = Some(ring);
        s.tombstones = tombstones.iter().copied().collect();
        s
    }

    #[test]
    fn heirs_are_nearest_live_predecessors_wrapping() {
        let ring = Ring::seeded(small_range(), &[name(1), name(2), name(3), name(4)]).unwrap();
        let first = small_range().first();
        let s = shared(ring.clone(), &[name(2), name(3)]);
        assert_eq!(
            inherited(&s, name(1)),
            vec![(first + 64, u64::from(first) + 128), (first + 128, u64::from(first) + 192)]
        );
        let s = shared(ring.clone(), &[name(1)]);
        assert_eq!(inherited(&s, name(4)), vec![(first, u64::from(first) + 64)]);
        let s = shared(ring, &[name(1), name(2), name(3), name(4)]);
        assert_eq!(inherited(&s, name(1)), vec![]);
    }

    #[test]
    fn heirs_split_a_dead_peers_entries() {
        let mut ring = Ring::seeded(small_range(), &[name(1), name(2), name(3), name(4)]).unwrap();
        let first = small_range().first();
        // name(2) also owns a piece after name(3)'s.
        assert!(ring.grant(name(3), first + 160, u64::from(first) + 192, name(2)));
        let s = shared(ring, &[name(2)]);
        assert_eq!(inherited(&s, name(1)), vec![(first + 64, u64::from(first) + 128)]);
        assert_eq!(inherited(&s, name(3)), vec![(first + 160, u64::from(first) + 192)]);
        assert_eq!(inherited(&s, name(4)), vec![]);
        let alive = shared(s.ring.clone().unwrap(), &[]);
        assert_eq!(inherited(&alive, name(1)), vec![]);
    }

    #[test]
    fn takeover_waits_for_every_live_peer_to_confirm() {
        let ring = Ring::seeded(small_range(), &[name(1), name(2), name(3)]).unwrap();
        let mut s = shared(ring.clone(), &[name(2)]);
        let digest = digest(&ring, name(2)).unwrap();
        assert_eq!(acks(&ring, &s.tombstones), vec![Ack { peer: name(2), digest }]);
        s.peers.insert(name(1), PeerState::EMPTY);
        s.peers.insert(name(2), PeerState::EMPTY);
        s.peers.insert(name(3), PeerState::EMPTY);
        assert_eq!(inherited(&s, name(1)), vec![], "name(3) hasn't confirmed");
        let stale = Ack { peer: name(2), digest: digest ^ 1 };
        s.peers.insert(name(3), PeerState { acks: vec![stale], ..PeerState::EMPTY });
        assert_eq!(inherited(&s, name(1)), vec![], "name(3) saw something else");
        s.peers.insert(name(3), PeerState { acks: vec![Ack { peer: name(2), digest }], ..PeerState::EMPTY });
        assert_eq!(inherited(&s, name(1)).len(), 1, "the removed peer itself need not confirm");
    }

    #[test]
    fn digest_tracks_the_removed_peers_writes() {
        let mut ring = Ring::seeded(small_range(), &[name(1), name(2)]).unwrap();
        let before = digest(&ring, name(2));
        assert!(ring.set_free(name(2), small_range().first() + 128, 5));
        assert_ne!(digest(&ring, name(2)), before);
        assert_eq!(digest(&ring, name(7)), None);
    }
}
