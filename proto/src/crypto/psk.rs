//! The cluster password, stretched into the 32-byte pre-shared key of the
//! Noise handshake.
//!
//! Argon2id with a memory-hard cost: an attacker who recorded a handshake
//! can test password guesses offline, and the cost per guess is all that
//! slows them down. The salt is fixed because every peer must derive the
//! same key from the same password with nothing exchanged beforehand; it
//! still keeps tables computed for other Argon2 users from applying.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};

use super::wipe;

pub const KDF_SALT: &[u8] = b"weft-psk-v1";
const PSK_LEN: usize = 32;

/// Argon2 costs. Only tests use anything but [`KdfParams::DEFAULT`]:
/// every peer of a cluster must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a quarter of a second, once per
    /// router start.
    pub const DEFAULT: KdfParams = KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 };
}

#[derive(thiserror::Error, Debug)]
pub enum PskError {
    #[error("the password is empty")]
    Empty,
    #[error("password KDF: {0}")]
    Kdf(String),
}

/// The pre-shared key. Zeroed on drop.
pub struct Psk([u8; PSK_LEN]);

impl Psk {
    pub fn derive(password: &[u8]) -> Result<Psk, PskError> {
        Self::derive_with(password, KdfParams::DEFAULT)
    }

    pub fn derive_with(password: &[u8], params: KdfParams) -> Result<Psk, PskError> {
        if password.is_empty() {
            return Err(PskError::Empty);
        }
        let kdf_err = |e: argon2::Error| PskError::Kdf(e.to_string());
        let params =
            Params::new(params.memory_kib, params.iterations, params.parallelism, Some(PSK_LEN)).map_err(kdf_err)?;
        let mut psk = Psk([0; PSK_LEN]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, KDF_SALT, &mut psk.0)
            .map_err(kdf_err)?;
        Ok(psk)
    }

    pub fn from_bytes(b: [u8; PSK_LEN]) -> Psk {
        Psk(b)
    }

    pub fn as_bytes(&self) -> &[u8; PSK_LEN] {
        &self.0
    }
}

impl Drop for Psk {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SMALL: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[test]
    fn same_password_same_key_and_different_password_different_key() {
        let a = Psk::derive_with(b"correct horse", SMALL).unwrap();
        let b = Psk::derive_with(b"correct horse", SMALL).unwrap();
        let c = Psk::derive_with(b"correct horsf", SMALL).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_ne!(a.as_bytes(), &[0; 32]);
    }

    #[test]
    fn params_change_the_key() {
        let a = Psk::derive_with(b"pw", SMALL).unwrap();
        let b = Psk::derive_with(b"pw", KdfParams { iterations: 2, ..SMALL }).unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn known_vector() {
        // Pins the exact algorithm, version, salt and output length: a
        // change here would split a cluster across versions.
        let psk = Psk::derive_with(b"password", SMALL).unwrap();
        assert_eq!(hex(psk.as_bytes()), KNOWN_SMALL);
    }

    const KNOWN_SMALL: &str = "bc80b05501068929585774aa36b0f49d3d14b5b8a1694ef372f2aa687616c908";

    /// The production cost, affordable here because argon2 is built
    /// optimised even in dev (see the workspace Cargo.toml).
    #[test]
    fn default_params_vector() {
        let psk = Psk::derive(b"password").unwrap();
        assert_eq!(hex(psk.as_bytes()), "b35438fb0f72154c2b784159a3e68a61462618c0f5b1c74939478c51a226912e");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn empty_password_and_bad_params_are_errors() {
        assert!(matches!(Psk::derive_with(b"", SMALL), Err(PskError::Empty)));
        let err = Psk::derive_with(b"pw", KdfParams { memory_kib: 1, ..SMALL }).unwrap_err();
        assert!(matches!(err, PskError::Kdf(_)), "{err:?}");
        assert!(err.to_string().starts_with("password KDF: "), "{err}");
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", Psk::from_bytes([0x41; 32])), "Psk(<redacted>)");
    }
}
