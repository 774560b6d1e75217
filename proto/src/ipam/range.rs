//! The cluster's address range: one IPv4 CIDR block that IPAM divides
//! among peers. Addresses are handled as `u32`s inside it; span ends are
//! `u64` so that a range reaching 255.255.255.255 has a representable end.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 CIDR block with no host bits set, at least /1 and at most /30
/// (so it always has two addresses to hand out besides its network and
/// broadcast addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    start: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("invalid address range {input:?}: expected CIDR notation like 10.32.0.0/12")]
    Syntax { input: String },
    #[error("address range prefix /{prefix} is not between /{min} and /{max}")]
    Prefix { prefix: u8, min: u8, max: u8 },
    #[error("address range {start}/{prefix} has host bits set (did you mean {network}/{prefix}?)")]
    HostBits { start: Ipv4Addr, prefix: u8, network: Ipv4Addr },
}

impl Range {
    pub const MIN_PREFIX: u8 = 1;
    pub const MAX_PREFIX: u8 = 30;
    /// Weave Net's default, kept so migrated clusters keep their addresses.
    pub const DEFAULT: Range = Range { start: Ipv4Addr::new(10, 32, 0, 0), prefix: 12 };

    pub fn new(start: Ipv4Addr, prefix: u8) -> Result<Range, RangeError> {
        if !(Self::MIN_PREFIX..=Self::MAX_PREFIX).contains(&prefix) {
            return Err(RangeError::Prefix { prefix, min: Self::MIN_PREFIX, max: Self::MAX_PREFIX });
        }
        let mask = u32::MAX << (32 - prefix);
        let network = Ipv4Addr::from(u32::from(start) & mask);
        if network != start {
            return Err(RangeError::HostBits { start, prefix, network });
        }
        Ok(Range { start, prefix })
    }

    pub fn start(&self) -> Ipv4Addr {
        self.start
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.contains_u32(u32::from(addr))
    }

    pub(crate) fn first(&self) -> u32 {
        u32::from(self.start)
    }

    /// One past the last address.
    pub(crate) fn end(&self) -> u64 {
        u64::from(self.first()) + self.size()
    }

    pub(crate) fn contains_u32(&self, addr: u32) -> bool {
        addr >= self.first() && u64::from(addr) < self.end()
    }

    /// Whether `addr` may be handed out: inside the range and neither its
    /// network nor its broadcast address (pods on a flat overlay share the
    /// range as one subnet, so those two stay unused).
    pub(crate) fn is_usable(&self, addr: u32) -> bool {
        self.contains_u32(addr) && addr != self.first() && u64::from(addr) != self.end() - 1
    }

    /// How many usable addresses lie in `[start, end)`.
    pub(crate) fn usable_in(&self, start: u32, end: u64) -> u64 {
        let start = u64::from(start).max(u64::from(self.first()));
        let end = end.min(self.end());
        if start >= end {
            return 0;
        }
        let mut count = end - start;
        if start == u64::from(self.first()) {
            count -= 1;
        }
        if end == self.end() && count > 0 {
            count -= 1;
        }
        count
    }
}

impl Default for Range {
    fn default() -> Self {
        Range::DEFAULT
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.start, self.prefix)
    }
}

impl FromStr for Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || RangeError::Syntax { input: s.to_string() };
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let start: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        // u8::from_str accepts a leading '+', which CIDR notation doesn't.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        Range::new(start, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_displays_default() {
        let r: Range = "10.32.0.0/12".parse().unwrap();
        assert_eq!(r, Range::DEFAULT);
        assert_eq!(r.to_string(), "10.32.0.0/12");
        assert_eq!(r.size(), 1 << 20);
        assert!(r.contains(Ipv4Addr::new(10, 47, 255, 255)));
        assert!(!r.contains(Ipv4Addr::new(10, 48, 0, 0)));
        assert!(!r.contains(Ipv4Addr::new(10, 31, 255, 255)));
    }

    #[test]
    fn rejects_bad_input() {
        for s in ["", "10.32.0.0", "10.32.0.0/", "10.32.0.0/+12", "10.32.0.0/x", "10.32.0/12", "10.32.0.0/12/3"] {
            assert!(matches!(s.parse::<Range>(), Err(RangeError::Syntax { .. })), "{s}");
        }
        assert!(matches!("10.0.0.0/0".parse::<Range>(), Err(RangeError::Prefix { prefix: 0, .. })));
        assert!(matches!("10.0.0.0/31".parse::<Range>(), Err(RangeError::Prefix { prefix: 31, .. })));
        assert!(matches!("10.0.0.0/300".parse::<Range>(), Err(RangeError::Syntax { .. })));
        assert_eq!(
            "10.32.0.1/12".parse::<Range>(),
            Err(RangeError::HostBits {
                start: Ipv4Addr::new(10, 32, 0, 1),
                prefix: 12,
                network: Ipv4Addr::new(10, 32, 0, 0)
            })
        );
    }

    #[test]
    fn usable_excludes_network_and_broadcast() {
        let r: Range = "10.0.0.0/30".parse().unwrap();
        let first = r.first();
        assert!(!r.is_usable(first));
        assert!(r.is_usable(first + 1));
        assert!(r.is_usable(first + 2));
        assert!(!r.is_usable(first + 3));
        assert_eq!(r.usable_in(first, r.end()), 2);
        assert_eq!(r.usable_in(first, u64::from(first) + 1), 0);
        assert_eq!(r.usable_in(first + 1, u64::from(first) + 3), 2);
        assert_eq!(r.usable_in(first + 3, r.end()), 0);
        assert_eq!(r.usable_in(first + 2, u64::from(first) + 2), 0);
    }

    #[test]
    fn top_of_address_space_has_representable_end() {
        let r: Range = "240.0.0.0/4".parse().unwrap();
        assert_eq!(r.end(), 1 << 32);
        assert!(r.contains(Ipv4Addr::new(255, 255, 255, 255)));
        assert!(!r.is_usable(u32::MAX));
        assert_eq!(r.usable_in(r.first(), r.end()), r.size() - 2);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,24}") {
            let _ = s.parse::<Range>();
        }

        #[test]
        fn display_parse_roundtrip(addr in any::<u32>(), prefix in 1u8..=30) {
            let start = Ipv4Addr::from(addr & (u32::MAX << (32 - prefix)));
            let r = Range::new(start, prefix).unwrap();
            prop_assert_eq!(r.to_string().parse::<Range>(), Ok(r));
        }

        #[test]
        fn usable_count_matches_enumeration(prefix in 26u8..=30, a in 0u64..64, b in 0u64..64) {
            let r = Range::new(Ipv4Addr::new(10, 0, 0, 0), prefix).unwrap();
            let start = r.first() + (a.min(b) % r.size()) as u32;
            let end = u64::from(r.first()) + a.max(b).min(r.size());
            let counted = (u64::from(start)..end).filter(|&x| r.is_usable(x as u32)).count() as u64;
            prop_assert_eq!(r.usable_in(start, end), counted);
        }
    }
}
