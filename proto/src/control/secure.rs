//! Encryption on the control connection: who refuses whom, the frames of
//! the Noise phase, and sealed frames once keys exist.
//!
//! Both sides' `Hello`s travel in clear (they carry only the name,
//! nickname and the feature bits saying whether a password is set), so a
//! mismatch is reported precisely on both sides without any crypto. With a
//! password on both sides the Noise handshake follows, and after it every
//! frame body is `nonce (9) ‖ ciphertext ‖ tag (16)`, the nonce bytes being
//! the additional data.

use std::time::Instant;

use crate::codec::Writer;
use crate::crypto::{Cipher, Exhausted, Nonce, OpenError, Opener, Psk, RekeyPolicy, Sealer, NONCE_LEN, TAG_LEN};

use super::framing::{FrameError, MAX_MESSAGE_LEN};
use super::handshake::{FEATURE_AES256GCM, FEATURE_ENCRYPTION};

/// The cluster's encryption settings, shared by all connections.
#[derive(Debug)]
pub struct Encryption {
    pub psk: Psk,
    pub cipher: Cipher,
    pub rekey: RekeyPolicy,
}

impl Encryption {
    /// The `Hello` feature bits announcing these settings.
    pub fn features(&self) -> u32 {
        FEATURE_ENCRYPTION | if self.cipher == Cipher::Aes256Gcm { FEATURE_AES256GCM } else { 0 }
    }
}

/// One connection's sleeve keys, handed to the data path.
#[derive(Debug)]
pub struct SleeveKeys {
    pub sealer: Sealer,
    pub opener: Opener,
}

/// Why a peer was refused for encryption reasons. The texts are what
/// operators see in logs and `weft status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("encryption mismatch: peer has no password")]
    PeerHasNoPassword,
    #[error("encryption mismatch: peer requires a password")]
    PeerRequiresPassword,
    #[error("authentication failed: password differs")]
    PasswordDiffers,
    #[error("cipher mismatch: we use {ours}, the peer uses {theirs}")]
    CipherMismatch { ours: Cipher, theirs: Cipher },
}

impl Refusal {
    /// Reason codes on the wire (only `PasswordDiffers` is ever sent: the
    /// others each side works out from the `Hello`s).
    fn code(self) -> u8 {
        match self {
            Refusal::PeerHasNoPassword => 1,
            Refusal::PeerRequiresPassword => 2,
            Refusal::PasswordDiffers => 3,
            Refusal::CipherMismatch { .. } => 4,
        }
    }
}

fn cipher_of(features: u32) -> Cipher {
    if features & FEATURE_AES256GCM != 0 {
        Cipher::Aes256Gcm
    } else {
        Cipher::ChaCha20Poly1305
    }
}

/// Whether the connection gets encrypted, or why it must be refused,
/// from our settings and the remote's `Hello` features.
pub fn negotiate(ours: Option<&Encryption>, remote_features: u32) -> Result<bool, Refusal> {
    let theirs = remote_features & FEATURE_ENCRYPTION != 0;
    match ours {
        None if theirs => Err(Refusal::PeerRequiresPassword),
        None => Ok(false),
        Some(_) if !theirs => Err(Refusal::PeerHasNoPassword),
        Some(enc) => {
            let theirs = cipher_of(remote_features);
            if theirs != enc.cipher {
                return Err(Refusal::CipherMismatch { ours: enc.cipher, theirs });
            }
            Ok(true)
        }
    }
}

/// A frame of the Noise phase: a tag byte, then its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFrame<'a> {
    Noise(&'a [u8]),
    /// The sender refuses the connection; sent before hanging up so both
    /// sides can say why.
    Refuse(Option<Refusal>),
}

const TAG_NOISE: u8 = 1;
const TAG_REFUSE: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeFrameError {
    #[error("empty handshake frame")]
    Empty,
    #[error("unknown handshake frame tag {0}")]
    UnknownTag(u8),
}

