//! ICMP "too big" replies for frames that do not fit the overlay path.
//!
//! An L2 overlay cannot fragment a frame, so a frame longer than the path
//! allows is dropped. Answering with ICMP "fragmentation needed" (IPv4,
//! RFC 1191) or "packet too big" (IPv6, RFC 8201) lets the sender's kernel
//! lower its path MTU and resend smaller, instead of the flow stalling in a
//! black hole. The reply is a whole Ethernet frame addressed back to the
//! sender, to be injected on the local bridge as if the remote end of the
//! path had sent it: MACs swapped, and the IP source is the original
//! destination, as Linux bridges and tunnels do.
//!
//! IPv4 with DF clear gets no reply, as in Weave: the sender allowed
//! fragmentation, so it is not doing path-MTU discovery and would not act
//! on the reply. The router drops the frame and counts it
//! ([`NoReply::DontFragmentClear`]). Fragmenting such packets at L3 on
//! the sender's behalf would be the way to carry them.
//!
//! No reply is ever sent about an ICMP error, a non-first IPv4 fragment,
//! or to/from a non-unicast address (RFC 1122 §3.2.2, RFC 4443 §2.4), so
//! two misconfigured nodes can never bounce errors at each other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ethernet::{self, EthernetFrame, MacAddr, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::offload::checksum::{finish, pseudo_header_v6, sum};

pub const IPV4_MIN_MTU: usize = 68;
pub const IPV6_MIN_MTU: usize = 1280;
/// The longest reply [`too_big_reply`] builds (an IPv6 reply filling the
/// IPv6 minimum MTU): a buffer this long never yields `BufferTooSmall`.
pub const MAX_REPLY_LEN: usize = ethernet::HEADER_LEN + IPV6_MIN_MTU;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const ICMP_HEADER_LEN: usize = 8;
const PROTO_ICMP: u8 = 1;
const NEXT_HEADER_ICMPV6: u8 = 58;
const REPLY_HOP_LIMIT: u8 = 64;
/// Bounds the IPv6 extension-header walk; real packets carry two or three.
const MAX_EXT_HEADERS: usize = 8;
/// RFC 4443: quote as much of the packet as fits in a minimum-MTU reply.
const IPV6_MAX_QUOTE: usize = IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN;

