//! The alias tags (`ip link set DEV alias TAG`) by which weft's programs
//! mark the links they create, so that cleanup (`weft reset`, CNI DEL)
//! removes those and nothing else.

/// Prefix of the tag weft-net (the CNI plugin) gives the host end of a
/// pod's veth pair; the rest names the attachment, `CONTAINER/IFNAME`.
pub const POD_VETH_TAG_PREFIX: &str = "weft-net:";

/// Whether `alias` is the tag of a pod veth's host end made by weft-net.
pub fn is_pod_veth_tag(alias: &str) -> bool {
    alias.starts_with(POD_VETH_TAG_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_weft_net_tags_match() {
        assert!(is_pod_veth_tag("weft-net:abc/eth0"));
        assert!(!is_pod_veth_tag("weft:vxlan"));
        assert!(!is_pod_veth_tag("weft-netx"));
        assert!(!is_pod_veth_tag(""));
    }
}
