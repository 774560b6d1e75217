//! Per-connection keys: four chains derived from the Noise handshake, each
//! ratcheted forward to a fresh AEAD key every epoch, and the sealing and
//! opening ends that use them.
//!
//! Every sealed message carries its nonce in clear: an epoch byte and a
//! 64-bit counter. The counter runs on across epochs and is never reused,
//! so it alone feeds the replay window; the epoch only says which key to
//! use. The receiver follows the sender's epoch byte, so rekeying needs no
//! message of its own and survives loss and reordering.
//!
//! ```text
//! chain_0          = HKDF(salt = handshake hash, ikm = Noise split key, "weft v1 control" | "weft v1 sleeve")
//! key of epoch e   = HKDF-Expand(chain_e, "weft v1 key")
//! chain_{e+1}      = HKDF-Expand(chain_e, "weft v1 next")      (chain_e is then wiped)
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use ring::hkdf::{Prk, Salt, HKDF_SHA256};

use super::aead::{AeadKey, AuthError, Cipher, TAG_LEN};
use super::replay::{ReplayError, ReplayWindow};
use super::wipe;

pub const NONCE_LEN: usize = 9;
/// How many epochs the receiver may skip at once. The sender rotates at
/// most every `after_messages` messages, so a gap this large means many
/// consecutive losses; a bound keeps a forged epoch byte from making us
/// ratchet far (each step is an HMAC).
pub const MAX_EPOCHS_AHEAD: u8 = 4;

/// Past this the counter could run out before the connection is torn down;
/// the margin leaves room for messages already reserved.
const COUNTER_LIMIT: u64 = u64::MAX - (1 << 16);

const INFO_CONTROL: &[u8] = b"weft v1 control";
const INFO_SLEEVE: &[u8] = b"weft v1 sleeve";
const INFO_KEY: &[u8] = b"weft v1 key";
const INFO_NEXT: &[u8] = b"weft v1 next";

/// The explicit nonce in front of every sealed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    pub epoch: u8,
    pub counter: u64,
}

impl Nonce {
    pub fn to_bytes(self) -> [u8; NONCE_LEN] {
        let mut b = [0u8; NONCE_LEN];
        b[0] = self.epoch;
        b[1..].copy_from_slice(&self.counter.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; NONCE_LEN]) -> Nonce {
        let [epoch, counter @ ..] = *b;
        Nonce { epoch, counter: u64::from_be_bytes(counter) }
    }
}

/// When the sender moves to the next epoch: whichever limit comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyPolicy {
    pub after_messages: u64,
    pub after_time: Duration,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        RekeyPolicy { after_messages: 1 << 30, after_time: Duration::from_secs(120) }
    }
}

/// A 32-byte chain secret. Zeroed on drop and deliberately not `Clone`,
/// so each secret lives in exactly one place.
pub struct Chain([u8; 32]);

impl Chain {
    pub fn from_bytes(b: [u8; 32]) -> Chain {
        Chain(b)
    }

    fn next(&self) -> Chain {
        Chain(expand(&self.0, INFO_NEXT))
    }

    fn key(&self, cipher: Cipher) -> AeadKey {
        let mut k = expand(&self.0, INFO_KEY);
        let key = AeadKey::new(cipher, &k);
        wipe(&mut k);
        key
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Chain(<redacted>)")
    }
}

/// HKDF-Expand to one 32-byte block.
fn expand(prk: &[u8; 32], info: &[u8]) -> [u8; 32] {
    okm(&Prk::new_less_safe(HKDF_SHA256, prk), info)
}

fn okm(prk: &Prk, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // HKDF fails only for outputs longer than 255 hash blocks or a buffer
    // of another length than asked for; one 32-byte block is neither.
    prk.expand(&[info], HKDF_SHA256).and_then(|okm| okm.fill(&mut out)).expect("32 bytes is one SHA-256 block");
    out
}

/// The four chains of one connection, named from our side.
#[derive(Debug)]
pub struct SessionSecrets {
    pub control_tx: Chain,
    pub control_rx: Chain,
    pub sleeve_tx: Chain,
    pub sleeve_rx: Chain,
}

