//! A link's traffic counters (`ip -s link`).

use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

use super::{Netlink, NetlinkError};

/// Counters since the link was created, from the kernel's 64-bit set
/// (`IFLA_STATS64`), so they do not wrap in practice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    /// On a VXLAN device this counts, among others, frames with no FDB entry
    /// (and no default one) to send them to.
    pub tx_dropped: u64,
    pub rx_errors: u64,
    /// On a VXLAN device: frames the underlay could not route, or too big
    /// for a `df set` path.
    pub tx_errors: u64,
}

impl LinkStats {
    fn parse(message: &LinkMessage) -> Option<LinkStats> {
        message.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::Stats64(s) => Some(LinkStats {
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                rx_dropped: s.rx_dropped,
                tx_dropped: s.tx_dropped,
                rx_errors: s.rx_errors,
                tx_errors: s.tx_errors,
            }),
            _ => None,
        })
    }
}

impl Netlink {
    /// The counters of link `index`.
    pub async fn link_stats(&self, index: u32) -> Result<LinkStats, NetlinkError> {
        LinkStats::parse(&self.existing_message(index).await?).ok_or_else(|| NetlinkError::BadReply {
            op: format!("read counters of ifindex {index}"),
            problem: "no IFLA_STATS64 attribute".to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::Stats64;

    #[test]
    fn counters_come_from_stats64() {
        // Non-exhaustive upstream: no struct literal.
        let mut kernel = Stats64::default();
        (kernel.rx_packets, kernel.rx_bytes, kernel.tx_packets, kernel.tx_bytes) = (1, 2, 3, 4);
        kernel.tx_dropped = 5;
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::Stats64(kernel));
        let stats = LinkStats::parse(&message).unwrap();
        assert_eq!((stats.rx_packets, stats.rx_bytes, stats.tx_packets, stats.tx_bytes), (1, 2, 3, 4));
        assert_eq!(stats.tx_dropped, 5);
        assert_eq!(LinkStats::parse(&LinkMessage::default()), None);
    }
}
