//! Cutting a frame read from the TAP into the frames that go on the wire.

use super::checksum::{copy_and_sum, finish, sum};
use super::headers::{Headers, IpVersion, IPV6_HEADER_LEN, PROTO_TCP, PROTO_UDP, TCP_CWR, TCP_FIN, TCP_PSH};
use super::vnet::{VnetHdr, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use super::{OffloadError, MAX_IP_LEN};
use crate::ethernet;

/// Where the TCP and UDP checksum fields sit in their headers.
pub(crate) const TCP_CSUM_OFFSET: u16 = 16;
pub(crate) const UDP_CSUM_OFFSET: u16 = 6;

/// A frame read from the TAP behind its virtio header, checked once;
/// yields the frames to send.
///
/// Segment `i` is built only when [`write`](Self::write) asks for it, into
/// the caller's buffer: headers copied and patched, payload copied and
/// summed in one pass.
#[derive(Debug, Clone, Copy)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    plan: Plan,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    /// The frame goes out as it is.
    Whole,
    /// The frame with the checksum at `field` completed over
    /// `frame[start..]`.
    Complete {
        start: usize,
        field: usize,
        udp: bool,
    },
    Split(Split),
}

/// A TSO/USO super-frame: offsets and first-segment values from the
/// checked headers.
#[derive(Debug, Clone, Copy)]
struct Split {
    l3: usize,
    l4: usize,
    /// Headers' length, L2 to the end of L4 (recomputed, not the vnet
    /// header's `hdr_len`).
    hdr_len: usize,
    gso_size: usize,
    count: usize,
    v4: bool,
    tcp: bool,
    /// Pseudo-header sum without the length.
    pseudo: u64,
}

impl<'a> Segmenter<'a> {
    pub fn new(hdr: &VnetHdr, frame: &'a [u8]) -> Result<Self, OffloadError> {
        if frame.len() < ethernet::HEADER_LEN {
            return Err(OffloadError::Truncated {
                what: "ethernet frame",
                len: frame.len(),
                need: ethernet::HEADER_LEN,
            });
        }
        let ecn = hdr.gso_type & GSO_ECN != 0;
        let plan = match hdr.gso_type & !GSO_ECN {
            GSO_NONE if !ecn && !hdr.needs_csum() => Plan::Whole,
            GSO_NONE if !ecn => complete(hdr, frame)?,
            GSO_TCPV4 | GSO_TCPV6 => Plan::Split(split(hdr, frame, true)?),
            // The kernel only marks TCP with ECN.
            GSO_UDP_L4 if !ecn => Plan::Split(split(hdr, frame, false)?),
            _ => return Err(OffloadError::UnsupportedGso(hdr.gso_type)),
        };
        Ok(Segmenter { frame, plan })
    }

    /// How many frames to send; at least 1.
    pub fn count(&self) -> usize {
        match self.plan {
            Plan::Whole | Plan::Complete { .. } => 1,
            Plan::Split(s) => s.count,
        }
    }

    /// The longest segment: the Ethernet frame length to compare with the
    /// path's maximum. A super-frame is sent as its segments, so this, not
    /// the super-frame's length, decides whether it fits the path.
    pub fn max_len(&self) -> usize {
        match self.plan {
            Plan::Split(s) if s.count > 1 => s.hdr_len + s.gso_size,
            _ => self.frame.len(),
        }
    }

    /// Length of segment `i`; 0 if there is no such segment.
    pub fn len(&self, i: usize) -> usize {
        match self.plan {
            _ if i >= self.count() => 0,
            Plan::Split(s) => s.hdr_len + s.payload_range(i, self.frame.len()).len(),
            _ => self.frame.len(),
        }
    }

    /// Writes segment `i`, complete with its headers and checksums, into
    /// `out[..self.len(i)]` and returns its length.
    pub fn write(&self, i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        let count = self.count();
        if i >= count {
            return Err(OffloadError::NoSuchSegment { index: i, count });
        }
        let need = self.len(i);
        let len = out.len();
        let out = out.get_mut(..need).ok_or(OffloadError::BufferTooSmall { len, need })?;
        match self.plan {
            Plan::Whole => out.copy_from_slice(self.frame),
            Plan::Complete { start, field, udp } => {
                let (head, rest) = out.split_at_mut(start);
                head.copy_from_slice(&self.frame[..start]);
                // The field holds the pseudo-header sum: summing over it
                // folds that in.
                let mut c = finish(copy_and_sum(rest, &self.frame[start..], 0));
                if udp && c == 0 {
                    c = 0xffff;
                }
                out[field..field + 2].copy_from_slice(&c.to_be_bytes());
            }
            Plan::Split(s) => s.write(self.frame, i, out),
        }
        Ok(need)
    }

    /// The super-frame's headers, L2 to the end of L4, for an ICMP
    /// "too big" reply. A frame that is not split is not parsed: it is
    /// returned whole.
    pub fn headers(&self) -> &'a [u8] {
        match self.plan {
            Plan::Split(s) => &self.frame[..s.hdr_len],
            _ => self.frame,
        }
    }
}