impl SessionSecrets {
    /// `k_i2r` / `k_r2i`: the Noise split (initiator→responder,
    /// responder→initiator); `initiator`: which side we are. Both sides
    /// end up with mirror images (my `control_tx` is the peer's
    /// `control_rx`, …). The handshake hash salts the derivation so the
    /// chains are bound to this very handshake transcript.
    pub fn derive(handshake_hash: &[u8], k_i2r: &[u8; 32], k_r2i: &[u8; 32], initiator: bool) -> SessionSecrets {
        let salt = Salt::new(HKDF_SHA256, handshake_hash);
        let direction = |k: &[u8; 32]| {
            let prk = salt.extract(k);
            (Chain(okm(&prk, INFO_CONTROL)), Chain(okm(&prk, INFO_SLEEVE)))
        };
        let (control_i2r, sleeve_i2r) = direction(k_i2r);
        let (control_r2i, sleeve_r2i) = direction(k_r2i);
        if initiator {
            SessionSecrets {
                control_tx: control_i2r,
                control_rx: control_r2i,
                sleeve_tx: sleeve_i2r,
                sleeve_rx: sleeve_r2i,
            }
        } else {
            SessionSecrets {
                control_tx: control_r2i,
                control_rx: control_i2r,
                sleeve_tx: sleeve_r2i,
                sleeve_rx: sleeve_i2r,
            }
        }
    }
}

#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("nonce counter exhausted")]
pub struct Exhausted;

/// The sending end of one direction.
pub struct Sealer {
    /// The chain of the current epoch, kept only to derive the next one.
    chain: Chain,
    key: AeadKey,
    epoch: u8,
    /// The counter the next message gets.
    counter: u64,
    epoch_first_counter: u64,
    epoch_start: Instant,
    policy: RekeyPolicy,
    rekeys: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("cipher", &self.key.cipher())
            .field("epoch", &self.epoch)
            .field("counter", &self.counter)
            .field("rekeys", &self.rekeys)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(cipher: Cipher, chain: Chain, policy: RekeyPolicy, now: Instant) -> Sealer {
        let key = chain.key(cipher);
        Sealer { chain, key, epoch: 0, counter: 0, epoch_first_counter: 0, epoch_start: now, policy, rekeys: 0 }
    }

    /// Reserves the next nonce, first rotating to the next epoch when the
    /// policy says so. `Err(Exhausted)` once the counter nears `u64::MAX`
    /// (never in practice); the caller then tears the connection down.
    pub fn next_nonce(&mut self, now: Instant) -> Result<Nonce, Exhausted> {
        if self.counter >= COUNTER_LIMIT {
            return Err(Exhausted);
        }
        let sent = self.counter - self.epoch_first_counter;
        if sent >= self.policy.after_messages
            || now.saturating_duration_since(self.epoch_start) >= self.policy.after_time
        {
            self.rotate(now);
        }
        let nonce = Nonce { epoch: self.epoch, counter: self.counter };
        self.counter += 1;
        Ok(nonce)
    }

    fn rotate(&mut self, now: Instant) {
        // Assigning drops (and so wipes) the old chain.
        self.chain = self.chain.next();
        self.key = self.chain.key(self.key.cipher());
        // The epoch byte wraps: the receiver only ever compares it with
        // its own epoch modulo 256.
        self.epoch = self.epoch.wrapping_add(1);
        self.epoch_first_counter = self.counter;
        self.epoch_start = now;
        self.rekeys += 1;
    }

    /// Encrypts `in_out` in place and returns the tag. `nonce` must come
    /// from the last [`next_nonce`](Self::next_nonce) call (or one since
    /// the last rotation): its epoch's key is the current one.
    pub fn seal_in_place(&self, nonce: Nonce, aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        debug_assert_eq!(nonce.epoch, self.epoch, "nonce from an earlier epoch");
        self.key.seal_in_place(nonce.counter, aad, in_out)
    }

