//! Peer names: 48-bit, MAC-like identifiers that are stable across restarts.

use std::fmt;
use std::str::FromStr;

/// A peer's name: 48 bits written like a MAC address (`aa:bb:cc:dd:ee:ff`),
/// as Weave does. Stable across restarts (the router persists it); the
/// per-incarnation UID, not the name, tells restarts apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerName([u8; 6]);

impl PeerName {
    pub const LEN: usize = 6;
    /// Reserved: "every peer" in sleeve frame headers. Never a real peer.
    pub const BROADCAST: PeerName = PeerName([0xff; 6]);

    pub const fn from_bytes(bytes: [u8; 6]) -> Self {
        PeerName(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Builds a name from 6 random bytes with the multicast bit cleared and
    /// the locally-administered bit set, so it can never collide with
    /// `BROADCAST` and looks like a private MAC.
    pub fn from_random(mut bytes: [u8; 6]) -> Self {
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        PeerName(bytes)
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {input:?}: expected six hex bytes like 0a:1b:2c:3d:4e:5f")]
pub struct PeerNameParseError {
    pub input: String,
}

impl FromStr for PeerName {
    type Err = PeerNameParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PeerNameParseError { input: s.to_string() };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(PeerName(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn display_parse_roundtrip(bytes in any::<[u8; 6]>()) {
            let name = PeerName::from_bytes(bytes);
            prop_assert_eq!(name.to_string().parse::<PeerName>(), Ok(name));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<PeerName>();
        }

        #[test]
        fn random_names_are_unicast(bytes in any::<[u8; 6]>()) {
            let name = PeerName::from_random(bytes);
            prop_assert!(!name.is_broadcast());
            prop_assert_eq!(name.as_bytes()[0] & 1, 0);
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "aa:bb", "aa:bb:cc:dd:ee:ff:00", "zz:bb:cc:dd:ee:ff", "a:bb:cc:dd:ee:ff0"] {
            assert!(s.parse::<PeerName>().is_err(), "{s}");
        }
    }
}
