//! The Internet checksum (RFC 1071): the one implementation in weft.
//!
//! A checksum is built in three steps: partial sums over the pieces a
//! checksum covers ([`sum`], [`pseudo_header_v4`], [`pseudo_header_v6`],
//! [`copy_and_sum`]), chained through their `acc` argument or simply added;
//! then [`fold`] to 16 bits; then [`finish`] to get the value to store.
//! Data verifies when `fold` of the sum over it, checksum field included,
//! is `0xffff`.
//!
//! Partial sums are unfolded `u64`s: adding two of them with `+` is fine
//! for anything this crate builds (each is far below 2^63), and [`sum`]
//! itself accepts any `acc`, carrying around the end of the `u64`.

/// Adds the big-endian 16-bit words of `data` to the partial sum `acc`
/// and returns the new partial sum. An odd final byte counts as a word
/// padded with a zero byte, so only the last piece of a checksum may have
/// odd length: an odd piece in the middle would shift every word after it.
pub fn sum(data: &[u8], acc: u64) -> u64 {
    add(acc, native_to_be(sum_native(data)))
}

/// Folds a partial sum to 16 bits (one's-complement addition of its
/// 16-bit halves), not complemented.
pub fn fold(acc: u64) -> u16 {
    // Each step at least halves the excess: 2^64 → 2^33 → 0x2fffe →
    // 0x10001 → 0xffff.
    let mut a = (acc & 0xffff_ffff) + (acc >> 32);
    a = (a & 0xffff) + (a >> 16);
    a = (a & 0xffff) + (a >> 16);
    a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// The value to store in a checksum field whose covered bytes (with the
/// field zeroed) sum to `acc`.
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// The TCP/UDP pseudo-header of RFC 791 (RFC 9293 §3.1, RFC 768): source
/// and destination address, protocol, and the L4 length (header + data).
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u32) -> u64 {
    // A 32-bit big-endian word is congruent to the sum of its two 16-bit
    // halves modulo 0xffff, which is all one's-complement addition sees.
    u64::from(u32::from_be_bytes(src)) + u64::from(u32::from_be_bytes(dst)) + u64::from(proto) + u64::from(len)
}

/// The IPv6 upper-layer pseudo-header of RFC 8200 §8.1. With a routing
/// header, `dst` must be the final destination; weft never parses one.
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: u32) -> u64 {
    let words = |a: [u8; 16]| {
        let x = u128::from_be_bytes(a);
        u64::from(x as u32) + u64::from((x >> 32) as u32) + u64::from((x >> 64) as u32) + u64::from((x >> 96) as u32)
    };
    words(src) + words(dst) + u64::from(proto) + u64::from(len)
}

/// Copies `src` into `dst` and adds `src` to the partial sum `acc`, in one
/// pass over the bytes: a segment's payload is summed while it is written.
/// The same odd-length rule as [`sum`] applies.
///
/// # Panics
///
/// If the lengths differ, like `copy_from_slice`: a caller's bug, never
/// a property of the bytes.
pub fn copy_and_sum(dst: &mut [u8], src: &[u8], acc: u64) -> u64 {
    assert_eq!(dst.len(), src.len(), "copy_and_sum needs equal lengths");
    let mut lanes = [0u64; LANES];
    let mut d = dst.chunks_exact_mut(CHUNK);
    let mut s = src.chunks_exact(CHUNK);
    for (dc, sc) in (&mut d).zip(&mut s) {
        // Summing the source chunk right after copying it reads it from
        // L1: the copy and the sum cost little more than the copy alone.
        dc.copy_from_slice(sc);
        add_chunk(&mut lanes, sc);
    }
    d.into_remainder().copy_from_slice(s.remainder());
    let native = tail(merge(lanes), s.remainder());
    add(acc, native_to_be(native))
}

/// Bytes per step of the main loop: four independent 8-byte lanes, so
/// the adds and their carries do not wait on each other.
const CHUNK: usize = 32;
const LANES: usize = CHUNK / 8;

/// Sums `data` as native-endian 16-bit words. One's-complement addition
/// commutes with byte swapping (RFC 1071 §2(B)), so the bytes are read as
/// they lie in memory and the folded result is swapped once at the end.
fn sum_native(data: &[u8]) -> u64 {
    let mut lanes = [0u64; LANES];
    let mut chunks = data.chunks_exact(CHUNK);
    for c in &mut chunks {
        add_chunk(&mut lanes, c);
    }
    tail(merge(lanes), chunks.remainder())
}

#[inline(always)]
fn add_chunk(lanes: &mut [u64; LANES], chunk: &[u8]) {
    for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        *lane = add(*lane, u64::from_ne_bytes(w));
    }
}

fn merge(lanes: [u64; LANES]) -> u64 {
    let all = lanes.into_iter().fold(0, add);
    // Room for the tail's additions below without overflow.
    (all & 0xffff_ffff) + (all >> 32)
}

