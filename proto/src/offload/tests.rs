//! Shared test support (a naive checksum reference, frame builders) and
//! the properties of segmenting and coalescing together.

#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

/// Deliberately naive: RFC 1071's definition word by word, independent of
/// `checksum`.
pub(crate) fn naive_sum(data: &[u8]) -> u64 {
    let mut total = 0u64;
    for i in (0..data.len()).step_by(2) {
        total += (u64::from(data[i]) << 8) | data.get(i + 1).map_or(0, |&b| u64::from(b));
    }
    total
}

pub(crate) fn naive_fold(mut total: u64) -> u16 {
    while total > 0xffff {
        total = (total >> 16) + (total & 0xffff);
    }
    total as u16
}

/// A correct checksum makes the words of the covered bytes (the parts
/// concatenated) sum to 0xffff.
pub(crate) fn verifies(parts: &[&[u8]]) -> bool {
    naive_fold(naive_sum(&parts.concat())) == 0xffff
}

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// How the L4 checksum field of a built frame is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Csum {
    /// Complete and valid.
    Full,
    /// The pseudo-header sum only, as the kernel leaves it with
    /// NEEDS_CSUM.
    Partial,
}

/// One packet's headers, built by hand (with the naive checksum).
#[derive(Debug, Clone)]
struct Spec {
    vlan: Option<u16>,
    v6: bool,
    tcp: bool,
    /// TOS or traffic class.
    tos: u8,
    ttl: u8,
    df: bool,
    id: u16,
    flow_label: u32,
    v4_options: Vec<u8>,
    /// One 8-byte hop-by-hop header.
    v6_hop_by_hop: bool,
    more_fragments: bool,
    src4: [u8; 4],
    dst4: [u8; 4],
    src6: [u8; 16],
    dst6: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    window: u16,
    flags: u8,
    tcp_options: Vec<u8>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            vlan: None,
            v6: false,
            tcp: true,
            tos: 0,
            ttl: 64,
            df: true,
            id: 0x1234,
            flow_label: 0x12345,
            v4_options: vec![],
            v6_hop_by_hop: false,
            more_fragments: false,
            src4: [10, 32, 0, 1],
            dst4: [10, 40, 0, 7],
            src6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            sport: 40000,
            dport: 5201,
            seq: 0xfffff000,
            ack: 77,
            window: 500,
            flags: TCP_ACK,
            tcp_options: timestamps(1, 2),
        }
    }
}

fn timestamps(a: u32, b: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&a.to_be_bytes());
    o.extend_from_slice(&b.to_be_bytes());
    o
}

impl Spec {
    fn proto(&self) -> u8 {
        if self.tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        }
    }

    fn gso_type(&self) -> u8 {
        match (self.tcp, self.v6) {
            (true, false) => GSO_TCPV4,
            (true, true) => GSO_TCPV6,
            (false, _) => GSO_UDP_L4,
        }
    }

    fn l4_header_len(&self) -> usize {
        if self.tcp {
            20 + self.tcp_options.len()
        } else {
            8
        }
    }

    /// L2 + IP header length: where L4 starts.
    fn l4_offset(&self) -> usize {
        let l2 = if self.vlan.is_some() { 18 } else { 14 };
        l2 + if self.v6 { 40 + 8 * usize::from(self.v6_hop_by_hop) } else { 20 + self.v4_options.len() }
    }

    fn max_payload(&self) -> usize {
        // The whole IP datagram within 65535 bytes, IPv6 header included,
        // as Linux's own GSO and GRO keep it.
        let ip = if self.v6 { 40 + 8 * usize::from(self.v6_hop_by_hop) } else { 20 + self.v4_options.len() };
        65535 - ip - self.l4_header_len()
    }

    fn pseudo(&self, l4_len: usize) -> Vec<u8> {
        if self.v6 {
            [&self.src6[..], &self.dst6, &(l4_len as u32).to_be_bytes(), &[0, 0, 0, self.proto()]].concat()
        } else {
            [&self.src4[..], &self.dst4, &[0, self.proto()], &(l4_len as u16).to_be_bytes()].concat()
        }
    }

    fn build(&self, payload: &[u8], csum: Csum) -> Vec<u8> {
        let mut f = [MAC_B, MAC_A].concat();
        if let Some(tci) = self.vlan {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let l4_len = self.l4_header_len() + payload.len();
        if self.v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            let ext: Vec<u8> = if self.v6_hop_by_hop { vec![self.proto(), 0, 1, 4, 0, 0, 0, 0] } else { vec![] };
            let first = if self.v6_hop_by_hop { 0 } else { self.proto() };
            let word = (6 << 28) | (u32::from(self.tos) << 20) | (self.flow_label & 0xfffff);
            f.extend_from_slice(&word.to_be_bytes());
            f.extend_from_slice(&((ext.len() + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&[first, self.ttl]);
            f.extend_from_slice(&self.src6);
            f.extend_from_slice(&self.dst6);
            f.extend_from_slice(&ext);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let l3 = f.len();
            let ihl = 20 + self.v4_options.len();
            let frag = (u16::from(self.df) << 14) | (u16::from(self.more_fragments) << 13);
            f.push(0x40 | (ihl / 4) as u8);
            f.push(self.tos);
            f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&self.id.to_be_bytes());
            f.extend_from_slice(&frag.to_be_bytes());
            f.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
            f.extend_from_slice(&self.src4);
            f.extend_from_slice(&self.dst4);
            f.extend_from_slice(&self.v4_options);
            let c = !naive_fold(naive_sum(&f[l3..]));
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        let field = if self.tcp {
            f.extend_from_slice(&self.seq.to_be_bytes());
            f.extend_from_slice(&self.ack.to_be_bytes());
            f.push(((self.l4_header_len() / 4) as u8) << 4);
            f.push(self.flags);
            f.extend_from_slice(&self.window.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]);
            f.extend_from_slice(&self.tcp_options);
            l4 + 16
        } else {
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            l4 + 6
        };
        f.extend_from_slice(payload);
        let pseudo = naive_sum(&self.pseudo(l4_len));
        let c = match csum {
            Csum::Full => match !naive_fold(pseudo + naive_sum(&f[l4..])) {
                0 if !self.tcp => 0xffff,
                c => c,
            },
            Csum::Partial => naive_fold(pseudo),
        };
        f[field..field + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// A kernel-like super-frame and its virtio header.
    fn super_frame(&self, payload: &[u8], gso_size: u16, hdr_len: u16) -> (VnetHdr, Vec<u8>) {
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: self.gso_type(),
            hdr_len,
            gso_size,
            csum_start: self.l4_offset() as u16,
            csum_offset: if self.tcp { 16 } else { 6 },
        };
        (vnet, self.build(payload, Csum::Partial))
    }

    /// Consecutive segments of one flow with payloads of `sizes`, taken
    /// in order from `payload`; `tweak` changes segment i's headers.
    fn flow(&self, payload: &[u8], sizes: &[usize], tweak: impl Fn(usize, &mut Spec)) -> Vec<Vec<u8>> {
        let mut at = 0;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut s = self.clone();
                s.seq = self.seq.wrapping_add(at as u32);
                s.id = self.id.wrapping_add(i as u16);
                tweak(i, &mut s);
                let f = s.build(&payload[at..at + n], Csum::Full);
                at += n;
                f
            })
            .collect()
    }
}

