//! IP address management: one cluster range divided among peers so that
//! each allocates locally, without a global lock, and no address is ever
//! handed out twice (modelled on Weave Net's IPAM).
//!
//! - The range is split into a `Ring` of entries, each owned by one peer
//!   and changed only by that owner; peers allocate from space they own.
//! - The initial division is decided once, by Paxos over gossip among the
//!   first peers (`consensus_count` of them), when the first allocation is
//!   requested anywhere.
//! - A peer that runs out names a donor in its gossip entry; the donor
//!   hands over part of its free space.
//! - `rmpeer` tombstones a dead peer; its space goes to deterministic heirs
//!   once every other peer confirms it has seen the dead peer's last state.
//! - Anything that contradicts single ownership is reported in
//!   `conflicts()`, never merged away silently.
//!
//! How the router drives it: broadcast `encode_gossip` to every neighbour
//! when a connection comes up and whenever `take_dirty` says so; feed
//! received gossip to `handle_gossip`; call `set_peers` when topology
//! changes and `handle_timeout` at `poll_timeout`. **Persist before
//! broadcasting** (and before returning an address to the caller): a write
//! others have seen must never be forgotten by a crash.

mod allocator;
mod conflict;
mod donation;
mod gossip;
mod paxos;
mod peer_state;
mod persist;
mod range;
mod ring;
mod rmpeer;
mod shared;
mod status;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::PeerName;

use allocator::Allocations;
use paxos::AcceptorState;
use peer_state::{PeerState, SpaceRequest};
use shared::Shared;

pub use allocator::MAX_ID_LEN;
pub use conflict::{Conflict, MAX_CONFLICTS};
pub use gossip::{IpamGossipError, FORMAT_VERSION};
pub use paxos::quorum;
pub use persist::{PersistError, PERSIST_FORMAT};
pub use range::{Range, RangeError};
pub use ring::{RingError, MAX_ENTRIES, MAX_SEEDS};
pub use rmpeer::{RmpeerError, RmpeerOutcome};
pub use shared::{MAX_PEERS, MAX_TOMBSTONES};
pub use status::{IpamStatus, PeerStatus};

/// How long a proposer waits for a decision before starting a higher
/// round; a per-peer jitter of up to as much again keeps proposers from
/// duelling in lockstep.
pub const PAXOS_RETRY: Duration = Duration::from_secs(3);
/// How long a request for space may go unanswered before we ask again
/// (re-choosing the donor).
pub const REQUEST_RETRY: Duration = Duration::from_secs(5);
/// A consensus count not known yet (e.g. until the Kubernetes node list is
/// read): the peer answers others' proposals but never proposes or decides
/// itself, so it can't claim the range alone while other peers exist.
pub const CONSENSUS_UNKNOWN: usize = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Retry later: no ring yet, consensus on the initial division is
    /// under way (it needs a quorum of `consensus_count` peers).
    #[error("waiting for consensus on the initial division of the address range")]
    NotReady,
    /// Retry later: this peer's space is used up and another peer has
    /// been asked to donate (or the only free space is behind a
    /// partition).
    #[error("out of addresses; waiting for another peer to donate space")]
    Pending,
    /// No reachable peer has free space as far as this peer knows; may
    /// clear after releases anywhere.
    #[error("address range {range} is exhausted")]
    Exhausted { range: Range },
    #[error("this peer was removed with rmpeer and no longer allocates")]
    SelfTombstoned,
    #[error("invalid {what} {value:?}: must be 1 to {MAX_ID_LEN} bytes")]
    InvalidId { what: &'static str, value: String },
}

impl AllocError {
    /// Whether the same request may succeed once IPAM state changes
    /// (the router retries on every change and timeout until its deadline).
    pub fn is_retryable(&self) -> bool {
        matches!(self, AllocError::NotReady | AllocError::Pending | AllocError::Exhausted { .. })
    }
}

