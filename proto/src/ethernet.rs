//! Ethernet II frames as weft carries them: MAC addresses and a typed,
//! zero-copy view over a frame whose length is checked once, up front.

use std::fmt;
use std::str::FromStr;

use crate::PeerName;

/// Destination + source MAC + ethertype. weft forwards 802.1Q-tagged frames
/// untouched, so a VLAN tag simply shows up as ethertype 0x8100.
pub const HEADER_LEN: usize = 14;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what} truncated: {len} bytes, need at least {min}")]
    Truncated { what: &'static str, len: usize, min: usize },
}

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// The I/G bit: set for every group address, broadcast included.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

// MAC addresses and peer names share one textual form, so they share one
// formatter and one parser rather than two copies of the same hex code.
impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&PeerName::from_bytes(self.0), f)
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex bytes like 0a:1b:2c:3d:4e:5f")]
pub struct MacAddrParseError {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = MacAddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<PeerName>().map(|name| MacAddr(*name.as_bytes())).map_err(|e| MacAddrParseError { input: e.input })
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }
}

/// A borrowed Ethernet II frame (no preamble, no FCS: what a TAP device or
/// a pcap handle gives us).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<'a> {
    header: &'a [u8; HEADER_LEN],
    payload: &'a [u8],
    bytes: &'a [u8],
}

impl<'a> EthernetFrame<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (header, payload) = bytes.split_first_chunk::<HEADER_LEN>().ok_or(WireError::Truncated {
            what: "ethernet frame",
            len: bytes.len(),
            min: HEADER_LEN,
        })?;
        Ok(EthernetFrame { header, payload, bytes })
    }

    pub fn dst(&self) -> MacAddr {
        let [dst @ .., _, _, _, _, _, _, _, _] = *self.header;
        MacAddr(dst)
    }

    pub fn src(&self) -> MacAddr {
        let [_, _, _, _, _, _, src @ .., _, _] = *self.header;
        MacAddr(src)
    }

    pub fn ethertype(&self) -> u16 {
        let [.., hi, lo] = *self.header;
        u16::from_be_bytes([hi, lo])
    }

    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The whole frame, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// An Ethernet II header, returned by value so that writers copy it into a
/// slice they have already length-checked.
pub fn header(dst: MacAddr, src: MacAddr, ethertype: u16) -> [u8; HEADER_LEN] {
    let [d0, d1, d2, d3, d4, d5] = dst.0;
    let [s0, s1, s2, s3, s4, s5] = src.0;
    let [t0, t1] = ethertype.to_be_bytes();
    [d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5, t0, t1]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn new_checked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match EthernetFrame::new_checked(&bytes) {
                Ok(f) => {
                    prop_assert!(bytes.len() >= HEADER_LEN);
                    prop_assert_eq!(f.payload().len(), bytes.len() - HEADER_LEN);
                    let _ = (f.dst(), f.src(), f.ethertype());
                }
                Err(_) => prop_assert!(bytes.len() < HEADER_LEN),
            }
        }

        #[test]
        fn header_roundtrip(
            dst in any::<[u8; 6]>(),
            src in any::<[u8; 6]>(),
            ethertype in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut buf = header(MacAddr(dst), MacAddr(src), ethertype).to_vec();
            buf.extend_from_slice(&payload);
            let f = EthernetFrame::new_checked(&buf).unwrap();
            prop_assert_eq!(f.dst(), MacAddr(dst));
            prop_assert_eq!(f.src(), MacAddr(src));
            prop_assert_eq!(f.ethertype(), ethertype);
            prop_assert_eq!(f.payload(), &payload[..]);
            prop_assert_eq!(f.as_bytes(), &buf[..]);
        }

        #[test]
        fn mac_display_parse_roundtrip(bytes in any::<[u8; 6]>()) {
            let mac = MacAddr(bytes);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
        }

        #[test]
        fn mac_parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<MacAddr>();
        }
    }

    #[test]
    fn address_classes() {
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!MacAddr::BROADCAST.is_unicast());
        let mcast: MacAddr = "01:00:5e:00:00:fb".parse().unwrap();
        assert!(mcast.is_multicast() && !mcast.is_broadcast() && !mcast.is_unicast());
        let ucast: MacAddr = "02:42:ac:11:00:02".parse().unwrap();
        assert!(ucast.is_unicast() && !ucast.is_multicast());
        assert_eq!(ucast.to_string(), "02:42:ac:11:00:02");
    }

    #[test]
    fn parse_error_names_mac() {
        let err = "nope".parse::<MacAddr>().unwrap_err();
        assert!(err.to_string().contains("MAC address"), "{err}");
    }

    #[test]
    fn short_frame_is_typed_error() {
        assert_eq!(
            EthernetFrame::new_checked(&[0; 13]),
            Err(WireError::Truncated { what: "ethernet frame", len: 13, min: HEADER_LEN })
        );
    }
}
