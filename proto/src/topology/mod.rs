//! The cluster topology as this peer knows it: one record per peer, merged
//! from gossip, and the routes derived from them.
//!
//! Gossip protocol the caller runs on top of this (as in Weave Mesh): when
//! a connection comes up, send it `encode_all`; whenever
//! `set_local_connections` or `apply_update` reports changes, send
//! `encode_peers(changed)` to every connected neighbour (including the one
//! the update came from: it may have sent us a stale record of ourselves
//! that our bump has to override).

mod gossip;
mod peer;
mod routes;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::PeerName;

pub use gossip::{GossipError, FORMAT_VERSION, MAX_CONNECTIONS, MAX_RECORDS};
pub use peer::{ConnectionInfo, PeerRecord, MAX_SHORT_STR};
pub use routes::Routes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyConfig {
    /// How long a known peer may stay unreachable before we forget it.
    pub unreachable_ttl: Duration,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig { unreachable_ttl: Duration::from_secs(60) }
    }
}

#[derive(Debug)]
pub struct Topology {
    local: PeerName,
    config: TopologyConfig,
    /// Always contains our own record.
    peers: BTreeMap<PeerName, PeerRecord>,
    routes: Routes,
    /// When each currently unreachable peer became so.
    unreachable_since: BTreeMap<PeerName, Instant>,
}

impl Topology {
    pub fn new(name: PeerName, nickname: String, uid: u64, now: Instant) -> Self {
        Self::with_config(name, nickname, uid, now, TopologyConfig::default())
    }

    pub fn with_config(name: PeerName, mut nickname: String, uid: u64, now: Instant, config: TopologyConfig) -> Self {
        peer::clamp_short_str(&mut nickname);
        let record = PeerRecord { name, nickname, uid, version: 1, connections: Vec::new() };
        let mut topology = Topology {
            local: name,
            config,
            peers: BTreeMap::from([(name, record)]),
            routes: Routes::default(),
            unreachable_since: BTreeMap::new(),
        };
        topology.recompute(now);
        topology
    }

    pub fn local_name(&self) -> PeerName {
        self.local
    }

    pub fn config(&self) -> &TopologyConfig {
        &self.config
    }

    pub fn local_record(&self) -> &PeerRecord {
        // Inserted by the constructor, and neither merges nor timeouts
        // ever remove or replace it.
        self.peers.get(&self.local).expect("local record is always present")
    }

    fn local_record_mut(&mut self) -> &mut PeerRecord {
        self.peers.get_mut(&self.local).expect("local record is always present")
    }

    /// Replaces our own connection list (normalised: sorted by remote, one
    /// entry per remote preferring established ones, at most
    /// `MAX_CONNECTIONS`). Bumps our version if it changed and returns
    /// whether it did; the caller then gossips our record.
    pub fn set_local_connections(&mut self, conns: Vec<ConnectionInfo>, now: Instant) -> bool {
        let mut conns = peer::normalize_connections(conns);
        conns.truncate(MAX_CONNECTIONS);
        let local = self.local_record_mut();
        if local.connections == conns {
            return false;
        }
        local.connections = conns;
        local.version = local.version.saturating_add(1);
        self.recompute(now);
        true
    }

    /// Merges an update received from a neighbour and returns the names
    /// whose records changed (ascending), which the caller re-gossips. A
    /// malformed update is rejected whole, before anything is applied.
    pub fn apply_update(&mut self, now: Instant, update: &[u8]) -> Result<Vec<PeerName>, GossipError> {
        let records = gossip::decode(update)?;
        let mut changed = BTreeSet::new();
        for record in records {
            let name = record.name;
            if self.merge(record) {
                changed.insert(name);
            }
        }
        if !changed.is_empty() {
            self.recompute(now);
        }
        Ok(changed.into_iter().collect())
    }

    pub fn encode_all(&self, out: &mut Vec<u8>) {
        gossip::encode(self.peers.values(), out);
    }

    /// Encodes the records of those of `names` we know; unknown names (for
    /// instance peers dropped meanwhile) are skipped.
    pub fn encode_peers(&self, names: &[PeerName], out: &mut Vec<u8>) {
        gossip::encode(names.iter().filter_map(|name| self.peers.get(name)), out);
    }

    pub fn peer(&self, name: &PeerName) -> Option<&PeerRecord> {
        self.peers.get(name)
    }

    /// All known records, ours included, in name order.
    pub fn peers(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values()
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Forgets peers that have been unreachable for the configured TTL and
    /// returns their names. If one is still alive its record comes back
    /// through gossip and is simply re-added.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<PeerName> {
        let ttl = self.config.unreachable_ttl;
        let expired: Vec<PeerName> = self
            .unreachable_since
            .iter()
            .filter(|(_, since)| since.checked_add(ttl).is_some_and(|deadline| deadline <= now))
            .map(|(name, _)| *name)
            .collect();
        for name in &expired {
            self.peers.remove(name);
            self.unreachable_since.remove(name);
        }
        // Routes only involve peers reachable from us, so forgetting
        // unreachable ones leaves them as they are.
        expired
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let earliest = self.unreachable_since.values().min()?;
        earliest.checked_add(self.config.unreachable_ttl)
    }

    /// Folds one received record into our state; returns whether the record
    /// we hold under that name changed (for our own name: whether we bumped).
    fn merge(&mut self, record: PeerRecord) -> bool {
        if record.name == self.local {
            return self.outbid(&record);
        }
        // The cap keeps a full-state dump within one update.
        let room = self.peers.len() < MAX_RECORDS;
        match self.peers.entry(record.name) {
            Entry::Occupied(mut held) if record.supersedes(held.get()) => {
                held.insert(record);
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) if room => {
                slot.insert(record);
                true
            }
            Entry::Vacant(_) => false,
        }
    }

    /// Someone holds a record under our name that beats ours: a previous
    /// incarnation of us (we restarted) or, rarely, a forgery. Jump our
    /// version past it so ours wins everywhere once re-gossiped.
    fn outbid(&mut self, record: &PeerRecord) -> bool {
        let local = self.local_record_mut();
        if !record.supersedes(local) {
            return false;
        }
        local.version = record.version.saturating_add(1);
        true
    }

    fn recompute(&mut self, now: Instant) {
        self.routes = Routes::compute(self.local, &self.peers);
        let previous = std::mem::take(&mut self.unreachable_since);
        self.unreachable_since = self
            .peers
            .keys()
            .filter(|name| !self.routes.reachable(**name))
            .map(|name| (*name, previous.get(name).copied().unwrap_or(now)))
            .collect();
    }
}
