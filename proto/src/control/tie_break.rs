//! Choosing between two control connections to the same remote peer.
//!
//! Two peers that dial each other at the same moment end up with two TCP
//! connections. Each end must close the same one, or both could close
//! "the other" connection and be left with none.

use crate::PeerName;

/// One of the two connections being compared, as the local peer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The local peer dialled it.
    pub outbound: bool,
    /// The remote's incarnation UID from its handshake.
    pub remote_uid: u64,
}

/// Whether to keep a `new` connection to `remote` that just completed its
/// handshake, closing the `existing` one, rather than the other way round.
///
/// - Different incarnations of the remote: keep the new one. The existing
///   connection belongs to a process that no longer exists (a restarted
///   router reconnecting before our heartbeat timeout noticed).
/// - Different diallers (the simultaneous-dial race): keep the connection
///   dialled by the peer with the greater name. Both ends compare the same
///   two names, so they agree whichever connection each saw first.
/// - Same dialler: that peer only redials after it gave up on the old
///   connection, so the old one is dead or dying at the other end too;
///   keep the new one. The dialler has already dropped the old one, so
///   only the other end ever has to decide this case.
///
/// Self-connections are rejected during the handshake and never get here;
/// for `local == remote` this keeps the existing connection.
pub fn keep_new_connection(local: PeerName, remote: PeerName, existing: Candidate, new: Candidate) -> bool {
    if existing.remote_uid != new.remote_uid || existing.outbound == new.outbound {
        return true;
    }
    if local == remote {
        return false;
    }
    let keep_outbound = local > remote;
    new.outbound == keep_outbound
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One TCP connection, identified by who dialled it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Conn {
        dialler: PeerName,
    }

    /// What `me` keeps when it saw `existing` first, then `new`.
    fn kept_by(me: PeerName, other: PeerName, existing: Conn, new: Conn) -> Conn {
        let outbound = |c: Conn| c.dialler == me;
        let cand = |c: Conn| Candidate { outbound: outbound(c), remote_uid: 1 };
        if keep_new_connection(me, other, cand(existing), cand(new)) {
            new
        } else {
            existing
        }
    }

    fn distinct_names() -> impl Strategy<Value = (PeerName, PeerName)> {
        (any::<[u8; 6]>(), any::<[u8; 6]>())
            .prop_filter("distinct", |(a, b)| a != b)
            .prop_map(|(a, b)| (PeerName::from_bytes(a), PeerName::from_bytes(b)))
    }

    proptest! {
        /// Simultaneous dials: whatever order each end saw the two
        /// connections in, both ends keep the same one.
        #[test]
        fn both_ends_keep_the_same_crossed_connection(
            (a, b) in distinct_names(),
            a_saw_a_first in any::<bool>(),
            b_saw_a_first in any::<bool>(),
        ) {
            let from_a = Conn { dialler: a };
            let from_b = Conn { dialler: b };
            let order = |a_first: bool| if a_first { (from_a, from_b) } else { (from_b, from_a) };
            let (ea, na) = order(a_saw_a_first);
            let (eb, nb) = order(b_saw_a_first);
            let at_a = kept_by(a, b, ea, na);
            let at_b = kept_by(b, a, eb, nb);
            prop_assert_eq!(at_a, at_b);
            prop_assert_eq!(at_a.dialler, a.max(b));
        }

        /// A redial by the same peer replaces the old connection, at both
        /// ends alike.
        #[test]
        fn redial_replaces_old_connection((a, b) in distinct_names(), dialler_is_a in any::<bool>()) {
            let dialler = if dialler_is_a { a } else { b };
            let old = Conn { dialler };
            let new = Conn { dialler };
            let at = |me: PeerName, c: Conn| Candidate { outbound: c.dialler == me, remote_uid: 1 };
            prop_assert!(keep_new_connection(a, b, at(a, old), at(a, new)));
            prop_assert!(keep_new_connection(b, a, at(b, old), at(b, new)));
        }

        /// A connection from a new incarnation of the remote (it restarted)
        /// always replaces the old one, whoever dialled which.
        #[test]
        fn new_incarnation_wins(
            (local, remote) in distinct_names(),
            existing_outbound in any::<bool>(),
            new_outbound in any::<bool>(),
            (old_uid, new_uid) in (any::<u64>(), any::<u64>()).prop_filter("distinct", |(a, b)| a != b),
        ) {
            let existing = Candidate { outbound: existing_outbound, remote_uid: old_uid };
            let new = Candidate { outbound: new_outbound, remote_uid: new_uid };
            prop_assert!(keep_new_connection(local, remote, existing, new));
        }
    }
}
