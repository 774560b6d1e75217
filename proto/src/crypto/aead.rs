//! The two AEAD ciphers a cluster can use, over ring, with nonces we build
//! ourselves from the sender's message counter.

use std::fmt;
use std::str::FromStr;

use ring::aead::{Aad, LessSafeKey, Nonce as RingNonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;

/// The cluster-wide data cipher. ChaCha20-Poly1305 is the default because
/// it is fast everywhere; AES-256-GCM is faster only with AES instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Cipher {
    #[default]
    ChaCha20Poly1305,
    Aes256Gcm,
}

impl Cipher {
    pub const ALL: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Whether this CPU runs the cipher at hardware speed. ChaCha20 needs
    /// no special instructions, so it always counts as accelerated.
    pub fn hardware_accelerated(self) -> bool {
        match self {
            Cipher::ChaCha20Poly1305 => true,
            Cipher::Aes256Gcm => aes_gcm_instructions(),
        }
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn aes_gcm_instructions() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_gcm_instructions() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_gcm_instructions() -> bool {
    false
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cipher {input:?}: expected chacha20-poly1305 or aes-256-gcm")]
pub struct CipherParseError {
    pub input: String,
}

impl FromStr for Cipher {
    type Err = CipherParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "chacha20-poly1305" | "chacha20poly1305" => Ok(Cipher::ChaCha20Poly1305),
            "aes-256-gcm" | "aes256gcm" => Ok(Cipher::Aes256Gcm),
            _ => Err(CipherParseError { input: s.to_string() }),
        }
    }
}

/// The failure of a tag check, deliberately without detail: a wrong key, a
/// wrong nonce and tampered bytes must look the same to an attacker.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("authentication failed")]
pub struct AuthError;

/// One AEAD key. The 96-bit nonce is 4 zero bytes ‖ the 64-bit message
/// counter, so a key must never see the same counter twice; the callers
/// ([`Sealer`](super::Sealer)) guarantee that.
pub struct AeadKey {
    cipher: Cipher,
    key: LessSafeKey,
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey").field("cipher", &self.cipher).finish_non_exhaustive()
    }
}

impl AeadKey {
    pub fn new(cipher: Cipher, key: &[u8; KEY_LEN]) -> AeadKey {
        // Both algorithms take exactly KEY_LEN-byte keys, the only thing
        // ring checks here.
        let unbound = UnboundKey::new(cipher.algorithm(), key).expect("both ciphers take 32-byte keys");
        AeadKey { cipher, key: LessSafeKey::new(unbound) }
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Encrypts `in_out` in place and returns the tag to append.
    pub fn seal_in_place(&self, counter: u64, aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        // ring refuses only inputs of 64 GiB and more, which no message
        // of ours comes near.
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), in_out)
            .expect("message within the AEAD's length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// `in_out` = ciphertext ‖ tag; returns the plaintext length (the
    /// plaintext is then in `in_out[..len]`). On failure `in_out` holds
    /// garbage.
    pub fn open_in_place(&self, counter: u64, aad: &[u8], in_out: &mut [u8]) -> Result<usize, AuthError> {
        self.key.open_in_place(nonce(counter), Aad::from(aad), in_out).map(|plain| plain.len()).map_err(|_| AuthError)
    }
}

fn nonce(counter: u64) -> RingNonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    RingNonce::assume_unique_for_key(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_parse_leniently() {
        for c in Cipher::ALL {
            assert_eq!(c.name().parse::<Cipher>().unwrap(), c);
            assert_eq!(c.to_string(), c.name());
        }
        assert_eq!("ChaCha20Poly1305".parse::<Cipher>().unwrap(), Cipher::ChaCha20Poly1305);
        assert_eq!("AES-256-GCM".parse::<Cipher>().unwrap(), Cipher::Aes256Gcm);
        assert_eq!("aes256gcm".parse::<Cipher>().unwrap(), Cipher::Aes256Gcm);
        let err = "des".parse::<Cipher>().unwrap_err();
        assert!(err.to_string().contains("chacha20-poly1305"), "{err}");
        assert!(err.to_string().contains("aes-256-gcm"), "{err}");
        assert_eq!(Cipher::default(), Cipher::ChaCha20Poly1305);
        assert!(Cipher::ChaCha20Poly1305.hardware_accelerated());
    }

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        for c in Cipher::ALL {
            let key = AeadKey::new(c, &[9; KEY_LEN]);
            let mut msg = b"some plaintext".to_vec();
            let tag = key.seal_in_place(7, b"header", &mut msg);
            assert_ne!(&msg[..], b"some plaintext");
            msg.extend_from_slice(&tag);
            let sealed = msg.clone();
            assert_eq!(key.open_in_place(7, b"header", &mut msg), Ok(14));
            assert_eq!(&msg[..14], b"some plaintext");

            assert_eq!(key.open_in_place(8, b"header", &mut sealed.clone()), Err(AuthError));
            assert_eq!(key.open_in_place(7, b"Header", &mut sealed.clone()), Err(AuthError));
            let other = AeadKey::new(c, &[8; KEY_LEN]);
            assert_eq!(other.open_in_place(7, b"header", &mut sealed.clone()), Err(AuthError));
            assert_eq!(key.open_in_place(7, b"header", &mut sealed.clone()[..TAG_LEN - 1]), Err(AuthError));
        }
    }

    #[test]
    fn debug_hides_key() {
        let key = AeadKey::new(Cipher::Aes256Gcm, &[0xab; KEY_LEN]);
        let s = format!("{key:?}");
        assert!(s.contains("Aes256Gcm") && !s.contains("171") && !s.contains("ab"), "{s}");
    }
}