    /// Rotations done so far.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    pub fn epoch(&self) -> u8 {
        self.epoch
    }

    pub fn cipher(&self) -> Cipher {
        self.key.cipher()
    }
}

#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
    #[error("unknown key epoch")]
    UnknownEpoch,
    #[error("authentication failed")]
    AuthFailed,
}

impl From<AuthError> for OpenError {
    fn from(_: AuthError) -> Self {
        OpenError::AuthFailed
    }
}

/// The receiving end of one direction.
pub struct Opener {
    cipher: Cipher,
    /// The chain of the current epoch, to derive the ones ahead.
    chain: Chain,
    current: AeadKey,
    /// The key of epoch `epoch - 1`, for messages sent just before the
    /// sender rotated and overtaken by the first ones after.
    previous: Option<AeadKey>,
    epoch: u8,
    window: ReplayWindow,
    rekeys: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("cipher", &self.cipher)
            .field("epoch", &self.epoch)
            .field("highest", &self.window.highest())
            .field("rekeys", &self.rekeys)
            .finish_non_exhaustive()
    }
}

/// Where a message's epoch lies relative to the receiver's.
enum EpochRel {
    Current,
    Previous,
    Ahead(u8),
}

impl Opener {
    pub fn new(cipher: Cipher, chain: Chain) -> Opener {
        let current = chain.key(cipher);
        Opener { cipher, chain, current, previous: None, epoch: 0, window: ReplayWindow::new(), rekeys: 0 }
    }

    /// Authenticates and decrypts `in_out` (ciphertext ‖ tag) in place and
    /// returns the plaintext length. Nothing changes unless the message
    /// authenticates: the replay check comes first and its commit last, and
    /// keys of epochs ahead are derived into temporaries and adopted only
    /// after a successful decrypt, so forged messages move no state.
    pub fn open_in_place(&mut self, nonce: Nonce, aad: &[u8], in_out: &mut [u8]) -> Result<usize, OpenError> {
        self.window.check(nonce.counter)?;
        let len = match self.relation(nonce.epoch)? {
            EpochRel::Current => self.current.open_in_place(nonce.counter, aad, in_out)?,
            EpochRel::Previous => {
                self.previous.as_ref().ok_or(OpenError::UnknownEpoch)?.open_in_place(nonce.counter, aad, in_out)?
            }
            EpochRel::Ahead(steps) => self.open_ahead(steps, nonce, aad, in_out)?,
        };
        self.window.commit(nonce.counter);
        Ok(len)
    }

    fn open_ahead(&mut self, steps: u8, nonce: Nonce, aad: &[u8], in_out: &mut [u8]) -> Result<usize, AuthError> {
        let mut before_target = None;
        let mut chain = self.chain.next();
        for _ in 1..steps {
            let next = chain.next();
            before_target = Some(std::mem::replace(&mut chain, next));
        }
        let key = chain.key(self.cipher);
        let len = key.open_in_place(nonce.counter, aad, in_out)?;
        // The new previous key is that of the epoch just before the
        // adopted one: the old current one unless epochs were skipped.
        let old_current = std::mem::replace(&mut self.current, key);
        self.previous = Some(match before_target {
            Some(c) => c.key(self.cipher),
            None => old_current,
        });
        self.chain = chain;
        self.epoch = nonce.epoch;
        self.rekeys += u64::from(steps);
        Ok(len)
    }

    fn relation(&self, epoch: u8) -> Result<EpochRel, OpenError> {
        match epoch.wrapping_sub(self.epoch) {
            0 => Ok(EpochRel::Current),
            u8::MAX => Ok(EpochRel::Previous),
            d if d <= MAX_EPOCHS_AHEAD => Ok(EpochRel::Ahead(d)),
            _ => Err(OpenError::UnknownEpoch),
        }
    }

