//! Names and alias tags of the network devices the router makes on a node,
//! shared by the router that creates them and `weft reset` that removes them.

/// Alias prefix of every device the router creates and may have to find
/// again by tag (a renamed bridge leaves them under other names).
pub const ALIAS_PREFIX: &str = "weft:";

/// Alias of the fast path's VXLAN device.
pub const VXLAN_ALIAS: &str = "weft:vxlan";

/// Whether `alias` marks a device the router made.
pub fn is_router_alias(alias: &str) -> bool {
    alias.starts_with(ALIAS_PREFIX)
}

/// The fast path's VXLAN device of `bridge`: `weft` -> `weft-vxlan`.
pub fn vxlan_name(bridge: &str) -> String {
    format!("{}-vxlan", prefix(bridge, 9))
}

/// The router's TAP port on `bridge`: `weft` -> `weft-tap`.
pub fn tap_name(bridge: &str) -> String {
    format!("{}-tap", prefix(bridge, 11))
}

/// The longest start of `name` of at most `max_bytes` bytes that ends on a
/// character boundary, so that the derived name fits the kernel's 15 bytes
/// whatever the bridge is called.
fn prefix(name: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(name.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(vxlan_name("weft"), "weft-vxlan");
        assert_eq!(tap_name("weft"), "weft-tap");
    }

    #[test]
    fn long_bridge_names_give_15_byte_names() {
        let bridge = "abcdefghijklmno";
        assert_eq!(vxlan_name(bridge), "abcdefghi-vxlan");
        assert_eq!(tap_name(bridge), "abcdefghijk-tap");
    }

    #[test]
    fn names_cut_on_character_boundaries() {
        // "é" is two bytes: the 9-byte cut falls inside the fifth one.
        let bridge = "éééééé";
        assert_eq!(vxlan_name(bridge), "éééé-vxlan");
        assert!(vxlan_name(bridge).len() <= 15 && tap_name(bridge).len() <= 15);
    }

    #[test]
    fn router_aliases_are_told_from_weft_net_tags() {
        assert!(is_router_alias(VXLAN_ALIAS));
        assert!(!is_router_alias("weft-net:abc/eth0"));
        assert!(!weft_netlink::is_pod_veth_tag(VXLAN_ALIAS));
    }
}
