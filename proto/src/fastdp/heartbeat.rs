//! The fast-path heartbeat: an Ethernet frame the router hands to the
//! kernel's VXLAN device, so it proves the path pod frames take (the
//! kernel's encapsulation, the underlay's firewalls and MTU, the peer's
//! decapsulation) rather than some parallel one.
//!
//! ```text
//! dst MAC = receiver's peer name | src MAC = sender's peer name | 0x88B5
//! "WFHB" | version u8 | flags u8 (bit 0: I receive yours) | sender (6) | conn id u64 | zero padding
//! ```
//!
//! The padding brings the frame to the fast-path MTU, so a heartbeat that
//! arrives also proves that full-size frames fit.

use crate::codec::{DecodeError, Reader};
use crate::ethernet::{self, EthernetFrame, MacAddr, HEADER_LEN};
use crate::PeerName;

/// IEEE 802 "local experimental" EtherType: never a pod's real traffic.
pub const ETHERTYPE: u16 = 0x88B5;
const MAGIC: [u8; 4] = *b"WFHB";
const VERSION: u8 = 1;
const FLAG_RECEIVING: u8 = 1;
/// Ethernet header plus the fixed fields; the smallest valid heartbeat.
pub const MIN_LEN: usize = HEADER_LEN + 4 + 1 + 1 + 6 + 8;

/// A parsed heartbeat; `size` is the whole frame's length as received,
/// which is what the MTU check compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastDpHeartbeat {
    pub sender: PeerName,
    pub receiver: PeerName,
    /// The sender's connection id from its `Hello`, so a heartbeat from a
    /// previous incarnation of the connection is not mistaken for this one.
    pub conn_id: u64,
    /// The sender currently receives our heartbeats.
    pub receiving: bool,
    pub size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("not a weft heartbeat (ethertype {0:#06x})")]
    Ethertype(u16),
    #[error("bad heartbeat magic")]
    Magic,
    #[error("unsupported heartbeat version {0}")]
    Version(u8),
    #[error("heartbeat from {sender} carries source MAC {src}")]
    SourceMismatch { sender: PeerName, src: MacAddr },
    #[error("heartbeat buffer of {len} bytes is smaller than {min}")]
    BufferTooSmall { len: usize, min: usize },
}

impl FastDpHeartbeat {
    /// Writes the heartbeat into `buf`, padded to `size` bytes (at least
    /// [`MIN_LEN`]); returns the frame length.
    pub fn write(&self, buf: &mut [u8], size: usize) -> Result<usize, HeartbeatError> {
        let len = size.max(MIN_LEN);
        let available = buf.len();
        let frame = buf.get_mut(..len).ok_or(HeartbeatError::BufferTooSmall { len: available, min: len })?;
        let flags = if self.receiving { FLAG_RECEIVING } else { 0 };
        let head = ethernet::header(MacAddr(*self.receiver.as_bytes()), MacAddr(*self.sender.as_bytes()), ETHERTYPE);
        let (h, rest) = frame.split_at_mut(HEADER_LEN);
        h.copy_from_slice(&head);
        let (fixed, padding) = rest.split_at_mut(MIN_LEN - HEADER_LEN);
        let (magic, fixed) = fixed.split_at_mut(4);
        magic.copy_from_slice(&MAGIC);
        let (vf, fixed) = fixed.split_at_mut(2);
        vf.copy_from_slice(&[VERSION, flags]);
        let (sender, conn_id) = fixed.split_at_mut(6);
        sender.copy_from_slice(self.sender.as_bytes());
        conn_id.copy_from_slice(&self.conn_id.to_be_bytes());
        padding.fill(0);
        Ok(len)
    }

    pub fn parse(frame: &[u8]) -> Result<Self, HeartbeatError> {
        let eth = EthernetFrame::new_checked(frame)
            .map_err(|_| DecodeError::Truncated { what: "ethernet header", needed: HEADER_LEN - frame.len() })?;
        if eth.ethertype() != ETHERTYPE {
            return Err(HeartbeatError::Ethertype(eth.ethertype()));
        }
        let mut r = Reader::new(eth.payload());
        if r.array::<4>("heartbeat magic")? != MAGIC {
            return Err(HeartbeatError::Magic);
        }
        let version = r.u8("heartbeat version")?;
        if version != VERSION {
            return Err(HeartbeatError::Version(version));
        }
        let flags = r.u8("heartbeat flags")?;
        let sender = r.peer_name("heartbeat sender")?;
        let conn_id = r.u64("heartbeat connection id")?;
        // Padding is not checked: a later version may put fields there.
        if eth.src().0 != *sender.as_bytes() {
            return Err(HeartbeatError::SourceMismatch { sender, src: eth.src() });
        }
        Ok(FastDpHeartbeat {
            sender,
            receiver: PeerName::from_bytes(eth.dst().0),
            conn_id,
            receiving: flags & FLAG_RECEIVING != 0,
            size: frame.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hb(receiving: bool) -> FastDpHeartbeat {
        FastDpHeartbeat {
            sender: PeerName::from_bytes([2, 0, 0, 0, 0, 1]),
            receiver: PeerName::from_bytes([2, 0, 0, 0, 0, 2]),
            conn_id: 0x0102_0304_0506_0708,
            receiving,
            size: 0,
        }
    }

    #[test]
    fn roundtrip_padded_to_the_mtu() {
        let mut buf = [0xaau8; 1600];
        for (size, receiving) in [(1390, true), (0, false), (MIN_LEN, true)] {
            let len = hb(receiving).write(&mut buf, size).unwrap();
            assert_eq!(len, size.max(MIN_LEN));
            let parsed = FastDpHeartbeat::parse(&buf[..len]).unwrap();
            assert_eq!(parsed, FastDpHeartbeat { size: len, ..hb(receiving) });
            assert!(buf[MIN_LEN..len].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn refuses_what_is_not_ours() {
        let mut buf = [0u8; 100];
        let len = hb(true).write(&mut buf, 0).unwrap();
        let mut other = buf;
        other[12] = 0x08;
        assert!(matches!(FastDpHeartbeat::parse(&other[..len]), Err(HeartbeatError::Ethertype(_))));
        let mut forged = buf;
        forged[11] ^= 1;
        assert!(matches!(FastDpHeartbeat::parse(&forged[..len]), Err(HeartbeatError::SourceMismatch { .. })));
        assert!(FastDpHeartbeat::parse(&buf[..MIN_LEN - 1]).is_err());
        assert!(matches!(hb(true).write(&mut buf[..10], 0), Err(HeartbeatError::BufferTooSmall { .. })));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FastDpHeartbeat::parse(&bytes);
        }

        #[test]
        fn mutated_heartbeats_never_panic(
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut buf = vec![0u8; 200];
            let len = hb(true).write(&mut buf, 120).unwrap();
            buf.truncate(len);
            crate::codec::decode_mutated(buf, &flips, cut, FastDpHeartbeat::parse);
        }
    }
}