#[derive(Debug)]
pub struct Ipam {
    local: PeerName,
    consensus_count: usize,
    /// Always holds our own peer entry.
    shared: Shared,
    allocations: Allocations,
    /// The latest request of each peer we have served (donated or found
    /// we had nothing to give), so each request is served once.
    served: BTreeMap<PeerName, u64>,
    /// Peers topology knows of, reachable or not.
    known: BTreeSet<PeerName>,
    /// None until the router first reports reachability.
    reachable: Option<BTreeSet<PeerName>>,
    conflicts: Vec<Conflict>,
    gossip_dirty: bool,
    persist_dirty: bool,
    /// Bumped on every change to `shared`, so callers can tell whether an
    /// operation changed anything.
    generation: u64,
    /// An allocation needed a ring: keep proposing until one exists.
    wants_ring: bool,
    paxos_attempts: u32,
    paxos_retry_at: Option<Instant>,
    request_retry_at: Option<Instant>,
}

impl Ipam {
    pub fn new(local: PeerName, range: Range, consensus_count: usize, _now: Instant) -> Self {
        let mut shared = Shared::new(range);
        shared.peers.insert(local, PeerState { version: 1, ..PeerState::EMPTY });
        Self::from_parts(local, consensus_count, shared, Allocations::default(), BTreeMap::new())
    }

    /// Rebuilds the IPAM state persisted by `persist`. The router compares
    /// `range()` with its configured range and starts afresh (`new`) if
    /// they differ.
    pub fn restore(local: PeerName, persisted: &[u8], now: Instant) -> Result<Self, PersistError> {
        let p = persist::decode(persisted)?;
        if p.local != local {
            return Err(PersistError::NameMismatch { persisted: p.local, local });
        }
        let mut shared = p.shared;
        shared.peers.entry(local).or_insert(PeerState { version: 1, ..PeerState::EMPTY });
        let mut ipam = Self::from_parts(local, p.consensus_count, shared, p.allocations, p.served);
        if ipam.own().request.is_some() {
            // Whatever was under way before the restart: re-check it now.
            ipam.request_retry_at = Some(now);
        }
        Ok(ipam)
    }

    fn from_parts(
        local: PeerName,
        consensus_count: usize,
        shared: Shared,
        allocations: Allocations,
        served: BTreeMap<PeerName, u64>,
    ) -> Self {
        Ipam {
            local,
            consensus_count,
            shared,
            allocations,
            served,
            known: BTreeSet::new(),
            reachable: None,
            conflicts: Vec::new(),
            gossip_dirty: false,
            persist_dirty: false,
            generation: 0,
            wants_ring: false,
            paxos_attempts: 0,
            paxos_retry_at: None,
            request_retry_at: None,
        }
    }

    pub fn persist(&self, out: &mut Vec<u8>) {
        persist::encode(self.local, self.consensus_count, &self.shared, &self.allocations, &self.served, out);
    }

    pub fn local_name(&self) -> PeerName {
        self.local
    }

    pub fn range(&self) -> Range {
        self.shared.range
    }

    pub fn consensus_count(&self) -> usize {
        self.consensus_count
    }

    /// Sets how many peers the initial division waits for (a majority of
    /// them must agree), e.g. from a node list that became known or grew.
    /// Only matters until the range is divided; later calls change nothing.
    /// Quorums of counts n and n+1 always intersect, so peers that briefly
    /// disagree by one node can't decide two divisions.
    pub fn set_consensus_count(&mut self, now: Instant, count: usize) {
        if self.shared.ring.is_some() || count == self.consensus_count || count == CONSENSUS_UNKNOWN {
            return;
        }
        self.consensus_count = count;
        self.persist_dirty = true;
        if self.wants_ring && self.paxos_retry_at.is_none() {
            self.want_ring(now);
        } else {
            self.think(now);
        }
    }

    fn quorum(&self) -> usize {
        if self.consensus_count == CONSENSUS_UNKNOWN {
            usize::MAX
        } else {
            paxos::quorum(self.consensus_count)
        }
    }

