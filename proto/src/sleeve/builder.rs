//! Writing sleeve datagrams into caller-owned buffers, so the data path
//! never allocates: the router keeps one buffer per destination and
//! refills it datagram after datagram.

use super::{
    header, SleeveError, FRAME_HEADER_LEN, HEADER_LEN, HEARTBEAT_MIN_LEN, KIND_FRAMES, KIND_HEARTBEAT,
    MAX_RECORD_FRAME_LEN,
};
use crate::PeerName;

/// The frame does not fit in what is left of the datagram. Nothing was
/// written. If the builder [is empty](DatagramBuilder::is_empty) the frame
/// can never fit in this buffer: flushing will not help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sleeve datagram full: a {frame_len}-byte frame does not fit, room for {room}")]
pub struct Full {
    pub frame_len: usize,
    /// The longest frame that would still have fitted.
    pub room: usize,
}

/// Why [`DatagramBuilder::push_frame_with`] kept nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError<E> {
    #[error(transparent)]
    Full(Full),
    #[error("writing the frame failed: {0}")]
    Fill(E),
}

/// Accumulates frame records into a FRAMES datagram. Slice the buffer to
/// the path's maximum UDP payload: the builder fills all of it.
#[derive(Debug)]
pub struct DatagramBuilder<'b> {
    buf: &'b mut [u8],
    /// Where the datagram starts in `buf`, and how long it may grow.
    start: usize,
    limit: usize,
    len: usize,
    frames: usize,
}

impl<'b> DatagramBuilder<'b> {
    pub fn new(buf: &'b mut [u8], sender: PeerName) -> Result<Self, SleeveError> {
        Self::with_margins(buf, sender, 0, 0)
    }

    /// Like `new`, but keeps `front` bytes before the datagram and `back`
    /// bytes after its largest extent free: room for a sealed datagram's
    /// header and tag, so sealing needs no copy.
    pub fn with_margins(buf: &'b mut [u8], sender: PeerName, front: usize, back: usize) -> Result<Self, SleeveError> {
        let len = buf.len();
        let needed = front + HEADER_LEN + back;
        let too_small = SleeveError::BufferTooSmall { what: "datagram", len, needed };
        if len < needed {
            return Err(too_small);
        }
        *buf.get_mut(front..).and_then(|b| b.first_chunk_mut::<HEADER_LEN>()).ok_or(too_small)? =
            header(KIND_FRAMES, sender);
        Ok(DatagramBuilder { buf, start: front, limit: len - front - back, len: HEADER_LEN, frames: 0 })
    }

    /// Drops every frame, keeping the header, to start the next datagram
    /// from the same sender in the same buffer.
    pub fn reset(&mut self) {
        self.len = HEADER_LEN;
        self.frames = 0;
    }

