//! Sleeve keys of connections closed as duplicates, kept for a moment so
//! their last datagrams still open.
//!
//! When two routers dial each other at once, each may seal a heartbeat or
//! a frame with the keys of the connection the tie-break then closes,
//! before it learns the outcome; the datagram is genuine, and on its way.
//! The receiver tries these keys when the live connection's fail, for a
//! few seconds, instead of dropping the datagram as a forgery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_proto::PeerName;

use crate::datapath::sleeve_session::SleeveSession;

/// Long enough for anything in flight when the duplicate closed.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(super) struct RetiredSessions {
    entries: Vec<(PeerName, Arc<SleeveSession>, Instant)>,
}

impl RetiredSessions {
    pub fn retire(&mut self, peer: PeerName, session: Arc<SleeveSession>, now: Instant) {
        self.entries.push((peer, session, now + GRACE));
    }

    /// Forgets the expired ones; true when any went.
    pub fn prune(&mut self, now: Instant) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, _, until)| *until > now);
        self.entries.len() != before
    }

    /// The earliest expiry, for the core's sleep.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries.iter().map(|(_, _, until)| *until).min()
    }

    /// Per peer, for the data path's forwarding table.
    pub fn by_peer(&self) -> HashMap<PeerName, Vec<Arc<SleeveSession>>> {
        let mut map: HashMap<PeerName, Vec<Arc<SleeveSession>>> = HashMap::new();
        for (peer, session, _) in &self.entries {
            map.entry(*peer).or_default().push(session.clone());
        }
        map
    }
}
