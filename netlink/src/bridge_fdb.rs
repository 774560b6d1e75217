//! A bridge's forwarding database (`bridge fdb ... master`): which port a
//! destination MAC leaves by.

use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::error::errno_of;
use super::fdb::Mac;
use super::{Netlink, NetlinkError};

/// How an entry got into the bridge's table (`bridge fdb show` prints the
/// first two as `permanent` and `static`, and nothing for dynamic ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BridgeFdbKind {
    /// The bridge's or a port's own address: frames to it are delivered
    /// locally (`NUD_PERMANENT`).
    Permanent,
    /// Installed by someone (`NUD_NOARP`); never ages out.
    Static,
    /// Learned from traffic; ages out.
    Dynamic,
}

impl BridgeFdbKind {
    fn of(state: NeighbourState) -> BridgeFdbKind {
        let bits = u16::from(state);
        if bits & u16::from(NeighbourState::Permanent) != 0 {
            BridgeFdbKind::Permanent
        } else if bits & u16::from(NeighbourState::Noarp) != 0 {
            BridgeFdbKind::Static
        } else {
            BridgeFdbKind::Dynamic
        }
    }
}

/// One entry of a bridge's table: frames for `mac` leave by `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BridgeFdbEntry {
    pub mac: [u8; 6],
    /// The port's ifindex; the bridge's own for its own addresses.
    pub port: u32,
    pub kind: BridgeFdbKind,
    /// Learning may not move the entry to another port (`NTF_STICKY`).
    pub sticky: bool,
    /// Only on bridges with VLAN filtering.
    pub vlan: Option<u16>,
}

impl BridgeFdbEntry {
    /// The master entry a request adds or deletes: static, no VLAN.
    fn request(port: u32, mac: [u8; 6], sticky: bool) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = port;
        // NUD_NOARP is `static`; `permanent` would mean "deliver locally",
        // and the kernel refuses sticky permanent entries.
        message.header.state = NeighbourState::Noarp;
        // NTF_MASTER: the table of the bridge the port belongs to.
        message.header.flags = NeighbourFlags::Controller;
        if sticky {
            message.header.flags |= NeighbourFlags::Sticky;
        }
        message.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        message
    }

    /// Parses a dumped entry and the bridge it belongs to (`NDA_MASTER`);
    /// `None` for devices' own (`self`) entries and entries without a
    /// 6-byte MAC. (Dumps do not set `NTF_MASTER` on bridge entries: only
    /// the `NDA_MASTER` attribute tells them apart.)
    fn parse(message: &NeighbourMessage) -> Option<(BridgeFdbEntry, Option<u32>)> {
        if message.header.flags.contains(NeighbourFlags::Own) {
            return None;
        }
        let mut mac = None;
        let mut master = None;
        let mut vlan = None;
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                NeighbourAttribute::Controller(index) => master = Some(*index),
                NeighbourAttribute::Vlan(id) => vlan = Some(*id),
                _ => {}
            }
        }
        let entry = BridgeFdbEntry {
            mac: mac?,
            port: message.header.ifindex,
            kind: BridgeFdbKind::of(message.header.state),
            sticky: message.header.flags.contains(NeighbourFlags::Sticky),
            vlan,
        };
        Some((entry, master))
    }
}

