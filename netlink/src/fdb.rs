//! A device's own forwarding database (`bridge fdb ... self`): on a VXLAN
//! device, which peer IP a destination MAC is tunnelled to. (The bridge's
//! table, `bridge fdb ... master`, is in `bridge_fdb`.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::error::errno_of;
use super::{Netlink, NetlinkError};

/// One FDB entry: frames for `mac` go to the tunnel endpoint `dst`. The
/// all-zero MAC is the default entry, used for broadcast and unknown
/// unicast; it may have several `dst`s (see [`Netlink::fdb_append`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Option<IpAddr>,
}

impl FdbEntry {
    fn message(&self, index: u32) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        // Permanent: entries we install must not age out; we remove them.
        message.header.state = NeighbourState::Permanent;
        // NTF_SELF: the device's own table, not the bridge it is a port of.
        message.header.flags = NeighbourFlags::Own;
        message.attributes.push(NeighbourAttribute::LinkLayerAddress(self.mac.to_vec()));
        if let Some(dst) = self.dst {
            message.attributes.push(NeighbourAttribute::Destination(dst.into()));
        }
        message
    }

    /// Parses a dumped entry; `None` for entries without a 6-byte MAC.
    fn parse(message: &NeighbourMessage) -> Option<Self> {
        let mut mac = None;
        let mut dst = None;
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                NeighbourAttribute::Destination(address) => dst = ip_of(address),
                _ => {}
            }
        }
        Some(FdbEntry { mac: mac?, dst })
    }
}

impl std::fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", Mac(self.mac))?;
        if let Some(dst) = self.dst {
            write!(f, " dst {dst}")?;
        }
        Ok(())
    }
}

/// Displays a MAC as `bridge fdb` prints it: `aa:bb:cc:dd:ee:ff`.
pub(super) struct Mac(pub(super) [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// In an AF_BRIDGE dump the kernel's `NDA_DST` arrives as raw bytes, its
/// family told only by its length.
fn ip_of(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(bytes) => {
            if let Ok(v4) = <[u8; 4]>::try_from(bytes.as_slice()) {
                Some(IpAddr::V4(Ipv4Addr::from(v4)))
            } else {
                <[u8; 16]>::try_from(bytes.as_slice()).ok().map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
            }
        }
        _ => None,
    }
}

impl Netlink {
    /// Installs `entry` on the device, replacing any entry for that MAC
    /// (`bridge fdb replace MAC dev DEV dst IP self permanent`).
    pub async fn fdb_add(&self, index: u32, entry: &FdbEntry) -> Result<(), NetlinkError> {
        self.acked(
            RouteNetlinkMessage::NewNeighbour(entry.message(index)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(|err| NetlinkError::request(format!("add fdb entry {entry} on ifindex {index}"), err))
    }

    /// Adds `entry.dst` to the destinations of `entry.mac`, keeping the
    /// others (`bridge fdb append`): how the all-zero MAC entry floods to
    /// every peer. Already present is success.
    pub async fn fdb_append(&self, index: u32, entry: &FdbEntry) -> Result<(), NetlinkError> {
        match self
            .acked(
                RouteNetlinkMessage::NewNeighbour(entry.message(index)),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
            )
            .await
        {
            Err(err) if errno_of(&err) != Some(libc::EEXIST) => {
                Err(NetlinkError::request(format!("append fdb entry {entry} on ifindex {index}"), err))
            }
            _ => Ok(()),
        }
    }

    /// Removes `entry` (with `dst: None`, every destination of the MAC);
    /// `Ok(false)` if it was not there.
    pub async fn fdb_del(&self, index: u32, entry: &FdbEntry) -> Result<bool, NetlinkError> {
        match self.acked(RouteNetlinkMessage::DelNeighbour(entry.message(index)), NLM_F_REQUEST | NLM_F_ACK).await {
            Ok(()) => Ok(true),
            Err(err) if errno_of(&err) == Some(libc::ENOENT) => Ok(false),
            Err(err) => Err(NetlinkError::request(format!("delete fdb entry {entry} on ifindex {index}"), err)),
        }
    }

    /// The device's own (`self`) FDB entries, one per (MAC, destination).
    pub async fn fdb_list(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let messages = self.fdb_dump(|| format!("list fdb of ifindex {index}")).await?;
        Ok(messages
            .iter()
            .filter(|message| message.header.ifindex == index && message.header.flags.contains(NeighbourFlags::Own))
            .filter_map(FdbEntry::parse)
            .collect())
    }

    /// Every AF_BRIDGE neighbour entry of the namespace (`bridge fdb show`):
    /// devices' own tables and bridges' tables alike.
    pub(super) async fn fdb_dump(&self, op: impl FnOnce() -> String) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|err| NetlinkError::request(op(), err))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entry_survives_message_roundtrip() {
        for dst in [None, Some("10.0.0.2".parse().unwrap()), Some("fd00::2".parse().unwrap())] {
            let entry = FdbEntry { mac: [2, 0, 0, 0, 0, 0xa], dst };
            let message = entry.message(9);
            assert_eq!(message.header.ifindex, 9);
            assert!(message.header.flags.contains(NeighbourFlags::Own));
            assert_eq!(FdbEntry::parse(&message), Some(entry));
        }
    }

    #[test]
    fn dumped_destination_is_typed_by_length() {
        assert_eq!(ip_of(&NeighbourAddress::Other(vec![10, 0, 0, 1])), Some("10.0.0.1".parse().unwrap()));
        let mut v6 = vec![0; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        assert_eq!(ip_of(&NeighbourAddress::Other(v6)), Some("fd00::1".parse().unwrap()));
        assert_eq!(ip_of(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }

    #[test]
    fn entry_without_mac_is_skipped() {
        let mut message = NeighbourMessage::default();
        message.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![1, 2, 3]));
        assert_eq!(FdbEntry::parse(&message), None);
    }

    #[test]
    fn display_is_bridge_fdb_like() {
        let entry = FdbEntry { mac: [0, 0, 0, 0, 0, 0], dst: Some("10.0.0.3".parse().unwrap()) };
        assert_eq!(entry.to_string(), "00:00:00:00:00:00 dst 10.0.0.3");
    }
}