    /// Epochs adopted so far (skipped ones included).
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    pub fn epoch(&self) -> u8 {
        self.epoch
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AAD: &[u8] = b"header";

    fn pair(cipher: Cipher, policy: RekeyPolicy, now: Instant) -> (Sealer, Opener) {
        (Sealer::new(cipher, Chain::from_bytes([1; 32]), policy, now), Opener::new(cipher, Chain::from_bytes([1; 32])))
    }

    fn every(n: u64) -> RekeyPolicy {
        RekeyPolicy { after_messages: n, ..RekeyPolicy::default() }
    }

    fn seal(s: &mut Sealer, now: Instant, body: &[u8]) -> (Nonce, Vec<u8>) {
        let nonce = s.next_nonce(now).unwrap();
        let mut msg = body.to_vec();
        let tag = s.seal_in_place(nonce, AAD, &mut msg);
        msg.extend_from_slice(&tag);
        (nonce, msg)
    }

    fn open(o: &mut Opener, nonce: Nonce, msg: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut buf = msg.to_vec();
        let n = o.open_in_place(nonce, AAD, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    proptest! {
        #[test]
        fn nonce_bytes_roundtrip(epoch in any::<u8>(), counter in any::<u64>()) {
            let n = Nonce { epoch, counter };
            prop_assert_eq!(Nonce::from_bytes(&n.to_bytes()), n);
            prop_assert_eq!(n.to_bytes()[0], epoch);
        }
    }

    #[test]
    fn roundtrip_both_ciphers() {
        let now = Instant::now();
        for c in Cipher::ALL {
            let (mut s, mut o) = pair(c, RekeyPolicy::default(), now);
            assert_eq!(s.cipher(), c);
            for i in 0..10u8 {
                let body = vec![i; usize::from(i) * 100];
                let (nonce, msg) = seal(&mut s, now, &body);
                assert_eq!(nonce, Nonce { epoch: 0, counter: u64::from(i) });
                assert_eq!(open(&mut o, nonce, &msg).unwrap(), body);
            }
        }
    }

    #[test]
    fn ciphers_do_not_interoperate() {
        let now = Instant::now();
        let mut s = Sealer::new(Cipher::Aes256Gcm, Chain::from_bytes([1; 32]), RekeyPolicy::default(), now);
        let mut o = Opener::new(Cipher::ChaCha20Poly1305, Chain::from_bytes([1; 32]));
        let (nonce, msg) = seal(&mut s, now, b"x");
        assert_eq!(open(&mut o, nonce, &msg), Err(OpenError::AuthFailed));
    }

    #[test]
    fn tampering_fails_and_moves_nothing() {
        let now = Instant::now();
        let (mut s, mut o) = pair(Cipher::default(), RekeyPolicy::default(), now);
        let (nonce, msg) = seal(&mut s, now, b"the genuine payload");
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&mut o, nonce, &bad), Err(OpenError::AuthFailed), "byte {i}");
        }
        let mut buf = msg.clone();
        assert_eq!(o.open_in_place(nonce, b"Header", &mut buf), Err(OpenError::AuthFailed));
        for forged in [
            Nonce { counter: nonce.counter + 1, ..nonce },
            Nonce { counter: 1 << 40, ..nonce },
            Nonce { epoch: 1, ..nonce },
            Nonce { epoch: MAX_EPOCHS_AHEAD, ..nonce },
        ] {
            assert_eq!(open(&mut o, forged, &msg), Err(OpenError::AuthFailed), "{forged:?}");
        }
        assert_eq!(o.window.highest(), None);
        assert_eq!((o.epoch(), o.rekeys()), (0, 0));
        assert!(o.previous.is_none());
        assert_eq!(open(&mut o, nonce, &msg).unwrap(), b"the genuine payload");
    }

    #[test]
    fn replay_is_rejected_before_decrypting() {
        let now = Instant::now();
        let (mut s, mut o) = pair(Cipher::default(), RekeyPolicy::default(), now);
        let (n0, m0) = seal(&mut s, now, b"zero");
        let (n1, m1) = seal(&mut s, now, b"one");
        open(&mut o, n1, &m1).unwrap();
        assert_eq!(open(&mut o, n1, &m1), Err(OpenError::Replay(ReplayError::Duplicate)));
        open(&mut o, n0, &m0).unwrap();
        assert_eq!(open(&mut o, n0, &m0), Err(OpenError::Replay(ReplayError::Duplicate)));
        // A replayed counter under any other bytes is still a replay, not an
        // authentication failure: the check comes first.
        assert_eq!(open(&mut o, n0, b"garbage garbage garbage"), Err(OpenError::Replay(ReplayError::Duplicate)));
    }

