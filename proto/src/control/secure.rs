//! Encryption on the control connection: who refuses whom, which cipher a
//! connection uses, the frames of the Noise phase, and sealed frames once
//! keys exist.
//!
//! Both sides' `Hello`s travel in clear (they carry only the name,
//! nickname and the feature bits saying whether a password is set and how
//! the sender picks its cipher), so a mismatch is reported precisely on
//! both sides without any crypto, and both sides work out the same cipher
//! from the same two `Hello`s ([`negotiate`]). With a password on both
//! sides the Noise handshake follows, its prologue binding both `Hello`s
//! (so feature bits altered in transit fail it like a wrong password), and
//! after it every frame body is `nonce (9) ‖ ciphertext ‖ tag (16)`, the
//! nonce bytes being the additional data.

use std::fmt;
use std::time::Instant;

use crate::codec::Writer;
use crate::crypto::{Cipher, Exhausted, Nonce, OpenError, Opener, Psk, RekeyPolicy, Sealer, NONCE_LEN, TAG_LEN};

use super::framing::{FrameError, MAX_MESSAGE_LEN};
use super::handshake::{FEATURE_AES256GCM, FEATURE_AES_CAPABLE, FEATURE_CIPHER_AUTO, FEATURE_ENCRYPTION};

/// The cluster's encryption settings, shared by all connections.
#[derive(Debug)]
pub struct Encryption {
    pub psk: Psk,
    pub cipher: CipherChoice,
    pub rekey: RekeyPolicy,
}

impl Encryption {
    /// The `Hello` feature bits announcing these settings.
    pub fn features(&self) -> u32 {
        FEATURE_ENCRYPTION | self.cipher.features()
    }
}

/// How a router picks the cipher of each encrypted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherChoice {
    /// No cipher set (`--cipher auto`, the default): AES-256-GCM with a
    /// peer that is AES capable too, ChaCha20-Poly1305 with one that is
    /// not; a peer fixed to a cipher gets that cipher. `aes_capable`: this
    /// CPU has AES instructions (the caller detects it; see
    /// [`Cipher::hardware_accelerated`]).
    Auto { aes_capable: bool },
    /// `--cipher NAME`: this cipher on every connection; a peer fixed to
    /// another one is refused.
    Fixed(Cipher),
}

impl CipherChoice {
    /// The cipher feature bits (`FEATURE_ENCRYPTION` aside). A fixed
    /// choice sends what routers sent before `auto` existed, plus
    /// `FEATURE_AES_CAPABLE` with AES (true: a router refuses to start with
    /// AES on a CPU without AES instructions). An auto choice never sends
    /// `FEATURE_AES256GCM`, so older routers read it as ChaCha20-Poly1305.
    pub fn features(self) -> u32 {
        match self {
            CipherChoice::Fixed(Cipher::ChaCha20Poly1305) => 0,
            CipherChoice::Fixed(Cipher::Aes256Gcm) => FEATURE_AES256GCM | FEATURE_AES_CAPABLE,
            CipherChoice::Auto { aes_capable } => {
                FEATURE_CIPHER_AUTO | if aes_capable { FEATURE_AES_CAPABLE } else { 0 }
            }
        }
    }

    /// A remote's choice as its `Hello` features announce it. Without
    /// `FEATURE_CIPHER_AUTO` (an older router, or a fixed one) it is fixed
    /// to what `FEATURE_AES256GCM` says, which also wins over
    /// `FEATURE_CIPHER_AUTO`, as it does for older routers.
    pub fn from_features(features: u32) -> CipherChoice {
        if features & FEATURE_AES256GCM != 0 {
            CipherChoice::Fixed(Cipher::Aes256Gcm)
        } else if features & FEATURE_CIPHER_AUTO != 0 {
            CipherChoice::Auto { aes_capable: features & FEATURE_AES_CAPABLE != 0 }
        } else {
            CipherChoice::Fixed(Cipher::ChaCha20Poly1305)
        }
    }
}

/// What `weft status` shows after `Encryption: enabled`.
impl fmt::Display for CipherChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CipherChoice::Fixed(cipher) => f.write_str(cipher.name()),
            CipherChoice::Auto { aes_capable: true } => write!(
                f,
                "auto: {} with peers that have AES instructions, else {}",
                Cipher::Aes256Gcm,
                Cipher::ChaCha20Poly1305
            ),
            CipherChoice::Auto { aes_capable: false } => write!(
                f,
                "auto: {}, this CPU has no AES instructions; {} only with peers fixed to it",
                Cipher::ChaCha20Poly1305,
                Cipher::Aes256Gcm
            ),
        }
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

