//! What one peer says about itself: its identity, incarnation, and the
//! connections it has to other peers. These records are what gossip
//! carries and what routes are computed from.

use std::cmp::Ordering;

use crate::PeerName;

/// One of a peer's connections, as that peer reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectionInfo {
    pub remote: PeerName,
    /// "ip:port" of the remote as the reporting peer sees it; other peers
    /// use it to discover where they might connect.
    pub address: String,
    /// Whether the reporting peer dialled this connection.
    pub outbound: bool,
    /// Whether the handshake completed. Only established connections,
    /// confirmed by both ends, carry routes.
    pub established: bool,
}

/// Everything gossip knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    pub name: PeerName,
    pub nickname: String,
    /// Random per incarnation, so a restarted peer's records can be told
    /// apart from those of its previous life.
    pub uid: u64,
    /// Bumped by the peer itself whenever its record changes.
    pub version: u64,
    /// Sorted by `remote`, at most one entry per remote: the wire format
    /// requires this so that every record has exactly one encoding.
    pub connections: Vec<ConnectionInfo>,
}

impl PeerRecord {
    /// A total order on records for the same name, so that every peer
    /// keeps the same one whatever order gossip arrives in: newer version
    /// first, then uid. Two different records with the same (version, uid)
    /// can only come from a buggy or hostile peer; comparing their contents
    /// keeps the merge deterministic even then.
    pub fn cmp_precedence(&self, other: &PeerRecord) -> Ordering {
        (self.version, self.uid)
            .cmp(&(other.version, other.uid))
            .then_with(|| self.nickname.cmp(&other.nickname))
            .then_with(|| self.connections.cmp(&other.connections))
    }

    pub fn supersedes(&self, other: &PeerRecord) -> bool {
        self.cmp_precedence(other) == Ordering::Greater
    }

    /// Whether this peer reports an established connection to `remote`.
    /// Relies on `connections` being sorted, as records from gossip and
    /// from `Topology` always are.
    pub fn is_established_to(&self, remote: PeerName) -> bool {
        self.connections
            .binary_search_by(|c| c.remote.cmp(&remote))
            .ok()
            .and_then(|i| self.connections.get(i))
            .is_some_and(|c| c.established)
    }
}

/// Brings a locally supplied connection list into the canonical form
/// records must have: sorted by remote, one entry per remote (preferring an
/// established one, as that is the connection actually in use), strings
/// short enough to encode without truncation.
pub(super) fn normalize_connections(mut conns: Vec<ConnectionInfo>) -> Vec<ConnectionInfo> {
    conns.sort_by(|a, b| a.remote.cmp(&b.remote).then(b.established.cmp(&a.established)));
    conns.dedup_by_key(|c| c.remote);
    for c in &mut conns {
        clamp_short_str(&mut c.address);
    }
    conns
}

/// Longest string the gossip encoding carries (a u8 length prefix).
pub const MAX_SHORT_STR: usize = u8::MAX as usize;

/// Truncates (at a char boundary) to what the wire can carry, so the record
/// we hold for ourselves is exactly the one other peers will decode.
pub(super) fn clamp_short_str(s: &mut String) {
    if s.len() <= MAX_SHORT_STR {
        return;
    }
    let mut end = MAX_SHORT_STR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, n])
    }

    fn conn(n: u8, established: bool) -> ConnectionInfo {
        ConnectionInfo { remote: name(n), address: format!("10.0.0.{n}:6783"), outbound: false, established }
    }

    fn record(version: u64, uid: u64) -> PeerRecord {
        PeerRecord { name: name(1), nickname: "a".into(), uid, version, connections: vec![] }
    }

    #[test]
    fn precedence_is_version_then_uid_then_content() {
        assert!(record(2, 1).supersedes(&record(1, 9)));
        assert!(record(2, 5).supersedes(&record(2, 4)));
        assert!(!record(2, 4).supersedes(&record(2, 4)));
        let mut other = record(2, 4);
        other.nickname = "b".into();
        assert!(other.supersedes(&record(2, 4)));
        assert!(!record(2, 4).supersedes(&other));
    }

    #[test]
    fn normalize_sorts_dedups_and_prefers_established() {
        let got = normalize_connections(vec![conn(3, true), conn(2, false), conn(3, false), conn(2, true)]);
        assert_eq!(got, vec![conn(2, true), conn(3, true)]);
    }

    #[test]
    fn established_lookup() {
        let mut r = record(1, 1);
        r.connections = normalize_connections(vec![conn(5, true), conn(3, false)]);
        assert!(r.is_established_to(name(5)));
        assert!(!r.is_established_to(name(3)));
        assert!(!r.is_established_to(name(4)));
    }

    #[test]
    fn clamp_respects_char_boundaries() {
        let mut s = "é".repeat(200);
        clamp_short_str(&mut s);
        assert_eq!(s.len(), 254);
        let mut short = "abc".to_string();
        clamp_short_str(&mut short);
        assert_eq!(short, "abc");
    }
}