impl std::fmt::Display for BridgeFdbEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", Mac(self.mac))?;
        write!(f, " port ifindex {}", self.port)?;
        if let Some(vlan) = self.vlan {
            write!(f, " vlan {vlan}")?;
        }
        match self.kind {
            BridgeFdbKind::Permanent => f.write_str(" permanent")?,
            BridgeFdbKind::Static => f.write_str(" static")?,
            BridgeFdbKind::Dynamic => {}
        }
        if self.sticky {
            f.write_str(" sticky")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Points `mac` at bridge port `port`, replacing any entry for it
    /// (`bridge fdb replace MAC dev PORT master static [sticky]`). Sticky
    /// keeps the bridge from moving the MAC to the port a frame from it
    /// arrives on.
    pub async fn bridge_fdb_add(&self, port: u32, mac: [u8; 6], sticky: bool) -> Result<(), NetlinkError> {
        let message = BridgeFdbEntry::request(port, mac, sticky);
        self.acked(RouteNetlinkMessage::NewNeighbour(message), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
            .await
            .map_err(|err| {
                NetlinkError::request(format!("add bridge fdb entry {} on port ifindex {port}", Mac(mac)), err)
            })
    }

    /// Removes the bridge's entry for `mac` on `port` (of any kind, learned
    /// ones included); `Ok(false)` if there was none there.
    pub async fn bridge_fdb_del(&self, port: u32, mac: [u8; 6]) -> Result<bool, NetlinkError> {
        let message = BridgeFdbEntry::request(port, mac, false);
        match self.acked(RouteNetlinkMessage::DelNeighbour(message), NLM_F_REQUEST | NLM_F_ACK).await {
            Ok(()) => Ok(true),
            Err(err) if errno_of(&err) == Some(libc::ENOENT) => Ok(false),
            Err(err) => {
                Err(NetlinkError::request(format!("delete bridge fdb entry {} on port ifindex {port}", Mac(mac)), err))
            }
        }
    }

    /// The table of bridge `bridge` (`bridge fdb show br BRIDGE`, less the
    /// ports' own `self` entries): static and learned entries on its ports,
    /// and the permanent entries of the ports' and the bridge's own
    /// addresses (those on the bridge itself have `port == bridge`).
    pub async fn bridge_fdb_list(&self, bridge: u32) -> Result<Vec<BridgeFdbEntry>, NetlinkError> {
        let messages = self.fdb_dump(|| format!("list bridge fdb of ifindex {bridge}")).await?;
        Ok(messages
            .iter()
            .filter_map(BridgeFdbEntry::parse)
            .filter(|(_, master)| *master == Some(bridge))
            .map(|(entry, _)| entry)
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];

    #[test]
    fn request_is_a_static_master_entry() {
        for sticky in [false, true] {
            let message = BridgeFdbEntry::request(4, MAC, sticky);
            assert_eq!(message.header.state, NeighbourState::Noarp);
            assert!(message.header.flags.contains(NeighbourFlags::Controller));
            assert_eq!(message.header.flags.contains(NeighbourFlags::Sticky), sticky);
            let (entry, master) = BridgeFdbEntry::parse(&message).unwrap();
            assert_eq!(entry, BridgeFdbEntry { mac: MAC, port: 4, kind: BridgeFdbKind::Static, sticky, vlan: None });
            assert_eq!(master, None);
        }
    }

    #[test]
    fn dumped_entries_carry_bridge_and_kind() {
        let mut message = BridgeFdbEntry::request(4, MAC, false);
        message.header.state = NeighbourState::Reachable;
        message.attributes.push(NeighbourAttribute::Controller(3));
        message.attributes.push(NeighbourAttribute::Vlan(10));
        let (entry, master) = BridgeFdbEntry::parse(&message).unwrap();
        assert_eq!(entry.kind, BridgeFdbKind::Dynamic);
        assert_eq!(entry.vlan, Some(10));
        assert_eq!(master, Some(3));
        message.header.state = NeighbourState::Permanent;
        assert_eq!(BridgeFdbEntry::parse(&message).unwrap().0.kind, BridgeFdbKind::Permanent);
    }

    #[test]
    fn self_entries_and_short_macs_are_not_bridge_entries() {
        let mut own = BridgeFdbEntry::request(4, MAC, false);
        own.header.flags = NeighbourFlags::Own;
        own.header.state = NeighbourState::Permanent;
        assert_eq!(BridgeFdbEntry::parse(&own), None);
        let mut short = BridgeFdbEntry::request(4, MAC, false);
        short.attributes = vec![NeighbourAttribute::LinkLayerAddress(vec![1, 2, 3])];
        assert_eq!(BridgeFdbEntry::parse(&short), None);
    }

    #[test]
    fn display_is_bridge_fdb_like() {
        let entry = BridgeFdbEntry { mac: MAC, port: 4, kind: BridgeFdbKind::Static, sticky: true, vlan: None };
        assert_eq!(entry.to_string(), "02:00:00:00:00:0a port ifindex 4 static sticky");
    }
}
