//! Checks shared by the targets, written naively so that they do not
//! trust the checksum code under test.

use weft_proto::offload::{Headers, IpHeader, L4Header};

pub fn naive_sum(data: &[u8]) -> u64 {
    let mut total = 0u64;
    for pair in data.chunks(2) {
        total += (u64::from(pair[0]) << 8) | pair.get(1).map_or(0, |&b| u64::from(b));
    }
    total
}

fn verifies(parts: &[&[u8]]) -> bool {
    let mut total: u64 = parts.iter().map(|p| naive_sum(p)).sum();
    while total > 0xffff {
        total = (total >> 16) + (total & 0xffff);
    }
    total == 0xffff
}

/// A wire segment as the segmenter must produce it: it parses, its IP
/// length is its own, its IPv4 header and L4 checksums verify.
pub fn check_segment(f: &[u8]) {
    let h = Headers::parse(f).expect("segment parses");
    let (l3, l4) = (h.l3_offset(), h.l4_offset());
    let l4_len = f.len() - l4;
    let pseudo: Vec<u8> = match h.ip() {
        IpHeader::V4(ip) => {
            assert!(verifies(&[h.ip_bytes()]), "IPv4 header checksum");
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), f.len() - l3, "IPv4 total length");
            [&ip[12..20], &[0, h.proto()][..], &(l4_len as u16).to_be_bytes()].concat()
        }
        IpHeader::V6(ip) => {
            assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), f.len() - l3 - 40, "IPv6 payload length");
            [&ip[8..40], &(l4_len as u32).to_be_bytes()[..], &[0, 0, 0, h.proto()]].concat()
        }
    };
    if let L4Header::Udp(u) = h.l4() {
        assert_eq!(usize::from(u16::from_be_bytes([u[4], u[5]])), l4_len, "UDP length");
        assert_ne!(u[6..8], [0, 0], "UDP checksum 0 must be sent as 0xffff");
    }
    assert!(verifies(&[&pseudo, &f[l4..]]), "L4 checksum");
}
