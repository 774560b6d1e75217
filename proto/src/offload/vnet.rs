//! `struct virtio_net_hdr`, the 10 bytes in front of every frame on a TAP
//! opened with `IFF_VNET_HDR` (include/uapi/linux/virtio_net.h).

use super::OffloadError;

pub const VNET_HDR_LEN: usize = 10;

/// The L4 checksum field holds only the pseudo-header sum: sum from
/// `csum_start` to the end of the frame and store the result at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksum was verified (reads only: the kernel ignores it on writes).
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// UFO: removed from Linux in 4.14, never produced by a current kernel.
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
/// USO (UDP segmentation, Linux ≥ 6.2 on tun/tap).
pub const GSO_UDP_L4: u8 = 5;
/// Or'ed into `gso_type`: the first segment carries CWR (RFC 3168).
pub const GSO_ECN: u8 = 0x80;

/// The header's fields. The u16s travel little-endian: the router sets
/// `TUNSETVNETLE`, so the layout does not depend on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers. On reads the kernel puts `skb_headlen()`
    /// here, which can be the whole linear part: never trusted.
    pub hdr_len: u16,
    /// Payload bytes per segment (the sender's MSS for TCP).
    pub gso_size: u16,
    /// Counted from the start of the Ethernet frame on a TAP.
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// A plain frame: no checksum to complete, nothing to segment.
    pub const NONE: VnetHdr =
        VnetHdr { flags: 0, gso_type: GSO_NONE, hdr_len: 0, gso_size: 0, csum_start: 0, csum_offset: 0 };

    /// Reads the first [`VNET_HDR_LEN`] bytes of `bytes`; whatever follows
    /// (the frame) is not looked at.
    pub fn parse(bytes: &[u8]) -> Result<VnetHdr, OffloadError> {
        let b: &[u8; VNET_HDR_LEN] = bytes.first_chunk().ok_or(OffloadError::Truncated {
            what: "virtio_net_hdr",
            len: bytes.len(),
            need: VNET_HDR_LEN,
        })?;
        let [flags, gso_type, h0, h1, g0, g1, s0, s1, o0, o1] = *b;
        Ok(VnetHdr {
            flags,
            gso_type,
            hdr_len: u16::from_le_bytes([h0, h1]),
            gso_size: u16::from_le_bytes([g0, g1]),
            csum_start: u16::from_le_bytes([s0, s1]),
            csum_offset: u16::from_le_bytes([o0, o1]),
        })
    }

    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let [h0, h1] = self.hdr_len.to_le_bytes();
        let [g0, g1] = self.gso_size.to_le_bytes();
        let [s0, s1] = self.csum_start.to_le_bytes();
        let [o0, o1] = self.csum_offset.to_le_bytes();
        [self.flags, self.gso_type, h0, h1, g0, g1, s0, s1, o0, o1]
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_little_endian() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1324,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(h.to_bytes(), [1, 0x81, 0x02, 0x01, 0x2c, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::NONE.to_bytes(), [0; VNET_HDR_LEN]);
        assert_eq!(VnetHdr::NONE, VnetHdr::default());
        assert!(h.needs_csum() && !VnetHdr::NONE.needs_csum());
    }

    #[test]
    fn short_is_truncated() {
        assert_eq!(
            VnetHdr::parse(&[0; 9]),
            Err(OffloadError::Truncated { what: "virtio_net_hdr", len: 9, need: VNET_HDR_LEN })
        );
    }

    proptest! {
        #[test]
        fn roundtrip(bytes in any::<[u8; VNET_HDR_LEN]>(), trailer in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = bytes.to_vec();
            buf.extend_from_slice(&trailer);
            let h = VnetHdr::parse(&buf).unwrap();
            prop_assert_eq!(h.to_bytes(), bytes);
        }
    }
}
