//! One parse of an Ethernet frame's header layout (L2 tags, IP, TCP or
//! UDP), shared by the segmenter and the coalescer. Every length is
//! checked here, once; the accessors then read fixed-size arrays and
//! offsets that are known to lie inside the frame.

use std::fmt;

use super::checksum;
use super::OffloadError;
use crate::ethernet::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Ethernet header with two tags, the most [`Headers::parse`] walks.
pub const MAX_L2_LEN: usize = ethernet::HEADER_LEN + 2 * VLAN_TAG_LEN;
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const TCP_HEADER_LEN: usize = 20;
/// Data offset 15: 40 bytes of options.
pub const TCP_MAX_HEADER_LEN: usize = 60;
pub const UDP_HEADER_LEN: usize = 8;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

const VLAN_TAG_LEN: usize = 4;
/// Bounds the IPv6 extension-header walk; real packets carry one or two.
const MAX_EXT_HEADERS: usize = 8;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_DEST_OPTS: u8 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpVersion::V4 => "IPv4",
            IpVersion::V6 => "IPv6",
        })
    }
}

/// The fixed part of the IP header (options and extension headers follow
/// it, up to [`Headers::l4_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpHeader<'a> {
    V4(&'a [u8; IPV4_HEADER_LEN]),
    V6(&'a [u8; IPV6_HEADER_LEN]),
}

/// The fixed part of the L4 header (TCP options follow it, up to
/// [`Headers::payload_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Header<'a> {
    Tcp(&'a [u8; TCP_HEADER_LEN]),
    Udp(&'a [u8; UDP_HEADER_LEN]),
}

/// A TCP or UDP packet over IPv4 or IPv6 in an Ethernet frame, with up to
/// two VLAN tags. Offsets count from the start of the Ethernet frame, as
/// `csum_start` does on a TAP.
///
/// Accepted: IPv4 with options, the first fragment of an IPv4 packet
/// ([`more_fragments`](Self::more_fragments) tells), IPv6 with
/// hop-by-hop and destination-options headers. Refused: later IPv4
/// fragments (no L4 header), and IPv6 routing headers (the pseudo-header
/// would need the final destination from inside them), fragment headers
/// and any other extension header.
///
/// The IP length fields are not checked against the frame: a super-frame
/// read from a TAP is defined by its length, a received frame by its IP
/// length (Ethernet pads short frames). [`ip_end`](Self::ip_end) does
/// that check for whoever needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    frame: &'a [u8],
    l3: usize,
    l4: usize,
    payload: usize,
    ip: IpHeader<'a>,
    l4h: L4Header<'a>,
}

impl<'a> Headers<'a> {
    pub fn parse(frame: &'a [u8]) -> Result<Self, OffloadError> {
        let (l3, ethertype) = l2_len(frame)?;
        let ip_bytes = frame.get(l3..).unwrap_or_default();
        let (ip, ip_len, proto) = match ethertype {
            ETHERTYPE_IPV4 => parse_ipv4(ip_bytes)?,
            ETHERTYPE_IPV6 => parse_ipv6(ip_bytes)?,
            other => return Err(OffloadError::NotIp(other)),
        };
        let l4 = l3 + ip_len;
        let l4_bytes = frame.get(l4..).unwrap_or_default();
        let (l4h, l4_len) = match proto {
            PROTO_TCP => {
                let tcp: &[u8; TCP_HEADER_LEN] = first(l4_bytes, "TCP header")?;
                let data_offset = tcp[12] >> 4;
                let len = usize::from(data_offset) * 4;
                if len < TCP_HEADER_LEN {
                    return Err(OffloadError::BadTcpDataOffset(data_offset));
                }
                check_len(l4_bytes, len, "TCP options")?;
                (L4Header::Tcp(tcp), len)
            }
            PROTO_UDP => (L4Header::Udp(first(l4_bytes, "UDP header")?), UDP_HEADER_LEN),
            other => return Err(OffloadError::NotTcpUdp(other)),
        };
        Ok(Headers { frame, l3, l4, payload: l4 + l4_len, ip, l4h })
    }

    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    /// Also the length of the L2 header, VLAN tags included.
    pub fn l3_offset(&self) -> usize {
        self.l3
    }

    pub fn l4_offset(&self) -> usize {
        self.l4
    }

    /// Also the length of all headers, L2 to L4.
    pub fn payload_offset(&self) -> usize {
        self.payload
    }

    pub fn version(&self) -> IpVersion {
        match self.ip {
            IpHeader::V4(_) => IpVersion::V4,
            IpHeader::V6(_) => IpVersion::V6,
        }
    }

    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub fn proto(&self) -> u8 {
        match self.l4h {
            L4Header::Tcp(_) => PROTO_TCP,
            L4Header::Udp(_) => PROTO_UDP,
        }
    }

    pub fn ip(&self) -> IpHeader<'a> {
        self.ip
    }

    pub fn l4(&self) -> L4Header<'a> {
        self.l4h
    }

    /// The L2 header: MACs, tags, ethertype.
    pub fn l2_bytes(&self) -> &'a [u8] {
        &self.frame[..self.l3]
    }

    /// The whole IP header: IPv4 options or IPv6 extension headers included.
    pub fn ip_bytes(&self) -> &'a [u8] {
        &self.frame[self.l3..self.l4]
    }

    /// The whole L4 header, TCP options included.
    pub fn l4_bytes(&self) -> &'a [u8] {
        &self.frame[self.l4..self.payload]
    }

    /// Everything from the Ethernet header to the end of the L4 header.
    pub fn header_bytes(&self) -> &'a [u8] {
        &self.frame[..self.payload]
    }

    /// IPv4 options or IPv6 extension headers are present.
    pub fn has_ip_options(&self) -> bool {
        self.l4 - self.l3
            != match self.ip {
                IpHeader::V4(_) => IPV4_HEADER_LEN,
                IpHeader::V6(_) => IPV6_HEADER_LEN,
            }
    }

    /// The IPv4 MF flag (later fragments are refused by `parse`).
    pub fn more_fragments(&self) -> bool {
        matches!(self.ip, IpHeader::V4(h) if h[6] & 0x20 != 0)
    }

    /// Where the IP datagram ends by its length field, if that is
    /// consistent with the frame: no shorter than the headers parsed, no
    /// longer than the frame. IPv6 jumbograms (length 0) are `None`.
    pub fn ip_end(&self) -> Option<usize> {
        let ip_len = match self.ip {
            IpHeader::V4(h) => usize::from(u16::from_be_bytes([h[2], h[3]])),
            IpHeader::V6(h) => match u16::from_be_bytes([h[4], h[5]]) {
                0 => return None,
                n => IPV6_HEADER_LEN + usize::from(n),
            },
        };
        let end = self.l3 + ip_len;
        (self.payload..=self.frame.len()).contains(&end).then_some(end)
    }

    /// The pseudo-header sum for an L4 length of `l4_len` bytes.
    pub fn pseudo_header(&self, l4_len: usize) -> u64 {
        // L4 lengths are bounded by frame lengths, far below 2^32; the
        // cast cannot truncate anything that fits in memory next to it.
        let len = l4_len as u32;
        match self.ip {
            IpHeader::V4(h) => {
                let [.., s0, s1, s2, s3, d0, d1, d2, d3] = *h;
                checksum::pseudo_header_v4([s0, s1, s2, s3], [d0, d1, d2, d3], self.proto(), len)
            }
            IpHeader::V6(h) => {
                let (src, dst) = ipv6_addrs(h);
                checksum::pseudo_header_v6(src, dst, self.proto(), len)
            }
        }
    }

    /// Source and destination ports.
    pub fn ports(&self) -> [u8; 4] {
        match self.l4h {
            L4Header::Tcp(&[a, b, c, d, ..]) | L4Header::Udp(&[a, b, c, d, ..]) => [a, b, c, d],
        }
    }
}

