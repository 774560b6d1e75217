//! Parsing received sleeve datagrams into borrowed, typed views.

use std::iter::FusedIterator;

use super::{SleeveError, KIND_FRAMES, KIND_HEARTBEAT, VERSION};
use crate::codec::Reader;
use crate::PeerName;

/// A received datagram. Frames are decoded lazily by [`FrameIter`], so a
/// datagram costs nothing beyond its header check until it is forwarded.
#[derive(Debug)]
pub enum Datagram<'a> {
    Frames { sender: PeerName, frames: FrameIter<'a> },
    Heartbeat { sender: PeerName, conn_id: u64 },
}

/// One frame record, borrowing the frame bytes from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleeveFrame<'a> {
    pub origin: PeerName,
    pub dest: PeerName,
    pub frame: &'a [u8],
}

pub fn parse(buf: &[u8]) -> Result<Datagram<'_>, SleeveError> {
    let mut r = Reader::new(buf);
    let version = r.u8("sleeve version")?;
    if version != VERSION {
        return Err(SleeveError::UnsupportedVersion(version));
    }
    let kind = r.u8("sleeve kind")?;
    let sender = r.peer_name("sleeve sender")?;
    match kind {
        KIND_FRAMES => Ok(Datagram::Frames { sender, frames: FrameIter { r, index: 0, done: false } }),
        KIND_HEARTBEAT => {
            // The rest is padding of any length and content (see module docs).
            let conn_id = r.u64("heartbeat conn_id")?;
            Ok(Datagram::Heartbeat { sender, conn_id })
        }
        other => Err(SleeveError::UnknownKind(other)),
    }
}

/// Yields each frame record in order. A malformed record is yielded as one
/// error and ends the iteration: the records before it were complete and
/// are still delivered, but nothing after it can be trusted to be aligned.
#[derive(Debug)]
pub struct FrameIter<'a> {
    r: Reader<'a>,
    index: usize,
    done: bool,
}

impl<'a> FrameIter<'a> {
    fn record(&mut self) -> Result<SleeveFrame<'a>, crate::codec::DecodeError> {
        let origin = self.r.peer_name("frame origin")?;
        let dest = self.r.peer_name("frame dest")?;
        let len = self.r.u16("frame length")?;
        let frame = self.r.bytes("frame bytes", len.into())?;
        Ok(SleeveFrame { origin, dest, frame })
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<SleeveFrame<'a>, SleeveError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.r.remaining() == 0 {
            return None;
        }
        let index = self.index;
        self.index += 1;
        let item = self.record().map_err(|source| SleeveError::BadRecord { index, source });
        self.done = item.is_err();
        Some(item)
    }
}

impl FusedIterator for FrameIter<'_> {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::DecodeError;
    use crate::sleeve::{DatagramBuilder, HEADER_LEN};
    use proptest::prelude::*;

    fn name(b: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, b])
    }

    proptest! {
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Datagram::Frames { frames, .. }) = parse(&buf) {
                let mut seen_err = false;
                for item in frames {
                    prop_assert!(!seen_err, "iteration continued after an error");
                    seen_err = item.is_err();
                }
            }
        }

        // Same, but with a valid header so the record decoder gets exercised.
        #[test]
        fn frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = vec![1, 1, 2, 0, 0, 0, 0, 1];
            buf.extend_from_slice(&body);
            let Ok(Datagram::Frames { frames, .. }) = parse(&buf) else {
                return Err(TestCaseError::fail("valid header rejected"));
            };
            let total: usize = frames.filter_map(Result::ok).map(|f| f.frame.len()).sum();
            prop_assert!(total <= body.len());
        }
    }

    #[test]
    fn truncated_record_keeps_earlier_frames() {
        let mut buf = [0u8; 128];
        let mut b = DatagramBuilder::new(&mut buf, name(1)).unwrap();
        b.push_frame(name(1), name(2), &[0xaa; 20]).unwrap();
        b.push_frame(name(1), PeerName::BROADCAST, &[0xbb; 20]).unwrap();
        let n = b.finish();
        // Cut the second record's frame short.
        let Datagram::Frames { sender, frames } = parse(&buf[..n - 5]).unwrap() else { panic!("not frames") };
        assert_eq!(sender, name(1));
        let items: Vec<_> = frames.collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], Ok(SleeveFrame { origin: name(1), dest: name(2), frame: &[0xaa; 20] }));
        assert_eq!(
            items[1],
            Err(SleeveError::BadRecord { index: 1, source: DecodeError::Truncated { what: "frame bytes", needed: 5 } })
        );
    }

    #[test]
    fn trailing_partial_record_header_is_error() {
        let mut buf = [0u8; HEADER_LEN + 3];
        buf[..2].copy_from_slice(&[1, 1]);
        let Datagram::Frames { mut frames, .. } = parse(&buf).unwrap() else { panic!("not frames") };
        assert!(matches!(frames.next(), Some(Err(SleeveError::BadRecord { index: 0, .. }))));
        assert_eq!(frames.next(), None);
    }

    #[test]
    fn empty_frames_datagram_is_valid() {
        let Datagram::Frames { mut frames, .. } = parse(&[1, 1, 0, 0, 0, 0, 0, 0]).unwrap() else {
            panic!("not frames")
        };
        assert_eq!(frames.next(), None);
    }

    #[test]
    fn header_errors_are_typed() {
        assert_eq!(parse(&[2, 1, 0, 0, 0, 0, 0, 0]).unwrap_err(), SleeveError::UnsupportedVersion(2));
        assert_eq!(parse(&[1, 9, 0, 0, 0, 0, 0, 0]).unwrap_err(), SleeveError::UnknownKind(9));
        assert!(matches!(parse(&[]), Err(SleeveError::Decode(DecodeError::Truncated { .. }))));
        assert!(matches!(parse(&[1, 1, 0]), Err(SleeveError::Decode(DecodeError::Truncated { .. }))));
        // A heartbeat without its conn_id.
        assert!(matches!(
            parse(&[1, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3]),
            Err(SleeveError::Decode(DecodeError::Truncated { what: "heartbeat conn_id", .. }))
        ));
    }
}
