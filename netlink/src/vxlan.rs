//! VXLAN devices: creating one, and reading back the settings that decide
//! whether an existing one can be reused.

use std::net::IpAddr;

use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf};
use rtnetlink::{LinkMessageBuilder, LinkVxlan};

use super::{Netlink, NetlinkError};

/// How a VXLAN device picks the VNI of what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VxlanVni {
    /// One VNI for all traffic; FDB entries then steer frames to peers.
    Fixed(u32),
    /// `external` (collect-metadata) mode: receives any VNI, but only sends
    /// frames that carry tunnel metadata (tc/eBPF/OVS set it), so bridged
    /// frames steered only by FDB entries are dropped.
    External,
}

/// Parameters of a VXLAN device, as in `ip link add NAME type vxlan ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: VxlanVni,
    pub dstport: u16,
    /// Kernel MAC learning from received packets; weft installs FDB entries
    /// itself, so this is normally off (`nolearning`).
    pub learning: bool,
    /// `df set`: the outer IP header says Don't Fragment, so a frame too big
    /// for the underlay path is dropped instead of silently fragmented,
    /// which is what lets an MTU-sized probe prove the path. Off leaves the
    /// kernel default (`df unset`).
    pub df_set: bool,
    pub local: Option<IpAddr>,
    /// The underlay device to send through, by ifindex.
    pub underlay: Option<u32>,
}

impl VxlanSpec<'_> {
    fn message(&self) -> LinkMessage {
        let mut builder = match self.vni {
            VxlanVni::Fixed(vni) => LinkVxlan::new(self.name, vni),
            VxlanVni::External => LinkMessageBuilder::<LinkVxlan>::new(self.name).collect_metadata(true),
        }
        .port(self.dstport)
        .learning(self.learning);
        if self.df_set {
            // rtnetlink 0.24's builder has no `df`; the attribute itself is there.
            builder = builder.append_info_data(InfoVxlan::Df(VxlanDf::Set));
        }
        builder = match self.local {
            Some(IpAddr::V4(local)) => builder.local(local),
            Some(IpAddr::V6(local)) => builder.local6(local),
            None => builder,
        };
        if let Some(underlay) = self.underlay {
            builder = builder.dev(underlay);
        }
        builder.build()
    }
}

/// The settings of an existing VXLAN device that weft cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    /// `None` in `external` (collect-metadata) mode, where the device has no
    /// VNI of its own.
    pub vni: Option<u32>,
    pub dstport: u16,
    pub learning: bool,
    /// `df set` exactly; `unset` and `inherit` are false.
    pub df_set: bool,
}

impl VxlanInfo {
    /// `None` unless the message describes a VXLAN device.
    fn parse(message: &LinkMessage) -> Option<VxlanInfo> {
        let data = message.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
                _ => None,
            }),
            _ => None,
        })?;
        // The kernel's defaults for attributes a dump might leave out.
        let mut info = VxlanInfo { vni: None, dstport: 0, learning: true, df_set: false };
        let mut external = false;
        for attribute in data {
            match attribute {
                InfoVxlan::Id(vni) => info.vni = Some(*vni),
                InfoVxlan::Port(port) => info.dstport = *port,
                InfoVxlan::Learning(learning) => info.learning = *learning,
                InfoVxlan::Df(df) => info.df_set = *df == VxlanDf::Set,
                InfoVxlan::CollectMetadata(on) => external = *on,
                _ => {}
            }
        }
        if external {
            info.vni = None;
        }
        Some(info)
    }
}

impl Netlink {
    /// Creates a VXLAN device (down); returns its index. An existing link of
    /// that name is an error (EEXIST): its settings might differ.
    pub async fn create_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<u32, NetlinkError> {
        self.handle
            .link()
            .add(spec.message())
            .execute()
            .await
            .map_err(|err| NetlinkError::request(format!("create vxlan {:?}", spec.name), err))?;
        self.created_index(spec.name).await
    }

    /// The VXLAN settings of link `index`; `None` if it is not a VXLAN
    /// device. A missing link is an error (`ENODEV`).
    pub async fn vxlan_info(&self, index: u32) -> Result<Option<VxlanInfo>, NetlinkError> {
        Ok(VxlanInfo::parse(&self.existing_message(index).await?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::InfoKind;

    fn spec(vni: VxlanVni, df_set: bool) -> VxlanSpec<'static> {
        VxlanSpec { name: "weft-vxlan", vni, dstport: 6784, learning: false, df_set, local: None, underlay: None }
    }

    fn vxlan_data(message: &LinkMessage) -> Vec<InfoVxlan> {
        message
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Vxlan(data)) => Some(data.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn df_is_sent_only_when_asked() {
        let with = vxlan_data(&spec(VxlanVni::Fixed(0x776566), true).message());
        assert!(with.contains(&InfoVxlan::Df(VxlanDf::Set)));
        let without = vxlan_data(&spec(VxlanVni::Fixed(0x776566), false).message());
        assert!(!without.iter().any(|a| matches!(a, InfoVxlan::Df(_))));
    }

    #[test]
    fn info_roundtrips_through_the_request() {
        let sent = spec(VxlanVni::Fixed(0x776566), true);
        assert_eq!(
            VxlanInfo::parse(&sent.message()),
            Some(VxlanInfo { vni: Some(0x776566), dstport: 6784, learning: false, df_set: true })
        );
        let external = spec(VxlanVni::External, false);
        assert_eq!(
            VxlanInfo::parse(&external.message()),
            Some(VxlanInfo { vni: None, dstport: 6784, learning: false, df_set: false })
        );
    }

    #[test]
    fn dumped_external_device_has_no_vni() {
        // The kernel reports VNI 0 next to collect_metadata.
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(0),
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Df(VxlanDf::Inherit),
            ])),
        ]));
        assert_eq!(
            VxlanInfo::parse(&message),
            Some(VxlanInfo { vni: None, dstport: 0, learning: true, df_set: false })
        );
    }

    #[test]
    fn other_kinds_are_not_vxlan() {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        assert_eq!(VxlanInfo::parse(&message), None);
        assert_eq!(VxlanInfo::parse(&LinkMessage::default()), None);
    }
}