fn ipv6_addrs(h: &[u8; IPV6_HEADER_LEN]) -> ([u8; 16], [u8; 16]) {
    let [_, _, _, _, _, _, _, _, addrs @ ..] = *h;
    let [src @ .., _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _] = addrs;
    let [_, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, dst @ ..] = addrs;
    (src, dst)
}

/// The L2 header's length (14, or 18/22 with one or two 802.1Q/802.1ad
/// tags) and the ethertype behind it.
pub fn l2_len(frame: &[u8]) -> Result<(usize, u16), OffloadError> {
    let mut at = ethernet::HEADER_LEN - 2;
    loop {
        let what = if at == ethernet::HEADER_LEN - 2 { "ethernet header" } else { "VLAN tag" };
        let [hi, lo]: [u8; 2] = *frame.get(at..).and_then(<[u8]>::first_chunk).ok_or(OffloadError::Truncated {
            what,
            len: frame.len(),
            need: at + 2,
        })?;
        let ethertype = u16::from_be_bytes([hi, lo]);
        // A third tag is not walked: its ethertype is then not IP.
        if matches!(ethertype, ETHERTYPE_VLAN | ETHERTYPE_QINQ) && at + 2 < MAX_L2_LEN {
            at += VLAN_TAG_LEN;
        } else {
            return Ok((at + 2, ethertype));
        }
    }
}

