//! Choosing between two control connections to the same remote peer.
//!
//! Two peers that dial each other at the same moment end up with two TCP
//! connections. Each end must close the same one, or both could close
//! "the other" connection and be left with none.

use crate::PeerName;

/// Whether to keep a `new` connection to `remote` that just completed its
/// handshake, closing the `existing` one, rather than the other way round;
/// `*_outbound` say whether the local peer dialled each.
///
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
pub fn keep_new_connection(local: PeerName, remote: PeerName, existing_outbound: bool, new_outbound: bool) -> bool {
    if existing_outbound == new_outbound {
        return true;
    }
    if local == remote {
        return false;
    }
    let keep_outbound = local > remote;
    new_outbound == keep_outbound
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
        if keep_new_connection(me, other, outbound(existing), outbound(new)) {
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
            prop_assert!(keep_new_connection(a, b, old.dialler == a, new.dialler == a));
            prop_assert!(keep_new_connection(b, a, old.dialler == b, new.dialler == b));
        }
    }
}