/// Deterministic bytes: cheap to generate, and shrinking is not slowed
/// by 64 KB of random values.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tcp_options() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| timestamps(a, b)),
        (0usize..=10).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4)),
    ]
}

fn arb_spec(tcp: bool) -> impl Strategy<Value = Spec> {
    (
        (any::<bool>(), proptest::option::of(any::<u16>())),
        (any::<u8>(), 1u8.., any::<bool>(), any::<u16>(), 0u32..(1 << 20)),
        (any::<[u8; 4]>(), any::<[u8; 4]>(), any::<[u8; 16]>(), any::<[u8; 16]>()),
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>(), any::<u16>()),
        tcp_options(),
    )
        .prop_map(
            move |(
                (v6, vlan),
                (tos, ttl, df, id, flow_label),
                (src4, dst4, src6, dst6),
                (sport, dport, seq, ack, window),
                tcp_options,
            )| Spec {
                vlan,
                v6,
                tcp,
                tos,
                ttl,
                df,
                id,
                flow_label,
                src4,
                dst4,
                src6,
                dst6,
                sport,
                dport,
                seq,
                ack,
                window,
                tcp_options,
                ..Spec::default()
            },
        )
}

/// A payload length in 1..=max, often small, sometimes up to the limit.
fn pick_len(max: usize, small: bool, at: Index) -> usize {
    1 + at.index(if small { max.min(4000) } else { max })
}

fn cut(vnet: &VnetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
    let s = Segmenter::new(vnet, frame).unwrap();
    (0..s.count())
        .map(|i| {
            let mut out = vec![0u8; s.max_len()];
            let n = s.write(i, &mut out).unwrap();
            assert_eq!(n, s.len(i));
            out.truncate(n);
            out
        })
        .collect()
}

fn coalesce(frames: &[Vec<u8>], udp: bool) -> Coalescer<usize> {
    let mut c = Coalescer::new(udp);
    for (i, f) in frames.iter().enumerate() {
        c.push(i, f);
    }
    c
}

/// The handles of each output: one for a Single, the merged ones in order.
fn shape(c: &Coalescer<usize>) -> Vec<Vec<usize>> {
    c.outputs()
        .map(|o| match o {
            Output::Single(h) => vec![h],
            Output::Merged { segments, .. } => segments.iter().map(|s| s.handle).collect(),
        })
        .collect()
}

fn runs(ranges: &[std::ops::Range<usize>]) -> Vec<Vec<usize>> {
    ranges.iter().map(|r| r.clone().collect()).collect()
}

fn one_run(range: std::ops::Range<usize>) -> Vec<Vec<usize>> {
    vec![range.collect()]
}

/// What the router would write into the TAP for one output.
fn assemble(frames: &[Vec<u8>], out: &Output<'_, usize>) -> (VnetHdr, Vec<u8>) {
    match *out {
        Output::Single(h) => (VnetHdr::NONE, frames[h].clone()),
        Output::Merged { vnet, header, segments } => {
            let mut f = header.to_vec();
            for s in segments {
                f.extend_from_slice(&frames[s.handle][s.start..s.end]);
            }
            (vnet, f)
        }
    }
}

/// Checks one wire segment with the naive reference: it parses, its IPv4
/// header checksum and L4 checksum verify, its lengths are its own.
fn check_wire_frame(f: &[u8]) -> Result<(), TestCaseError> {
    let h = Headers::parse(f).map_err(|e| TestCaseError::fail(format!("segment does not parse: {e}")))?;
    let l3 = h.l3_offset();
    let l4 = h.l4_offset();
    let pseudo = match h.ip() {
        IpHeader::V4(ip) => {
            prop_assert!(verifies(&[h.ip_bytes()]), "IPv4 header checksum");
            prop_assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), f.len() - l3);
            [&ip[12..20], &[0, h.proto()], &((f.len() - l4) as u16).to_be_bytes()].concat()
        }
        IpHeader::V6(ip) => {
            prop_assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), f.len() - l3 - 40);
            [&ip[8..40], &((f.len() - l4) as u32).to_be_bytes(), &[0, 0, 0, h.proto()]].concat()
        }
    };
    if let L4Header::Udp(u) = h.l4() {
        prop_assert_eq!(usize::from(u16::from_be_bytes([u[4], u[5]])), f.len() - l4);
        prop_assert!(u[6..8] != [0, 0], "computed UDP checksum 0 must be sent as 0xffff");
    }
    prop_assert!(verifies(&[&pseudo, &f[l4..]]), "L4 checksum");
    Ok(())
}

/// Properties every coalescer result has: each handle exactly once, each
/// flow's handles in arrival order, and every merged super-frame cut the
/// way the kernel would cut it gives valid segments; with `exact`, the
/// very frames merged.
fn check_outputs_with(frames: &[Vec<u8>], c: &Coalescer<usize>, exact: bool) -> Result<(), TestCaseError> {
    let mut seen = vec![false; frames.len()];
    let mut last_of_flow = std::collections::HashMap::new();
    for out in c.outputs() {
        let handles = match out {
            Output::Single(h) => vec![h],
            Output::Merged { vnet, header, segments } => {
                prop_assert!(segments.len() >= 2 && segments.len() <= MAX_SEGMENTS);
                prop_assert_eq!(usize::from(vnet.hdr_len), header.len());
                for s in segments {
                    prop_assert!(s.start <= s.end && s.end <= frames[s.handle].len());
                    prop_assert_eq!(&frames[s.handle][..header.len()].len(), &header.len());
                }
                // Exact: the IPv4 IDs count up and the checksums are
                // complete in the frames merged, as in the TCP streams
                // these tests build. (UDP has no sequence number to keep
                // a duplicate from merging, and the coalescer does not
                // look at IDs, like wireguard-go.)
                let (vnet, merged) = assemble(frames, &out);
                let again = cut(&vnet, &merged);
                prop_assert_eq!(again.len(), segments.len());
                for (seg, s) in again.iter().zip(segments) {
                    check_wire_frame(seg)?;
                    prop_assert!(!exact || *seg == frames[s.handle], "re-cut segment differs from frame {}", s.handle);
                }
                segments.iter().map(|s| s.handle).collect()
            }
        };
        for h in handles {
            prop_assert!(!std::mem::replace(&mut seen[h], true), "handle {} output twice", h);
            if let Ok(p) = Headers::parse(&frames[h]) {
                let flow = (p.ip_bytes().get(8..).map(<[u8]>::to_vec), p.ports(), p.proto());
                if let Some(prev) = last_of_flow.insert(flow, h) {
                    prop_assert!(prev < h, "flow order: {} after {}", h, prev);
                }
            }
        }
    }
    prop_assert!(seen.iter().all(|&s| s), "a handle was lost");
    Ok(())
}

fn check_outputs(frames: &[Vec<u8>], c: &Coalescer<usize>) -> Result<(), TestCaseError> {
    check_outputs_with(frames, c, true)
}

