//! Single-decree Paxos over gossip, deciding which peers the initial ring
//! is divided among (as Weave Net does).
//!
//! There are no Paxos messages: every peer publishes its acceptor state in
//! its own gossip entry, changes only that entry, and reads everyone
//! else's from the merged gossip. Starting round R means promising R
//! ourselves; others promise the highest round they see; once a quorum
//! shows a promise for our round we accept a value (the highest-round
//! value any of them accepted before, else our own), and acceptors that
//! promised R copy it. A value is decided once a quorum shows it accepted
//! in one round.
//!
//! Safety needs what classic Paxos needs: rounds unique to their proposer
//! (the proposer's name is part of the round), acceptors that never go
//! back on a promise (the state is persisted and gossiped monotonically),
//! and quorums that intersect (`consensus_count` at least half the number
//! of peers that take part).

use std::collections::BTreeMap;

use crate::PeerName;

/// A proposal number; ordered by number, then proposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Round {
    pub number: u32,
    pub proposer: PeerName,
}

impl Round {
    /// Precedes every real round (numbers start at 1).
    pub const NONE: Round = Round { number: 0, proposer: PeerName::from_bytes([0; 6]) };

    pub fn is_none(&self) -> bool {
        self.number == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Accepted {
    pub round: Round,
    /// The peers to seed the ring with: ascending, non-empty, at most
    /// `MAX_SEEDS`.
    pub value: Vec<PeerName>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct AcceptorState {
    /// Never accept a round below this.
    pub promised: Round,
    pub accepted: Option<Accepted>,
}

impl AcceptorState {
    pub const INITIAL: AcceptorState = AcceptorState { promised: Round::NONE, accepted: None };

    /// Folds in a state the same acceptor published in another life (a
    /// restart that lost its latest state): every promise it made still
    /// binds, and what it accepted last is what it must report.
    pub(crate) fn absorb(&mut self, other: &AcceptorState) {
        self.promised = self.promised.max(other.promised);
        let theirs_newer = match (&self.accepted, &other.accepted) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(ours), Some(theirs)) => theirs.round > ours.round,
        };
        if theirs_newer {
            self.accepted = other.accepted.clone();
        }
    }

    fn accepted_round(&self) -> Option<Round> {
        self.accepted.as_ref().map(|a| a.round)
    }
}

/// How many acceptors make a quorum among `consensus_count` peers.
pub fn quorum(consensus_count: usize) -> usize {
    consensus_count.max(1) / 2 + 1
}

/// The round a proposer starts next: above every round it has seen.
pub(crate) fn next_round<'a>(local: PeerName, states: impl Iterator<Item = &'a AcceptorState>) -> Round {
    let highest = states.map(|s| s.promised.number.max(s.accepted_round().map_or(0, |r| r.number))).max().unwrap_or(0);
    Round { number: highest.saturating_add(1), proposer: local }
}

/// One round of thinking for the acceptor (and, if `own.promised` is its
/// own round, proposer) `local`, given the other peers' published states.
/// Returns our new state if it changed. `value` supplies our candidate
/// when we get to choose.
pub(crate) fn step<'a>(
    local: PeerName,
    own: &AcceptorState,
    others: impl Iterator<Item = &'a AcceptorState> + Clone,
    quorum: usize,
    value: impl FnOnce() -> Vec<PeerName>,
) -> Option<AcceptorState> {
    let mut next = own.clone();
    // Promise: follow the highest round anyone has started.
    if let Some(highest) = others.clone().map(|s| s.promised).max() {
        next.promised = next.promised.max(highest);
    }
    let round = next.promised;
    // Accept: someone (ultimately the round's proposer) accepted the round
    // we promised; all acceptances of one round carry one value.
    if !round.is_none() && next.accepted_round() != Some(round) {
        if let Some(acc) = others.clone().filter_map(|s| s.accepted.as_ref()).find(|a| a.round == round) {
            next.accepted = Some(acc.clone());
        }
    }
    // Propose: our round is the one everyone should be following; once a
    // quorum promised it, accept (and so announce) a value for it.
    if round.proposer == local && !round.is_none() && next.accepted_round() != Some(round) {
        let promisers: Vec<&AcceptorState> = others.filter(|s| s.promised == round).collect();
        if promisers.len() + 1 >= quorum {
            let prior = promisers
                .iter()
                .filter_map(|s| s.accepted.as_ref())
                .chain(next.accepted.as_ref())
                .max_by_key(|a| a.round)
                .map(|a| a.value.clone());
            let value = prior.unwrap_or_else(value);
            if !value.is_empty() {
                next.accepted = Some(Accepted { round, value });
            }
        }
    }
    (next != *own).then_some(next)
}

