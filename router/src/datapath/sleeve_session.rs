//! One encrypted connection's sleeve keys, shared by the threads that seal
//! (TAP reader, relay, the core's heartbeats) and the one that opens.
//!
//! A mutex per direction, never held across a syscall: the sealing side is
//! locked once per run of datagrams to the neighbour (`sealing`), the
//! opening side once per datagram (a batch mixes senders).

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use weft_proto::control::secure::SleeveKeys;
use weft_proto::crypto::{Opener, Sealer};
use weft_proto::sleeve::{self, SealError, UnsealError};
use weft_proto::PeerName;

use crate::metrics::Metrics;

#[derive(Debug)]
pub struct SleeveSession {
    sealer: Mutex<Sealer>,
    opener: Mutex<Opener>,
}

impl SleeveSession {
    pub fn new(keys: SleeveKeys) -> Self {
        SleeveSession { sealer: Mutex::new(keys.sealer), opener: Mutex::new(keys.opener) }
    }

    /// The sealing side, locked until the returned value is dropped.
    pub fn sealing<'a>(&'a self, metrics: &'a Metrics) -> Sealing<'a> {
        let sealer = self.sealer.lock().unwrap_or_else(|p| p.into_inner());
        let before = sealer.rekeys();
        Sealing { sealer, before, metrics }
    }

    /// Opens a sealed datagram in place; returns the plain datagram inside.
    pub fn open<'a>(&self, buf: &'a mut [u8], metrics: &Metrics) -> Result<&'a [u8], UnsealError> {
        let mut opener = self.opener.lock().unwrap_or_else(|p| p.into_inner());
        let before = opener.rekeys();
        let result = sleeve::open(buf, &mut opener);
        let adopted = opener.rekeys() - before;
        if adopted > 0 {
            metrics.rekeys_rx.fetch_add(adopted, Ordering::Relaxed);
        }
        result
    }
}

/// A locked sealer; counts the key rotations it caused when dropped.
#[derive(Debug)]
pub struct Sealing<'a> {
    sealer: MutexGuard<'a, Sealer>,
    before: u64,
    metrics: &'a Metrics,
}

impl Sealing<'_> {
    /// Seals the plain datagram at `buf[SEALED_HEADER_LEN..][..plain_len]`
    /// in place; returns the sealed length.
    pub fn seal(
        &mut self,
        buf: &mut [u8],
        plain_len: usize,
        sender: PeerName,
        now: Instant,
    ) -> Result<usize, SealError> {
        sleeve::seal(buf, plain_len, sender, &mut self.sealer, now)
    }
}

impl Drop for Sealing<'_> {
    fn drop(&mut self) {
        let rotated = self.sealer.rekeys() - self.before;
        if rotated > 0 {
            self.metrics.rekeys_tx.fetch_add(rotated, Ordering::Relaxed);
        }
    }
}