    #[test]
    fn receiver_follows_many_rekeys() {
        let now = Instant::now();
        for c in Cipher::ALL {
            let (mut s, mut o) = pair(c, every(3), now);
            for i in 0..1000u64 {
                let (nonce, msg) = seal(&mut s, now, &i.to_be_bytes());
                assert_eq!(nonce.epoch, (i / 3) as u8, "epoch byte wraps");
                assert_eq!(open(&mut o, nonce, &msg).unwrap(), i.to_be_bytes());
            }
            assert_eq!(s.rekeys(), 333);
            assert_eq!(o.rekeys(), 333);
            assert_eq!(s.epoch(), o.epoch());
        }
    }

    #[test]
    fn skipped_epochs_and_stragglers() {
        let now = Instant::now();
        let (mut s, mut o) = pair(Cipher::default(), every(3), now);
        let msgs: Vec<_> = (0..30u8).map(|i| seal(&mut s, now, &[i])).collect();
        // Epoch 0, then straight to epoch 4 (skipping 1..=3, the most allowed).
        open(&mut o, msgs[0].0, &msgs[0].1).unwrap();
        assert_eq!(msgs[12].0.epoch, 4);
        open(&mut o, msgs[12].0, &msgs[12].1).unwrap();
        assert_eq!((o.epoch(), o.rekeys()), (4, 4));
        // A straggler from the epoch just before the adopted one opens...
        assert_eq!(open(&mut o, msgs[11].0, &msgs[11].1).unwrap(), [11]);
        assert_eq!(open(&mut o, msgs[9].0, &msgs[9].1).unwrap(), [9]);
        // ... older ones do not.
        assert_eq!(open(&mut o, msgs[8].0, &msgs[8].1), Err(OpenError::UnknownEpoch));
        assert_eq!(open(&mut o, msgs[1].0, &msgs[1].1), Err(OpenError::UnknownEpoch));
        // Current epoch keeps working, and the next one makes epoch 4 the previous.
        open(&mut o, msgs[13].0, &msgs[13].1).unwrap();
        open(&mut o, msgs[15].0, &msgs[15].1).unwrap();
        assert_eq!(o.epoch(), 5);
        assert_eq!(open(&mut o, msgs[14].0, &msgs[14].1).unwrap(), [14]);
        // Four ahead again (9 from 5) is still followed.
        assert_eq!(msgs[27].0.epoch, 9);
        open(&mut o, msgs[27].0, &msgs[27].1).unwrap();
        assert_eq!(o.epoch(), 9);
    }

    #[test]
    fn too_far_ahead_or_behind_is_unknown_epoch() {
        let now = Instant::now();
        let (mut s, mut o) = pair(Cipher::default(), every(1), now);
        let msgs: Vec<_> = (0..8u8).map(|i| seal(&mut s, now, &[i])).collect();
        assert_eq!(msgs[5].0.epoch, 5);
        assert_eq!(open(&mut o, msgs[5].0, &msgs[5].1), Err(OpenError::UnknownEpoch));
        assert_eq!(o.epoch(), 0);
        open(&mut o, msgs[2].0, &msgs[2].1).unwrap();
        // Two behind, though inside the replay window.
        assert_eq!(open(&mut o, msgs[0].0, &msgs[0].1), Err(OpenError::UnknownEpoch));
        assert_eq!(open(&mut o, msgs[1].0, &msgs[1].1).unwrap(), [1]);
        // The epoch before 0 never existed.
        let (_, mut fresh) = pair(Cipher::default(), every(1), now);
        assert_eq!(open(&mut fresh, Nonce { epoch: u8::MAX, counter: 0 }, &msgs[0].1), Err(OpenError::UnknownEpoch));
    }