impl<'a> HandshakeFrame<'a> {
    pub fn encode(&self, w: &mut Writer<'_>) {
        match self {
            HandshakeFrame::Noise(msg) => w.u8(TAG_NOISE).bytes(msg),
            HandshakeFrame::Refuse(why) => w.u8(TAG_REFUSE).u8(why.map_or(0, Refusal::code)),
        };
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, HandshakeFrameError> {
        let (&tag, rest) = body.split_first().ok_or(HandshakeFrameError::Empty)?;
        match tag {
            TAG_NOISE => Ok(HandshakeFrame::Noise(rest)),
            // An unknown reason from a newer peer is still a refusal.
            TAG_REFUSE => Ok(HandshakeFrame::Refuse(match rest.first() {
                Some(3) => Some(Refusal::PasswordDiffers),
                _ => None,
            })),
            other => Err(HandshakeFrameError::UnknownTag(other)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealFrameError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Exhausted(#[from] Exhausted),
}

/// Appends one sealed frame whose plaintext `encode_body` writes. On error
/// `out` is left as it was.
pub fn write_sealed_frame(
    out: &mut Vec<u8>,
    sealer: &mut Sealer,
    now: Instant,
    encode_body: impl FnOnce(&mut Writer<'_>),
) -> Result<(), SealFrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4 + NONCE_LEN]);
    encode_body(&mut Writer::new(out));
    let len = out.len() - start - 4 + TAG_LEN;
    if len > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(FrameError::Oversized { len, max: MAX_MESSAGE_LEN }.into());
    }
    let nonce = match sealer.next_nonce(now) {
        Ok(nonce) => nonce,
        Err(e) => {
            out.truncate(start);
            return Err(e.into());
        }
    };
    let (head, plaintext) = out.split_at_mut(start + 4 + NONCE_LEN);
    let aad = &mut head[start + 4..];
    aad.copy_from_slice(&nonce.to_bytes());
    let tag = sealer.seal_in_place(nonce, aad, plaintext);
    out.extend_from_slice(&tag);
    // Bounded by MAX_MESSAGE_LEN above.
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Opens a sealed frame body in place; returns the plaintext.
pub fn open_sealed_frame<'a>(opener: &mut Opener, body: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
    let Some((nonce, rest)) = body.split_first_chunk_mut::<NONCE_LEN>() else {
        return Err(OpenError::AuthFailed);
    };
    let nonce_value = Nonce::from_bytes(nonce);
    let len = opener.open_in_place(nonce_value, nonce.as_slice(), rest)?;
    Ok(rest.get(..len).unwrap_or_default())
}

/// The Noise prologue: both sides' version ranges and raw `Hello` bodies,
/// initiator first, so both compute the same bytes.
pub fn prologue(initiator: (&[u8], &[u8]), responder: (&[u8], &[u8])) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + initiator.1.len() + responder.1.len());
    let mut w = Writer::new(&mut p);
    w.bytes(b"weft noise prologue v1");
    for (versions, hello) in [initiator, responder] {
        w.bytes(versions);
        // `Hello` bodies are at most a few hundred bytes.
        w.u32(hello.len() as u32).bytes(hello);
    }
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::Chain;

    fn enc(cipher: Cipher) -> Encryption {
        Encryption { psk: Psk::from_bytes([1; 32]), cipher, rekey: RekeyPolicy::default() }
    }

    #[test]
    fn negotiation_refuses_every_mismatch() {
        let chacha = enc(Cipher::ChaCha20Poly1305);
        let aes = enc(Cipher::Aes256Gcm);
        assert_eq!(negotiate(None, 0), Ok(false));
        assert_eq!(negotiate(None, chacha.features()), Err(Refusal::PeerRequiresPassword));
        assert_eq!(negotiate(Some(&chacha), 0), Err(Refusal::PeerHasNoPassword));
        assert_eq!(negotiate(Some(&chacha), chacha.features()), Ok(true));
        assert_eq!(negotiate(Some(&aes), aes.features()), Ok(true));
        assert_eq!(
            negotiate(Some(&chacha), aes.features()),
            Err(Refusal::CipherMismatch { ours: Cipher::ChaCha20Poly1305, theirs: Cipher::Aes256Gcm })
        );
    }

    #[test]
    fn handshake_frames_roundtrip() {
        for frame in [
            HandshakeFrame::Noise(b"abc"),
            HandshakeFrame::Refuse(Some(Refusal::PasswordDiffers)),
            HandshakeFrame::Refuse(None),
        ] {
            let mut buf = Vec::new();
            frame.encode(&mut Writer::new(&mut buf));
            assert_eq!(HandshakeFrame::decode(&buf), Ok(frame));
        }
        assert_eq!(HandshakeFrame::decode(&[]), Err(HandshakeFrameError::Empty));
        assert_eq!(HandshakeFrame::decode(&[9]), Err(HandshakeFrameError::UnknownTag(9)));
    }

    #[test]
    fn sealed_frames_roundtrip_and_reject_tampering() {
        let now = Instant::now();
        let mut sealer = Sealer::new(Cipher::default(), Chain::from_bytes([5; 32]), RekeyPolicy::default(), now);
        let mut opener = Opener::new(Cipher::default(), Chain::from_bytes([5; 32]));
        let mut out = Vec::new();
        write_sealed_frame(&mut out, &mut sealer, now, |w| {
            w.bytes(b"gossip");
        })
        .unwrap();
        let mut decoder = super::super::framing::FrameDecoder::new();
        decoder.push(&out);
        let body = decoder.next_frame_mut().unwrap().unwrap();
        let mut tampered = body.to_vec();
        tampered[NONCE_LEN] ^= 1;
        assert_eq!(open_sealed_frame(&mut opener, &mut tampered), Err(OpenError::AuthFailed));
        assert_eq!(open_sealed_frame(&mut opener, body), Ok(&b"gossip"[..]));
        assert_eq!(open_sealed_frame(&mut opener, &mut [0; 3]), Err(OpenError::AuthFailed));
    }
}
