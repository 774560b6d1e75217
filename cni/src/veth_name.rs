//! Names of the host end of a pod's veth pair, and of its pod end before
//! it is moved and renamed, and the owner tag the host end carries.
//!
//! Derived from the attachment alone, so DEL finds the host end without a
//! `prevResult` and without the pod's namespace (which may be gone). The
//! name holds only 36 bits of hash; the tag (the link's alias) holds the
//! whole attachment, so a colliding name never makes us delete another
//! pod's link.

use weft_netlink::POD_VETH_TAG_PREFIX;

use crate::env::Attachment;

/// Linux allows 15 bytes: 6 of prefix and 9 hex digits (36 bits of hash).
const HOST_PREFIX: &str = "vethwe";
const POD_PREFIX: &str = "vethwp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethNames {
    pub host: String,
    /// The pod end's name while it is still in the host namespace.
    pub pod_temporary: String,
    /// The host end's alias: which attachment it belongs to.
    pub owner: String,
}

/// The kernel's alias limit (IFALIASZ less the terminating NUL).
const MAX_ALIAS: usize = 255;

impl VethNames {
    pub fn for_attachment(attachment: &Attachment) -> VethNames {
        let hash = fnv1a(&[attachment.container_id.as_bytes(), b"\0", attachment.ifname.as_bytes()]) >> 28;
        let mut owner = format!("{POD_VETH_TAG_PREFIX}{}/{}", attachment.container_id, attachment.ifname);
        // Container ids are ASCII (validated), so any byte is a char boundary;
        // an id this long is unheard of, and the hash still tells them apart.
        owner.truncate(MAX_ALIAS);
        VethNames { host: format!("{HOST_PREFIX}{hash:09x}"), pod_temporary: format!("{POD_PREFIX}{hash:09x}"), owner }
    }
}

/// FNV-1a, 64-bit: fixed forever, unlike std's hasher, because a plugin
/// upgraded between a pod's ADD and DEL must compute the same name.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    parts.iter().flat_map(|part| part.iter()).fold(OFFSET, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attachment(id: &str, ifname: &str) -> Attachment {
        Attachment { container_id: id.to_owned(), ifname: ifname.to_owned() }
    }

    #[test]
    fn names_are_stable_and_distinct() {
        // Pinned: changing the scheme would orphan veths of running pods.
        let names = VethNames::for_attachment(&attachment("abc", "eth0"));
        assert_eq!(names.host, format!("vethwe{:09x}", fnv1a(&[b"abc", b"\0", b"eth0"]) >> 28));
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(names.pod_temporary[6..], names.host[6..]);
        assert_eq!(names.owner, "weft-net:abc/eth0");
        assert_ne!(names, VethNames::for_attachment(&attachment("abc", "eth1")));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(names, VethNames::for_attachment(&attachment("ab", "ceth0")));
    }

    proptest! {
        #[test]
        fn always_valid_interface_names(id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,300}", ifname in "[a-z0-9]{1,15}") {
            let names = VethNames::for_attachment(&attachment(&id, &ifname));
            prop_assert_eq!(names.host.len(), 15);
            prop_assert_eq!(names.pod_temporary.len(), 15);
            prop_assert!(names.owner.len() <= MAX_ALIAS);
        }
    }
}
