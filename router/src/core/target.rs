//! A dial target: an address we keep connecting to, with its backoff.

use std::time::Instant;
use weft_proto::backoff::Backoff;
use weft_proto::PeerName;

#[derive(Debug)]
pub(super) struct Target {
    /// Named by the user (`weft connect`, command line) rather than learned.
    pub(super) user: bool,
    /// The Kubernetes Node whose router listens here.
    pub(super) kube_node: Option<String>,
    pub(super) backoff: Backoff,
    pub(super) next_attempt: Option<Instant>,
    pub(super) dialing: bool,
    pub(super) conn: Option<u64>,
    /// Who answered at this address last time.
    pub(super) peer: Option<PeerName>,
    pub(super) last_error: Option<String>,
    /// Dialing this address reaches ourselves: never again.
    pub(super) is_self: bool,
}

impl Target {
    pub(super) fn new(user: bool, now: Instant) -> Self {
        Target {
            user,
            kube_node: None,
            backoff: Backoff::new(),
            next_attempt: Some(now),
            dialing: false,
            conn: None,
            peer: None,
            last_error: None,
            is_self: false,
        }
    }
}