    /// Hands out an address for (container, interface), or the one it
    /// already has. The router persists (`take_dirty`) before passing the
    /// address on.
    pub fn allocate(&mut self, now: Instant, container_id: &str, ifname: &str) -> Result<Ipv4Addr, AllocError> {
        check_id("container id", container_id)?;
        check_id("interface name", ifname)?;
        if let Some(addr) = self.allocations.get(container_id, ifname) {
            return Ok(Ipv4Addr::from(addr));
        }
        if self.self_tombstoned() {
            return Err(AllocError::SelfTombstoned);
        }
        if self.shared.ring.is_none() {
            // With a quorum of one, consensus completes right here.
            self.want_ring(now);
        }
        let Some(ring) = &self.shared.ring else { return Err(AllocError::NotReady) };
        let range = self.shared.range;
        match self.allocations.lowest_free(range, ring.owned_spans(self.local).map(|s| (s.start, s.end))) {
            Some(addr) => {
                self.allocations.insert(container_id, ifname, addr);
                self.persist_dirty = true;
                self.think(now);
                Ok(Ipv4Addr::from(addr))
            }
            None => {
                let err = self.ask_for_space(now, false);
                self.think(now);
                Err(err)
            }
        }
    }

    pub fn lookup(&self, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        self.allocations.get(container_id, ifname).map(Ipv4Addr::from)
    }

    /// Releases one interface's address, or all of a container's when
    /// `ifname` is None; returns how many were released.
    pub fn release(&mut self, container_id: &str, ifname: Option<&str>) -> usize {
        let freed = self.allocations.release(container_id, ifname).len();
        if freed > 0 {
            self.persist_dirty = true;
            self.think_ring();
        }
        freed
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&str, &str, Ipv4Addr)> {
        self.allocations.iter().map(|(c, i, a)| (c, i, Ipv4Addr::from(a)))
    }

    /// Tells IPAM which peers topology knows of and which of them are
    /// reachable now (ourselves implied in both).
    pub fn set_peers(&mut self, now: Instant, known: &[PeerName], reachable: &[PeerName]) {
        let real = |p: &&PeerName| !p.is_broadcast();
        self.known = known.iter().chain(reachable).filter(real).copied().collect();
        self.reachable = Some(reachable.iter().filter(real).copied().collect());
        self.think(now);
    }

    /// Merges a gossip message from a neighbour; returns whether our state
    /// changed (then `take_dirty` also says to re-broadcast). A malformed
    /// message, or one for another range, is rejected whole.
    pub fn handle_gossip(&mut self, now: Instant, bytes: &[u8]) -> Result<bool, IpamGossipError> {
        let incoming = gossip::decode(bytes)?;
        if incoming.range != self.shared.range {
            return Err(IpamGossipError::RangeMismatch { ours: self.shared.range, theirs: incoming.range });
        }
        let before = self.generation;
        let had_ring = self.shared.ring.is_some();
        if self.shared.merge(&incoming, self.local, &mut self.conflicts)? {
            self.mark_changed();
        }
        if !had_ring {
            self.check_adopted_ring();
        }
        self.think(now);
        Ok(self.generation != before)
    }

    /// Our whole replicated state, as one gossip message.
    pub fn encode_gossip(&self, out: &mut Vec<u8>) {
        gossip::encode(&self.shared, out);
    }