/// Segments `(vnet, frame)`, checks every segment against the spec, and
/// returns them.
fn check_segmentation(spec: &Spec, vnet: &VnetHdr, frame: &[u8], data: &[u8]) -> Result<Vec<Vec<u8>>, TestCaseError> {
    let s = Segmenter::new(vnet, frame).unwrap();
    let gso = usize::from(vnet.gso_size);
    let hdr_len = spec.l4_offset() + spec.l4_header_len();
    let count = data.len().div_ceil(gso).max(1);
    prop_assert_eq!(s.count(), count);
    prop_assert_eq!(s.max_len(), if count == 1 { frame.len() } else { hdr_len + gso });
    prop_assert_eq!(s.headers(), &frame[..hdr_len]);
    let segs = cut(vnet, frame);
    let mut joined = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        check_wire_frame(seg)?;
        prop_assert!(seg.len() <= s.max_len());
        let l2 = if spec.vlan.is_some() { 18 } else { 14 };
        prop_assert_eq!(&seg[..l2], &frame[..l2]);
        if !spec.v6 {
            let id = u16::from_be_bytes([seg[l2 + 4], seg[l2 + 5]]);
            prop_assert_eq!(id, spec.id.wrapping_add(i as u16));
        }
        let l4 = spec.l4_offset();
        if spec.tcp {
            let seq = u32::from_be_bytes([seg[l4 + 4], seg[l4 + 5], seg[l4 + 6], seg[l4 + 7]]);
            prop_assert_eq!(seq, spec.seq.wrapping_add((i * gso) as u32));
            let last = i + 1 == count;
            let mut want = spec.flags;
            if !last {
                want &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                want &= !TCP_CWR;
            }
            prop_assert_eq!(seg[l4 + 13], want);
            // Everything else in the TCP header is the super-frame's.
            prop_assert_eq!(&seg[l4 + 8..l4 + 13], &frame[l4 + 8..l4 + 13]);
            prop_assert_eq!(&seg[l4 + 14..l4 + 16], &frame[l4 + 14..l4 + 16]);
            prop_assert_eq!(&seg[l4 + 18..hdr_len], &frame[l4 + 18..hdr_len]);
        }
        prop_assert!(seg.len() - hdr_len <= gso);
        joined.extend_from_slice(&seg[hdr_len..]);
    }
    prop_assert_eq!(joined, data);
    Ok(segs)
}

