//! TAP offload: cutting the TAP's super-frames into wire frames, and
//! merging received frames back into super-frames for the TAP.
//!
//! # The virtio header on a TAP
//!
//! The router opens its TAP with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(CSUM|TSO4|TSO6|USO4|USO6)`. The kernel then treats the
//! TAP like a NIC with checksum and segmentation offload: every frame read
//! from it comes behind a 10-byte [`VnetHdr`], and the bridge hands it
//! the pods' TCP (and UDP-L4) GSO packets whole, as "super-frames" of up
//! to 64 KB. Every frame written into it must carry a `VnetHdr` too.
//!
//! - `NEEDS_CSUM` ([`F_NEEDS_CSUM`]): the frame's L4 checksum is not done.
//!   The field at `csum_start + csum_offset` holds only the sum of the
//!   pseudo-header (not complemented); whoever finishes it sums every byte
//!   from `csum_start` to the end, field included, and stores the
//!   complement. On a TAP, `csum_start` counts from the start of the
//!   Ethernet frame, L2 header and VLAN tags included.
//! - `gso_type` TCPV4/TCPV6/UDP_L4: the frame is a super-frame whose
//!   payload is to be cut into `gso_size`-byte pieces (the last one may
//!   be shorter), each behind a copy of the headers.
//!
//! # Sending: segment per MSS
//!
//! [`Segmenter`] turns one TAP read into the frames to send, each complete
//! with its own IP length, IPv4 ID and header checksum, TCP sequence
//! number and flags (or UDP length), and a full L4 checksum, so that any
//! peer (or an older weft) can deliver it as an ordinary frame. Segments
//! are `gso_size` payload bytes long: the pod's MSS, which its MTU and
//! therefore the overlay's path allow. The super-frame's length says
//! nothing about the path: [`Segmenter::max_len`] is what the router
//! compares with the path's maximum frame.
//!
//! # Receiving: coalesce inside one batch
//!
//! [`Coalescer`] merges consecutive, in-order segments of one TCP flow
//! (optionally UDP) from one receive batch into a super-frame written
//! with `NEEDS_CSUM` and `GSO_TCPV4/6` (or `GSO_UDP_L4`): the kernel
//! then sends one packet, not dozens, through the bridge, the veth and
//! the pod's stack, and the pod does no checksum work (a
//! `CHECKSUM_PARTIAL` packet counts as verified). Merging stays inside
//! one batch: waiting for more frames would add latency, and frames of
//! one batch already arrived together. Within it, each flow's frames
//! leave in their arrival order.
//!
//! # What is trusted
//!
//! The `VnetHdr` and super-frame come from the local kernel, but every
//! length and offset is still checked before use, and `hdr_len` is
//! ignored (on the forward path the kernel sets it to the length of the
//! skb's linear part). Received frames come from peers: they are parsed
//! defensively, and before a segment is merged its IPv4 header checksum
//! and full L4 checksum are verified, because the merged super-frame's
//! new partial checksum would otherwise launder a corrupt segment into
//! one the pod accepts. Nothing here panics on any input; a frame that
//! breaks a rule is passed through unchanged.

pub mod checksum;
mod coalesce;
mod headers;
mod segment;
mod vnet;

#[cfg(test)]
pub(crate) mod tests;

pub use coalesce::{Coalescer, Output, Segment, MAX_HEADER_LEN, MAX_SEGMENTS};
pub use headers::{
    l2_len, Headers, IpHeader, IpVersion, L4Header, ETHERTYPE_QINQ, ETHERTYPE_VLAN, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    MAX_L2_LEN, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_HEADER_LEN, TCP_MAX_HEADER_LEN, TCP_PSH,
    TCP_RST, TCP_SYN, TCP_URG, UDP_HEADER_LEN,
};
pub use segment::Segmenter;
pub use vnet::{
    VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, VNET_HDR_LEN,
};

/// The largest IPv4 total length / IPv6 payload length.
const MAX_IP_LEN: usize = u16::MAX as usize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("{what} truncated: {len} bytes, need {need}")]
    Truncated { what: &'static str, len: usize, need: usize },
    #[error("unsupported virtio gso_type {0:#04x}")]
    UnsupportedGso(u8),
    #[error("gso_size 0 for gso_type {gso_type:#04x}")]
    ZeroGsoSize { gso_type: u8 },
    #[error(
        "checksum field at csum_start {csum_start} + csum_offset {csum_offset} is odd or outside the {len}-byte frame"
    )]
    BadCsumField { csum_start: u16, csum_offset: u16, len: usize },
    #[error("csum_start {csum_start} is not the L4 header's offset {l4}")]
    BadCsumStart { csum_start: u16, l4: usize },
    #[error("csum_offset {csum_offset} for gso_type {gso_type:#04x}: expected {expected}")]
    BadCsumOffset { gso_type: u8, csum_offset: u16, expected: u16 },
    #[error("ethertype {0:#06x} is neither IPv4 nor IPv6")]
    NotIp(u16),
    #[error("IP version {version} behind ethertype {ethertype:#06x}")]
    BadIpVersion { ethertype: u16, version: u8 },
    #[error("gso_type {gso_type:#04x} does not apply to an {version} packet")]
    GsoIpMismatch { gso_type: u8, version: IpVersion },
    #[error("IPv4 header length {0} is below 20")]
    BadIhl(usize),
    #[error("IPv4 fragment at byte offset {offset} (more fragments: {more})")]
    Fragment { offset: usize, more: bool },
    #[error("IPv6 extension header {0} is not supported")]
    Ipv6ExtHeader(u8),
    #[error("IP protocol {0} is neither TCP nor UDP")]
    NotTcpUdp(u8),
    #[error("gso_type {gso_type:#04x} needs IP protocol {expected}, the packet is {proto}")]
    WrongProtocol { gso_type: u8, proto: u8, expected: u8 },
    #[error("TCP data offset {0} is below 5 words")]
    BadTcpDataOffset(u8),
    #[error("a segment's IP length {len} exceeds 65535")]
    SegmentTooLong { len: usize },
    #[error("no segment {index}: there are {count}")]
    NoSuchSegment { index: usize, count: usize },
    #[error("output buffer of {len} bytes is too small: need {need}")]
    BufferTooSmall { len: usize, need: usize },
}
