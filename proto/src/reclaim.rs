//! Which dead peers' IPAM space to reclaim, decided from the cluster's node
//! list and a peer map (peer name → the node it ran on) kept in a store
//! with compare-and-swap, such as a Kubernetes ConfigMap updated with a
//! `resourceVersion` precondition.
//!
//! Every router runs a [`Reclaimer`] over the same shared view. A peer is
//! dead when its node is gone from the node list, or when its node now runs
//! another, reachable peer (the node was re-created with a fresh disk), and
//! in both cases only once the topology can no longer reach it. A dead
//! peer is reclaimed by whoever first *claims* its map entry: the claim is
//! a compare-and-swap, so of routers that all decide at the same moment
//! exactly one wins, and only the winner runs `rmpeer`, then removes the
//! entry. A claim whose holder is unreachable for [`CLAIM_STALE`] is taken
//! over; that is safe because `rmpeer` is idempotent (a tombstone) and
//! every removed peer's space has exactly one heir by construction.
//!
//! Deletes missed while a router was down need no event: the planner looks
//! at the whole map and the whole node list every time, so a re-list (or a
//! restart) finds them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::PeerName;

/// A dead peer stays unreachable this long before it is claimed, so a
/// router that is still shutting down (or a topology that hasn't noticed
/// yet) isn't raced.
pub const GRACE: Duration = Duration::from_secs(5);
/// A claim held by an unreachable peer this long is taken over.
pub const CLAIM_STALE: Duration = Duration::from_secs(60);

/// One peer map entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub peer: PeerName,
    pub node: String,
    /// The router reclaiming this peer, if any.
    pub claimed_by: Option<PeerName>,
}

/// What the planner sees at one moment.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub me: PeerName,
    pub my_node: &'a str,
    /// Every Node now (a complete list, not a partial one).
    pub nodes: &'a BTreeSet<String>,
    /// The whole peer map.
    pub entries: &'a [Entry],
    /// Peers the topology reaches now (ourselves implied).
    pub reachable: &'a BTreeSet<PeerName>,
}

impl View<'_> {
    fn is_reachable(&self, peer: PeerName) -> bool {
        peer == self.me || self.reachable.contains(&peer)
    }

    /// Why `entry`'s peer no longer belongs to the cluster, if it doesn't.
    pub fn gone(&self, entry: &Entry) -> Option<Gone> {
        if !self.nodes.contains(&entry.node) {
            return Some(Gone::NodeDeleted);
        }
        self.entries
            .iter()
            .find(|o| o.node == entry.node && o.peer != entry.peer && self.is_reachable(o.peer))
            .map(|o| Gone::Replaced(o.peer))
    }
}

/// Why a peer is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Its Node object was deleted.
    NodeDeleted,
    /// Its node now runs this other peer.
    Replaced(PeerName),
}

/// What a router should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add (or correct) our own entry.
    Register,
    /// Compare-and-swap the entry of this dead peer to claimed by us.
    Claim { peer: PeerName, gone: Gone },
    /// We hold the claim: run `rmpeer`, then remove the entry.
    Reclaim { peer: PeerName, gone: Gone },
    /// We hold a claim on a peer that turned out alive: drop the claim.
    Release { peer: PeerName },
}

/// One router's reclaim planner: the view is shared, the memory of when
/// things were first seen (for the grace periods) is its own.
#[derive(Debug, Default)]
pub struct Reclaimer {
    dead_since: BTreeMap<PeerName, Instant>,
    /// (holder, first seen) of each claim held by someone else.
    claims_seen: BTreeMap<PeerName, (PeerName, Instant)>,
}

impl Reclaimer {
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do now; call again whenever the view changes and
    /// periodically (grace periods run out without events).
    pub fn plan(&mut self, now: Instant, view: View<'_>) -> Vec<Action> {
        let mut actions = Vec::new();
        let mine = view.entries.iter().any(|e| e.peer == view.me && e.node == view.my_node);
        if !mine {
            actions.push(Action::Register);
        }
        let mut dead = BTreeMap::new();
        let mut claims = BTreeMap::new();
        for entry in view.entries.iter().filter(|e| e.peer != view.me) {
            let gone = view.gone(entry).filter(|_| !view.is_reachable(entry.peer));
            let Some(gone) = gone else {
                if entry.claimed_by == Some(view.me) {
                    actions.push(Action::Release { peer: entry.peer });
                }
                continue;
            };
            let since = *self.dead_since.get(&entry.peer).unwrap_or(&now);
            dead.insert(entry.peer, since);
            if now.saturating_duration_since(since) < GRACE {
                continue;
            }
            match entry.claimed_by {
                None => actions.push(Action::Claim { peer: entry.peer, gone }),
                Some(holder) if holder == view.me => actions.push(Action::Reclaim { peer: entry.peer, gone }),
                Some(holder) => {
                    let seen = match self.claims_seen.get(&entry.peer) {
                        Some(&(h, at)) if h == holder => at,
                        _ => now,
                    };
                    claims.insert(entry.peer, (holder, seen));
                    let stale = now.saturating_duration_since(seen) >= CLAIM_STALE;
                    if stale && !view.is_reachable(holder) {
                        actions.push(Action::Claim { peer: entry.peer, gone });
                    }
                }
            }
        }
        self.dead_since = dead;
        self.claims_seen = claims;
        actions
    }

    /// When the next grace period after `now` runs out, if any is running:
    /// the plan may change then without any event.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let graces = self.dead_since.values().map(|&t| t + GRACE);
        let claims = self.claims_seen.values().map(|&(_, t)| t + CLAIM_STALE);
        graces.chain(claims).filter(|&t| t > now).min()
    }
}

#[cfg(test)]
mod tests;