    pub fn push_frame(&mut self, origin: PeerName, dest: PeerName, frame: &[u8]) -> Result<(), Full> {
        self.push_frame_with(origin, dest, frame.len(), |body| {
            body.copy_from_slice(frame);
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| match e {
            PushError::Full(full) => full,
            PushError::Fill(never) => match never {},
        })
    }

    /// Appends a record of `len` frame bytes that `fill` writes straight
    /// into the datagram (a segment cut from a super-frame, say), so the
    /// frame is never copied twice. If `fill` fails, nothing is kept.
    pub fn push_frame_with<E>(
        &mut self,
        origin: PeerName,
        dest: PeerName,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let full = Full { frame_len: len, room: self.room() };
        let len16 = u16::try_from(len).map_err(|_| PushError::Full(full))?;
        let end = self.len + FRAME_HEADER_LEN + len;
        if end > self.limit {
            return Err(PushError::Full(full));
        }
        let record = self.buf.get_mut(self.start + self.len..self.start + end).ok_or(PushError::Full(full))?;
        let (header, body) = record.split_at_mut(FRAME_HEADER_LEN);
        fill(body).map_err(PushError::Fill)?;
        let (names, len_field) = header.split_at_mut(2 * PeerName::LEN);
        let (o, d) = names.split_at_mut(PeerName::LEN);
        o.copy_from_slice(origin.as_bytes());
        d.copy_from_slice(dest.as_bytes());
        len_field.copy_from_slice(&len16.to_be_bytes());
        self.len = end;
        self.frames += 1;
        Ok(())
    }

    /// The longest frame [`push_frame`](Self::push_frame) would accept now
    /// (0 also when not even an empty frame's record header fits).
    pub fn room(&self) -> usize {
        (self.limit - self.len).saturating_sub(FRAME_HEADER_LEN).min(MAX_RECORD_FRAME_LEN)
    }

    pub fn frame_count(&self) -> usize {
        self.frames
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame has been pushed (`len()` is then `HEADER_LEN`):
    /// such a datagram is not worth sending.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The datagram as it stands, ready to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Releases the buffer; the datagram is its first `n` bytes after the
    /// front margin.
    pub fn finish(self) -> usize {
        self.len
    }

    /// Releases the whole buffer, margins included, and the datagram's
    /// length (it starts at the front margin).
    pub fn into_parts(self) -> (&'b mut [u8], usize) {
        (self.buf, self.len)
    }
}

/// Writes a heartbeat of exactly `total_len` bytes (zero-padded beyond
/// `HEARTBEAT_MIN_LEN`) and returns its length.
pub fn write_heartbeat(buf: &mut [u8], sender: PeerName, conn_id: u64, total_len: usize) -> Result<usize, SleeveError> {
    if total_len < HEARTBEAT_MIN_LEN {
        return Err(SleeveError::HeartbeatTooShort { len: total_len });
    }
    let len = buf.len();
    let out =
        buf.get_mut(..total_len).ok_or(SleeveError::BufferTooSmall { what: "heartbeat", len, needed: total_len })?;
    let (fixed, padding) = out.split_at_mut(HEARTBEAT_MIN_LEN);
    let (head, id) = fixed.split_at_mut(HEADER_LEN);
    head.copy_from_slice(&header(KIND_HEARTBEAT, sender));
    id.copy_from_slice(&conn_id.to_be_bytes());
    padding.fill(0);
    Ok(total_len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sleeve::{max_frame_len, parse, Datagram, SleeveFrame};
    use proptest::prelude::*;

    fn peer() -> impl Strategy<Value = PeerName> {
        any::<[u8; 6]>().prop_map(PeerName::from_bytes)
    }

    fn frames_of(buf: &[u8]) -> (PeerName, Vec<SleeveFrame<'_>>) {
        match parse(buf).unwrap() {
            Datagram::Frames { sender, frames } => (sender, frames.map(Result::unwrap).collect()),
            other => panic!("expected frames, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn builder_parse_roundtrip(
            sender in peer(),
            records in proptest::collection::vec(
                (peer(), peer(), proptest::collection::vec(any::<u8>(), 0..200)),
                0..12,
            ),
            cap in 8usize..1500,
        ) {
            let mut buf = vec![0u8; cap];
            let mut b = DatagramBuilder::new(&mut buf, sender).unwrap();
            let mut pushed = Vec::new();
            for (origin, dest, frame) in &records {
                let before = b.len();
                match b.push_frame(*origin, *dest, frame) {
                    Ok(()) => pushed.push(SleeveFrame { origin: *origin, dest: *dest, frame }),
                    Err(full) => {
                        prop_assert_eq!(b.len(), before);
                        // room 0 also covers "not even a record header fits".
                        prop_assert!(full.room < frame.len() || before + FRAME_HEADER_LEN > cap);
                    }
                }
            }
            prop_assert_eq!(b.frame_count(), pushed.len());
            let n = b.finish();
            let (got_sender, got) = frames_of(&buf[..n]);
            prop_assert_eq!(got_sender, sender);
            prop_assert_eq!(got, pushed);
        }

        #[test]
        fn heartbeat_roundtrip(sender in peer(), conn_id in any::<u64>(), pad in 0usize..1500) {
            let mut buf = vec![0xeeu8; HEARTBEAT_MIN_LEN + pad + 7];
            let n = write_heartbeat(&mut buf, sender, conn_id, HEARTBEAT_MIN_LEN + pad).unwrap();
            prop_assert_eq!(n, HEARTBEAT_MIN_LEN + pad);
            prop_assert!(buf[HEARTBEAT_MIN_LEN..n].iter().all(|&b| b == 0));
            match parse(&buf[..n]).unwrap() {
                Datagram::Heartbeat { sender: s, conn_id: c } => {
                    prop_assert_eq!(s, sender);
                    prop_assert_eq!(c, conn_id);
                }
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
        }
    }

    #[test]
    fn full_leaves_datagram_intact_and_room_is_exact() {
        let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
        let mut buf = [0u8; HEADER_LEN + 2 * FRAME_HEADER_LEN + 100];
        let mut b = DatagramBuilder::new(&mut buf, me).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.room(), 2 * FRAME_HEADER_LEN + 100 - FRAME_HEADER_LEN);
        b.push_frame(me, PeerName::BROADCAST, &[1; 60]).unwrap();
        assert_eq!(b.room(), 100 - 60);
        assert_eq!(b.push_frame(me, PeerName::BROADCAST, &[2; 41]), Err(Full { frame_len: 41, room: 40 }));
        assert_eq!(b.len(), HEADER_LEN + FRAME_HEADER_LEN + 60);
        b.push_frame(me, PeerName::BROADCAST, &[3; 40]).unwrap();
        assert_eq!(b.room(), 0);
        assert_eq!(b.len(), buf.len());
        let (_, got) = frames_of(&buf);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].frame, &[3; 40]);
    }

    #[test]
    fn reset_reuses_buffer() {
        let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
        let mut buf = [0u8; 256];
        let mut b = DatagramBuilder::new(&mut buf, me).unwrap();
        b.push_frame(me, me, &[1; 50]).unwrap();
        b.reset();
        assert!(b.is_empty());
        assert_eq!(b.len(), HEADER_LEN);
        b.push_frame(me, me, &[2; 10]).unwrap();
        let n = b.finish();
        let (_, got) = frames_of(&buf[..n]);
        assert_eq!(got, vec![SleeveFrame { origin: me, dest: me, frame: &[2; 10] }]);
        // Re-new on the same buffer works too.
        let b = DatagramBuilder::new(&mut buf, me).unwrap();
        assert_eq!(b.finish(), HEADER_LEN);
    }

    #[test]
    fn push_frame_with_writes_in_place_and_keeps_nothing_on_failure() {
        let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
        let mut buf = [0u8; 128];
        let mut b = DatagramBuilder::new(&mut buf, me).unwrap();
        b.push_frame_with(me, me, 5, |body| {
            body.copy_from_slice(b"hello");
            Ok::<(), ()>(())
        })
        .unwrap();
        let before = b.len();
        assert_eq!(b.push_frame_with(me, me, 3, |_| Err("no")), Err(PushError::Fill("no")));
        assert_eq!((b.len(), b.frame_count()), (before, 1));
        assert!(matches!(b.push_frame_with(me, me, 200, |_| Ok::<(), ()>(())), Err(PushError::Full(_))));
        let n = b.finish();
        let (_, got) = frames_of(&buf[..n]);
        assert_eq!(got, vec![SleeveFrame { origin: me, dest: me, frame: b"hello" }]);
    }

    #[test]
    fn frame_longer_than_u16_is_full() {
        let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
        let mut buf = vec![0u8; 70_000 + 64];
        let mut b = DatagramBuilder::new(&mut buf, me).unwrap();
        let frame = vec![0u8; 70_000];
        assert_eq!(b.push_frame(me, me, &frame), Err(Full { frame_len: 70_000, room: MAX_RECORD_FRAME_LEN }));
        assert!(b.is_empty());
    }

    #[test]
    fn mtu_sized_frame_fits_exactly() {
        let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
        let mut buf = [0u8; 1472];
        let mut b = DatagramBuilder::new(&mut buf, me).unwrap();
        assert_eq!(b.room(), max_frame_len(1472));
        assert_eq!(b.push_frame(me, me, &[0; 1451]), Err(Full { frame_len: 1451, room: 1450 }));
        b.push_frame(me, me, &[0; 1450]).unwrap();
    }

    #[test]
    fn small_buffers_are_typed_errors() {
        let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            DatagramBuilder::new(&mut [0u8; 7], me).unwrap_err(),
            SleeveError::BufferTooSmall { what: "datagram", len: 7, needed: HEADER_LEN }
        );
        assert_eq!(
            write_heartbeat(&mut [0u8; 64], me, 1, HEARTBEAT_MIN_LEN - 1),
            Err(SleeveError::HeartbeatTooShort { len: HEARTBEAT_MIN_LEN - 1 })
        );
        assert_eq!(
            write_heartbeat(&mut [0u8; 20], me, 1, 21),
            Err(SleeveError::BufferTooSmall { what: "heartbeat", len: 20, needed: 21 })
        );
    }

    #[test]
    fn margins_stay_free_and_bound_the_datagram() {
        let mut buf = [0xAAu8; 64];
        let mut b = DatagramBuilder::with_margins(&mut buf, PeerName::from_bytes([2, 0, 0, 0, 0, 1]), 17, 16).unwrap();
        assert_eq!(b.room(), 64 - 17 - 16 - HEADER_LEN - FRAME_HEADER_LEN);
        assert!(b.push_frame(PeerName::BROADCAST, PeerName::BROADCAST, &[7; 10]).is_err());
        b.push_frame(PeerName::BROADCAST, PeerName::BROADCAST, &[7; 9]).unwrap();
        assert_eq!(b.as_bytes().len(), HEADER_LEN + FRAME_HEADER_LEN + 9);
        let (whole, len) = b.into_parts();
        assert!(whole[..17].iter().all(|&x| x == 0xAA));
        assert!(whole[17 + len..].iter().all(|&x| x == 0xAA));
        assert!(matches!(parse(&whole[17..17 + len]), Ok(Datagram::Frames { .. })));
        assert!(DatagramBuilder::with_margins(&mut [0u8; 40], PeerName::BROADCAST, 17, 16).is_err());
    }
}
