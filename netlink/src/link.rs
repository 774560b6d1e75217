//! Network devices: looking them up, creating bridges and veth pairs, and
//! changing their state.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use super::error::errno_of;
use super::{Netlink, NetlinkError};

/// What sort of device a link is (the kernel's `IFLA_INFO_KIND`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    /// TUN and TAP devices both report "tun".
    Tun,
    Vxlan,
    Veth,
    /// No kind reported: a physical NIC, loopback and the like.
    Device,
    Other(String),
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkKind::Bridge => "bridge",
            LinkKind::Tun => "tun",
            LinkKind::Vxlan => "vxlan",
            LinkKind::Veth => "veth",
            LinkKind::Device => "device",
            LinkKind::Other(kind) => kind,
        })
    }
}

impl From<&InfoKind> for LinkKind {
    fn from(kind: &InfoKind) -> Self {
        match kind {
            InfoKind::Bridge => LinkKind::Bridge,
            InfoKind::Tun => LinkKind::Tun,
            InfoKind::Vxlan => LinkKind::Vxlan,
            InfoKind::Veth => LinkKind::Veth,
            other => LinkKind::Other(other.to_string()),
        }
    }
}

/// A link as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDetails {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    /// `None` for devices without an Ethernet address (e.g. TUN).
    pub mac: Option<[u8; 6]>,
    /// The bridge (or other controller) this link is enslaved to.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`), not necessarily carrier-up.
    pub up: bool,
    /// `ip link set alias`: free text; weft tags links it owns with it.
    pub alias: Option<String>,
}

impl From<LinkMessage> for LinkDetails {
    fn from(message: LinkMessage) -> Self {
        let mut details = LinkDetails {
            index: message.header.index,
            name: String::new(),
            kind: LinkKind::Device,
            mtu: 0,
            mac: None,
            master: None,
            up: message.header.flags.contains(LinkFlags::Up),
            alias: None,
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => details.name = name,
                LinkAttribute::Mtu(mtu) => details.mtu = mtu,
                LinkAttribute::Address(bytes) => details.mac = <[u8; 6]>::try_from(bytes).ok(),
                LinkAttribute::Controller(master) if master != 0 => details.master = Some(master),
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => details.alias = Some(alias),
                LinkAttribute::LinkInfo(infos) => {
                    for info in &infos {
                        if let LinkInfo::Kind(kind) = info {
                            details.kind = LinkKind::from(kind);
                        }
                    }
                }
                _ => {}
            }
        }
        details
    }
}

/// A link that an `ensure_*` call found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// False when the link already existed (e.g. a restarted router finding
    /// its bridge).
    pub created: bool,
}

/// The error for a link that is not there (`ENODEV`, as the kernel says).
pub(super) fn absent(index: u32) -> NetlinkError {
    NetlinkError::Kernel { op: format!("look up ifindex {index}"), errno: libc::ENODEV }
}

