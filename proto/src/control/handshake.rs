//! The start of every control connection: a raw version preamble, then a
//! `Hello` frame describing the peer.
//!
//! The preamble is deliberately not framed: a peer (or a port scanner, or
//! an HTTP client that dialled the wrong port) is rejected after at most
//! four bytes if it doesn't speak weft, and versions are agreed before
//! anything version-specific is parsed. The `Hello` body is the same in
//! every protocol version, because each side sends it before it has seen
//! the other's preamble.

use std::fmt;

use crate::codec::{DecodeError, Reader, Writer};
use crate::PeerName;

/// Identifies a weft control connection; anything else is hung up on.
pub const MAGIC: [u8; 4] = *b"weft";
pub const PROTOCOL_MIN_VERSION: u8 = 1;
pub const PROTOCOL_MAX_VERSION: u8 = 1;
/// Magic + min version + max version.
pub const PREAMBLE_LEN: usize = MAGIC.len() + 2;

/// Feature bits advertised in `Hello::features`.
pub const FEATURE_FASTDP: u32 = 1;
/// The sender has a password: it runs the Noise handshake and seals
/// everything after it (see `secure`).
pub const FEATURE_ENCRYPTION: u32 = 2;
/// With `FEATURE_ENCRYPTION`: the sender is fixed to AES-256-GCM
/// (`--cipher aes-256-gcm`). Absent, and without `FEATURE_CIPHER_AUTO`:
/// fixed to ChaCha20-Poly1305. Routers from before `auto` know only this
/// bit, so an auto sender never sets it: to them it is ChaCha.
pub const FEATURE_AES256GCM: u32 = 4;
/// With `FEATURE_ENCRYPTION`: the sender set no cipher; it takes
/// AES-256-GCM when both ends are AES capable (or the other end is fixed
/// to it), else ChaCha20-Poly1305. See `secure::negotiate`.
pub const FEATURE_CIPHER_AUTO: u32 = 8;
/// With `FEATURE_ENCRYPTION`: the sender's CPU has AES instructions (AES-NI
/// and PCLMULQDQ, or the Arm AES extension). Sent by auto peers that have
/// them and by every peer fixed to AES-256-GCM (which must have them),
/// which tells those apart from older routers fixed to it.
pub const FEATURE_AES_CAPABLE: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("bad magic {}: the remote does not speak the weft control protocol", .received.escape_ascii())]
    BadMagic {
        /// What arrived instead, up to and including the first wrong byte.
        received: Vec<u8>,
    },
    #[error("no common protocol version: we speak {ours}, the remote speaks {theirs}")]
    VersionMismatch { ours: VersionRange, theirs: VersionRange },
    #[error("the remote claims the reserved broadcast peer name")]
    BroadcastName,
}

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub min: u8,
    pub max: u8,
}

impl VersionRange {
    pub const OURS: VersionRange = VersionRange { min: PROTOCOL_MIN_VERSION, max: PROTOCOL_MAX_VERSION };

    /// The highest version both ranges contain. An inverted range (min >
    /// max) contains nothing, so never negotiates.
    pub fn negotiate(self, theirs: VersionRange) -> Result<u8, HandshakeError> {
        let best = self.max.min(theirs.max);
        if best >= self.min.max(theirs.min) {
            Ok(best)
        } else {
            Err(HandshakeError::VersionMismatch { ours: self, theirs })
        }
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// Appends the preamble announcing `versions`.
pub fn write_preamble(out: &mut Vec<u8>, versions: VersionRange) {
    Writer::new(out).bytes(&MAGIC).u8(versions.min).u8(versions.max);
}

/// Accumulates the remote's preamble across arbitrarily split input.
#[derive(Debug, Default)]
pub struct PreambleReader {
    buf: [u8; PREAMBLE_LEN],
    len: usize,
}

impl PreambleReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes preamble bytes from the front of `input`, leaving whatever
    /// follows it there. Returns the remote's version range once complete.
    /// Checks the magic byte by byte so that garbage fails immediately
    /// rather than after a full preamble's worth of input.
    pub fn read(&mut self, input: &mut &[u8]) -> Result<Option<VersionRange>, HandshakeError> {
        while self.len < PREAMBLE_LEN {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(None);
            };
            *input = rest;
            if let Some(&expected) = MAGIC.get(self.len) {
                if byte != expected {
                    let mut received = self.buf[..self.len].to_vec();
                    received.push(byte);
                    return Err(HandshakeError::BadMagic { received });
                }
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
        let [.., min, max] = self.buf;
        Ok(Some(VersionRange { min, max }))
    }
}

/// The first frame in each direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: PeerName,
    /// Human-readable (usually the hostname); at most 255 bytes on the wire.
    pub nickname: String,
    /// Changes every time the peer restarts, so the topology can tell a
    /// restarted peer from a stale view of its previous incarnation.
    pub uid: u64,
    /// Random per connection; lets the router tell connections apart.
    pub conn_id: u64,
    /// Where the sender listens for sleeve (UDP) traffic.
    pub udp_port: u16,
    /// `FEATURE_*` bits.
    pub features: u32,
}

impl Hello {
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.peer_name(self.name)
            .short_str(&self.nickname)
            .u64(self.uid)
            .u64(self.conn_id)
            .u16(self.udp_port)
            .u32(self.features);
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let hello = Hello {
            name: r.peer_name("hello peer name")?,
            nickname: r.short_str("hello nickname")?.to_owned(),
            uid: r.u64("hello uid")?,
            conn_id: r.u64("hello connection id")?,
            udp_port: r.u16("hello udp port")?,
            features: r.u32("hello features")?,
        };
        r.finish("hello")?;
        Ok(hello)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn preamble(min: u8, max: u8) -> Vec<u8> {
        let mut out = Vec::new();
        write_preamble(&mut out, VersionRange { min, max });
        out
    }