/// The decided value, if a quorum of `states` accepted one value in one
/// round.
pub(crate) fn decision<'a>(states: impl Iterator<Item = &'a AcceptorState>, quorum: usize) -> Option<&'a Accepted> {
    let mut counts: BTreeMap<&Accepted, usize> = BTreeMap::new();
    for acc in states.filter_map(|s| s.accepted.as_ref()) {
        let count = counts.entry(acc).or_insert(0);
        *count += 1;
        if *count >= quorum {
            return Some(acc);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn name(n: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!(quorum(0), 1);
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(5), 3);
        assert_eq!(quorum(6), 4);
    }

    #[test]
    fn absorb_keeps_promises_and_latest_acceptance() {
        let r = |n| Round { number: n, proposer: name(1) };
        let mut a = AcceptorState { promised: r(3), accepted: Some(Accepted { round: r(2), value: vec![name(1)] }) };
        let b = AcceptorState { promised: r(5), accepted: Some(Accepted { round: r(1), value: vec![name(2)] }) };
        a.absorb(&b);
        assert_eq!(a.promised, r(5));
        assert_eq!(a.accepted.as_ref().map(|x| x.round), Some(r(2)));
        let mut fresh = AcceptorState::INITIAL;
        fresh.absorb(&a);
        assert_eq!(fresh, a);
    }

    #[test]
    fn lone_peer_with_quorum_one_decides_itself() {
        let own = AcceptorState { promised: next_round(name(1), std::iter::empty()), accepted: None };
        let next = step(name(1), &own, std::iter::empty(), 1, || vec![name(1)]).unwrap();
        assert_eq!(decision(std::iter::once(&next), 1).map(|a| a.value.clone()), Some(vec![name(1)]));
    }

    /// Each peer acts on a randomly stale snapshot of the others' states;
    /// proposers start rounds at random moments with different values.
    /// Every decision anyone observes must be the same value.
    fn run_cluster(seed: u64, peers: usize, quorum: usize, steps: usize) -> Option<Vec<PeerName>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let names: Vec<PeerName> = (0..peers as u8).map(name).collect();
        // views[i][j]: what peer i knows of peer j's state.
        let mut views: Vec<Vec<AcceptorState>> = vec![vec![AcceptorState::INITIAL; peers]; peers];
        let mut decided: Option<Vec<PeerName>> = None;
        for _ in 0..steps {
            let i = rng.gen_range(0..peers);
            match rng.gen_range(0..100) {
                // Rare, or proposers would pre-empt each other forever.
                0 => {
                    let round = next_round(names[i], views[i].iter());
                    views[i][i].promised = round;
                }
                1..=45 => {
                    // Gossip: i learns j's own state, or j's view of k.
                    let j = rng.gen_range(0..peers);
                    let k = rng.gen_range(0..peers);
                    if k != i {
                        let theirs = views[j][k].clone();
                        let mine = &mut views[i][k];
                        if (theirs.promised, theirs.accepted_round()) > (mine.promised, mine.accepted_round()) {
                            *mine = theirs;
                        }
                    }
                }
                _ => {
                    let view = &views[i];
                    let others = view.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, s)| s);
                    // Proposers differ in the value they would pick.
                    if let Some(next) = step(names[i], &view[i], others, quorum, || names[..=i].to_vec()) {
                        views[i][i] = next;
                    }
                }
            }
            if let Some(acc) = decision(views[i].iter(), quorum) {
                match &decided {
                    None => decided = Some(acc.value.clone()),
                    Some(d) => assert_eq!(d, &acc.value, "two different values decided"),
                }
            }
        }
        decided
    }

    #[test]
    fn random_schedules_never_decide_two_values() {
        let mut decisions = 0;
        for seed in 0..60 {
            decisions += usize::from(run_cluster(seed, 5, 3, 1500).is_some());
        }
        assert!(decisions > 30, "too few runs decided ({decisions}/60): the test would prove little");
    }

    proptest! {
        #[test]
        fn step_is_monotone(seed in any::<u64>()) {
            // Promises and acceptances only move forward.
            let mut rng = StdRng::seed_from_u64(seed);
            let mut own = AcceptorState::INITIAL;
            for _ in 0..30 {
                let others: Vec<AcceptorState> = (0..3)
                    .map(|_| {
                        let promised = Round { number: rng.gen_range(0..5), proposer: name(rng.gen_range(0..3)) };
                        let accepted = rng.gen_bool(0.5).then(|| Accepted { round: promised, value: vec![name(7)] });
                        AcceptorState { promised, accepted }
                    })
                    .collect();
                if let Some(next) = step(name(0), &own, others.iter(), 2, || vec![name(0)]) {
                    prop_assert!(next.promised >= own.promised);
                    prop_assert!(next.accepted_round() >= own.accepted_round());
                    if let Some(r) = next.accepted_round() {
                        prop_assert!(r <= next.promised);
                    }
                    own = next;
                }
            }
        }
    }
}