/// Segmenting then coalescing gives the super-frame back: one Merged
/// (per MAX_SEGMENTS segments) equal to it but for `hdr_len`.
fn check_roundtrip(vnet: &VnetHdr, frame: &[u8], segs: &[Vec<u8>], udp: bool) -> Result<(), TestCaseError> {
    let c = coalesce(segs, udp);
    check_outputs(segs, &c)?;
    let outs: Vec<_> = c.outputs().collect();
    if segs.len() == 1 {
        prop_assert_eq!(outs, vec![Output::Single(0)]);
        return Ok(());
    }
    let want: Vec<Vec<usize>> =
        (0..segs.len()).collect::<Vec<_>>().chunks(MAX_SEGMENTS).map(<[usize]>::to_vec).collect();
    prop_assert_eq!(shape(&c), want);
    if segs.len() <= MAX_SEGMENTS {
        let (got_vnet, got) = assemble(segs, &outs[0]);
        prop_assert_eq!(got_vnet, VnetHdr { hdr_len: got_vnet.hdr_len, ..*vnet });
        prop_assert!(got == frame, "merged frame differs from the super-frame");
    } else {
        for out in &outs {
            let (v, f) = assemble(segs, out);
            if let Output::Merged { segments, .. } = out {
                let original: Vec<&Vec<u8>> = segments.iter().map(|s| &segs[s.handle]).collect();
                let again = cut(&v, &f);
                prop_assert_eq!(again.iter().collect::<Vec<_>>(), original);
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn tcp_super_frames_segment_and_coalesce_back(
        spec in arb_spec(true),
        psh in any::<bool>(),
        small in any::<bool>(),
        len_at in any::<Index>(),
        gso in 536u16..=9000,
        hdr_len in any::<u16>(),
        seed in any::<u64>(),
    ) {
        let mut spec = spec;
        spec.flags = TCP_ACK | if psh { TCP_PSH } else { 0 };
        let data = payload(pick_len(spec.max_payload(), small, len_at), seed);
        let (vnet, frame) = spec.super_frame(&data, gso, hdr_len);
        let segs = check_segmentation(&spec, &vnet, &frame, &data)?;
        check_roundtrip(&vnet, &frame, &segs, false)?;
    }

    #[test]
    fn tcp_flags_on_first_and_last_segment(
        spec in arb_spec(true),
        fin in any::<bool>(),
        psh in any::<bool>(),
        cwr in any::<bool>(),
        ece in any::<bool>(),
        len in 1usize..20_000,
        gso in 536u16..=9000,
        seed in any::<u64>(),
    ) {
        let mut spec = spec;
        spec.flags = TCP_ACK
            | if fin { TCP_FIN } else { 0 }
            | if psh { TCP_PSH } else { 0 }
            | if cwr { TCP_CWR } else { 0 }
            | if ece { 0x40 } else { 0 };
        let data = payload(len, seed);
        let (mut vnet, frame) = spec.super_frame(&data, gso, 0);
        if cwr {
            vnet.gso_type |= GSO_ECN;
        }
        let segs = check_segmentation(&spec, &vnet, &frame, &data)?;
        // CWR or FIN are never merged: the rest still is.
        let c = coalesce(&segs, false);
        check_outputs(&segs, &c)?;
        let n = segs.len();
        // ECE stays on every segment: none is merged.
        let single_first = cwr || ece;
        let single_last = fin || ece;
        let mut want = Vec::new();
        if ece {
            prop_assert_eq!(shape(&c), (0..n).map(|i| vec![i]).collect::<Vec<_>>());
            return Ok(());
        }
        let mut start = 0;
        if single_first {
            want.push(vec![0]);
            start = 1;
        }
        let end = if single_last && n > start { n - 1 } else { n };
        let middle: Vec<usize> = (start..end).collect();
        want.extend(middle.chunks(MAX_SEGMENTS).map(<[usize]>::to_vec));
        if end < n {
            want.push(vec![n - 1]);
        }
        prop_assert_eq!(shape(&c), want);
    }

    #[test]
    fn udp_super_frames_segment_and_coalesce_back(
        spec in arb_spec(false),
        small in any::<bool>(),
        len_at in any::<Index>(),
        gso in 536u16..=9000,
        hdr_len in any::<u16>(),
        seed in any::<u64>(),
    ) {
        let data = payload(pick_len(spec.max_payload(), small, len_at), seed);
        let (vnet, frame) = spec.super_frame(&data, gso, hdr_len);
        let segs = check_segmentation(&spec, &vnet, &frame, &data)?;
        check_roundtrip(&vnet, &frame, &segs, true)?;
        // Without UDP coalescing every datagram is its own.
        let c = coalesce(&segs, false);
        prop_assert_eq!(shape(&c), (0..segs.len()).map(|i| vec![i]).collect::<Vec<_>>());
    }

    /// Several flows interleaved at random: each is merged on its own, in
    /// its own order.
    #[test]
    fn interleaved_flows_merge_separately(
        spec in arb_spec(true),
        flows in 2usize..5,
        counts in proptest::collection::vec(2usize..20, 4),
        order in proptest::collection::vec(any::<Index>(), 80),
        seed in any::<u64>(),
    ) {
        let mut frames = Vec::new();
        let mut per_flow: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
        for (f, &count) in counts.iter().enumerate().take(flows) {
            let mut s = spec.clone();
            s.sport = spec.sport.wrapping_add(f as u16);
            let data = payload(count * 1000, seed ^ f as u64);
            per_flow.push(s.flow(&data, &vec![1000; count], |_, _| ()).into());
        }
        let mut flow_of = Vec::new();
        let mut k = 0;
        while per_flow.iter().any(|q| !q.is_empty()) {
            let live: Vec<usize> = (0..flows).filter(|&f| !per_flow[f].is_empty()).collect();
            let f = live[order[k % order.len()].index(live.len())];
            k += 1;
            frames.push(per_flow[f].pop_front().unwrap());
            flow_of.push(f);
        }
        let c = coalesce(&frames, false);
        check_outputs(&frames, &c)?;
        let mut want: Vec<Vec<usize>> = Vec::new();
        for f in 0..flows {
            want.push((0..frames.len()).filter(|&i| flow_of[i] == f).collect());
        }
        // Items come in the order of each flow's first frame.
        want.sort_by_key(|h| h[0]);
        prop_assert_eq!(shape(&c), want);
    }

    /// Random damage to a valid stream: whatever merges is still valid, and
    /// nothing is lost, duplicated or reordered within a flow.
    #[test]
    fn damaged_streams_stay_consistent(
        spec in arb_spec(true),
        udp in any::<bool>(),
        sizes in proptest::collection::vec(1usize..1500, 1..40),
        edits in proptest::collection::vec((0u8..5, any::<Index>(), any::<Index>(), any::<u8>()), 0..8),
        seed in any::<u64>(),
    ) {
        let mut spec = spec;
        spec.tcp = !udp || seed % 2 == 0;
        let data = payload(sizes.iter().sum(), seed);
        let mut frames = spec.flow(&data, &sizes, |_, _| ());
        for (op, a, b, byte) in edits {
            let i = a.index(frames.len());
            match op {
                0 if !frames[i].is_empty() => { let j = b.index(frames[i].len()); frames[i][j] ^= byte | 1; }
                1 => { let f = frames[i].clone(); frames.insert(b.index(frames.len() + 1), f); }
                2 if frames.len() > 1 => { frames.remove(i); }
                3 => { let j = b.index(frames.len()); frames.swap(i, j); }
                _ => { let n = b.index(frames[i].len() + 1); frames[i].truncate(n); }
            }
        }
        let c = coalesce(&frames, udp);
        check_outputs_with(&frames, &c, spec.tcp)?;
    }

    #[test]
    fn arbitrary_input_never_panics(
        flags in any::<u8>(),
        gso_type in prop_oneof![any::<u8>(), 0u8..6, Just(GSO_TCPV4 | GSO_ECN)],
        hdr_len in any::<u16>(),
        gso_size in prop_oneof![any::<u16>(), 0u16..100],
        csum_start in prop_oneof![any::<u16>(), 0u16..100],
        csum_offset in prop_oneof![any::<u16>(), Just(6u16), Just(16u16)],
        frame in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let vnet = VnetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
        exercise(&vnet, &frame)?;
        let mut c = Coalescer::new(true);
        c.push(0usize, &frame);
        prop_assert_eq!(c.outputs().collect::<Vec<_>>(), vec![Output::Single(0)]);
    }

    /// Valid super-frames with damaged headers and virtio headers: the
    /// segmenter refuses or produces frames of the promised lengths.
    #[test]
    fn damaged_super_frames_never_panic(
        spec in arb_spec(true),
        udp in any::<bool>(),
        len in 1usize..5000,
        gso in prop_oneof![0u16..100, 536u16..2000, Just(u16::MAX)],
        flips in proptest::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        cut in any::<Index>(),
        vnet_flip in (0usize..10, any::<u8>()),
        seed in any::<u64>(),
    ) {
        let mut spec = spec;
        spec.tcp = !udp;
        let (vnet, mut frame) = spec.super_frame(&payload(len, seed), gso, 0);
        let hdr_end = spec.l4_offset() + spec.l4_header_len();
        for (at, byte) in flips {
            frame[at.index(hdr_end)] ^= byte;
        }
        frame.truncate(cut.index(frame.len() + 1).max(hdr_end.min(frame.len())));
        let mut raw = vnet.to_bytes();
        raw[vnet_flip.0] ^= vnet_flip.1;
        exercise(&VnetHdr::parse(&raw).unwrap(), &frame)?;
        let mut c = Coalescer::new(true);
        c.push(0usize, &frame);
        c.push(1usize, &frame);
        check_outputs_with(&[frame.clone(), frame], &c, !udp)?;
    }

    #[test]
    fn gso_none_completes_checksums(spec in arb_spec(true), udp in any::<bool>(), len in 0usize..3000, seed in any::<u64>()) {
        let mut spec = spec;
        spec.tcp = !udp;
        let frame = spec.build(&payload(len, seed), Csum::Partial);
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: spec.l4_offset() as u16,
            csum_offset: if udp { 6 } else { 16 },
            ..VnetHdr::NONE
        };
        let s = Segmenter::new(&vnet, &frame).unwrap();
        prop_assert_eq!((s.count(), s.max_len(), s.len(0)), (1, frame.len(), frame.len()));
        let mut out = vec![0u8; frame.len()];
        prop_assert_eq!(s.write(0, &mut out), Ok(frame.len()));
        check_wire_frame(&out)?;
        // The same frame built with a full checksum is what comes out.
        prop_assert_eq!(out, spec.build(&payload(len, seed), Csum::Full));
    }

    #[test]
    fn non_ip_frames_pass_through(frame in proptest::collection::vec(any::<u8>(), 14..400), ethertype in any::<u16>()) {
        let mut frame = frame;
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        let s = Segmenter::new(&VnetHdr::NONE, &frame).unwrap();
        prop_assert_eq!((s.count(), s.max_len()), (1, frame.len()));
        let mut out = vec![0u8; frame.len()];
        prop_assert_eq!(s.write(0, &mut out), Ok(frame.len()));
        prop_assert_eq!(&out, &frame);
        prop_assert_eq!(s.headers(), &frame[..]);
        let mut c = Coalescer::new(true);
        c.push(7u32, &frame);
        c.push(8u32, &frame);
        prop_assert_eq!(c.outputs().collect::<Vec<_>>(), vec![Output::Single(7), Output::Single(8)]);
    }
}

/// Whatever `Segmenter::new` says, nothing panics; segments have their
/// promised lengths; short buffers are errors.
fn exercise(vnet: &VnetHdr, frame: &[u8]) -> Result<(), TestCaseError> {
    let Ok(s) = Segmenter::new(vnet, frame) else { return Ok(()) };
    prop_assert!(s.count() >= 1);
    let mut out = vec![0u8; s.max_len()];
    for i in 0..s.count() {
        let n = s.len(i);
        prop_assert!(n <= s.max_len() && n >= ethernet::HEADER_LEN.min(frame.len()));
        prop_assert_eq!(s.write(i, &mut out), Ok(n));
        if n > 0 {
            prop_assert_eq!(s.write(i, &mut out[..n - 1]), Err(OffloadError::BufferTooSmall { len: n - 1, need: n }));
        }
        if vnet.gso_type & !GSO_ECN != GSO_NONE {
            check_wire_frame(&out[..n])?;
        }
    }
    prop_assert_eq!(s.len(s.count()), 0);
    prop_assert!(s.write(s.count(), &mut out).is_err());
    Ok(())
}

use crate::ethernet;

const ACK: u8 = TCP_ACK;

fn base() -> (Spec, Vec<u8>) {
    (Spec::default(), payload(64 * 9000, 42))
}

#[test]
fn in_order_segments_merge_into_one() {
    let (spec, data) = base();
    for v6 in [false, true] {
        for vlan in [None, Some(7)] {
            let spec = Spec { v6, vlan, ..spec.clone() };
            let frames = spec.flow(&data, &[1000, 1000, 1000, 400], |_, _| ());
            let c = coalesce(&frames, false);
            assert_eq!(shape(&c), one_run(0..4));
            let outs: Vec<_> = c.outputs().collect();
            let Output::Merged { vnet, header, segments } = outs[0] else { panic!("not merged") };
            let l4 = spec.l4_offset();
            assert_eq!(
                vnet,
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                    hdr_len: header.len() as u16,
                    gso_size: 1000,
                    csum_start: l4 as u16,
                    csum_offset: 16,
                }
            );
            assert_eq!(header.len(), l4 + 32);
            assert_eq!(segments[3], Segment { handle: 3, start: l4 + 32, end: l4 + 32 + 400 });
            // The merged frame is what the sender's kernel would have sent.
            let whole = spec.build(&data[..3400], Csum::Partial);
            assert_eq!(assemble(&frames, &outs[0]).1, whole);
            check_outputs(&frames, &c).unwrap();
        }
    }
}

#[test]
fn out_of_order_duplicate_and_gap_split_items() {
    let (spec, data) = base();
    let sizes = [1000; 6];
    let frames = spec.flow(&data, &sizes, |_, _| ());
    let pick = |order: &[usize]| -> Vec<Vec<u8>> { order.iter().map(|&i| frames[i].clone()).collect() };
    let cases: [(&[usize], Vec<Vec<usize>>); 4] = [
        // Reordered: nothing is merged across the reordering.
        (&[0, 2, 1, 3, 4, 5], runs(&[0..1, 1..2, 2..3, 3..6])),
        // A duplicate starts over: its successor continues it.
        (&[0, 1, 1, 2, 3], runs(&[0..2, 2..5])),
        // A gap.
        (&[0, 1, 3, 4, 5], runs(&[0..2, 2..5])),
        // Backwards.
        (&[3, 2, 1, 0], runs(&[0..1, 1..2, 2..3, 3..4])),
    ];
    for (order, want) in cases {
        let frames = pick(order);
        let c = coalesce(&frames, false);
        assert_eq!(shape(&c), want, "order {order:?}");
        check_outputs(&frames, &c).unwrap();
    }
}

/// Changing segment 3 of 7 in some way: it can merge with neither its
/// predecessors nor its successors.
fn assert_breaks_at_3(tweak: impl Fn(&mut Spec), what: &str) {
    let (spec, data) = base();
    let frames = spec.flow(&data, &[1000; 7], |i, s| {
        if i == 3 {
            tweak(s);
        }
    });
    let c = coalesce(&frames, false);
    assert_eq!(shape(&c), runs(&[0..3, 3..4, 4..7]), "{what}");
    check_outputs(&frames, &c).unwrap();
}

#[test]
fn differing_headers_are_never_merged() {
    for flag in [TCP_SYN, TCP_FIN, TCP_RST, TCP_URG, TCP_CWR, 0x40] {
        assert_breaks_at_3(|s| s.flags |= flag, &format!("flag {flag:#x}"));
    }
    assert_breaks_at_3(|s| s.flags = 0, "no ACK");
    assert_breaks_at_3(|s| s.ack += 1, "ack");
    assert_breaks_at_3(|s| s.window += 1, "window");
    assert_breaks_at_3(|s| s.ttl -= 1, "TTL");
    assert_breaks_at_3(|s| s.tos = 2, "TOS/ECN");
    assert_breaks_at_3(|s| s.df = false, "DF");
    assert_breaks_at_3(|s| s.tcp_options = timestamps(1, 3), "options bytes");
    assert_breaks_at_3(|s| s.tcp_options = vec![], "options length");
    assert_breaks_at_3(|s| s.vlan = Some(1), "L2 header");
    assert_breaks_at_3(|s| s.v4_options = vec![1, 1, 1, 0], "IPv4 options");
    assert_breaks_at_3(|s| s.more_fragments = true, "IPv4 first fragment");
    for tweak in
        [(|s: &mut Spec| s.tos = 1) as fn(&mut Spec), |s| s.flow_label ^= 1, |s| s.ttl = 1, |s| s.v6_hop_by_hop = true]
    {
        let (spec, data) = base();
        let spec = Spec { v6: true, ..spec };
        let frames = spec.flow(&data, &[1000; 7], |i, s| {
            if i == 3 {
                tweak(s);
            }
        });
        let c = coalesce(&frames, false);
        assert_eq!(shape(&c), runs(&[0..3, 3..4, 4..7]));
    }
}

#[test]
fn ip_options_fragments_and_extension_headers_are_single() {
    let (spec, data) = base();
    for spec in [
        Spec { v4_options: vec![1; 8], ..spec.clone() },
        Spec { more_fragments: true, ..spec.clone() },
        Spec { v6: true, v6_hop_by_hop: true, ..spec.clone() },
    ] {
        let frames = spec.flow(&data, &[1000; 4], |_, _| ());
        let c = coalesce(&frames, false);
        assert_eq!(shape(&c), runs(&[0..1, 1..2, 2..3, 3..4]), "{spec:?}");
        // They are still valid frames for the segmenter.
        for f in &frames {
            check_wire_frame(f).unwrap();
        }
    }
}

#[test]
fn corrupt_segment_is_single_and_the_rest_merge() {
    let (spec, data) = base();
    for v6 in [false, true] {
        let spec = Spec { v6, ..spec.clone() };
        let l4 = spec.l4_offset();
        // The IPv4 ID is compared with nothing: only the checksum can tell.
        for (what, at) in [("payload", l4 + 32 + 500), ("TCP header", l4 + 14), ("IPv4 header", 14 + 5)] {
            if v6 && what == "IPv4 header" {
                continue;
            }
            let mut frames = spec.flow(&data, &[1000; 7], |_, _| ());
            frames[3][at] ^= 0x10;
            let c = coalesce(&frames, false);
            assert_eq!(shape(&c), runs(&[0..3, 3..4, 4..7]), "{what} v6 {v6}");
            check_outputs(&frames, &c).unwrap();
        }
        // A corrupt first segment: it is verified too.
        let mut frames = spec.flow(&data, &[1000; 4], |_, _| ());
        frames[0][l4 + 100] ^= 1;
        assert_eq!(shape(&coalesce(&frames, false)), runs(&[0..1, 1..4]));
    }
}

#[test]
fn item_limits() {
    let (spec, data) = base();
    // MAX_SEGMENTS.
    let frames = spec.flow(&data, &[536; 70], |_, _| ());
    assert_eq!(shape(&coalesce(&frames, false)), runs(&[0..64, 64..70]));
    // 65535 bytes of IP datagram: 20 + 32 + 7 × 9000 fits, 8 × 9000 not.
    let frames = spec.flow(&data, &[9000; 10], |_, _| ());
    assert_eq!(shape(&coalesce(&frames, false)), runs(&[0..7, 7..10]));
    // Exactly 65535: 20 + 32 + 11 × 5953.
    let frames = spec.flow(&data, &[5953; 12], |_, _| ());
    assert_eq!(shape(&coalesce(&frames, false)), runs(&[0..11, 11..12]));
    // IPv6 too counts its 40-byte header, as Linux GRO does: 40 + 32 +
    // 3 × 21821 = 65535.
    let spec6 = Spec { v6: true, ..spec.clone() };
    let frames = spec6.flow(&data, &[21821; 4], |_, _| ());
    let c = coalesce(&frames, false);
    assert_eq!(shape(&c), runs(&[0..3, 3..4]));
    check_outputs(&frames, &c).unwrap();
}

#[test]
fn short_segment_and_psh_close_the_item() {
    let (spec, data) = base();
    let frames = spec.flow(&data, &[1000, 1000, 500, 1000, 1000], |_, _| ());
    assert_eq!(shape(&coalesce(&frames, false)), runs(&[0..3, 3..5]));
    let frames = spec.flow(&data, &[1000; 5], |i, s| {
        if i == 2 {
            s.flags = ACK | TCP_PSH;
        }
    });
    let c = coalesce(&frames, false);
    assert_eq!(shape(&c), runs(&[0..3, 3..5]));
    // PSH of the last merged segment is kept in the merged header.
    let outs: Vec<_> = c.outputs().collect();
    let Output::Merged { header, .. } = outs[0] else { panic!("not merged") };
    assert_eq!(header[spec.l4_offset() + 13], ACK | TCP_PSH);
    check_outputs(&frames, &c).unwrap();
    // A first segment with PSH stands alone; a longer second one too.
    let frames = spec.flow(&data, &[1000; 3], |i, s| {
        if i == 0 {
            s.flags = ACK | TCP_PSH;
        }
    });
    assert_eq!(shape(&coalesce(&frames, false)), runs(&[0..1, 1..3]));
    let frames = spec.flow(&data, &[500, 1000, 1000], |_, _| ());
    assert_eq!(shape(&coalesce(&frames, false)), runs(&[0..1, 1..3]));
}

#[test]
fn non_mergeable_frame_of_a_flow_closes_its_item() {
    let (spec, data) = base();
    let mut frames = spec.flow(&data, &[1000; 4], |_, _| ());
    // A pure ACK of the same flow between segments 1 and 2: segment 2 must
    // not be merged in front of it.
    let ack = spec.flow(&data, &[0], |_, s| s.seq = s.seq.wrapping_add(2000)).remove(0);
    frames.insert(2, ack);
    let c = coalesce(&frames, false);
    assert_eq!(shape(&c), runs(&[0..2, 2..3, 3..5]));
    // A frame of another flow closes nothing.
    let mut frames = spec.flow(&data, &[1000; 4], |_, _| ());
    let other = Spec { sport: 1, ..spec.clone() }.flow(&data, &[0], |_, _| ()).remove(0);
    frames.insert(2, other);
    assert_eq!(shape(&coalesce(&frames, false)), vec![vec![0, 1, 3, 4], vec![2]]);
}

#[test]
fn udp_rules() {
    let (spec, data) = base();
    let spec = Spec { tcp: false, ..spec };
    let frames = spec.flow(&data, &[1200, 1200, 1200, 700, 1200], |_, _| ());
    let c = coalesce(&frames, true);
    assert_eq!(shape(&c), runs(&[0..4, 4..5]));
    let outs: Vec<_> = c.outputs().collect();
    let Output::Merged { vnet, .. } = outs[0] else { panic!("not merged") };
    assert_eq!((vnet.gso_type, vnet.csum_offset, vnet.gso_size), (GSO_UDP_L4, 6, 1200));
    check_outputs(&frames, &c).unwrap();
    assert_eq!(shape(&coalesce(&frames, false)).len(), 5);
    // A zero IPv4 UDP checksum means none: accepted, and the merged
    // super-frame gets a real one.
    let mut frames = spec.flow(&data, &[1200; 3], |_, _| ());
    for f in &mut frames {
        let at = spec.l4_offset() + 6;
        f[at..at + 2].fill(0);
    }
    let c = coalesce(&frames, true);
    assert_eq!(shape(&c), one_run(0..3));
    check_outputs_with(&frames, &c, false).unwrap();
    // Not in IPv6, where it is invalid.
    let spec6 = Spec { v6: true, ..spec.clone() };
    let mut frames = spec6.flow(&data, &[1200; 3], |_, _| ());
    let at = spec6.l4_offset() + 6;
    frames[1][at..at + 2].fill(0);
    assert_eq!(shape(&coalesce(&frames, true)), runs(&[0..1, 1..2, 2..3]));
    // A UDP length that disagrees with the IP length.
    let mut frames = spec.flow(&data, &[1200; 3], |_, _| ());
    let at = spec.l4_offset() + 4;
    frames[1][at + 1] ^= 1;
    assert_eq!(shape(&coalesce(&frames, true)), runs(&[0..1, 1..2, 2..3]));
}

#[test]
fn ethernet_padding_is_not_payload() {
    let (spec, data) = base();
    let mut frames = spec.flow(&data, &[6, 6, 6], |_, _| ());
    for f in &mut frames {
        f.resize(f.len().max(60), 0xee);
    }
    let c = coalesce(&frames, false);
    assert_eq!(shape(&c), one_run(0..3));
    let outs: Vec<_> = c.outputs().collect();
    let Output::Merged { segments, header, .. } = outs[0] else { panic!("not merged") };
    assert!(segments.iter().all(|s| s.end - s.start == 6));
    assert_eq!(assemble(&frames, &outs[0]).1, spec.build(&data[..18], Csum::Partial));
    assert_eq!(header.len(), spec.l4_offset() + 32);
}

#[test]
fn clear_reuses_and_forgets() {
    let (spec, data) = base();
    let frames = spec.flow(&data, &[1000; 5], |_, _| ());
    let mut c = Coalescer::new(false);
    for round in 0..3 {
        c.clear();
        assert!(c.is_empty());
        for (i, f) in frames.iter().enumerate().skip(round) {
            c.push(i, f);
        }
        assert_eq!(c.len(), 1);
        assert_eq!(shape(&c), vec![(round..5).collect::<Vec<_>>()]);
    }
    // Open items do not survive a clear: the next batch starts afresh.
    c.clear();
    c.push(0, &frames[0]);
    c.clear();
    c.push(1, &frames[1]);
    assert_eq!(shape(&c), vec![vec![1]]);
}

#[test]
fn many_flows_interleaved() {
    let (spec, data) = base();
    for (n, merges) in [(60u16, true), (100, false)] {
        let mut frames = Vec::new();
        for round in 0..3 {
            for f in 0..n {
                let s = Spec { sport: f, ..spec.clone() };
                frames.push(s.flow(&data, &[1000; 3], |_, _| ()).remove(round));
            }
        }
        let c = coalesce(&frames, false);
        check_outputs(&frames, &c).unwrap();
        if merges {
            let want: Vec<Vec<usize>> =
                (0..usize::from(n)).map(|f| (0..3).map(|r| r * usize::from(n) + f).collect()).collect();
            assert_eq!(shape(&c), want);
        } else {
            // Past the open-item limit the oldest are closed: round-robin
            // over more flows than that merges nothing, but loses nothing.
            assert_eq!(c.len(), frames.len());
        }
    }
}

#[test]
fn segmenter_errors() {
    let spec = Spec::default();
    let data = payload(5000, 1);
    let (vnet, frame) = spec.super_frame(&data, 1000, 0);
    let err = |v: VnetHdr, f: &[u8]| Segmenter::new(&v, f).unwrap_err();
    let l4 = spec.l4_offset() as u16;
    assert_eq!(err(vnet, &frame[..10]), OffloadError::Truncated { what: "ethernet frame", len: 10, need: 14 });
    assert_eq!(err(VnetHdr { gso_type: GSO_UDP, ..vnet }, &frame), OffloadError::UnsupportedGso(GSO_UDP));
    assert_eq!(err(VnetHdr { gso_type: 9, ..vnet }, &frame), OffloadError::UnsupportedGso(9));
    assert_eq!(err(VnetHdr { gso_type: GSO_ECN, ..vnet }, &frame), OffloadError::UnsupportedGso(GSO_ECN));
    assert_eq!(
        err(VnetHdr { gso_type: GSO_UDP_L4 | GSO_ECN, ..vnet }, &frame),
        OffloadError::UnsupportedGso(GSO_UDP_L4 | GSO_ECN)
    );
    assert_eq!(err(VnetHdr { gso_size: 0, ..vnet }, &frame), OffloadError::ZeroGsoSize { gso_type: GSO_TCPV4 });
    assert_eq!(
        err(VnetHdr { csum_start: l4 + 4, ..vnet }, &frame),
        OffloadError::BadCsumStart { csum_start: l4 + 4, l4: l4.into() }
    );
    assert_eq!(
        err(VnetHdr { csum_offset: 6, ..vnet }, &frame),
        OffloadError::BadCsumOffset { gso_type: GSO_TCPV4, csum_offset: 6, expected: 16 }
    );
    assert_eq!(
        err(VnetHdr { gso_type: GSO_TCPV6, ..vnet }, &frame),
        OffloadError::GsoIpMismatch { gso_type: GSO_TCPV6, version: IpVersion::V4 }
    );
    assert_eq!(
        err(VnetHdr { gso_type: GSO_UDP_L4, csum_offset: 6, ..vnet }, &frame),
        OffloadError::WrongProtocol { gso_type: GSO_UDP_L4, proto: PROTO_TCP, expected: PROTO_UDP }
    );
    let (v, f) = Spec { more_fragments: true, ..spec.clone() }.super_frame(&data, 1000, 0);
    assert_eq!(err(v, &f), OffloadError::Fragment { offset: 0, more: true });
    let mut f = frame.clone();
    f[14 + 6..14 + 8].copy_from_slice(&[0, 1]);
    assert_eq!(err(vnet, &f), OffloadError::Fragment { offset: 8, more: false });
    let mut f = frame.clone();
    f[14 + 9] = 1;
    assert_eq!(err(vnet, &f), OffloadError::NotTcpUdp(1));
    let mut f = frame.clone();
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(err(vnet, &f), OffloadError::NotIp(0x0806));
    let mut f = frame.clone();
    f[14] = 0x44;
    assert_eq!(err(vnet, &f), OffloadError::BadIhl(16));
    f[14] = 0x65;
    assert_eq!(err(vnet, &f), OffloadError::BadIpVersion { ethertype: 0x0800, version: 6 });
    let mut f = frame.clone();
    f[spec.l4_offset() + 12] = 0x40;
    assert_eq!(err(vnet, &f), OffloadError::BadTcpDataOffset(4));
    assert_eq!(
        err(vnet, &frame[..spec.l4_offset() + 30]),
        OffloadError::Truncated { what: "TCP options", len: 30, need: 32 }
    );
    // IPv6 routing header (43): its pseudo-header would need the final
    // destination.
    let s6 = Spec { v6: true, v6_hop_by_hop: true, ..spec.clone() };
    let (v, mut f) = s6.super_frame(&data, 1000, 0);
    f[14 + 40] = 43;
    assert_eq!(err(v, &f), OffloadError::Ipv6ExtHeader(43));
    // Through a hop-by-hop header it works.
    let (v, f) = s6.super_frame(&data, 1000, 0);
    check_segmentation(&s6, &v, &f, &data).unwrap();
    // A segment whose IP length overflows 16 bits.
    let big = payload(65_483, 3);
    let (v, f) = spec.super_frame(&big, u16::MAX, 0);
    assert_eq!(Segmenter::new(&v, &f).map(|s| s.count()), Ok(1));
    let mut f = f;
    f.push(0);
    assert_eq!(err(v, &f), OffloadError::SegmentTooLong { len: 65_536 });
    // GSO_NONE + NEEDS_CSUM with a field outside the frame or odd.
    let v = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 100, csum_offset: 16, ..VnetHdr::NONE };
    assert_eq!(err(v, &frame[..117]), OffloadError::BadCsumField { csum_start: 100, csum_offset: 16, len: 117 });
    let v = VnetHdr { csum_offset: 15, ..v };
    assert_eq!(err(v, &frame), OffloadError::BadCsumField { csum_start: 100, csum_offset: 15, len: frame.len() });
    // Writing.
    let s = Segmenter::new(&vnet, &frame).unwrap();
    assert_eq!(s.count(), 5);
    let mut out = vec![0u8; s.max_len()];
    assert_eq!(s.write(5, &mut out), Err(OffloadError::NoSuchSegment { index: 5, count: 5 }));
    assert_eq!(s.write(0, &mut out[..100]), Err(OffloadError::BufferTooSmall { len: 100, need: s.len(0) }));
}

