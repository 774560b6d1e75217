//! The Noise handshake that opens an encrypted control connection.
//!
//! Pattern `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`: two messages, fresh
//! ephemeral keys on both sides (forward secrecy), and both ends
//! authenticated by the password-derived pre-shared key alone, since weft
//! peers have no long-term keys. The prologue binds both sides' plaintext
//! `Hello`s, so a `Hello` altered in transit fails the handshake like a
//! wrong password does.
//!
//! Sans-IO and deterministic: the caller supplies the 32 bytes of entropy
//! the ephemeral key is made from.

use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher as NoiseCipher, Dh, Hash, Random};

use super::keys::SessionSecrets;
use super::psk::Psk;

pub const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Both handshake messages: an ephemeral public key and the tag of an
/// empty payload. Anything else is malformed, which keeps a truncated
/// message from being reported as a wrong password.
pub const MESSAGE_LEN: usize = 32 + 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// The peer's message did not verify: it used another password (or
    /// the `Hello`s were tampered with; the two can't be told apart).
    #[error("authentication failed: password differs")]
    AuthFailed,
    #[error("handshake message is {len} bytes, expected {MESSAGE_LEN}")]
    BadLength { len: usize },
    #[error("handshake message out of turn")]
    OutOfTurn,
    #[error("noise: {0}")]
    Internal(String),
}

pub struct NoiseHandshake {
    state: snow::HandshakeState,
}

impl std::fmt::Debug for NoiseHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseHandshake")
            .field("initiator", &self.state.is_initiator())
            .field("finished", &self.state.is_handshake_finished())
            .finish()
    }
}

impl NoiseHandshake {
    pub fn new(psk: &Psk, prologue: &[u8], initiator: bool, entropy: [u8; 32]) -> Result<Self, NoiseError> {
        let params: NoiseParams = PATTERN.parse().map_err(internal)?;
        let resolver = Box::new(SeededResolver { seed: entropy });
        let builder = snow::Builder::with_resolver(params, resolver).psk(0, psk.as_bytes()).map_err(internal)?;
        let builder = builder.prologue(prologue).map_err(internal)?;
        let state = if initiator { builder.build_initiator() } else { builder.build_responder() }.map_err(internal)?;
        Ok(NoiseHandshake { state })
    }

