//! The sleeve: weft's UDP data plane (port 6783), which carries captured
//! Ethernet frames between peers when no faster path is available.
//!
//! # Datagram layout (version 1, all integers big-endian)
//!
//! ```text
//! header (HEADER_LEN = 8 bytes)
//!   0      version   u8   = 1
//!   1      kind      u8   1 = FRAMES, 2 = HEARTBEAT
//!   2..8   sender    PeerName: the peer that sent this datagram (the
//!                    previous hop, not necessarily the frames' origin)
//!
//! kind FRAMES: zero or more records back to back, up to the datagram's end
//!   0..6     origin  PeerName: the peer that captured the frame
//!   6..12    dest    PeerName: the peer it is for, or PeerName::BROADCAST
//!   12..14   len     u16: length of the Ethernet frame that follows
//!   14..     frame   `len` bytes: an Ethernet II frame, no FCS
//!
//! kind HEARTBEAT:
//!   0..8     conn_id u64: which connection the heartbeat belongs to
//!   8..      padding: any number of bytes, zero when we send them,
//!            ignored when we receive them
//! ```
//!
//! Several frames share a datagram so that small frames (ACKs, ARP) do not
//! each pay for an IP+UDP header and a syscall. Origin and dest travel per
//! frame, not per datagram, because a relaying peer batches frames from
//! many origins into the one datagram it sends to its next hop.
//!
//! Heartbeat padding is unconstrained so that a heartbeat can be sized to
//! any length and double as a path-MTU probe without a new kind.
//!
//! A version or kind we do not know is a typed error rather than a guess,
//! so a future format can be introduced by bumping the version byte.

mod builder;
mod datagram;
mod sealed;

pub use builder::{write_heartbeat, DatagramBuilder, Full, PushError};
pub use datagram::{parse, Datagram, FrameIter, SleeveFrame};
pub use sealed::{
    open, seal, sealed_header, sealed_max_frame_len, sealed_overlay_mtu, SealError, SealedHeader, UnsealError,
    KIND_SEALED, SEALED_HEADER_LEN, SEAL_OVERHEAD,
};

use crate::codec::DecodeError;
use crate::PeerName;

/// UDP port of the sleeve, as in Weave.
pub const PORT: u16 = 6783;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 2 + PeerName::LEN;
pub const FRAME_HEADER_LEN: usize = 2 * PeerName::LEN + 2;
/// The smallest heartbeat: header + conn_id, no padding.
pub const HEARTBEAT_MIN_LEN: usize = HEADER_LEN + 8;
/// The longest frame a record's u16 length field can describe.
pub const MAX_RECORD_FRAME_LEN: usize = u16::MAX as usize;

/// IPv4 header without options + UDP header: what the underlay adds to
/// every sleeve datagram.
pub const IPV4_UDP_OVERHEAD: usize = 20 + 8;

const KIND_FRAMES: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;

/// The UDP payload size that fits in one underlay packet of `underlay_mtu`
/// bytes (an IP MTU, e.g. 1500) without IP fragmentation.
pub const fn max_datagram_payload(underlay_mtu: usize) -> usize {
    underlay_mtu.saturating_sub(IPV4_UDP_OVERHEAD)
}

/// The longest Ethernet frame that travels alone in a datagram whose
/// payload may be `datagram_payload_max` bytes.
pub const fn max_frame_len(datagram_payload_max: usize) -> usize {
    let room = datagram_payload_max.saturating_sub(HEADER_LEN + FRAME_HEADER_LEN);
    if room < MAX_RECORD_FRAME_LEN {
        room
    } else {
        MAX_RECORD_FRAME_LEN
    }
}

/// The MTU to give the overlay's interfaces so that every frame they emit
/// fits in one sleeve datagram over an underlay of `underlay_mtu`:
/// underlay − IP(20) − UDP(8) − HEADER_LEN − FRAME_HEADER_LEN − Ethernet(14).
pub const fn overlay_mtu(underlay_mtu: usize) -> usize {
    max_frame_len(max_datagram_payload(underlay_mtu)).saturating_sub(crate::ethernet::HEADER_LEN)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SleeveError {
    #[error("sleeve datagram malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported sleeve version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown sleeve datagram kind {0}")]
    UnknownKind(u8),
    #[error("sleeve frame record {index} malformed: {source}")]
    BadRecord { index: usize, source: DecodeError },
    #[error("buffer of {len} bytes is too small for a sleeve {what}: need {needed}")]
    BufferTooSmall { what: &'static str, len: usize, needed: usize },
    #[error("heartbeat length {len} is below the minimum {HEARTBEAT_MIN_LEN}")]
    HeartbeatTooShort { len: usize },
}

/// The header is the one piece both datagram kinds share.
fn header(kind: u8, sender: PeerName) -> [u8; HEADER_LEN] {
    let [a, b, c, d, e, f] = *sender.as_bytes();
    [VERSION, kind, a, b, c, d, e, f]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_arithmetic() {
        assert_eq!(HEADER_LEN, 8);
        assert_eq!(FRAME_HEADER_LEN, 14);
        assert_eq!(max_datagram_payload(1500), 1472);
        assert_eq!(max_frame_len(1472), 1450);
        assert_eq!(overlay_mtu(1500), 1500 - 20 - 8 - 8 - 14 - 14);
        assert_eq!(overlay_mtu(9001), 9001 - 64);
        assert_eq!(max_frame_len(1 << 20), MAX_RECORD_FRAME_LEN);
        assert_eq!(overlay_mtu(10), 0);
    }
}