/// Whether the connection gets encrypted and with which cipher (`None`:
/// unencrypted), or why it must be refused, from our settings and the
/// remote's `Hello` features.
///
/// Both ends reach the same answer from the two `Hello`s:
///
/// | ours \ theirs | fixed B                  | auto                                                    |
/// |---------------|--------------------------|---------------------------------------------------------|
/// | fixed A       | A if A = B, else refused | A                                                       |
/// | auto          | B                        | AES-256-GCM if both AES capable, else ChaCha20-Poly1305 |
///
/// One exception keeps routers from before `auto` in agreement: one fixed
/// to AES-256-GCM sends no `FEATURE_AES_CAPABLE` and reads our auto `Hello`
/// as ChaCha20-Poly1305, so it refuses us; we refuse it with the mirror
/// image of its reason.
pub fn negotiate(ours: Option<&Encryption>, remote_features: u32) -> Result<Option<Cipher>, Refusal> {
    let theirs = remote_features & FEATURE_ENCRYPTION != 0;
    match ours {
        None if theirs => Err(Refusal::PeerRequiresPassword),
        None => Ok(None),
        Some(_) if !theirs => Err(Refusal::PeerHasNoPassword),
        Some(enc) => choose_cipher(enc.cipher, remote_features).map(Some),
    }
}

