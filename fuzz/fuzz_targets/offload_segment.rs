//! A TAP read: a virtio_net_hdr and a frame, as arbitrary bytes. The
//! segmenter must refuse it or write every segment into a buffer of
//! `max_len()`; for TSO/USO every segment must be a valid frame whose
//! payloads put together are the super-frame's.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proto::offload::{Segmenter, VnetHdr, GSO_ECN, GSO_NONE, VNET_HDR_LEN};

#[path = "check.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    let Ok(vnet) = VnetHdr::parse(data) else { return };
    let frame = &data[VNET_HDR_LEN..];
    let Ok(seg) = Segmenter::new(&vnet, frame) else { return };
    let count = seg.count();
    assert!(count >= 1);
    let max = seg.max_len();
    let mut out = vec![0u8; max];
    let split = vnet.gso_type & !GSO_ECN != GSO_NONE;
    let hdr_len = seg.headers().len();
    let mut payload = Vec::new();
    for i in 0..count {
        let n = seg.write(i, &mut out).expect("every segment fits max_len()");
        assert_eq!(n, seg.len(i));
        assert!(n <= max);
        if n > 0 {
            assert!(seg.write(i, &mut out[..n - 1]).is_err(), "short buffer accepted");
        }
        if split {
            check::check_segment(&out[..n]);
            assert_eq!(out[..hdr_len.min(12)], frame[..hdr_len.min(12)], "MACs copied");
            payload.extend_from_slice(&out[hdr_len..n]);
        } else {
            assert_eq!(n, frame.len());
        }
    }
    if split {
        assert_eq!(payload, frame[hdr_len..], "payloads put together");
    }
    assert_eq!(seg.len(count), 0);
    assert!(seg.write(count, &mut out).is_err());
});
