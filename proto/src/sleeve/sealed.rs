//! Sealed sleeve datagrams: a whole plain datagram (FRAMES or HEARTBEAT),
//! encrypted and authenticated for one neighbour.
//!
//! ```text
//! header (SEALED_HEADER_LEN = 17 bytes, authenticated as AAD)
//!   0       version  u8  = 1
//!   1       kind     u8  = 3 (SEALED)
//!   2..8    sender   PeerName
//!   8       epoch    u8  key epoch of the sender's sleeve chain
//!   9..17   counter  u64 the sender's message counter (never reused)
//! 17..      ciphertext of a complete plain datagram, its own header included
//! last 16   tag
//! ```
//!
//! The inner datagram keeps its own header so that opening yields exactly
//! what [`parse`] already handles; its sender must repeat the outer one,
//! which the receiver checks, so a peer cannot speak for another inside a
//! datagram sealed with its own keys. Sealing works in place in the
//! caller's buffer: the plain datagram is written at
//! [`SEALED_HEADER_LEN`] and the header and tag go around it, so the data
//! path still never allocates.

use std::time::Instant;

use super::{header, max_frame_len, overlay_mtu, parse, Datagram, SleeveError, HEADER_LEN, VERSION};
use crate::codec::{DecodeError, Reader};
use crate::crypto::{Nonce, OpenError, Opener, Sealer, NONCE_LEN, TAG_LEN};
use crate::PeerName;

pub const KIND_SEALED: u8 = 3;
pub const SEALED_HEADER_LEN: usize = HEADER_LEN + NONCE_LEN;
/// What sealing adds to a plain datagram.
pub const SEAL_OVERHEAD: usize = SEALED_HEADER_LEN + TAG_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedHeader {
    pub sender: PeerName,
    pub nonce: Nonce,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    #[error("buffer of {len} bytes is too small for a sealed datagram: need {needed}")]
    BufferTooSmall { len: usize, needed: usize },
    #[error("sleeve nonce counter exhausted: the connection must be re-established")]
    Exhausted,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum UnsealError {
    #[error("sealed datagram malformed: {0}")]
    Malformed(SleeveError),
    #[error(transparent)]
    Open(OpenError),
    #[error("inner sender {inner} differs from outer sender {outer}")]
    SenderMismatch { outer: PeerName, inner: PeerName },
}

/// `buf[SEALED_HEADER_LEN .. SEALED_HEADER_LEN + plain_len]` holds a plain
/// datagram (as [`DatagramBuilder`](super::DatagramBuilder) or
/// [`write_heartbeat`](super::write_heartbeat) wrote it). Writes the sealed
/// header in front of it and the tag behind it, encrypting in between, and
/// returns the sealed length, `plain_len + SEAL_OVERHEAD`.
pub fn seal(
    buf: &mut [u8],
    plain_len: usize,
    sender: PeerName,
    sealer: &mut Sealer,
    now: Instant,
) -> Result<usize, SealError> {
    let len = buf.len();
    let needed = plain_len.saturating_add(SEAL_OVERHEAD);
    let out = buf.get_mut(..needed).ok_or(SealError::BufferTooSmall { len, needed })?;
    let nonce = sealer.next_nonce(now).map_err(|_| SealError::Exhausted)?;
    let (head, rest) = out.split_at_mut(SEALED_HEADER_LEN);
    let (outer, nonce_field) = head.split_at_mut(HEADER_LEN);
    outer.copy_from_slice(&header(KIND_SEALED, sender));
    nonce_field.copy_from_slice(&nonce.to_bytes());
    let (body, tag) = rest.split_at_mut(plain_len);
    tag.copy_from_slice(&sealer.seal_in_place(nonce, head, body));
    Ok(needed)
}

/// `Ok(None)`: not a sealed datagram but a plain one (of this version).
/// `Err`: a bad version, or too short to be anything, or a sealed one too
/// short to hold its header and tag.
pub fn sealed_header(buf: &[u8]) -> Result<Option<SealedHeader>, SleeveError> {
    let mut r = Reader::new(buf);
    let version = r.u8("sleeve version")?;
    if version != VERSION {
        return Err(SleeveError::UnsupportedVersion(version));
    }
    if r.u8("sleeve kind")? != KIND_SEALED {
        return Ok(None);
    }
    let sender = r.peer_name("sleeve sender")?;
    let nonce = Nonce::from_bytes(&r.array("sealed nonce")?);
    if r.remaining() < TAG_LEN {
        return Err(DecodeError::Truncated { what: "sealed tag", needed: TAG_LEN - r.remaining() }.into());
    }
    Ok(Some(SealedHeader { sender, nonce }))
}

/// Opens a sealed datagram in place and returns the plain datagram inside
/// it, ready for [`parse`]. The replay window is checked before decrypting
/// and advanced only once the tag verified (see [`Opener`]); the inner
/// sender must be the outer one.
pub fn open<'a>(buf: &'a mut [u8], opener: &mut Opener) -> Result<&'a [u8], UnsealError> {
    let header = match sealed_header(buf) {
        Ok(Some(h)) => h,
        Ok(None) => {
            let kind = buf.get(1).copied().unwrap_or_default();
            return Err(UnsealError::Malformed(SleeveError::UnknownKind(kind)));
        }
        Err(e) => return Err(UnsealError::Malformed(e)),
    };
    let (aad, sealed) = buf.split_at_mut(SEALED_HEADER_LEN);
    let plain_len = opener.open_in_place(header.nonce, aad, sealed).map_err(UnsealError::Open)?;
    let sealed: &'a [u8] = sealed;
    let inner = &sealed[..plain_len];
    let inner_sender = match parse(inner).map_err(UnsealError::Malformed)? {
        Datagram::Frames { sender, .. } | Datagram::Heartbeat { sender, .. } => sender,
    };
    if inner_sender != header.sender {
        return Err(UnsealError::SenderMismatch { outer: header.sender, inner: inner_sender });
    }
    Ok(inner)
}