fn choose_cipher(ours: CipherChoice, remote_features: u32) -> Result<Cipher, Refusal> {
    use CipherChoice::{Auto, Fixed};
    match (ours, CipherChoice::from_features(remote_features)) {
        (Fixed(ours), Fixed(theirs)) if ours != theirs => Err(Refusal::CipherMismatch { ours, theirs }),
        (Fixed(ours), _) => Ok(ours),
        (Auto { .. }, Fixed(Cipher::Aes256Gcm)) if remote_features & FEATURE_AES_CAPABLE == 0 => {
            Err(Refusal::CipherMismatch { ours: Cipher::ChaCha20Poly1305, theirs: Cipher::Aes256Gcm })
        }
        (Auto { .. }, Fixed(theirs)) => Ok(theirs),
        (Auto { aes_capable: true }, Auto { aes_capable: true }) => Ok(Cipher::Aes256Gcm),
        (Auto { .. }, Auto { .. }) => Ok(Cipher::ChaCha20Poly1305),
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

    fn enc(cipher: CipherChoice) -> Encryption {
        Encryption { psk: Psk::from_bytes([1; 32]), cipher, rekey: RekeyPolicy::default() }
    }

    const CHACHA: Cipher = Cipher::ChaCha20Poly1305;
    const AES: Cipher = Cipher::Aes256Gcm;
    const AUTO_AES: CipherChoice = CipherChoice::Auto { aes_capable: true };
    const AUTO_NO_AES: CipherChoice = CipherChoice::Auto { aes_capable: false };
    const ALL_CHOICES: [CipherChoice; 4] =
        [CipherChoice::Fixed(CHACHA), CipherChoice::Fixed(AES), AUTO_AES, AUTO_NO_AES];

    /// What `a` decides facing `b`'s `Hello`.
    fn decide(a: CipherChoice, b: CipherChoice) -> Result<Option<Cipher>, Refusal> {
        negotiate(Some(&enc(a)), enc(b).features())
    }

    /// What a router from before `auto` (which knew only bits 2 and 4)
    /// decided, fixed to `ours`, from the remote's features.
    fn old_router_decides(ours: Cipher, remote_features: u32) -> Result<Option<Cipher>, Refusal> {
        if remote_features & FEATURE_ENCRYPTION == 0 {
            return Err(Refusal::PeerHasNoPassword);
        }
        let theirs = if remote_features & FEATURE_AES256GCM != 0 { AES } else { CHACHA };
        if theirs == ours {
            Ok(Some(ours))
        } else {
            Err(Refusal::CipherMismatch { ours, theirs })
        }
    }

    /// The features an older router sent, fixed to `cipher`.
    fn old_router_features(cipher: Cipher) -> u32 {
        FEATURE_ENCRYPTION | if cipher == AES { FEATURE_AES256GCM } else { 0 }
    }

    /// The refusal as the other end words it.
    fn mirrored(r: Result<Option<Cipher>, Refusal>) -> Result<Option<Cipher>, Refusal> {
        r.map_err(|e| match e {
            Refusal::CipherMismatch { ours, theirs } => Refusal::CipherMismatch { ours: theirs, theirs: ours },
            other => other,
        })
    }

    #[test]
    fn negotiation_refuses_every_mismatch() {
        let chacha = enc(CipherChoice::Fixed(CHACHA));
        let aes = enc(CipherChoice::Fixed(AES));
        let auto = enc(AUTO_AES);
        assert_eq!(negotiate(None, 0), Ok(None));
        assert_eq!(negotiate(None, chacha.features()), Err(Refusal::PeerRequiresPassword));
        assert_eq!(negotiate(None, auto.features()), Err(Refusal::PeerRequiresPassword));
        assert_eq!(negotiate(Some(&chacha), 0), Err(Refusal::PeerHasNoPassword));
        assert_eq!(negotiate(Some(&auto), 0), Err(Refusal::PeerHasNoPassword));
        assert_eq!(negotiate(Some(&chacha), chacha.features()), Ok(Some(CHACHA)));
        assert_eq!(negotiate(Some(&aes), aes.features()), Ok(Some(AES)));
        assert_eq!(
            negotiate(Some(&chacha), aes.features()),
            Err(Refusal::CipherMismatch { ours: CHACHA, theirs: AES })
        );
        assert_eq!(
            negotiate(Some(&aes), chacha.features()),
            Err(Refusal::CipherMismatch { ours: AES, theirs: CHACHA })
        );
        assert_eq!(
            Refusal::CipherMismatch { ours: CHACHA, theirs: AES }.to_string(),
            "cipher mismatch: we use chacha20-poly1305, the peer uses aes-256-gcm"
        );
    }

    #[test]
    fn auto_takes_aes_only_when_both_ends_are_capable() {
        assert_eq!(decide(AUTO_AES, AUTO_AES), Ok(Some(AES)));
        assert_eq!(decide(AUTO_AES, AUTO_NO_AES), Ok(Some(CHACHA)));
        assert_eq!(decide(AUTO_NO_AES, AUTO_AES), Ok(Some(CHACHA)));
        assert_eq!(decide(AUTO_NO_AES, AUTO_NO_AES), Ok(Some(CHACHA)));
    }

    #[test]
    fn auto_facing_a_fixed_peer_takes_its_cipher() {
        for auto in [AUTO_AES, AUTO_NO_AES] {
            for cipher in Cipher::ALL {
                let fixed = CipherChoice::Fixed(cipher);
                assert_eq!(decide(auto, fixed), Ok(Some(cipher)), "{auto:?} facing {fixed:?}");
                assert_eq!(decide(fixed, auto), Ok(Some(cipher)), "{fixed:?} facing {auto:?}");
            }
        }
    }

    #[test]
    fn both_ends_always_reach_the_same_answer() {
        for a in ALL_CHOICES {
            for b in ALL_CHOICES {
                assert_eq!(decide(a, b), mirrored(decide(b, a)), "{a:?} and {b:?}");
            }
        }
    }

    #[test]
    fn features_roundtrip_and_auto_never_claims_fixed_aes() {
        for choice in ALL_CHOICES {
            assert_eq!(CipherChoice::from_features(enc(choice).features()), choice);
        }
        for auto in [AUTO_AES, AUTO_NO_AES] {
            let features = enc(auto).features();
            assert_eq!(features & FEATURE_AES256GCM, 0, "{auto:?}");
            assert_ne!(features & FEATURE_CIPHER_AUTO, 0, "{auto:?}");
        }
        assert_ne!(enc(AUTO_AES).features() & FEATURE_AES_CAPABLE, 0);
        assert_eq!(enc(AUTO_NO_AES).features() & FEATURE_AES_CAPABLE, 0);
        // Fixed choices send what routers sent before `auto` (and AES
        // capability with AES, which a fixed AES router always has).
        assert_eq!(enc(CipherChoice::Fixed(CHACHA)).features(), old_router_features(CHACHA));
        assert_eq!(enc(CipherChoice::Fixed(AES)).features(), old_router_features(AES) | FEATURE_AES_CAPABLE);
        // A (future) Hello with both bits is fixed to AES, as older routers read it.
        assert_eq!(CipherChoice::from_features(FEATURE_CIPHER_AUTO | FEATURE_AES256GCM), CipherChoice::Fixed(AES));
    }

    #[test]
    fn older_routers_without_the_auto_bit_decide_as_we_do() {
        for ours in ALL_CHOICES {
            for old in Cipher::ALL {
                let we_decide = negotiate(Some(&enc(ours)), old_router_features(old));
                let they_decide = old_router_decides(old, enc(ours).features());
                assert_eq!(we_decide, mirrored(they_decide), "{ours:?} facing an older router fixed to {old}");
            }
        }
        // In particular: auto with an older ChaCha router is ChaCha, and an
        // older AES router, taking auto for ChaCha, is refused by both.
        assert_eq!(negotiate(Some(&enc(AUTO_AES)), old_router_features(CHACHA)), Ok(Some(CHACHA)));
        assert_eq!(
            negotiate(Some(&enc(AUTO_AES)), old_router_features(AES)),
            Err(Refusal::CipherMismatch { ours: CHACHA, theirs: AES })
        );
        assert_eq!(
            old_router_decides(AES, enc(AUTO_AES).features()),
            Err(Refusal::CipherMismatch { ours: AES, theirs: CHACHA })
        );
    }

    #[test]
    fn status_texts() {
        assert_eq!(CipherChoice::Fixed(CHACHA).to_string(), "chacha20-poly1305");
        assert_eq!(CipherChoice::Fixed(AES).to_string(), "aes-256-gcm");
        assert_eq!(
            AUTO_AES.to_string(),
            "auto: aes-256-gcm with peers that have AES instructions, else chacha20-poly1305"
        );
        assert!(AUTO_NO_AES.to_string().starts_with("auto: chacha20-poly1305"), "{AUTO_NO_AES}");
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