    #[test]
    fn negotiates_highest_common_version() {
        let ours = VersionRange { min: 1, max: 3 };
        assert_eq!(ours.negotiate(VersionRange { min: 2, max: 5 }), Ok(3));
        assert_eq!(ours.negotiate(VersionRange { min: 0, max: 2 }), Ok(2));
        assert_eq!(ours.negotiate(VersionRange { min: 3, max: 3 }), Ok(3));
        let theirs = VersionRange { min: 4, max: 9 };
        assert_eq!(ours.negotiate(theirs), Err(HandshakeError::VersionMismatch { ours, theirs }));
        // An inverted range overlaps nothing.
        assert!(ours.negotiate(VersionRange { min: 3, max: 2 }).is_err());
    }

    #[test]
    fn preamble_split_anywhere_then_rest_left_in_input() {
        let mut stream = preamble(1, 7);
        stream.extend_from_slice(b"tail");
        for split in 0..=PREAMBLE_LEN {
            let mut reader = PreambleReader::new();
            let mut first = &stream[..split];
            let got = reader.read(&mut first).expect("valid");
            assert!(first.is_empty());
            if split < PREAMBLE_LEN {
                assert_eq!(got, None);
                let mut second = &stream[split..];
                let got = reader.read(&mut second).expect("valid");
                assert_eq!(got, Some(VersionRange { min: 1, max: 7 }));
                assert_eq!(second, b"tail");
            } else {
                assert_eq!(got, Some(VersionRange { min: 1, max: 7 }));
            }
        }
    }

    #[test]
    fn bad_magic_fails_on_first_wrong_byte() {
        let mut reader = PreambleReader::new();
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n";
        assert_eq!(reader.read(&mut input), Err(HandshakeError::BadMagic { received: b"G".to_vec() }));
        let mut reader = PreambleReader::new();
        let mut input: &[u8] = b"wefT";
        assert_eq!(reader.read(&mut input), Err(HandshakeError::BadMagic { received: b"wefT".to_vec() }));
    }

    fn arb_hello() -> impl Strategy<Value = Hello> {
        (any::<[u8; 6]>(), "\\PC{0,60}", any::<u64>(), any::<u64>(), any::<u16>(), any::<u32>()).prop_map(
            |(name, nickname, uid, conn_id, udp_port, features)| Hello {
                name: PeerName::from_bytes(name),
                nickname,
                uid,
                conn_id,
                udp_port,
                features,
            },
        )
    }

    proptest! {
        #[test]
        fn hello_roundtrips(hello in arb_hello()) {
            let mut buf = Vec::new();
            hello.encode(&mut Writer::new(&mut buf));
            prop_assert_eq!(Hello::decode(&buf), Ok(hello));
        }

        #[test]
        fn hello_decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Hello::decode(&buf);
        }

        #[test]
        fn hello_rejects_truncation_and_trailing(hello in arb_hello(), cut in 1usize..8) {
            let mut buf = Vec::new();
            hello.encode(&mut Writer::new(&mut buf));
            let short = &buf[..buf.len() - cut];
            prop_assert!(Hello::decode(short).is_err());
            buf.push(0);
            prop_assert!(Hello::decode(&buf).is_err());
        }

        #[test]
        fn preamble_reader_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..8), 0..4)) {
            let mut reader = PreambleReader::new();
            for chunk in &chunks {
                let mut input = chunk.as_slice();
                if reader.read(&mut input).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn preamble_roundtrips(min in any::<u8>(), max in any::<u8>()) {
            let bytes = preamble(min, max);
            let mut input = bytes.as_slice();
            prop_assert_eq!(
                PreambleReader::new().read(&mut input),
                Ok(Some(VersionRange { min, max }))
            );
            prop_assert!(input.is_empty());
        }
    }
}