    /// True when the next step is `write_message`.
    pub fn is_my_turn(&self) -> bool {
        !self.is_finished() && self.state.is_my_turn()
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// Appends our next handshake message to `out`.
    pub fn write_message(&mut self, out: &mut Vec<u8>) -> Result<(), NoiseError> {
        if !self.is_my_turn() {
            return Err(NoiseError::OutOfTurn);
        }
        let mut msg = [0u8; MESSAGE_LEN];
        let n = self.state.write_message(&[], &mut msg).map_err(internal)?;
        out.extend_from_slice(msg.get(..n).unwrap_or_default());
        Ok(())
    }

    pub fn read_message(&mut self, msg: &[u8]) -> Result<(), NoiseError> {
        if self.is_finished() || self.state.is_my_turn() {
            return Err(NoiseError::OutOfTurn);
        }
        if msg.len() != MESSAGE_LEN {
            return Err(NoiseError::BadLength { len: msg.len() });
        }
        let mut payload = [0u8; MESSAGE_LEN];
        match self.state.read_message(msg, &mut payload) {
            Ok(0) => Ok(()),
            Ok(_) => Err(NoiseError::BadLength { len: msg.len() }),
            Err(snow::Error::Decrypt) => Err(NoiseError::AuthFailed),
            Err(e) => Err(internal(e)),
        }
    }

    /// The per-connection secrets; only once the handshake is finished.
    pub fn finish(mut self) -> Result<SessionSecrets, NoiseError> {
        if !self.is_finished() {
            return Err(NoiseError::OutOfTurn);
        }
        let (k_i2r, k_r2i) = self.state.dangerously_get_raw_split();
        let initiator = self.state.is_initiator();
        Ok(SessionSecrets::derive(self.state.get_handshake_hash(), &k_i2r, &k_r2i, initiator))
    }
}

fn internal(e: impl std::fmt::Display) -> NoiseError {
    NoiseError::Internal(e.to_string())
}

/// snow's default primitives, with randomness from the caller's seed.
struct SeededResolver {
    seed: [u8; 32],
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom { seed: self.seed, block: 0 }))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn NoiseCipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// Expands the seed as SHA-256(seed ‖ block number): one handshake only
/// ever draws one 32-byte ephemeral key, but nothing breaks if it drew more.
struct SeededRandom {
    seed: [u8; 32],
    block: u64,
}

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        for chunk in dest.chunks_mut(32) {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(&self.seed);
            ctx.update(&self.block.to_be_bytes());
            self.block += 1;
            let digest = ctx.finish();
            chunk.copy_from_slice(digest.as_ref().get(..chunk.len()).unwrap_or_default());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::{Chain, Cipher, OpenError, Opener, RekeyPolicy, Sealer};

    fn pair(psk_i: [u8; 32], psk_r: [u8; 32]) -> (NoiseHandshake, NoiseHandshake) {
        let i = NoiseHandshake::new(&Psk::from_bytes(psk_i), b"prologue", true, [1; 32]).unwrap();
        let r = NoiseHandshake::new(&Psk::from_bytes(psk_r), b"prologue", false, [2; 32]).unwrap();
        (i, r)
    }

    #[test]
    fn same_psk_completes_with_mirror_secrets() {
        let (mut i, mut r) = pair([7; 32], [7; 32]);
        let mut m1 = Vec::new();
        i.write_message(&mut m1).unwrap();
        assert_eq!(m1.len(), MESSAGE_LEN);
        r.read_message(&m1).unwrap();
        let mut m2 = Vec::new();
        r.write_message(&mut m2).unwrap();
        i.read_message(&m2).unwrap();
        assert!(i.is_finished() && r.is_finished());
        let (si, sr) = (i.finish().unwrap(), r.finish().unwrap());
        // What one side seals with a tx chain the other opens with the
        // matching rx chain, and with no other.
        assert_eq!(roundtrip(si.control_tx, sr.control_rx), Ok(5));
        assert_eq!(roundtrip(sr.sleeve_tx, si.sleeve_rx), Ok(5));
        assert_eq!(roundtrip(si.sleeve_tx, si.control_rx), Err(OpenError::AuthFailed));
    }

    fn roundtrip(tx: Chain, rx: Chain) -> Result<usize, OpenError> {
        let now = std::time::Instant::now();
        let mut sealer = Sealer::new(Cipher::default(), tx, RekeyPolicy::default(), now);
        let mut opener = Opener::new(Cipher::default(), rx);
        let nonce = sealer.next_nonce(now).unwrap();
        let mut msg = b"hello".to_vec();
        let tag = sealer.seal_in_place(nonce, b"aad", &mut msg);
        msg.extend_from_slice(&tag);
        opener.open_in_place(nonce, b"aad", &mut msg)
    }

    #[test]
    fn wrong_psk_fails_at_the_responder() {
        let (mut i, mut r) = pair([7; 32], [8; 32]);
        let mut m1 = Vec::new();
        i.write_message(&mut m1).unwrap();
        assert_eq!(r.read_message(&m1), Err(NoiseError::AuthFailed));
    }

    #[test]
    fn different_prologue_fails() {
        let mut i = NoiseHandshake::new(&Psk::from_bytes([7; 32]), b"one", true, [1; 32]).unwrap();
        let mut r = NoiseHandshake::new(&Psk::from_bytes([7; 32]), b"two", false, [2; 32]).unwrap();
        let mut m1 = Vec::new();
        i.write_message(&mut m1).unwrap();
        assert_eq!(r.read_message(&m1), Err(NoiseError::AuthFailed));
    }

    #[test]
    fn truncated_and_out_of_turn_messages_are_rejected() {
        let (mut i, mut r) = pair([7; 32], [7; 32]);
        let mut m1 = Vec::new();
        i.write_message(&mut m1).unwrap();
        assert_eq!(r.read_message(&m1[..40]), Err(NoiseError::BadLength { len: 40 }));
        // The initiator can't read before it has written, nor write twice.
        assert_eq!(i.write_message(&mut Vec::new()), Err(NoiseError::OutOfTurn));
        let (mut i2, _) = pair([7; 32], [7; 32]);
        assert_eq!(i2.read_message(&m1), Err(NoiseError::OutOfTurn));
        // The responder still accepts the genuine message after a rejected one.
        r.read_message(&m1).unwrap();
        assert!(r.is_my_turn());
    }

    #[test]
    fn replayed_first_message_under_another_prologue_fails() {
        // A first message recorded from one connection is useless on another:
        // the prologue carries both sides' fresh connection ids.
        let mut i = NoiseHandshake::new(&Psk::from_bytes([7; 32]), b"conn 1", true, [1; 32]).unwrap();
        let mut m1 = Vec::new();
        i.write_message(&mut m1).unwrap();
        let mut r = NoiseHandshake::new(&Psk::from_bytes([7; 32]), b"conn 2", false, [2; 32]).unwrap();
        assert_eq!(r.read_message(&m1), Err(NoiseError::AuthFailed));
    }
}
