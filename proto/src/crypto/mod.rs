//! Encryption for peers that share a password: the password KDF, the AEAD
//! ciphers, per-connection key chains with rekeying, and the replay window.
//!
//! Like the rest of this crate it is sans-IO: no randomness is drawn here
//! (the caller hands the Noise handshake its entropy) and no clock is read
//! (rekeying takes `now`).

pub mod aead;
pub mod keys;
pub mod noise;
pub mod psk;
pub mod replay;

pub use aead::{AeadKey, AuthError, Cipher, CipherParseError, KEY_LEN, TAG_LEN};
pub use keys::{
    Chain, Exhausted, Nonce, OpenError, Opener, RekeyPolicy, Sealer, SessionSecrets, MAX_EPOCHS_AHEAD, NONCE_LEN,
};
pub use psk::{KdfParams, Psk, PskError, KDF_SALT};
pub use replay::{ReplayError, ReplayWindow, WINDOW};

/// Overwrites a secret before its memory is released. Volatile writes,
/// because plain ones to memory that is about to be freed are dead stores
/// the optimiser may drop.
pub fn wipe(secret: &mut [u8]) {
    for byte in secret.iter_mut() {
        // SAFETY: `byte` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}