    #[test]
    fn time_based_rotation() {
        let t0 = Instant::now();
        let policy = RekeyPolicy { after_messages: u64::MAX, after_time: Duration::from_secs(120) };
        let (mut s, mut o) = pair(Cipher::default(), policy, t0);
        let (n, m) = seal(&mut s, t0 + Duration::from_secs(119), b"a");
        assert_eq!(n.epoch, 0);
        open(&mut o, n, &m).unwrap();
        let (n, m) = seal(&mut s, t0 + Duration::from_secs(120), b"b");
        assert_eq!(n.epoch, 1);
        open(&mut o, n, &m).unwrap();
        // The clock restarts at the rotation.
        let (n, _) = seal(&mut s, t0 + Duration::from_secs(239), b"c");
        assert_eq!(n.epoch, 1);
        let (n, _) = seal(&mut s, t0 + Duration::from_secs(240), b"d");
        assert_eq!(n.epoch, 2);
        // An earlier `now` than the epoch start is no reason to rotate.
        let (n, _) = seal(&mut s, t0, b"e");
        assert_eq!((n.epoch, s.rekeys(), o.rekeys()), (2, 2, 1));
        // Counters ran on across the rotations.
        assert_eq!(n.counter, 4);
    }

    #[test]
    fn counter_exhaustion() {
        let now = Instant::now();
        let (mut s, _) = pair(Cipher::default(), RekeyPolicy::default(), now);
        s.counter = COUNTER_LIMIT - 1;
        s.epoch_first_counter = s.counter;
        assert_eq!(s.next_nonce(now).map(|n| n.counter), Ok(COUNTER_LIMIT - 1));
        assert_eq!(s.next_nonce(now), Err(Exhausted));
        assert_eq!(s.next_nonce(now), Err(Exhausted));
    }

    #[test]
    fn session_secrets_mirror() {
        let now = Instant::now();
        let hash = [5u8; 32];
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let initiator = SessionSecrets::derive(&hash, &k1, &k2, true);
        let responder = SessionSecrets::derive(&hash, &k1, &k2, false);
        let bytes = |c: &Chain| c.0;
        assert_eq!(bytes(&initiator.control_tx), bytes(&responder.control_rx));
        assert_eq!(bytes(&initiator.control_rx), bytes(&responder.control_tx));
        assert_eq!(bytes(&initiator.sleeve_tx), bytes(&responder.sleeve_rx));
        assert_eq!(bytes(&initiator.sleeve_rx), bytes(&responder.sleeve_tx));
        // All four chains differ, and depend on the handshake hash.
        let all = [&initiator.control_tx, &initiator.control_rx, &initiator.sleeve_tx, &initiator.sleeve_rx].map(bytes);
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(all[i], all[j]);
            }
        }
        let other = SessionSecrets::derive(&[6u8; 32], &k1, &k2, true);
        assert_ne!(bytes(&other.control_tx), all[0]);

        let mut s = Sealer::new(Cipher::default(), initiator.sleeve_tx, RekeyPolicy::default(), now);
        let mut o = Opener::new(Cipher::default(), responder.sleeve_rx);
        let (n, m) = seal(&mut s, now, b"hi");
        assert_eq!(open(&mut o, n, &m).unwrap(), b"hi");
    }

    #[test]
    fn secrets_are_redacted_and_wiped() {
        let chain = Chain::from_bytes([0x5a; 32]);
        assert_eq!(format!("{chain:?}"), "Chain(<redacted>)");
        let mut c = std::mem::ManuallyDrop::new(chain);
        // SAFETY: dropped exactly once; the bytes are read back while the
        // memory is still ours (ManuallyDrop keeps it).
        unsafe { std::mem::ManuallyDrop::drop(&mut c) };
        assert_eq!(c.0, [0; 32]);
        let now = Instant::now();
        let (s, o) = pair(Cipher::Aes256Gcm, RekeyPolicy::default(), now);
        for dbg in [format!("{s:?}"), format!("{o:?}")] {
            assert!(dbg.contains("Aes256Gcm") && !dbg.contains("chain:"), "{dbg}");
        }
    }
}