#[test]
fn gso_none_udp_zero_checksum_becomes_ffff() {
    let spec = Spec { tcp: false, ..Spec::default() };
    // Choose the last two payload bytes so that the checksum comes out 0.
    let mut data = payload(101, 9);
    data.extend_from_slice(&[0, 0, 0]);
    let full = spec.build(&data, Csum::Full);
    let l4 = spec.l4_offset();
    let pseudo = naive_sum(&spec.pseudo(full.len() - l4));
    let mut zeroed = full.clone();
    zeroed[l4 + 6..l4 + 8].fill(0);
    // Payload byte 102 starts at an odd offset from l4 + 8: put the word
    // at bytes 102..104, which is even from the L4 start (8 + 102 - 2).
    let at = zeroed.len() - 2;
    let fix = naive_fold(pseudo + naive_sum(&zeroed[l4..]));
    zeroed[at..].copy_from_slice(&(!fix).to_be_bytes());
    data[102..].copy_from_slice(&(!fix).to_be_bytes());
    assert_eq!(!naive_fold(pseudo + naive_sum(&zeroed[l4..])), 0, "crafted to a zero checksum");
    let frame = spec.build(&data, Csum::Partial);
    let vnet = VnetHdr { flags: F_NEEDS_CSUM, csum_start: l4 as u16, csum_offset: 6, ..VnetHdr::NONE };
    let mut out = vec![0u8; frame.len()];
    Segmenter::new(&vnet, &frame).unwrap().write(0, &mut out).unwrap();
    assert_eq!(out[l4 + 6..l4 + 8], [0xff, 0xff]);
    check_wire_frame(&out).unwrap();
    // The same frame through USO (one segment) gets the same.
    let (v, f) = spec.super_frame(&data, 1400, 0);
    assert_eq!(cut(&v, &f), vec![out]);
}

