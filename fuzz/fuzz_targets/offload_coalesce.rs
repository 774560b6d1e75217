//! A receive batch: arbitrary frames pushed into a Coalescer. Every
//! pushed handle must come out exactly once, ranges must lie in their
//! frames, and a merged super-frame cut again the way the kernel cuts it
//! must give valid frames.
//!
//! Input: one byte of options (bit 0: coalesce UDP), then frames, each a
//! little-endian u16 length (capped at what is left) and that many bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proto::offload::{Coalescer, Output, Segmenter, MAX_HEADER_LEN, MAX_SEGMENTS};

#[path = "check.rs"]
mod check;

fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [lo, hi, rest @ ..] = data {
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let (frame, tail) = rest.split_at(n);
        out.push(frame);
        data = tail;
    }
    out
}

fn check(frames: &[&[u8]], c: &Coalescer<usize>) -> Vec<Vec<usize>> {
    let mut seen = vec![false; frames.len()];
    let mut shape = Vec::new();
    for out in c.outputs() {
        let handles: Vec<usize> = match out {
            Output::Single(h) => vec![h],
            Output::Merged { vnet, header, segments } => {
                assert!((2..=MAX_SEGMENTS).contains(&segments.len()));
                assert!(header.len() <= MAX_HEADER_LEN);
                assert_eq!(usize::from(vnet.hdr_len), header.len());
                let mut merged = header.to_vec();
                for s in segments {
                    let f = frames.get(s.handle).expect("handle was pushed");
                    assert!(s.start <= s.end && s.end <= f.len(), "range in bounds");
                    assert!(s.start >= header.len());
                    merged.extend_from_slice(&f[s.start..s.end]);
                }
                assert!(merged.len() - usize::from(vnet.csum_start) <= 65535);
                let seg = Segmenter::new(&vnet, &merged).expect("merged super-frame is valid");
                assert_eq!(seg.count(), segments.len());
                let mut buf = vec![0u8; seg.max_len()];
                for i in 0..seg.count() {
                    let n = seg.write(i, &mut buf).expect("segment fits");
                    check::check_segment(&buf[..n]);
                }
                segments.iter().map(|s| s.handle).collect()
            }
        };
        for &h in &handles {
            assert!(h < frames.len(), "handle was pushed");
            assert!(!std::mem::replace(&mut seen[h], true), "handle output twice");
        }
        shape.push(handles);
    }
    assert!(seen.iter().all(|&s| s), "handle lost");
    shape
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else { return };
    let frames = frames(rest);
    let mut c = Coalescer::new(opts & 1 != 0);
    for (i, f) in frames.iter().enumerate() {
        c.push(i, f);
    }
    let first = check(&frames, &c);
    // A cleared coalescer (buffers kept) decides the same way.
    c.clear();
    for (i, f) in frames.iter().enumerate() {
        c.push(i, f);
    }
    assert_eq!(check(&frames, &c), first);
});
