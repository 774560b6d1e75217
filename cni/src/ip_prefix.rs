//! An address with its prefix length, as CNI writes them: "10.32.0.5/12".
//! Unlike a network prefix, the host bits are kept: it is an interface
//! address and the size of the subnet it sits in.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpPrefixError {
    #[error("{0:?} is not ADDRESS/PREFIX-LENGTH")]
    NoSlash(String),
    #[error("{0:?}: bad IP address")]
    BadAddress(String),
    #[error("{0:?}: prefix length must be 0-32 (IPv4) or 0-128 (IPv6)")]
    BadPrefix(String),
}

impl IpPrefix {
    /// The default route's destination for `addr`'s family.
    pub fn default_route_for(addr: IpAddr) -> IpPrefix {
        let unspecified = match addr {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        IpPrefix { addr: unspecified, prefix: 0 }
    }
}

impl IpPrefix {
    /// Whether `addr` lies in this address's subnet.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(own), IpAddr::V4(other)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(own) & mask == u32::from(other) & mask
            }
            (IpAddr::V6(own), IpAddr::V6(other)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(own) & mask == u128::from(other) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpPrefix {
    type Err = IpPrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text.split_once('/').ok_or_else(|| IpPrefixError::NoSlash(text.to_owned()))?;
        let addr: IpAddr = addr.parse().map_err(|_| IpPrefixError::BadAddress(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        // Canonical digits only: `u8::from_str` would also take "+8" and "08".
        let canonical = !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix.len() == 1 || !prefix.starts_with('0'));
        let prefix = match prefix.parse::<u8>() {
            Ok(prefix) if canonical && prefix <= max => prefix,
            _ => return Err(IpPrefixError::BadPrefix(text.to_owned())),
        };
        Ok(IpPrefix { addr, prefix })
    }
}

impl TryFrom<String> for IpPrefix {
    type Error = IpPrefixError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<IpPrefix> for String {
    fn from(prefix: IpPrefix) -> String {
        prefix.to_string()
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_both_families() {
        let v4: IpPrefix = "10.32.0.5/12".parse().unwrap();
        assert_eq!(v4.addr, "10.32.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(v4.prefix, 12);
        let v6: IpPrefix = "fd00::5/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00::5/64");
    }

    #[test]
    fn refuses_malformed() {
        for bad in
            ["10.0.0.1", "10.0.0.1/33", "fd00::1/129", "10.0.0/8", "/8", "10.0.0.1/", "10.0.0.1/+8", "10.0.0.1/08"]
        {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_route_matches_family() {
        assert_eq!(IpPrefix::default_route_for("10.0.0.1".parse().unwrap()).to_string(), "0.0.0.0/0");
        assert_eq!(IpPrefix::default_route_for("fd00::1".parse().unwrap()).to_string(), "::/0");
    }

    #[test]
    fn subnet_membership() {
        let p: IpPrefix = "10.32.0.5/12".parse().unwrap();
        assert!(p.contains("10.32.0.1".parse().unwrap()));
        assert!(p.contains("10.47.255.255".parse().unwrap()));
        assert!(!p.contains("10.48.0.1".parse().unwrap()));
        assert!(!p.contains("fd00::1".parse().unwrap()));
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: IpPrefix = "fd00::5/64".parse().unwrap();
        assert!(v6.contains("fd00::1".parse().unwrap()));
        assert!(!v6.contains("fd01::1".parse().unwrap()));
    }

    proptest! {
        #[test]
        fn contains_itself(addr in any::<IpAddr>(), prefix in 0u8..=128) {
            let prefix = if addr.is_ipv4() { prefix % 33 } else { prefix };
            let value = IpPrefix { addr, prefix };
            prop_assert!(value.contains(addr));
        }

        #[test]
        fn never_panics(text in ".*") {
            let _ = text.parse::<IpPrefix>();
        }

        #[test]
        fn roundtrips(addr in any::<IpAddr>(), prefix in 0u8..=128) {
            let prefix = if addr.is_ipv4() { prefix % 33 } else { prefix };
            let value = IpPrefix { addr, prefix };
            prop_assert_eq!(value.to_string().parse::<IpPrefix>(), Ok(value));
        }
    }
}