/// The last `CHUNK - 1` bytes at most, onto an accumulator below 2^34.
fn tail(mut acc: u64, rest: &[u8]) -> u64 {
    let mut words = rest.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    match *words.remainder() {
        [a, b, c] => acc + u64::from(u16::from_ne_bytes([a, b])) + u64::from(u16::from_ne_bytes([c, 0])),
        [a, b] => acc + u64::from(u16::from_ne_bytes([a, b])),
        [a] => acc + u64::from(u16::from_ne_bytes([a, 0])),
        _ => acc,
    }
}

/// A native-endian partial sum as a big-endian one.
fn native_to_be(native: u64) -> u64 {
    u64::from(u16::from_be(fold(native)))
}

/// One's-complement addition of two partial sums: the carry out of the
/// top bit wraps around to the bottom (2^64 ≡ 1 modulo 0xffff).
#[inline(always)]
fn add(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::offload::tests::{naive_fold, naive_sum};
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // RFC 1071 §3's example: the words sum to 0xddf2.
        assert_eq!(fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)), 0xddf2);
        // The classic IPv4 header example; its checksum is 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(finish(sum(&h, 0)), 0xb861);
        assert_eq!(finish(sum(&[0x01], 0)), !0x0100);
        assert_eq!(finish(0), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        // Needs all four folding steps: 0x1_0000_ffff, 0x1_ffff, 0x1_0000, 1.
        assert_eq!(fold(0xffff_ffff_0001_0000), 1);
        // The carry out of a u64 accumulator wraps around.
        assert_eq!(fold(sum(&[0xff, 0xff], u64::MAX)), 0xffff);
        assert_eq!(fold(sum(&[0, 1], u64::MAX - 1)), 0xffff);
    }

    #[test]
    fn pseudo_headers() {
        let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let bytes = [&src[..], &dst[..], &[0, 6], &1234u16.to_be_bytes()].concat();
        assert_eq!(fold(pseudo_header_v4(src, dst, 6, 1234)), naive_fold(naive_sum(&bytes)));
        let src6 = [0xfd, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xff];
        let dst6 = [0xfe, 0x80, 0xff, 0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd];
        let len = 0x0001_2345u32;
        let bytes = [&src6[..], &dst6[..], &len.to_be_bytes(), &[0, 0, 0, 17]].concat();
        assert_eq!(fold(pseudo_header_v6(src6, dst6, 17, len)), naive_fold(naive_sum(&bytes)));
    }

    #[test]
    #[should_panic(expected = "equal lengths")]
    fn copy_and_sum_rejects_mismatch() {
        copy_and_sum(&mut [0; 3], &[0; 4], 0);
    }

    proptest! {
        #[test]
        fn sum_matches_naive(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            offset in 0usize..16,
            acc in any::<u64>(),
        ) {
            // `offset` varies the alignment of the slice in memory.
            let data = &data[offset.min(data.len())..];
            prop_assert_eq!(fold(sum(data, 0)), naive_fold(naive_sum(data)));
            let reference = naive_fold(u64::from(naive_fold(acc)) + naive_sum(data));
            prop_assert_eq!(fold(sum(data, acc)), reference);
        }

        #[test]
        fn split_sums_chain(data in proptest::collection::vec(any::<u8>(), 0..600), cut in any::<prop::sample::Index>()) {
            // Any even cut: the first piece must have even length.
            let cut = cut.index(data.len() + 1) & !1;
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(fold(sum(b, sum(a, 0))), fold(sum(&data, 0)));
            prop_assert_eq!(fold(sum(a, 0) + sum(b, 0)), fold(sum(&data, 0)));
        }

        #[test]
        fn finished_checksum_verifies(mut data in proptest::collection::vec(any::<u8>(), 2..600), at in any::<prop::sample::Index>()) {
            let at = at.index(data.len() - 1) & !1;
            data[at] = 0;
            data[at + 1] = 0;
            let c = finish(sum(&data, 0));
            data[at..at + 2].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(naive_fold(naive_sum(&data)), 0xffff);
        }

        #[test]
        fn copy_and_sum_matches(
            src in proptest::collection::vec(any::<u8>(), 0..3000),
            offset in 0usize..16,
            acc in 0u64..(1 << 40),
        ) {
            let src = &src[offset.min(src.len())..];
            let mut dst = vec![0xa5; src.len() + offset];
            let got = copy_and_sum(&mut dst[offset..], src, acc);
            prop_assert_eq!(&dst[offset..], src);
            prop_assert_eq!(fold(got), fold(sum(src, acc)));
        }

        #[test]
        fn pseudo_header_v4_matches_naive(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(), len in any::<u16>()) {
            let bytes = [&src[..], &dst[..], &[0, proto], &len.to_be_bytes()].concat();
            prop_assert_eq!(fold(pseudo_header_v4(src, dst, proto, len.into())), naive_fold(naive_sum(&bytes)));
        }

        #[test]
        fn pseudo_header_v6_matches_naive(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), proto in any::<u8>(), len in any::<u32>()) {
            let bytes = [&src[..], &dst[..], &len.to_be_bytes(), &[0, 0, 0, proto]].concat();
            prop_assert_eq!(fold(pseudo_header_v6(src, dst, proto, len)), naive_fold(naive_sum(&bytes)));
        }
    }
}