fn first<'a, const N: usize>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8; N], OffloadError> {
    bytes.first_chunk().ok_or(OffloadError::Truncated { what, len: bytes.len(), need: N })
}

fn check_len(bytes: &[u8], need: usize, what: &'static str) -> Result<(), OffloadError> {
    if bytes.len() < need {
        return Err(OffloadError::Truncated { what, len: bytes.len(), need });
    }
    Ok(())
}

/// The fixed header, the whole header's length and the protocol.
fn parse_ipv4(ip: &[u8]) -> Result<(IpHeader<'_>, usize, u8), OffloadError> {
    let h: &[u8; IPV4_HEADER_LEN] = first(ip, "IPv4 header")?;
    if h[0] >> 4 != 4 {
        return Err(OffloadError::BadIpVersion { ethertype: ETHERTYPE_IPV4, version: h[0] >> 4 });
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < IPV4_HEADER_LEN {
        return Err(OffloadError::BadIhl(ihl));
    }
    check_len(ip, ihl, "IPv4 options")?;
    let flags_frag = u16::from_be_bytes([h[6], h[7]]);
    let offset = usize::from(flags_frag & 0x1fff) * 8;
    if offset != 0 {
        return Err(OffloadError::Fragment { offset, more: flags_frag & 0x2000 != 0 });
    }
    Ok((IpHeader::V4(h), ihl, h[9]))
}

fn parse_ipv6(ip: &[u8]) -> Result<(IpHeader<'_>, usize, u8), OffloadError> {
    let h: &[u8; IPV6_HEADER_LEN] = first(ip, "IPv6 header")?;
    if h[0] >> 4 != 6 {
        return Err(OffloadError::BadIpVersion { ethertype: ETHERTYPE_IPV6, version: h[0] >> 4 });
    }
    let mut next = h[6];
    let mut at = IPV6_HEADER_LEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTS => {
                let ext = ip.get(at..).unwrap_or_default();
                let [nh, len]: [u8; 2] = *first(ext, "IPv6 extension header")?;
                // Length in 8-octet units, not counting the first 8.
                let ext_len = (usize::from(len) + 1) * 8;
                check_len(ext, ext_len, "IPv6 extension header")?;
                next = nh;
                at += ext_len;
            }
            // Routing, fragment, ESP, AH, mobility, HIP, shim6, experiments.
            43 | 44 | 50 | 51 | 135 | 139 | 140 | 253 | 254 => return Err(OffloadError::Ipv6ExtHeader(next)),
            proto => return Ok((IpHeader::V6(h), at, proto)),
        }
    }
    Err(OffloadError::Ipv6ExtHeader(next))
}
