//! One encrypted connection's sleeve keys, shared by the threads that seal
//! (TAP reader, relay, the core's heartbeats) and the one that opens.
//!
//! A mutex per direction: each is taken once per datagram for a few
//! hundred nanoseconds of AEAD work, never across a syscall.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
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

    /// Seals the plain datagram at `buf[SEALED_HEADER_LEN..][..plain_len]`
    /// in place; returns the sealed length.
    pub fn seal(
        &self,
        buf: &mut [u8],
        plain_len: usize,
        sender: PeerName,
        now: Instant,
        metrics: &Metrics,
    ) -> Result<usize, SealError> {
        let mut sealer = self.sealer.lock().unwrap_or_else(|p| p.into_inner());
        let before = sealer.rekeys();
        let result = sleeve::seal(buf, plain_len, sender, &mut sealer, now);
        let rotated = sealer.rekeys() - before;
        if rotated > 0 {
            metrics.rekeys_tx.fetch_add(rotated, Ordering::Relaxed);
        }
        result
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
