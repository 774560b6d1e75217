//! What each peer publishes about itself in IPAM gossip: its Paxos
//! acceptor state (until a ring exists), its request for space, and what
//! it has seen of removed peers' space. Only the peer itself changes its
//! entry, bumping the version each time.

use crate::PeerName;

use super::paxos::AcceptorState;

/// "I have run out of addresses; `donor`, please give me some." A new
/// `seq` is a new request: donors serve each one at most once. It is the
/// entry version that made the request, so it grows even across requests
/// that were withdrawn in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpaceRequest {
    pub seq: u64,
    pub donor: PeerName,
}

/// "Of removed peer `peer`'s space I have seen exactly this": a digest of
/// the ring entries it still owns in my view. Heirs wait until every peer
/// confirms the same, so that no write the removed peer made before it
/// died is still travelling when its space is reassigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ack {
    pub peer: PeerName,
    pub digest: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerState {
    pub version: u64,
    pub paxos: AcceptorState,
    pub request: Option<SpaceRequest>,
    /// Ascending by peer, at most `MAX_ACKS`.
    pub acks: Vec<Ack>,
}

/// Removed peers whose space is awaiting takeover that one entry speaks
/// for; more wait their turn (in name order).
pub const MAX_ACKS: usize = 64;

impl PeerState {
    pub const EMPTY: PeerState =
        PeerState { version: 0, paxos: AcceptorState::INITIAL, request: None, acks: Vec::new() };

    /// Whether `self` should replace `held` in a merge: newer version, or
    /// (only from a buggy peer or one that lost its state) the same
    /// version with greater content, so that the choice is order-free.
    pub fn supersedes(&self, held: &PeerState) -> bool {
        // The derived order compares the version first.
        self > held
    }

    /// Folds in our own entry as gossip brought it back: a previous
    /// incarnation's (if our state was lost) or a forgery. Promises in it
    /// must be honoured and our version must end up above it, so that our
    /// entry wins everywhere. Returns whether we changed.
    pub(crate) fn absorb_own(&mut self, echoed: &PeerState) -> bool {
        if echoed.version < self.version || echoed == self {
            return false;
        }
        self.paxos.absorb(&echoed.paxos);
        self.request = self.request.max(echoed.request);
        self.version = echoed.version.saturating_add(1);
        true
    }
}

impl Default for PeerState {
    fn default() -> Self {
        PeerState::EMPTY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::paxos::Round;

    fn name(n: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn newer_version_supersedes_and_ties_are_ordered() {
        let a = PeerState { version: 2, ..PeerState::EMPTY };
        let b = PeerState { version: 1, request: Some(SpaceRequest { seq: 9, donor: name(1) }), ..PeerState::EMPTY };
        assert!(a.supersedes(&b));
        assert!(!b.supersedes(&a));
        let c = PeerState { version: 2, request: Some(SpaceRequest { seq: 1, donor: name(1) }), ..PeerState::EMPTY };
        assert!(c.supersedes(&a) != a.supersedes(&c));
        assert!(!a.supersedes(&a));
    }

    #[test]
    fn absorbing_an_echo_of_ourselves_outbids_it() {
        let promised = Round { number: 4, proposer: name(2) };
        let echoed = PeerState {
            version: 7,
            paxos: AcceptorState { promised, accepted: None },
            request: Some(SpaceRequest { seq: 3, donor: name(2) }),
            acks: Vec::new(),
        };
        let mut own = PeerState { version: 1, ..PeerState::EMPTY };
        assert!(own.absorb_own(&echoed));
        assert_eq!(own.version, 8);
        assert_eq!(own.paxos.promised, promised);
        assert_eq!(own.request, echoed.request);
        assert!(!own.absorb_own(&echoed), "older than us now");
        let same = own.clone();
        assert!(!own.absorb_own(&same));
    }
}