/// `GSO_NONE` with `NEEDS_CSUM`: the generic offload, whatever the
/// protocol, as a NIC does it.
fn complete(hdr: &VnetHdr, frame: &[u8]) -> Result<Plan, OffloadError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    // An odd offset would put the field across the words summed from
    // `start`, and storing the result there would not verify.
    if hdr.csum_offset & 1 != 0 || field + 2 > frame.len() {
        return Err(OffloadError::BadCsumField {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
            len: frame.len(),
        });
    }
    // UDP alone must not carry a computed 0: it means "no checksum".
    let udp = Headers::parse(frame)
        .is_ok_and(|h| h.proto() == PROTO_UDP && h.l4_offset() == start && hdr.csum_offset == UDP_CSUM_OFFSET);
    Ok(Plan::Complete { start, field, udp })
}

fn split(hdr: &VnetHdr, frame: &[u8], tcp: bool) -> Result<Split, OffloadError> {
    let gso_type = hdr.gso_type;
    let h = Headers::parse(frame)?;
    let version = h.version();
    let expected_version = match gso_type & !GSO_ECN {
        GSO_TCPV4 => Some(IpVersion::V4),
        GSO_TCPV6 => Some(IpVersion::V6),
        _ => None,
    };
    if expected_version.is_some_and(|v| v != version) {
        return Err(OffloadError::GsoIpMismatch { gso_type, version });
    }
    if h.more_fragments() {
        return Err(OffloadError::Fragment { offset: 0, more: true });
    }
    let (expected, csum_offset) = if tcp { (PROTO_TCP, TCP_CSUM_OFFSET) } else { (PROTO_UDP, UDP_CSUM_OFFSET) };
    if h.proto() != expected {
        return Err(OffloadError::WrongProtocol { gso_type, proto: h.proto(), expected });
    }
    if usize::from(hdr.csum_start) != h.l4_offset() {
        return Err(OffloadError::BadCsumStart { csum_start: hdr.csum_start, l4: h.l4_offset() });
    }
    if hdr.csum_offset != csum_offset {
        return Err(OffloadError::BadCsumOffset { gso_type, csum_offset: hdr.csum_offset, expected: csum_offset });
    }
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize { gso_type });
    }
    // hdr.hdr_len is not used: see VnetHdr::hdr_len.
    let hdr_len = h.payload_offset();
    let gso_size = usize::from(hdr.gso_size);
    let payload = frame.len() - hdr_len;
    let count = payload.div_ceil(gso_size).max(1);
    let l3 = h.l3_offset();
    // The IP length of the longest segment must fit its 16-bit field.
    let ip_len = hdr_len - l3 + payload.min(gso_size);
    let field_len = if version == IpVersion::V6 { ip_len - IPV6_HEADER_LEN } else { ip_len };
    if field_len > MAX_IP_LEN {
        return Err(OffloadError::SegmentTooLong { len: field_len });
    }
    Ok(Split {
        l3,
        l4: h.l4_offset(),
        hdr_len,
        gso_size,
        count,
        v4: version == IpVersion::V4,
        tcp,
        pseudo: h.pseudo_header(0),
    })
}

impl Split {
    fn payload_range(&self, i: usize, frame_len: usize) -> std::ops::Range<usize> {
        let start = self.hdr_len + i * self.gso_size;
        start..(start + self.gso_size).min(frame_len)
    }

    /// `out` is exactly segment `i`'s length; `new` checked every offset.
    fn write(&self, frame: &[u8], i: usize, out: &mut [u8]) {
        let payload = self.payload_range(i, frame.len());
        let payload_len = payload.len();
        let (head, body) = out.split_at_mut(self.hdr_len);
        head.copy_from_slice(&frame[..self.hdr_len]);
        let (before_l4, l4h) = head.split_at_mut(self.l4);
        let ip = &mut before_l4[self.l3..];
        // Every length below was bounded by MAX_IP_LEN in `split`.
        let ip_len = ip.len() + l4h.len() + payload_len;
        if self.v4 {
            ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            // IDs count up per segment, as the kernel's own GSO does.
            let id = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(i as u16);
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[10..12].fill(0);
            let c = finish(sum(ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            ip[4..6].copy_from_slice(&((ip_len - IPV6_HEADER_LEN) as u16).to_be_bytes());
        }
        let l4_len = l4h.len() + payload_len;
        let field = if self.tcp {
            let seq = u32::from_be_bytes([l4h[4], l4h[5], l4h[6], l4h[7]]).wrapping_add((i * self.gso_size) as u32);
            l4h[4..8].copy_from_slice(&seq.to_be_bytes());
            // FIN and PSH belong to the end of the data, CWR to its start
            // (RFC 3168 §6.1.2), as in the kernel's tcp_gso_segment.
            if i + 1 != self.count {
                l4h[13] &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                l4h[13] &= !TCP_CWR;
            }
            usize::from(TCP_CSUM_OFFSET)
        } else {
            l4h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            usize::from(UDP_CSUM_OFFSET)
        };
        l4h[field..field + 2].fill(0);
        let acc = sum(l4h, self.pseudo + l4_len as u64);
        let mut c = finish(copy_and_sum(body, &frame[payload], acc));
        if !self.tcp && c == 0 {
            c = 0xffff;
        }
        l4h[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }
}