#[test]
fn qinq_tags_are_walked() {
    let spec = Spec::default();
    let data = payload(3000, 5);
    let (_, plain) = spec.super_frame(&data, 1000, 0);
    // Insert an 802.1ad outer tag and an 802.1Q inner tag.
    let mut f = plain[..12].to_vec();
    f.extend_from_slice(&[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7]);
    f.extend_from_slice(&plain[12..]);
    let vnet = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 0,
        gso_size: 1000,
        csum_start: spec.l4_offset() as u16 + 8,
        csum_offset: 16,
    };
    let segs = cut(&vnet, &f);
    assert_eq!(segs.len(), 3);
    for s in &segs {
        assert_eq!(s[..22], f[..22]);
        check_wire_frame(s).unwrap();
    }
    let c = coalesce(&segs, false);
    assert_eq!(shape(&c), one_run(0..3));
    assert_eq!(assemble(&segs, &c.outputs().next().unwrap()).1, f);
    // A third tag is not IP.
    let mut f3 = plain[..12].to_vec();
    f3.extend_from_slice(&[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7, 0x81, 0x00, 0, 9]);
    f3.extend_from_slice(&plain[12..]);
    assert_eq!(Headers::parse(&f3), Err(OffloadError::NotIp(0x8100)));
    assert_eq!(Headers::parse(&f3[..17]), Err(OffloadError::Truncated { what: "VLAN tag", len: 17, need: 18 }));
}

