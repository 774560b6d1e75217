//! Length-prefixed frames on the control connection: a u32 big-endian
//! body length, then the body.

use crate::codec::Writer;

/// Largest frame body either side will send or accept. Generous for
/// gossip of large clusters, small enough that a hostile or confused peer
/// can't make us buffer unbounded memory.
pub const MAX_MESSAGE_LEN: usize = 4 * 1024 * 1024;
const LEN_PREFIX: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
}

fn check_len(len: usize) -> Result<(), FrameError> {
    if len > MAX_MESSAGE_LEN {
        return Err(FrameError::Oversized { len, max: MAX_MESSAGE_LEN });
    }
    Ok(())
}

/// Appends one frame whose body `encode_body` writes. On error `out` is
/// left as it was, so the encoder never emits a frame the decoder rejects.
pub fn write_frame(out: &mut Vec<u8>, encode_body: impl FnOnce(&mut Writer<'_>)) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    encode_body(&mut Writer::new(out));
    let len = out.len() - start - LEN_PREFIX;
    if let Err(e) = check_len(len) {
        out.truncate(start);
        return Err(e);
    }
    // `check_len` bounds `len` far below u32::MAX.
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Reassembles frames from a byte stream split at arbitrary points.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`; consumed frames are
    /// only shifted out on the next `push`, so the slice `next_frame`
    /// returns stays valid until then.
    consumed: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame body, or `None` until more input arrives.
    /// An oversized length fails as soon as its prefix is seen, without
    /// waiting for (or buffering) the body.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        Ok(self.next_frame_mut()?.map(|body| &*body))
    }

    /// Like `next_frame`, but the body may be changed in place (sealed
    /// frames are decrypted where they lie).
    pub fn next_frame_mut(&mut self) -> Result<Option<&mut [u8]>, FrameError> {
        let Some(len) = self.next_len()? else {
            return Ok(None);
        };
        let start = self.consumed + LEN_PREFIX;
        self.consumed = start + len;
        Ok(self.buf.get_mut(start..start + len))
    }

    /// The length of the next frame's body once all of it is buffered.
    fn next_len(&self) -> Result<Option<usize>, FrameError> {
        let pending = self.buf.get(self.consumed..).unwrap_or_default();
        let Some((prefix, rest)) = pending.split_first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        check_len(len)?;
        Ok((rest.len() >= len).then_some(len))
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, |w| {
            w.bytes(body);
        })
        .expect("small frame");
        out
    }

    fn drain(decoder: &mut FrameDecoder, into: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
        while let Some(body) = decoder.next_frame()? {
            into.push(body.to_vec());
        }
        Ok(())
    }

    #[test]
    fn oversized_prefix_fails_before_body_arrives() {
        let mut decoder = FrameDecoder::new();
        let len = (MAX_MESSAGE_LEN + 1) as u32;
        decoder.push(&len.to_be_bytes()[..3]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.push(&len.to_be_bytes()[3..]);
        assert_eq!(decoder.next_frame(), Err(FrameError::Oversized { len: MAX_MESSAGE_LEN + 1, max: MAX_MESSAGE_LEN }));
    }

    #[test]
    fn max_sized_frame_is_accepted_and_one_more_byte_is_not() {
        let body = vec![7u8; MAX_MESSAGE_LEN];
        let bytes = frame(&body);
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        assert_eq!(decoder.next_frame(), Ok(Some(body.as_slice())));

        let mut out = vec![1, 2, 3];
        let err = write_frame(&mut out, |w| {
            w.bytes(&body).u8(0);
        });
        assert_eq!(err, Err(FrameError::Oversized { len: MAX_MESSAGE_LEN + 1, max: MAX_MESSAGE_LEN }));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn empty_frames_are_frames() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 0, 0, 0]);
        assert_eq!(decoder.next_frame(), Ok(Some(&[][..])));
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.buffered(), 2);
    }

    proptest! {
        #[test]
        fn roundtrips_across_any_split(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..6),
            chunk in 1usize..20,
        ) {
            let stream: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                drain(&mut decoder, &mut got).expect("valid stream");
            }
            prop_assert_eq!(got, bodies);
            prop_assert_eq!(decoder.buffered(), 0);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        ) {
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in &chunks {
                decoder.push(piece);
                if drain(&mut decoder, &mut got).is_err() {
                    break;
                }
            }
        }
    }
}