/// Why no reply was built. Each is a reason to drop the frame silently;
/// the router counts them by variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoReply {
    #[error("frame of {len} bytes fits the path maximum {max}")]
    Fits { len: usize, max: usize },
    #[error("ethertype {0:#06x} is neither IPv4 nor IPv6")]
    NotIp(u16),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("IPv4 packet has DF clear: it needs fragmenting, which an L2 overlay cannot do")]
    DontFragmentClear,
    #[error("IPv4 fragment at byte offset {0}: errors are only sent about first fragments")]
    NotFirstFragment(usize),
    #[error("packet is itself an ICMP error")]
    IcmpError,
    #[error("{which} MAC {mac} is not unicast")]
    NotUnicastMac { which: &'static str, mac: MacAddr },
    #[error("{which} address {addr} is not unicast")]
    NotUnicast { which: &'static str, addr: IpAddr },
    #[error("path MTU {mtu} is below the {min}-byte minimum for this IP version")]
    MtuTooSmall { mtu: usize, min: usize },
    #[error("reply buffer of {len} bytes is too small: need {needed}")]
    BufferTooSmall { len: usize, needed: usize },
}

/// Writes into `out` the ICMP reply telling the sender of `frame` that only
/// frames up to `max_frame_len` bytes get through, and returns the reply's
/// length. `max_frame_len` counts the Ethernet header, as the sleeve's
/// `max_frame_len` does; the MTU advertised is 14 bytes less.
pub fn too_big_reply(frame: &[u8], max_frame_len: usize, out: &mut [u8]) -> Result<usize, NoReply> {
    if frame.len() <= max_frame_len {
        return Err(NoReply::Fits { len: frame.len(), max: max_frame_len });
    }
    let eth = EthernetFrame::new_checked(frame).map_err(|_| NoReply::Malformed("ethernet frame"))?;
    for (which, mac) in [("source", eth.src()), ("destination", eth.dst())] {
        if !mac.is_unicast() {
            return Err(NoReply::NotUnicastMac { which, mac });
        }
    }
    let mtu = max_frame_len.saturating_sub(ethernet::HEADER_LEN);
    match eth.ethertype() {
        ETHERTYPE_IPV4 => frag_needed(&eth, mtu, out),
        ETHERTYPE_IPV6 => packet_too_big(&eth, mtu, out),
        other => Err(NoReply::NotIp(other)),
    }
}

fn frag_needed(eth: &EthernetFrame<'_>, mtu: usize, out: &mut [u8]) -> Result<usize, NoReply> {
    const MALFORMED: NoReply = NoReply::Malformed("IPv4 header");
    let ip = eth.payload();
    let fixed: &[u8; IPV4_HEADER_LEN] = ip.first_chunk().ok_or(MALFORMED)?;
    let [ver_ihl, _, tl0, tl1, _, _, ff0, ff1, _, proto, _, _, s0, s1, s2, s3, d0, d1, d2, d3] = *fixed;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    let ip_len = usize::from(u16::from_be_bytes([tl0, tl1])).min(ip.len());
    if ver_ihl >> 4 != 4 || ihl < IPV4_HEADER_LEN || ip_len < ihl {
        return Err(MALFORMED);
    }
    let flags_frag = u16::from_be_bytes([ff0, ff1]);
    if flags_frag & 0x4000 == 0 {
        return Err(NoReply::DontFragmentClear);
    }
    let offset = usize::from(flags_frag & 0x1fff) * 8;
    if offset != 0 {
        return Err(NoReply::NotFirstFragment(offset));
    }
    let (src, dst) = (Ipv4Addr::new(s0, s1, s2, s3), Ipv4Addr::new(d0, d1, d2, d3));
    if src.is_unspecified() || src.is_loopback() || src.is_broadcast() || src.is_multicast() {
        return Err(NoReply::NotUnicast { which: "source", addr: src.into() });
    }
    if dst.is_unspecified() || dst.is_broadcast() || dst.is_multicast() {
        return Err(NoReply::NotUnicast { which: "destination", addr: dst.into() });
    }
    if proto == PROTO_ICMP {
        let icmp_type = *ip.get(ihl).ok_or(NoReply::Malformed("ICMP header"))?;
        if !is_icmpv4_query(icmp_type) {
            return Err(NoReply::IcmpError);
        }
    }
    if mtu < IPV4_MIN_MTU {
        return Err(NoReply::MtuTooSmall { mtu, min: IPV4_MIN_MTU });
    }
    // RFC 792: the original header plus the first 8 bytes of its payload.
    let quote = ip.get(..ip_len.min(ihl + 8)).ok_or(MALFORMED)?;
    let [m0, m1] = u16::try_from(mtu).unwrap_or(u16::MAX).to_be_bytes();
    let icmp_head = [3, 4, 0, 0, 0, 0, m0, m1];
    let total = IPV4_HEADER_LEN + ICMP_HEADER_LEN + quote.len();
    // `total` is at most 20 + 8 + 60 + 8.
    let ip_head = ipv4_header(total as u16, dst, src);
    let eth_head = ethernet::header(eth.src(), eth.dst(), ETHERTYPE_IPV4);
    write_reply(out, &eth_head, &ip_head, icmp_head, quote, 0)
}

/// Unknown ICMP types count as errors: replying to something we cannot
/// classify risks an error loop, not replying costs one retransmission.
fn is_icmpv4_query(icmp_type: u8) -> bool {
    matches!(icmp_type, 0 | 8 | 9 | 10 | 13..=18)
}

fn ipv4_header(total_len: u16, src: Ipv4Addr, dst: Ipv4Addr) -> [u8; IPV4_HEADER_LEN] {
    let [t0, t1] = total_len.to_be_bytes();
    let [s0, s1, s2, s3] = src.octets();
    let [d0, d1, d2, d3] = dst.octets();
    // TOS 0xc0 (internetwork control) as Linux uses for ICMP errors; DF set
    // and id 0, as RFC 6864 allows for a datagram that is never fragmented.
    let mut h = [0x45, 0xc0, t0, t1, 0, 0, 0x40, 0, REPLY_HOP_LIMIT, PROTO_ICMP, 0, 0, s0, s1, s2, s3, d0, d1, d2, d3];
    [h[10], h[11]] = finish(sum(&h, 0)).to_be_bytes();
    h
}

fn packet_too_big(eth: &EthernetFrame<'_>, mtu: usize, out: &mut [u8]) -> Result<usize, NoReply> {
    const MALFORMED: NoReply = NoReply::Malformed("IPv6 header");
    let ip = eth.payload();
    let fixed: &[u8; IPV6_HEADER_LEN] = ip.first_chunk().ok_or(MALFORMED)?;
    let [ver, _, _, _, pl0, pl1, next, _, addrs @ ..] = *fixed;
    if ver >> 4 != 6 {
        return Err(MALFORMED);
    }
    let [src @ .., _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _] = addrs;
    let [_, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, dst @ ..] = addrs;
    let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
    // Payload length 0 means a jumbogram: trust the frame length.
    let ip_len = match usize::from(u16::from_be_bytes([pl0, pl1])) {
        0 => ip.len(),
        payload => (IPV6_HEADER_LEN + payload).min(ip.len()),
    };
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() {
        return Err(NoReply::NotUnicast { which: "source", addr: src.into() });
    }
    // RFC 4443 would allow a reply about a multicast packet, but the reply
    // needs the original destination as its source, and a group address
    // cannot be one.
    if dst.is_unspecified() || dst.is_multicast() {
        return Err(NoReply::NotUnicast { which: "destination", addr: dst.into() });
    }
    if is_icmpv6_error(ip, next)? {
        return Err(NoReply::IcmpError);
    }
    if mtu < IPV6_MIN_MTU {
        return Err(NoReply::MtuTooSmall { mtu, min: IPV6_MIN_MTU });
    }
    let quote = ip.get(..ip_len.min(IPV6_MAX_QUOTE)).ok_or(MALFORMED)?;
    let [m0, m1, m2, m3] = u32::try_from(mtu).unwrap_or(u32::MAX).to_be_bytes();
    let icmp_head = [2, 0, 0, 0, m0, m1, m2, m3];
    let icmp_len = ICMP_HEADER_LEN + quote.len();
    // `icmp_len` is at most 1240.
    let ip_head = ipv6_header(icmp_len as u16, dst, src);
    // The ICMPv6 checksum covers a pseudo-header (RFC 8200 §8.1).
    let pseudo = pseudo_header_v6(dst.octets(), src.octets(), NEXT_HEADER_ICMPV6, icmp_len as u32);
    let eth_head = ethernet::header(eth.src(), eth.dst(), ETHERTYPE_IPV6);
    write_reply(out, &eth_head, &ip_head, icmp_head, quote, pseudo)
}

/// Walks the extension-header chain to the upper layer. A non-first
/// fragment hides the upper layer; it is then not recognisably an error.
fn is_icmpv6_error(ip: &[u8], mut next: u8) -> Result<bool, NoReply> {
    const MALFORMED: NoReply = NoReply::Malformed("IPv6 extension header");
    let mut at = IPV6_HEADER_LEN;
    for _ in 0..MAX_EXT_HEADERS {
        let rest = ip.get(at..).ok_or(MALFORMED)?;
        match next {
            NEXT_HEADER_ICMPV6 => return rest.first().map(|&t| t < 128).ok_or(MALFORMED),
            // Hop-by-hop, routing, destination options: length in 8-octet
            // units, not counting the first 8.
            0 | 43 | 60 => {
                let [nh, len] = *rest.first_chunk().ok_or(MALFORMED)?;
                next = nh;
                at += (usize::from(len) + 1) * 8;
            }
            // Fragment.
            44 => {
                let [nh, _, off0, off1] = *rest.first_chunk().ok_or(MALFORMED)?;
                if u16::from_be_bytes([off0, off1]) >> 3 != 0 {
                    return Ok(false);
                }
                next = nh;
                at += 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let [nh, len] = *rest.first_chunk().ok_or(MALFORMED)?;
                next = nh;
                at += (usize::from(len) + 2) * 4;
            }
            _ => return Ok(false),
        }
    }
    Err(MALFORMED)
}

fn ipv6_header(payload_len: u16, src: Ipv6Addr, dst: Ipv6Addr) -> [u8; IPV6_HEADER_LEN] {
    let mut h = [0u8; IPV6_HEADER_LEN];
    let [p0, p1] = payload_len.to_be_bytes();
    let (fixed, addrs) = h.split_at_mut(8);
    fixed.copy_from_slice(&[0x60, 0, 0, 0, p0, p1, NEXT_HEADER_ICMPV6, REPLY_HOP_LIMIT]);
    let (s, d) = addrs.split_at_mut(16);
    s.copy_from_slice(&src.octets());
    d.copy_from_slice(&dst.octets());
    h
}

/// Lays out Ethernet header, IP header, ICMP header and quote, filling in
/// the ICMP checksum (seeded with the pseudo-header sum for ICMPv6).
fn write_reply(
    out: &mut [u8],
    eth_head: &[u8],
    ip_head: &[u8],
    mut icmp_head: [u8; ICMP_HEADER_LEN],
    quote: &[u8],
    pseudo_sum: u64,
) -> Result<usize, NoReply> {
    let needed = eth_head.len() + ip_head.len() + ICMP_HEADER_LEN + quote.len();
    let len = out.len();
    let out = out.get_mut(..needed).ok_or(NoReply::BufferTooSmall { len, needed })?;
    [icmp_head[2], icmp_head[3]] = finish(sum(quote, sum(&icmp_head, pseudo_sum))).to_be_bytes();
    let (e, rest) = out.split_at_mut(eth_head.len());
    let (i, rest) = rest.split_at_mut(ip_head.len());
    let (h, q) = rest.split_at_mut(ICMP_HEADER_LEN);
    e.copy_from_slice(eth_head);
    i.copy_from_slice(ip_head);
    h.copy_from_slice(&icmp_head);
    q.copy_from_slice(quote);
    Ok(needed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::offload::tests::verifies;
    use proptest::prelude::*;

    const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xb]);
    const SRC4: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 1);
    const DST4: Ipv4Addr = Ipv4Addr::new(10, 40, 0, 7);

    fn ipv4_frame(flags_frag: u16, proto: u8, options: usize, payload: &[u8]) -> Vec<u8> {
        let ihl = 20 + options;
        let mut f = ethernet::header(B, A, ETHERTYPE_IPV4).to_vec();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        f.extend_from_slice(&flags_frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&SRC4.octets());
        f.extend_from_slice(&DST4.octets());
        f.resize(f.len() + options, 1);
        f.extend_from_slice(payload);
        f
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    #[test]
    fn ipv4_frag_needed() {
        for options in [0, 8] {
            let frame = ipv4_frame(0x4000, 6, options, &payload(1500));
            let mut out = [0u8; MAX_REPLY_LEN];
            let n = too_big_reply(&frame, 1414, &mut out).unwrap();
            let reply = &out[..n];
            let eth = EthernetFrame::new_checked(reply).unwrap();
            assert_eq!((eth.dst(), eth.src(), eth.ethertype()), (A, B, ETHERTYPE_IPV4));
            let ip = eth.payload();
            let quote_len = 20 + options + 8;
            assert_eq!(ip.len(), 20 + 8 + quote_len);
            assert_eq!(ip[0], 0x45);
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
            assert_eq!(ip[9], PROTO_ICMP);
            assert_eq!(ip[12..16], DST4.octets());
            assert_eq!(ip[16..20], SRC4.octets());
            assert!(verifies(&[&ip[..20]]), "IPv4 header checksum");
            let icmp = &ip[20..];
            assert_eq!(icmp[..2], [3, 4]);
            assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1400);
            assert_eq!(icmp[8..], frame[14..14 + quote_len]);
            assert!(verifies(&[icmp]), "ICMP checksum");
        }
    }

    #[test]
    fn ipv4_odd_short_quote_checksums() {
        // A 3-byte payload: the quote has odd length.
        let mut frame = ipv4_frame(0x4000, 17, 0, &payload(3));
        frame.resize(200, 0); // Ethernet padding beyond the IP total length.
        let mut out = [0u8; 128];
        let n = too_big_reply(&frame, 100, &mut out).unwrap();
        let icmp = &out[14 + 20..n];
        assert_eq!(icmp.len(), 8 + 23);
        assert!(verifies(&[icmp]));
    }

    #[test]
    fn ipv4_refusals() {
        let mut out = [0u8; MAX_REPLY_LEN];
        let mut reply = |frame: &[u8], max| too_big_reply(frame, max, &mut out);
        let big = payload(1500);
        assert_eq!(reply(&ipv4_frame(0x4000, 6, 0, &big), 9000), Err(NoReply::Fits { len: 1534, max: 9000 }));
        assert_eq!(reply(&ipv4_frame(0, 6, 0, &big), 1414), Err(NoReply::DontFragmentClear));
        assert_eq!(reply(&ipv4_frame(0x4000 | 185, 6, 0, &big), 1414), Err(NoReply::NotFirstFragment(1480)));
        let mut dest_unreachable = big.clone();
        dest_unreachable[0] = 3;
        assert_eq!(reply(&ipv4_frame(0x4000, 1, 0, &dest_unreachable), 1414), Err(NoReply::IcmpError));
        let mut echo = big.clone();
        echo[0] = 8;
        assert!(reply(&ipv4_frame(0x4000, 1, 0, &echo), 1414).is_ok());
        assert_eq!(
            reply(&ipv4_frame(0x4000, 6, 0, &big), 14 + 60),
            Err(NoReply::MtuTooSmall { mtu: 60, min: IPV4_MIN_MTU })
        );
        let mut bcast = ipv4_frame(0x4000, 6, 0, &big);
        bcast[..6].copy_from_slice(&[0xff; 6]);
        assert!(matches!(reply(&bcast, 1414), Err(NoReply::NotUnicastMac { which: "destination", .. })));
        let mut mcast_dst = ipv4_frame(0x4000, 6, 0, &big);
        mcast_dst[30..34].copy_from_slice(&[224, 0, 0, 1]);
        assert!(matches!(reply(&mcast_dst, 1414), Err(NoReply::NotUnicast { which: "destination", .. })));
        let mut arp = ipv4_frame(0x4000, 6, 0, &big);
        arp[12..14].copy_from_slice(&ethernet::ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(reply(&arp, 1414), Err(NoReply::NotIp(ethernet::ETHERTYPE_ARP)));
        assert_eq!(
            too_big_reply(&ipv4_frame(0x4000, 6, 0, &big), 1414, &mut [0u8; 40]),
            Err(NoReply::BufferTooSmall { len: 40, needed: 14 + 20 + 8 + 28 })
        );
    }

    fn ipv6_frame(next: u8, upper: &[u8]) -> Vec<u8> {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut f = ethernet::header(B, A, ETHERTYPE_IPV6).to_vec();
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(upper.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(upper);
        f
    }

    #[test]
    fn ipv6_packet_too_big() {
        let frame = ipv6_frame(6, &payload(2000));
        let mut out = [0u8; MAX_REPLY_LEN];
        let n = too_big_reply(&frame, 1514, &mut out).unwrap();
        assert_eq!(n, MAX_REPLY_LEN, "quote fills the minimum MTU");
        let eth = EthernetFrame::new_checked(&out[..n]).unwrap();
        assert_eq!((eth.dst(), eth.src(), eth.ethertype()), (A, B, ETHERTYPE_IPV6));
        let ip = eth.payload();
        assert_eq!(ip[0], 0x60);
        assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), ip.len() - 40);
        assert_eq!(ip[6], NEXT_HEADER_ICMPV6);
        assert_eq!(ip[8..24], frame[14 + 24..14 + 40], "source is the original destination");
        assert_eq!(ip[24..40], frame[14 + 8..14 + 24]);
        let icmp = &ip[40..];
        assert_eq!(icmp[..2], [2, 0]);
        assert_eq!(u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]), 1500);
        assert_eq!(icmp[8..], frame[14..14 + IPV6_MAX_QUOTE]);
        let len = (icmp.len() as u32).to_be_bytes();
        let pseudo = [&ip[8..40], &len[..], &[0, 0, 0, NEXT_HEADER_ICMPV6]].concat();
        assert!(verifies(&[&pseudo, icmp]), "ICMPv6 checksum");
    }

    #[test]
    fn ipv6_refusals() {
        let mut out = [0u8; MAX_REPLY_LEN];
        let big = payload(2000);
        let mut error = big.clone();
        error[0] = 1;
        assert_eq!(too_big_reply(&ipv6_frame(58, &error), 1514, &mut out), Err(NoReply::IcmpError));
        let mut echo = big.clone();
        echo[0] = 128;
        assert!(too_big_reply(&ipv6_frame(58, &echo), 1514, &mut out).is_ok());
        // Hop-by-hop options (8 bytes) then an ICMPv6 error.
        let mut hbh = vec![58, 0, 1, 4, 0, 0, 0, 0, 1];
        hbh.extend_from_slice(&big);
        assert_eq!(too_big_reply(&ipv6_frame(0, &hbh), 1514, &mut out), Err(NoReply::IcmpError));
        // A first fragment exposes its upper layer; a later one does not.
        let mut frag = vec![58, 0, 0, 0, 0, 0, 0, 1, 1];
        frag.extend_from_slice(&big);
        assert_eq!(too_big_reply(&ipv6_frame(44, &frag), 1514, &mut out), Err(NoReply::IcmpError));
        frag[3] = 8;
        assert!(too_big_reply(&ipv6_frame(44, &frag), 1514, &mut out).is_ok());
        assert_eq!(
            too_big_reply(&ipv6_frame(6, &big), 1280, &mut out),
            Err(NoReply::MtuTooSmall { mtu: 1266, min: IPV6_MIN_MTU })
        );
        let mut mcast = ipv6_frame(6, &big);
        mcast[14 + 24] = 0xff;
        assert!(matches!(too_big_reply(&mcast, 1514, &mut out), Err(NoReply::NotUnicast { which: "destination", .. })));
    }

    fn check_reply(reply: &[u8]) -> Result<(), TestCaseError> {
        let eth = EthernetFrame::new_checked(reply).unwrap();
        let ip = eth.payload();
        match eth.ethertype() {
            ETHERTYPE_IPV4 => {
                prop_assert!(verifies(&[&ip[..20]]));
                prop_assert!(verifies(&[&ip[20..]]));
            }
            _ => {
                let len = ((ip.len() - 40) as u32).to_be_bytes();
                let pseudo = [&ip[8..40], &len[..], &[0, 0, 0, NEXT_HEADER_ICMPV6]].concat();
                prop_assert!(verifies(&[&pseudo, &ip[40..]]));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn never_panics_and_replies_verify(
            v6 in any::<bool>(),
            ip in proptest::collection::vec(any::<u8>(), 0..300),
            max in 0usize..400,
            out_len in 0usize..400,
        ) {
            let ethertype = if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
            let mut frame = ethernet::header(B, A, ethertype).to_vec();
            frame.extend_from_slice(&ip);
            let mut out = vec![0u8; out_len];
            if let Ok(n) = too_big_reply(&frame, max, &mut out) {
                check_reply(&out[..n])?;
            }
        }

        // Mostly-valid IPv4 so that the reply path is reached often.
        #[test]
        fn ipv4_replies_verify(
            options in 0usize..11,
            proto in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..120),
            max in 82usize..150,
        ) {
            let frame = ipv4_frame(0x4000, proto, options * 4, &body);
            let mut out = [0u8; MAX_REPLY_LEN];
            if let Ok(n) = too_big_reply(&frame, max, &mut out) {
                check_reply(&out[..n])?;
            }
        }

        #[test]
        fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = too_big_reply(&frame, 20, &mut [0u8; MAX_REPLY_LEN]);
        }
    }
}