/// Writes the fuzzers' seed corpus (see fuzz/README.md):
/// `WEFT_FUZZ_CORPUS=fuzz/corpus cargo test -p weft-proto --release -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes files; run by hand to refresh fuzz/corpus"]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("WEFT_FUZZ_CORPUS") else { return };
    let dir = std::path::PathBuf::from(dir);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
    };
    let data = payload(4000, 7);
    let v4 = Spec::default();
    let v6 = Spec { v6: true, ..Spec::default() };
    let supers = [
        ("tcp4", v4.clone(), 900, 300),
        ("tcp4-one-segment", v4.clone(), 300, 536),
        (
            "tcp4-vlan-psh-fin-cwr",
            Spec { vlan: Some(5), flags: ACK | TCP_PSH | TCP_FIN | TCP_CWR, ..v4.clone() },
            700,
            256,
        ),
        ("tcp4-options", Spec { v4_options: vec![1, 1, 1, 0], tcp_options: vec![], ..v4.clone() }, 600, 200),
        ("tcp6", v6.clone(), 900, 300),
        ("tcp6-hop-by-hop", Spec { v6_hop_by_hop: true, ..v6.clone() }, 500, 200),
        ("udp4", Spec { tcp: false, ..v4.clone() }, 800, 300),
        ("udp6", Spec { tcp: false, ..v6.clone() }, 800, 300),
    ];
    for (name, spec, len, gso) in &supers {
        let (mut vnet, frame) = spec.super_frame(&data[..*len], *gso, 0);
        if spec.flags & TCP_CWR != 0 {
            vnet.gso_type |= GSO_ECN;
        }
        write("offload_segment", name, &[&vnet.to_bytes()[..], &frame].concat());
    }
    for (name, spec) in [("csum-tcp4", &v4), ("csum-udp6", &Spec { tcp: false, ..v6.clone() })] {
        let frame = spec.build(&data[..333], Csum::Partial);
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: spec.l4_offset() as u16,
            csum_offset: if spec.tcp { 16 } else { 6 },
            ..VnetHdr::NONE
        };
        write("offload_segment", name, &[&vnet.to_bytes()[..], &frame].concat());
    }
    let mut arp = [MAC_B, MAC_A].concat();
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.resize(42, 0);
    write("offload_segment", "arp", &[&VnetHdr::NONE.to_bytes()[..], &arp].concat());

    let batch = |udp: bool, frames: &[Vec<u8>]| {
        let mut b = vec![u8::from(udp)];
        for f in frames {
            b.extend_from_slice(&(f.len() as u16).to_le_bytes());
            b.extend_from_slice(f);
        }
        b
    };
    let sizes = [300, 300, 300, 300, 120];
    let tcp4 = v4.flow(&data, &sizes, |_, _| ());
    write("offload_coalesce", "tcp4", &batch(false, &tcp4));
    let tcp6 = Spec { vlan: Some(9), ..v6.clone() }.flow(&data, &sizes, |_, _| ());
    write("offload_coalesce", "tcp6-vlan", &batch(false, &tcp6));
    let other = Spec { sport: 1, ..v4.clone() }.flow(&data, &sizes, |_, _| ());
    let mixed: Vec<Vec<u8>> = tcp4.iter().zip(&other).flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    write("offload_coalesce", "two-flows", &batch(false, &mixed));
    let psh = v4.flow(&data, &[300, 300, 300, 300], |i, s| {
        if i == 1 {
            s.flags |= TCP_PSH;
        }
    });
    write("offload_coalesce", "psh", &batch(false, &psh));
    let gap = [&tcp4[0], &tcp4[1], &tcp4[3], &tcp4[2], &tcp4[2]].map(Clone::clone);
    write("offload_coalesce", "reordered", &batch(false, &gap));
    let udp = Spec { tcp: false, ..v4.clone() }.flow(&data, &sizes, |_, _| ());
    write("offload_coalesce", "udp4", &batch(true, &udp));
    let udp6 = Spec { tcp: false, ..v6.clone() }.flow(&data, &sizes, |_, _| ());
    write("offload_coalesce", "udp6", &batch(true, &udp6));
}
