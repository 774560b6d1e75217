//! The CNI specification versions this plugin speaks, and what differs
//! between them as far as a bridge-style plugin is concerned.

use std::fmt;

/// A supported CNI spec version. Ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const SUPPORTED: [CniVersion; 5] =
        [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];

    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// `None` for versions we do not speak (0.1.0, 0.2.0, future ones).
    pub fn parse(text: &str) -> Option<CniVersion> {
        CniVersion::SUPPORTED.into_iter().find(|v| v.as_str() == text)
    }

    /// Results before 1.0.0 name each IP's family in a `version` field.
    pub fn ips_carry_family(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// CHECK arrived in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS, GC and the interface `mtu` result field arrived in 1.1.0.
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    pub fn interfaces_carry_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// "0.3.0, 0.3.1, ..." for error messages.
    pub fn supported_list() -> String {
        CniVersion::SUPPORTED.map(CniVersion::as_str).join(", ")
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roundtrips_and_refuses_others() {
        for version in CniVersion::SUPPORTED {
            assert_eq!(CniVersion::parse(version.as_str()), Some(version));
        }
        for other in ["", "0.1.0", "0.2.0", "1.2.0", "1.0", "v1.0.0", "1.0.0 "] {
            assert_eq!(CniVersion::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn features_by_version() {
        assert!(CniVersion::V0_3_1.ips_carry_family());
        assert!(CniVersion::V0_4_0.ips_carry_family());
        assert!(!CniVersion::V1_0_0.ips_carry_family());
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(!CniVersion::V1_0_0.has_status_and_gc());
        assert!(CniVersion::V1_1_0.has_status_and_gc());
        assert_eq!(CniVersion::supported_list(), "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0");
    }
}
