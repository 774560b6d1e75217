//! The state every peer replicates through gossip: peers' own entries,
//! tombstones and the ring. Merging is a join (per-key maximum), so views
//! converge whatever order and however often gossip arrives.

use std::collections::{BTreeMap, BTreeSet};

use crate::PeerName;

use super::conflict::{self, Conflict};
use super::peer_state::PeerState;
use super::range::Range;
use super::ring::{Ring, RingError};

/// Most peer entries held (and sent); later ones are ignored, as in
/// topology gossip, so a full state always fits in one message.
pub const MAX_PEERS: usize = 1024;
pub const MAX_TOMBSTONES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shared {
    pub range: Range,
    pub peers: BTreeMap<PeerName, PeerState>,
    /// Peers removed with `rmpeer`. Never removed, so a removal can't be
    /// undone by stale gossip.
    pub tombstones: BTreeSet<PeerName>,
    /// None until consensus (or gossip from a peer that has one).
    pub ring: Option<Ring>,
}

impl Shared {
    pub fn new(range: Range) -> Shared {
        Shared { range, peers: BTreeMap::new(), tombstones: BTreeSet::new(), ring: None }
    }

    pub fn is_tombstoned(&self, peer: &PeerName) -> bool {
        self.tombstones.contains(peer)
    }

    /// Folds in another view of the same range; returns whether ours
    /// changed. A view whose ring was seeded differently is not merged at
    /// all (its tombstones and entries belong to another group) and is
    /// reported instead. Fails, changing nothing, only if the merged ring
    /// would exceed its size cap.
    pub fn merge(&mut self, other: &Shared, local: PeerName, conflicts: &mut Vec<Conflict>) -> Result<bool, RingError> {
        let mut changed = false;
        match (&mut self.ring, &other.ring) {
            (Some(ours), Some(theirs)) if ours.seeds() != theirs.seeds() => {
                let c = Conflict::DifferentSeeds { ours: ours.seeds().to_vec(), theirs: theirs.seeds().to_vec() };
                conflict::record(conflicts, c);
                return Ok(false);
            }
            // The only fallible step goes first, so failure leaves us as
            // we were.
            (Some(ours), Some(theirs)) => changed |= ours.merge(theirs, local, conflicts)?,
            (None, Some(theirs)) => {
                self.ring = Some(theirs.clone());
                changed = true;
            }
            (_, None) => {}
        }
        for name in &other.tombstones {
            if self.tombstones.len() < MAX_TOMBSTONES {
                changed |= self.tombstones.insert(*name);
            }
        }
        for (name, state) in &other.peers {
            if *name == local {
                changed |= self.peers.entry(local).or_default().absorb_own(state);
                continue;
            }
            let room = self.peers.len() < MAX_PEERS;
            match self.peers.get_mut(name) {
                Some(held) if state.supersedes(held) => {
                    *held = state.clone();
                    changed = true;
                }
                Some(_) => {}
                None if room => {
                    self.peers.insert(*name, state.clone());
                    changed = true;
                }
                None => {}
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ipam::paxos::{AcceptorState, Round};
    use crate::ipam::peer_state::{Ack, SpaceRequest};
    use crate::ipam::ring::tests::{arb_ring, name, small_range};
    use proptest::prelude::*;

    pub fn arb_peer_state() -> impl Strategy<Value = PeerState> {
        let acks = proptest::collection::btree_map((1u8..6).prop_map(name), 0u64..3, 0..3)
            .prop_map(|m| m.into_iter().map(|(peer, digest)| Ack { peer, digest }).collect());
        (0u64..4, 0u32..3, 0u8..4, proptest::option::of((0u64..3, 1u8..5)), acks).prop_map(
            |(version, number, p, req, acks)| PeerState {
                version,
                paxos: AcceptorState { promised: Round { number, proposer: name(p) }, accepted: None },
                request: req.map(|(seq, d)| SpaceRequest { seq, donor: name(d) }),
                acks,
            },
        )
    }

    pub fn arb_shared() -> impl Strategy<Value = Shared> {
        (
            proptest::collection::btree_map((1u8..6).prop_map(name), arb_peer_state(), 0..4),
            proptest::collection::btree_set((1u8..6).prop_map(name), 0..3),
            proptest::option::of(arb_ring()),
        )
            .prop_map(|(peers, tombstones, ring)| Shared { range: small_range(), peers, tombstones, ring })
    }

    /// Outside `arb_shared`'s names, so its merges are pure joins.
    const OBSERVER: PeerName = PeerName::from_bytes([2, 0, 0, 0, 9, 9]);

    fn merged(a: &Shared, b: &Shared) -> Shared {
        let mut out = a.clone();
        out.merge(b, OBSERVER, &mut Vec::new()).unwrap();
        out
    }

    proptest! {
        #[test]
        fn merge_is_order_independent_and_idempotent(a in arb_shared(), b in arb_shared(), c in arb_shared()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
        }
    }

    #[test]
    fn differently_seeded_rings_are_reported_not_merged() {
        let mut a = Shared::new(small_range());
        a.ring = Some(Ring::seeded(small_range(), &[name(1)]).unwrap());
        let mut b = Shared::new(small_range());
        b.ring = Some(Ring::seeded(small_range(), &[name(2)]).unwrap());
        b.tombstones.insert(name(1));
        let before = a.clone();
        let mut conflicts = Vec::new();
        assert_eq!(a.merge(&b, name(1), &mut conflicts), Ok(false));
        assert_eq!(a, before);
        assert_eq!(conflicts, vec![Conflict::DifferentSeeds { ours: vec![name(1)], theirs: vec![name(2)] }]);
    }

    #[test]
    fn own_entry_echo_is_outbid() {
        let mut a = Shared::new(small_range());
        a.peers.insert(name(1), PeerState { version: 2, ..PeerState::EMPTY });
        let mut b = Shared::new(small_range());
        b.peers.insert(name(1), PeerState { version: 5, ..PeerState::EMPTY });
        assert_eq!(a.merge(&b, name(1), &mut Vec::new()), Ok(true));
        assert_eq!(a.peers[&name(1)].version, 6);
    }
}