    /// (broadcast gossip, persist) since the last call. Persist first.
    pub fn take_dirty(&mut self) -> (bool, bool) {
        let dirty = (self.gossip_dirty, self.persist_dirty);
        self.gossip_dirty = false;
        self.persist_dirty = false;
        dirty
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.self_tombstoned() {
            return;
        }
        if self.shared.ring.is_none()
            && self.wants_ring
            && self.consensus_count != CONSENSUS_UNKNOWN
            && self.paxos_retry_at.is_some_and(|t| t <= now)
        {
            self.propose(now);
        }
        if self.own().request.is_some() && self.request_retry_at.is_some_and(|t| t <= now) {
            self.ask_for_space(now, true);
        }
        self.think(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let paxos = self.paxos_retry_at.filter(|_| self.shared.ring.is_none() && self.wants_ring);
        let request = self.request_retry_at.filter(|_| self.own().request.is_some());
        match (paxos, request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes a dead peer: tombstones it (idempotently) and takes over
    /// whatever of its space we inherit; other heirs take the rest when
    /// the tombstone reaches them.
    pub fn rmpeer(&mut self, now: Instant, name: PeerName) -> Result<RmpeerOutcome, RmpeerError> {
        if name == self.local {
            return Err(RmpeerError::IsSelf);
        }
        if name.is_broadcast() || !self.is_known(&name) {
            return Err(RmpeerError::UnknownPeer(name));
        }
        if self.reachable.as_ref().is_some_and(|r| r.contains(&name)) {
            return Err(RmpeerError::Reachable(name));
        }
        let newly_tombstoned = !self.shared.is_tombstoned(&name);
        if newly_tombstoned {
            if self.shared.tombstones.len() >= MAX_TOMBSTONES {
                return Err(RmpeerError::TooManyTombstones { max: MAX_TOMBSTONES });
            }
            self.shared.tombstones.insert(name);
            self.mark_changed();
        }
        let before = self.owned_usable();
        self.think(now);
        Ok(RmpeerOutcome { newly_tombstoned, addresses_taken_over: self.owned_usable().saturating_sub(before) })
    }

    /// The address ranges this peer owns, `(first, last)` inclusive, in
    /// address order: what rules that tell this node's pods from others'
    /// need (e.g. not masquerading traffic to local pods).
    pub fn owned_ranges(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        let Some(ring) = &self.shared.ring else { return Vec::new() };
        let mut out: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
        for span in ring.owned_spans(self.local) {
            let last = u32::try_from(span.end - 1).unwrap_or(u32::MAX);
            match out.last_mut() {
                // Adjacent spans (after a takeover) read as one range.
                Some((_, prev)) if u64::from(u32::from(*prev)) + 1 == u64::from(span.start) => {
                    *prev = Ipv4Addr::from(last)
                }
                _ => out.push((Ipv4Addr::from(span.start), Ipv4Addr::from(last))),
            }
        }
        out
    }

    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// A ring exists and we may allocate from it.
    pub fn is_ready(&self) -> bool {
        self.shared.ring.is_some() && !self.self_tombstoned()
    }

    pub fn status(&self) -> IpamStatus {
        let range = self.shared.range;
        let ring = self.shared.ring.as_ref();
        let mut names: BTreeSet<PeerName> = self.known.clone();
        names.extend(self.shared.peers.keys());
        names.extend(self.shared.tombstones.iter());
        names.extend(ring.into_iter().flat_map(|r| r.spans().map(|s| s.entry.owner)));
        let peers: Vec<PeerStatus> = names
            .into_iter()
            .map(|name| {
                let (owned, free) = match ring {
                    Some(ring) if name == self.local => (self.owned_usable(), self.local_free(ring)),
                    Some(ring) => ring.owned_and_free(name),
                    None => (0, 0),
                };
                let tombstoned = self.shared.is_tombstoned(&name);
                PeerStatus { name, owned, free, reachable: self.is_reachable(&name), tombstoned }
            })
            .collect();
        let owned: u64 = peers.iter().map(|p| p.owned).sum();
        let free: u64 = peers.iter().map(|p| p.free).sum();
        let unreachable = peers.iter().filter(|p| !p.reachable || p.tombstoned).map(|p| p.owned).sum();
        IpamStatus {
            range,
            ready: self.is_ready(),
            seeds: ring.map(|r| r.seeds().to_vec()).unwrap_or_default(),
            peers,
            total: range.usable_in(range.first(), range.end()),
            used: owned.saturating_sub(free),
            free,
            unreachable,
            local_allocations: self.allocations.len(),
            awaiting_consensus: ring.is_none() && self.wants_ring,
            awaiting_space: self.own().request.is_some(),
            conflicts: self.conflicts.len(),
        }
    }

    // ---- internals ----

    fn own(&self) -> &PeerState {
        static MISSING: PeerState = PeerState::EMPTY;
        self.shared.peers.get(&self.local).unwrap_or(&MISSING)
    }

    /// Applies `change` to our own entry, bumping its version if that
    /// changed anything; returns whether it did.
    fn update_own(&mut self, change: impl FnOnce(&mut PeerState)) -> bool {
        let own = self.shared.peers.entry(self.local).or_default();
        let before = own.clone();
        change(own);
        if *own == before {
            return false;
        }
        own.version = before.version.saturating_add(1);
        self.mark_changed();
        true
    }

    fn mark_changed(&mut self) {
        self.gossip_dirty = true;
        self.persist_dirty = true;
        self.generation += 1;
    }

    fn self_tombstoned(&self) -> bool {
        self.shared.is_tombstoned(&self.local)
    }

    fn is_reachable(&self, peer: &PeerName) -> bool {
        *peer == self.local || self.reachable.as_ref().is_none_or(|r| r.contains(peer))
    }

    fn is_known(&self, peer: &PeerName) -> bool {
        self.known.contains(peer)
            || self.shared.peers.contains_key(peer)
            || self.shared.is_tombstoned(peer)
            || self.shared.ring.as_ref().is_some_and(|r| r.spans().any(|s| s.entry.owner == *peer))
    }

    fn owned_usable(&self) -> u64 {
        self.shared.ring.as_ref().map_or(0, |r| r.owned_and_free(self.local).0)
    }

    fn local_free(&self, ring: &ring::Ring) -> u64 {
        let range = self.shared.range;
        ring.owned_spans(self.local).map(|s| self.allocations.free_in(range, s.start, s.end)).sum()
    }

    /// Everything this peer does in reaction to state changes: Paxos until
    /// there is a ring, then inheriting, donating and reporting.
    fn think(&mut self, now: Instant) {
        if self.shared.ring.is_none() {
            self.think_paxos();
        }
        self.think_ring();
        self.retarget_stale_request(now);
    }

    fn think_paxos(&mut self) {
        if self.self_tombstoned() {
            return;
        }
        let quorum = self.quorum();
        let own = self.own().paxos.clone();
        let next = {
            let others = self.shared.peers.iter().filter(|(n, _)| **n != self.local).map(|(_, s)| &s.paxos);
            paxos::step(self.local, &own, others, quorum, || self.candidates())
        };
        if let Some(next) = next {
            self.update_own(|s| s.paxos = next);
        }
        let decided = paxos::decision(self.shared.peers.values().map(|s| &s.paxos), quorum).map(|a| a.value.clone());
        // Decided values are non-empty and capped (checked on decode, and
        // by `candidates`), so seeding cannot fail.
        if let Some(ring) = decided.and_then(|value| ring::Ring::seeded(self.shared.range, &value).ok()) {
            self.shared.ring = Some(ring);
            self.mark_changed();
            // Our acceptor state is moot now; stop gossiping it.
            self.update_own(|s| s.paxos = AcceptorState::INITIAL);
        }
    }

    /// The consensus value we propose: every peer we know of, by name.
    fn candidates(&self) -> Vec<PeerName> {
        let mut names: BTreeSet<PeerName> = self.known.iter().chain(self.shared.peers.keys()).copied().collect();
        names.insert(self.local);
        names.into_iter().filter(|p| !self.shared.is_tombstoned(p)).take(MAX_SEEDS).collect()
    }

    fn want_ring(&mut self, now: Instant) {
        self.wants_ring = true;
        if self.paxos_retry_at.is_none() && self.consensus_count != CONSENSUS_UNKNOWN {
            let someone_proposing = self.shared.peers.values().any(|s| !s.paxos.promised.is_none());
            if someone_proposing {
                // Let that round finish rather than duel with it.
                self.paxos_retry_at = Some(now + self.paxos_delay());
            } else {
                self.propose(now);
            }
        }
        self.think(now);
    }

    fn propose(&mut self, now: Instant) {
        let round = paxos::next_round(self.local, self.shared.peers.values().map(|s| &s.paxos));
        self.update_own(|s| s.paxos.promised = round);
        self.paxos_attempts = self.paxos_attempts.saturating_add(1);
        self.paxos_retry_at = Some(now + self.paxos_delay());
    }

    fn paxos_delay(&self) -> Duration {
        let jitter_ms = mix(self.local, self.paxos_attempts) % PAXOS_RETRY.as_millis().max(1) as u64;
        PAXOS_RETRY + Duration::from_millis(jitter_ms)
    }

    fn think_ring(&mut self) {
        if self.self_tombstoned() {
            // We must not write anything more, only say why.
            conflict::record(&mut self.conflicts, Conflict::SelfTombstoned);
            return;
        }
        self.report_live_tombstoned();
        self.inherit_dead_space();
        self.refresh_acks();
        self.serve_requests();
        self.refresh_free();
        self.settle_request();
        self.report_foreign_allocations();
    }

    /// Reachability is the evidence: gossip can't tell a removed peer's
    /// new writes from its last ones still making their way around.
    fn report_live_tombstoned(&mut self) {
        let Some(reachable) = &self.reachable else { return };
        for name in self.shared.tombstones.intersection(reachable) {
            conflict::record(&mut self.conflicts, Conflict::TombstonedPeerAlive { peer: *name });
        }
    }

    fn inherit_dead_space(&mut self) {
        let spans = rmpeer::inherited(&self.shared, self.local);
        let range = self.shared.range;
        for (start, end) in spans {
            let free = ring::clamp_u32(self.allocations.free_in(range, start, end));
            if let Some(ring) = &mut self.shared.ring {
                if ring.take_over(start, self.local, free) {
                    self.mark_changed();
                }
            }
        }
    }

    fn serve_requests(&mut self) {
        let requests: Vec<(PeerName, u64)> = self
            .shared
            .peers
            .iter()
            .filter(|(name, _)| **name != self.local && !self.shared.is_tombstoned(name))
            .filter_map(|(name, s)| s.request.map(|r| (*name, r)))
            .filter(|(name, r)| r.donor == self.local && self.served.get(name).is_none_or(|seq| r.seq > *seq))
            .map(|(name, r)| (name, r.seq))
            .collect();
        for (requester, seq) in requests {
            self.served.insert(requester, seq);
            self.persist_dirty = true;
            let Some(ring) = &self.shared.ring else { return };
            let Some((start, end)) = donation::donation(ring, &self.allocations, self.local) else { continue };
            if let Some(ring) = &mut self.shared.ring {
                if ring.grant(self.local, start, end, requester) {
                    self.mark_changed();
                }
            }
        }
    }

    /// Publishes what we see of removed peers' space, for their heirs.
    fn refresh_acks(&mut self) {
        let Some(ring) = &self.shared.ring else { return };
        let acks = rmpeer::acks(ring, &self.shared.tombstones);
        if self.own().acks != acks {
            self.update_own(|s| s.acks = acks);
        }
    }

    /// Keeps the free counts in our entries exact, for donors' choices.
    fn refresh_free(&mut self) {
        let Some(ring) = &self.shared.ring else { return };
        let range = self.shared.range;
        let counts: Vec<(u32, u32)> = ring
            .owned_spans(self.local)
            .map(|s| (s.start, ring::clamp_u32(self.allocations.free_in(range, s.start, s.end))))
            .collect();
        let mut changed = false;
        if let Some(ring) = &mut self.shared.ring {
            for (token, free) in counts {
                changed |= ring.set_free(self.local, token, free);
            }
        }
        if changed {
            self.mark_changed();
        }
    }

    fn has_free_address(&self) -> bool {
        let Some(ring) = &self.shared.ring else { return false };
        let spans = ring.owned_spans(self.local).map(|s| (s.start, s.end));
        self.allocations.lowest_free(self.shared.range, spans).is_some()
    }

    /// Withdraws our request for space once we have some.
    fn settle_request(&mut self) {
        if self.own().request.is_some() && self.has_free_address() {
            self.update_own(|s| s.request = None);
            self.request_retry_at = None;
        }
    }

    /// Space we own in a ring we have only just received was either seeded
    /// or donated to us, all free; anything else was written by an earlier
    /// incarnation of ours whose allocations we no longer know.
    fn check_adopted_ring(&mut self) {
        let Some(ring) = &self.shared.ring else { return };
        let (owned, free) = ring.owned_and_free(self.local);
        let in_use = owned - free;
        if in_use > self.allocations.len() as u64 {
            conflict::record(&mut self.conflicts, Conflict::LostState { in_use });
        }
    }

    fn report_foreign_allocations(&mut self) {
        let Some(ring) = &self.shared.ring else { return };
        for addr in self.allocations.outside(ring.owned_spans(self.local).map(|s| (s.start, s.end))) {
            let owner = ring.owner_of(addr);
            let c = Conflict::AllocationOutsideOwnedSpace { address: Ipv4Addr::from(addr), owner };
            conflict::record(&mut self.conflicts, c);
        }
    }

    /// A peer that could answer a request for space: not removed, and
    /// reachable (a request to a peer behind a partition would go unseen).
    fn can_donate(&self, peer: &PeerName) -> bool {
        *peer != self.local && !self.shared.is_tombstoned(peer) && self.is_reachable(peer)
    }

    /// Names a donor in our entry (keeping a still-plausible outstanding
    /// request unless `renew`) and says what the caller should report.
    fn ask_for_space(&mut self, now: Instant, renew: bool) -> AllocError {
        let Some(ring) = &self.shared.ring else { return AllocError::NotReady };
        if let Some(req) = self.own().request {
            let still_fresh = self.request_retry_at.is_some_and(|t| now < t);
            if !renew && still_fresh && self.donor_plausible(ring, &req.donor) {
                return AllocError::Pending;
            }
        }
        match donation::choose_donor(ring, |p| self.can_donate(p)) {
            Some(donor) => {
                let seq = self.own().version.saturating_add(1);
                self.update_own(|s| s.request = Some(SpaceRequest { seq, donor }));
                self.request_retry_at = Some(now + REQUEST_RETRY);
                AllocError::Pending
            }
            None => {
                // Nobody reachable can help: withdraw the request. A release
                // or a heal changes our state, and the router's retry of the
                // allocation then asks again. Free space behind a partition
                // is worth waiting for; none anywhere is exhaustion.
                let elsewhere = donation::choose_donor(ring, |p| *p != self.local && !self.shared.is_tombstoned(p));
                self.update_own(|s| s.request = None);
                self.request_retry_at = None;
                if elsewhere.is_some() {
                    AllocError::Pending
                } else {
                    AllocError::Exhausted { range: self.shared.range }
                }
            }
        }
    }

    /// `donor` can answer and has free space by its own last report.
    fn donor_plausible(&self, ring: &ring::Ring, donor: &PeerName) -> bool {
        self.can_donate(donor) && ring.owned_and_free(*donor).1 > 0
    }

    /// Asks someone else straight away when our donor became unreachable,
    /// was removed, or reports no free space.
    fn retarget_stale_request(&mut self, now: Instant) {
        let Some(req) = self.own().request else { return };
        let Some(ring) = &self.shared.ring else { return };
        if !self.self_tombstoned() && !self.donor_plausible(ring, &req.donor) {
            self.ask_for_space(now, true);
        }
    }
}

fn check_id(what: &'static str, value: &str) -> Result<(), AllocError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        return Err(AllocError::InvalidId { what, value: value.chars().take(64).collect() });
    }
    Ok(())
}

/// A deterministic per-(peer, attempt) pseudo-random number (splitmix64),
/// so proposers' retry jitter differs without an RNG in this crate.
fn mix(name: PeerName, attempt: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..6].copy_from_slice(name.as_bytes());
    let mut z = u64::from_be_bytes(bytes) ^ (u64::from(attempt) << 48) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