/// The overlay MTU when every datagram is sealed: like
/// [`overlay_mtu`], less [`SEAL_OVERHEAD`].
pub const fn sealed_overlay_mtu(underlay_mtu: usize) -> usize {
    overlay_mtu(underlay_mtu.saturating_sub(SEAL_OVERHEAD))
}

/// The longest frame that travels alone in a sealed datagram whose UDP
/// payload may be `datagram_payload_max` bytes.
pub const fn sealed_max_frame_len(datagram_payload_max: usize) -> usize {
    max_frame_len(datagram_payload_max.saturating_sub(SEAL_OVERHEAD))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::{Chain, Cipher, RekeyPolicy, ReplayError};
    use crate::sleeve::{max_datagram_payload, write_heartbeat, DatagramBuilder, HEARTBEAT_MIN_LEN};
    use proptest::prelude::*;

    fn name(b: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, b])
    }

    fn ends(cipher: Cipher, now: Instant) -> (Sealer, Opener) {
        (
            Sealer::new(cipher, Chain::from_bytes([3; 32]), RekeyPolicy::default(), now),
            Opener::new(cipher, Chain::from_bytes([3; 32])),
        )
    }

    /// A sealed FRAMES datagram from `sender` carrying `frame`.
    fn sealed_frames(sealer: &mut Sealer, sender: PeerName, inner_sender: PeerName, frame: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut b = DatagramBuilder::new(&mut buf[SEALED_HEADER_LEN..1500 - TAG_LEN], inner_sender).unwrap();
        b.push_frame(name(1), PeerName::BROADCAST, frame).unwrap();
        let plain_len = b.finish();
        let n = seal(&mut buf, plain_len, sender, sealer, Instant::now()).unwrap();
        assert_eq!(n, plain_len + SEAL_OVERHEAD);
        buf.truncate(n);
        buf
    }

    #[test]
    fn sizes() {
        assert_eq!(SEALED_HEADER_LEN, 17);
        assert_eq!(SEAL_OVERHEAD, 33);
        assert_eq!(sealed_overlay_mtu(1500), 1500 - 20 - 8 - 33 - 8 - 14 - 14);
        assert_eq!(sealed_overlay_mtu(40), 0);
        for u in 0..2000 {
            assert_eq!(
                sealed_overlay_mtu(u),
                sealed_max_frame_len(max_datagram_payload(u)).saturating_sub(crate::ethernet::HEADER_LEN)
            );
        }
    }

    #[test]
    fn frames_roundtrip_both_ciphers() {
        for c in Cipher::ALL {
            let (mut s, mut o) = ends(c, Instant::now());
            let mut sealed = sealed_frames(&mut s, name(1), name(1), &[0xab; 100]);
            assert_eq!(
                sealed_header(&sealed),
                Ok(Some(SealedHeader { sender: name(1), nonce: Nonce { epoch: 0, counter: 0 } }))
            );
            let inner = open(&mut sealed, &mut o).unwrap();
            let Datagram::Frames { sender, mut frames } = parse(inner).unwrap() else { panic!("not frames") };
            assert_eq!(sender, name(1));
            let f = frames.next().unwrap().unwrap();
            assert_eq!((f.origin, f.dest, f.frame), (name(1), PeerName::BROADCAST, &[0xab; 100][..]));
            assert!(frames.next().is_none());
        }
    }

    #[test]
    fn heartbeat_roundtrip_and_plain_is_not_sealed() {
        let (mut s, mut o) = ends(Cipher::Aes256Gcm, Instant::now());
        let mut buf = [0u8; 200];
        let plain_len = write_heartbeat(&mut buf[SEALED_HEADER_LEN..], name(4), 42, 100).unwrap();
        assert_eq!(sealed_header(&buf[SEALED_HEADER_LEN..][..plain_len]), Ok(None));
        let n = seal(&mut buf, plain_len, name(4), &mut s, Instant::now()).unwrap();
        assert_eq!(n, 100 + SEAL_OVERHEAD);
        // The padding is encrypted too: no run of zeros shows through.
        assert!(buf[SEALED_HEADER_LEN + HEARTBEAT_MIN_LEN..n].windows(8).all(|w| w != [0; 8]));
        let inner = open(&mut buf[..n], &mut o).unwrap();
        assert_eq!(inner.len(), 100);
        assert!(matches!(parse(inner), Ok(Datagram::Heartbeat { conn_id: 42, .. })));
    }

    #[test]
    fn plain_parse_still_rejects_sealed_kind() {
        let (mut s, _) = ends(Cipher::default(), Instant::now());
        let sealed = sealed_frames(&mut s, name(1), name(1), b"x");
        assert_eq!(parse(&sealed).unwrap_err(), SleeveError::UnknownKind(KIND_SEALED));
    }

    #[test]
    fn any_bit_flip_fails_and_commits_nothing() {
        let (mut s, mut o) = ends(Cipher::default(), Instant::now());
        let sealed = sealed_frames(&mut s, name(1), name(1), &[7; 40]);
        for i in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                assert!(open(&mut bad, &mut o).is_err(), "byte {i} bit {bit:#x}");
            }
        }
        // Flipping the epoch or counter did not move the receiver.
        assert_eq!(format!("{o:?}"), format!("{:?}", ends(Cipher::default(), Instant::now()).1));
        assert!(open(&mut sealed.clone(), &mut o).is_ok());
    }

    #[test]
    fn replay_is_an_open_error() {
        let (mut s, mut o) = ends(Cipher::default(), Instant::now());
        let sealed = sealed_frames(&mut s, name(1), name(1), b"once");
        open(&mut sealed.clone(), &mut o).unwrap();
        assert_eq!(
            open(&mut sealed.clone(), &mut o).unwrap_err(),
            UnsealError::Open(OpenError::Replay(ReplayError::Duplicate))
        );
    }

    #[test]
    fn inner_sender_must_be_outer_sender() {
        let (mut s, mut o) = ends(Cipher::default(), Instant::now());
        let mut sealed = sealed_frames(&mut s, name(1), name(9), b"spoof");
        assert_eq!(
            open(&mut sealed, &mut o).unwrap_err(),
            UnsealError::SenderMismatch { outer: name(1), inner: name(9) }
        );
    }

    #[test]
    fn inner_garbage_is_malformed() {
        let (mut s, mut o) = ends(Cipher::default(), Instant::now());
        let mut buf = [0u8; 64];
        buf[SEALED_HEADER_LEN..][..3].copy_from_slice(&[1, 1, 0]);
        let n = seal(&mut buf, 3, name(1), &mut s, Instant::now()).unwrap();
        assert!(matches!(open(&mut buf[..n], &mut o), Err(UnsealError::Malformed(SleeveError::Decode(_)))));
        // Sealed inside sealed is not a thing.
        let mut buf = [0u8; 128];
        buf[SEALED_HEADER_LEN..][..HEADER_LEN].copy_from_slice(&header(KIND_SEALED, name(1)));
        let n = seal(&mut buf, 40, name(1), &mut s, Instant::now()).unwrap();
        assert_eq!(open(&mut buf[..n], &mut o), Err(UnsealError::Malformed(SleeveError::UnknownKind(KIND_SEALED))));
    }

    #[test]
    fn short_and_foreign_input() {
        let (mut s, mut o) = ends(Cipher::default(), Instant::now());
        let sealed = sealed_frames(&mut s, name(1), name(1), b"x");
        for cut in 0..SEALED_HEADER_LEN + TAG_LEN {
            let mut short = sealed[..cut].to_vec();
            assert!(matches!(open(&mut short, &mut o), Err(UnsealError::Malformed(_))), "cut {cut}");
        }
        assert!(matches!(
            sealed_header(&sealed[..SEALED_HEADER_LEN + TAG_LEN - 1]),
            Err(SleeveError::Decode(DecodeError::Truncated { what: "sealed tag", needed: 1 }))
        ));
        // The shortest well-formed sealed datagram (empty inner) is a
        // header and a tag; it fails as malformed inside, not as truncated.
        let mut buf = [0u8; SEAL_OVERHEAD];
        assert_eq!(seal(&mut buf, 0, name(1), &mut s, Instant::now()), Ok(SEAL_OVERHEAD));
        assert!(matches!(open(&mut buf, &mut o), Err(UnsealError::Malformed(SleeveError::Decode(_)))));

        let mut plain = [1u8, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(open(&mut plain, &mut o), Err(UnsealError::Malformed(SleeveError::UnknownKind(1))));
        let mut future = sealed.clone();
        future[0] = 2;
        assert_eq!(open(&mut future, &mut o), Err(UnsealError::Malformed(SleeveError::UnsupportedVersion(2))));
    }

    #[test]
    fn seal_needs_room_for_header_and_tag() {
        let (mut s, _) = ends(Cipher::default(), Instant::now());
        let mut buf = [0u8; 60];
        assert_eq!(
            seal(&mut buf, 28, name(1), &mut s, Instant::now()),
            Err(SealError::BufferTooSmall { len: 60, needed: 61 })
        );
        assert_eq!(
            seal(&mut buf, usize::MAX, name(1), &mut s, Instant::now()),
            Err(SealError::BufferTooSmall { len: 60, needed: usize::MAX })
        );
        assert_eq!(seal(&mut buf, 27, name(1), &mut s, Instant::now()), Ok(60));
    }

    proptest! {
        #[test]
        fn open_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..128)) {
            let (_, mut o) = ends(Cipher::default(), Instant::now());
            let _ = sealed_header(&buf);
            let _ = open(&mut buf.clone(), &mut o);
            // With a valid-looking header so decryption is attempted.
            let mut sealed = buf.clone();
            if sealed.len() >= 2 {
                sealed[0] = VERSION;
                sealed[1] = KIND_SEALED;
            }
            prop_assert!(open(&mut sealed, &mut o).is_err());
        }

        #[test]
        fn mutated_sealed_never_panics(
            frame in proptest::collection::vec(any::<u8>(), 0..200),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), 1u8..), 0..4),
            cut in any::<proptest::sample::Index>(),
        ) {
            let (mut s, _) = ends(Cipher::default(), Instant::now());
            let sealed = sealed_frames(&mut s, name(1), name(1), &frame);
            crate::codec::decode_mutated(sealed, &flips, cut, |b| {
                let (_, mut o) = ends(Cipher::default(), Instant::now());
                open(&mut b.to_vec(), &mut o).map(<[u8]>::len)
            });
        }

        #[test]
        fn roundtrip(frame in proptest::collection::vec(any::<u8>(), 0..1400), n in 1usize..5) {
            let (mut s, mut o) = ends(Cipher::default(), Instant::now());
            for _ in 0..n {
                let mut sealed = sealed_frames(&mut s, name(1), name(1), &frame);
                let inner = open(&mut sealed, &mut o).unwrap();
                let Ok(Datagram::Frames { mut frames, .. }) = parse(inner) else {
                    return Err(TestCaseError::fail("not frames"));
                };
                prop_assert_eq!(frames.next().and_then(Result::ok).map(|f| f.frame), Some(&frame[..]));
            }
        }
    }
}
