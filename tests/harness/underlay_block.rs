//! Partitioning the underlay: nftables rules on the wire namespace's bridge.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::netns::Netns;

/// Which traffic between two underlay addresses a block drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Every IPv4 packet.
    All,
    /// UDP only; with a port, only datagrams to or from that port.
    Udp(Option<u16>),
    /// TCP only; with a port, only segments to or from that port.
    Tcp(Option<u16>),
}

/// Handle of one installed block, for [`crate::Cluster::unblock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId(pub(crate) u32);

fn table(id: BlockId) -> String {
    format!("wtblock{}", id.0)
}

/// Installs drop rules for `traffic` between `a` and `b`, both directions,
/// as one table per block so removing it is a single atomic delete.
pub(crate) fn install(wire: &Netns, id: BlockId, a: Ipv4Addr, b: Ipv4Addr, traffic: Traffic) -> Result<()> {
    let t = table(id);
    let matches: Vec<String> = match traffic {
        Traffic::All => vec![String::new()],
        Traffic::Udp(None) => vec!["meta l4proto udp".into()],
        Traffic::Tcp(None) => vec!["meta l4proto tcp".into()],
        Traffic::Udp(Some(p)) => vec![format!("udp dport {p}"), format!("udp sport {p}")],
        Traffic::Tcp(Some(p)) => vec![format!("tcp dport {p}"), format!("tcp sport {p}")],
    };
    let mut script = format!(
        "add table bridge {t}; add chain bridge {t} c {{ type filter hook forward priority 0; policy accept; }}"
    );
    for (src, dst) in [(a, b), (b, a)] {
        for m in &matches {
            script.push_str(&format!("; add rule bridge {t} c ip saddr {src} ip daddr {dst} {m} drop"));
        }
    }
    // One nft invocation is one transaction: all rules or none.
    wire.run_ok("nft", &[&script]).map(drop)
}

pub(crate) fn remove(wire: &Netns, id: BlockId) -> Result<()> {
    wire.run_ok("nft", &["delete", "table", "bridge", &table(id)]).map(drop)
}