impl Netlink {
    /// The link called `name`, or `None` if there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkDetails>, NetlinkError> {
        let request = self.handle.link().get().match_name(name);
        self.get_link(request, || format!("look up link {name:?}")).await
    }

    /// The link with ifindex `index`, or `None` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkDetails>, NetlinkError> {
        let request = self.handle.link().get().match_index(index);
        self.get_link(request, || format!("look up ifindex {index}")).await
    }

    async fn get_link(
        &self,
        request: rtnetlink::LinkGetRequest,
        op: impl FnOnce() -> String,
    ) -> Result<Option<LinkDetails>, NetlinkError> {
        Ok(self.get_message(request, op).await?.map(LinkDetails::from))
    }

    async fn get_message(
        &self,
        request: rtnetlink::LinkGetRequest,
        op: impl FnOnce() -> String,
    ) -> Result<Option<LinkMessage>, NetlinkError> {
        match request.execute().try_collect::<Vec<_>>().await {
            Ok(messages) => Ok(messages.into_iter().next()),
            Err(err) if errno_of(&err) == Some(libc::ENODEV) => Ok(None),
            Err(err) => Err(NetlinkError::request(op(), err)),
        }
    }

    /// The kernel's whole message about an existing link, for readers of
    /// attributes [`LinkDetails`] leaves out; absence is an error.
    pub(super) async fn existing_message(&self, index: u32) -> Result<LinkMessage, NetlinkError> {
        let request = self.handle.link().get().match_index(index);
        self.get_message(request, || format!("look up ifindex {index}")).await?.ok_or_else(|| absent(index))
    }

    /// The existing link's details, treating absence as an error.
    async fn existing_link(&self, index: u32) -> Result<LinkDetails, NetlinkError> {
        self.link_by_index(index).await?.ok_or_else(|| absent(index))
    }

    /// Every link in the namespace (`ip link show`).
    pub async fn links(&self) -> Result<Vec<LinkDetails>, NetlinkError> {
        let messages = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|err| NetlinkError::request("list links".to_owned(), err))?;
        Ok(messages.into_iter().map(LinkDetails::from).collect())
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link_by_name(name).await?.map(|link| link.index))
    }

    /// `None` if no link is called `name`.
    pub async fn link_kind(&self, name: &str) -> Result<Option<LinkKind>, NetlinkError> {
        Ok(self.link_by_name(name).await?.map(|link| link.kind))
    }

    pub async fn link_mtu(&self, index: u32) -> Result<u32, NetlinkError> {
        Ok(self.existing_link(index).await?.mtu)
    }

    pub async fn link_mac(&self, index: u32) -> Result<[u8; 6], NetlinkError> {
        self.existing_link(index).await?.mac.ok_or_else(|| NetlinkError::BadReply {
            op: format!("read MAC of ifindex {index}"),
            problem: "no 6-byte hardware address".to_owned(),
        })
    }

    /// Finds or creates the bridge `name` (created up). An existing link of
    /// that name that is not a bridge is an error rather than something to
    /// delete: it may belong to someone else.
    pub async fn ensure_bridge(&self, name: &str) -> Result<Link, NetlinkError> {
        if let Some(index) = self.existing_of_kind(name, LinkKind::Bridge).await? {
            return Ok(Link { index, created: false });
        }
        match self.handle.link().add(LinkBridge::new(name).build()).execute().await {
            Ok(()) => Ok(Link { index: self.created_index(name).await?, created: true }),
            // Another process created it between our look-up and our add.
            Err(err) if errno_of(&err) == Some(libc::EEXIST) => {
                match self.existing_of_kind(name, LinkKind::Bridge).await? {
                    Some(index) => Ok(Link { index, created: false }),
                    None => Err(NetlinkError::request(format!("create bridge {name:?}"), err)),
                }
            }
            Err(err) => Err(NetlinkError::request(format!("create bridge {name:?}"), err)),
        }
    }

    /// The index of the link `name` if it exists and is of kind `wanted`.
    async fn existing_of_kind(&self, name: &str, wanted: LinkKind) -> Result<Option<u32>, NetlinkError> {
        match self.link_by_name(name).await? {
            None => Ok(None),
            Some(link) if link.kind == wanted => Ok(Some(link.index)),
            Some(link) => Err(NetlinkError::WrongKind { name: name.to_owned(), wanted, found: link.kind }),
        }
    }

    /// The index of a link we just created.
    pub(super) async fn created_index(&self, name: &str) -> Result<u32, NetlinkError> {
        self.link_index(name).await?.ok_or_else(|| NetlinkError::BadReply {
            op: format!("create link {name:?}"),
            problem: "link vanished right after creation".to_owned(),
        })
    }

    /// Creates a veth pair (both ends down); returns the index of `name`.
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<u32, NetlinkError> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|err| NetlinkError::request(format!("create veth {name:?} (peer {peer:?})"), err))?;
        self.created_index(name).await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).up().build(), || format!("set ifindex {index} up")).await
    }

    pub async fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).down().build(), || format!("set ifindex {index} down")).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).mtu(mtu).build(), || format!("set mtu {mtu} on ifindex {index}"))
            .await
    }

    /// Sets the Ethernet address. Pinning a bridge's MAC stops the kernel
    /// from changing it whenever a port joins or leaves.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).address(mac.to_vec()).build(), || {
            format!("set MAC on ifindex {index}")
        })
        .await
    }

    /// Sets the link's alias (at most 255 bytes, or the kernel refuses).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).alias(alias).build(), || format!("set alias on ifindex {index}"))
            .await
    }

    /// Enslaves `index` to the bridge `master_index` (`ip link set master`).
    pub async fn set_master(&self, index: u32, master_index: u32) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).controller(master_index).build(), || {
            format!("attach ifindex {index} to ifindex {master_index}")
        })
        .await
    }

    /// Renames a link; the kernel requires it to be down.
    pub async fn rename(&self, index: u32, new_name: &str) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).name(new_name).build(), || {
            format!("rename ifindex {index} to {new_name:?}")
        })
        .await
    }

    /// Moves a link into the network namespace `netns` (an open
    /// `/proc/PID/ns/net` or `/var/run/netns/NAME`). Its index there may
    /// differ: look it up by name from a connection inside that namespace.
    pub async fn move_to_netns(&self, index: u32, netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd()).build(), || {
            format!("move ifindex {index} to another netns")
        })
        .await
    }

    /// Deletes the link `name`; `Ok(false)` if there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            // Someone else deleted it since our look-up.
            Err(err) if errno_of(&err) == Some(libc::ENODEV) => Ok(false),
            Err(err) => Err(NetlinkError::request(format!("delete link {name:?}"), err)),
        }
    }

    /// `ip link set`: RTM_NEWLINK on an existing link.
    pub(super) async fn change(&self, message: LinkMessage, op: impl FnOnce() -> String) -> Result<(), NetlinkError> {
        self.handle.link().change(message).execute().await.map_err(|err| NetlinkError::request(op(), err))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn details_from_kernel_message() {
        let mut message = LinkMessage::default();
        message.header.index = 7;
        message.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        message.attributes = vec![
            LinkAttribute::IfName("weft".to_owned()),
            LinkAttribute::Mtu(1376),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Controller(3),
            LinkAttribute::IfAlias("weft-net:c/eth0".to_owned()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        assert_eq!(
            LinkDetails::from(message),
            LinkDetails {
                index: 7,
                name: "weft".to_owned(),
                kind: LinkKind::Bridge,
                mtu: 1376,
                mac: Some([2, 0, 0, 0, 0, 1]),
                master: Some(3),
                up: true,
                alias: Some("weft-net:c/eth0".to_owned()),
            }
        );
    }

    #[test]
    fn details_tolerate_odd_attributes() {
        let mut message = LinkMessage::default();
        message.attributes = vec![
            // A TUN (layer 3) device has no Ethernet address.
            LinkAttribute::Address(vec![]),
            LinkAttribute::Controller(0),
            LinkAttribute::IfAlias(String::new()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Other("weird".to_owned()))]),
        ];
        let details = LinkDetails::from(message);
        assert_eq!(details.mac, None);
        assert_eq!(details.master, None);
        assert_eq!(details.alias, None);
        assert!(!details.up);
        assert_eq!(details.kind.to_string(), "weird");
    }

    #[test]
    fn kindless_link_is_a_plain_device() {
        assert_eq!(LinkDetails::from(LinkMessage::default()).kind, LinkKind::Device);
    }
}
