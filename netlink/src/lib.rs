//! Kernel network configuration over rtnetlink: links, bridges and their
//! ports, VXLAN devices, addresses, routes, forwarding-database entries
//! and link counters; and nftables over its own netlink family ([`nft`]).
//!
//! A thin async layer over `rtnetlink`, whose API changes between releases:
//! everything version-specific stays in this module, and callers see plain
//! values (`u32` ifindex, `IpAddr`, `[u8; 6]`) and [`NetlinkError`].
//!
//! Synchronous callers (the CNI plugin) use [`block_on_netlink`] and
//! [`NetnsFile::run`]; a socket belongs to the network namespace the calling
//! thread was in when [`Netlink::connect`] ran.

mod address;
mod bridge_fdb;
mod bridge_port;
mod error;
mod fdb;
mod link;
mod netns;
pub mod nft;
mod owner_tag;
mod route;
mod stats;
mod vxlan;

use futures::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use tokio::task::JoinHandle;

pub use bridge_fdb::{BridgeFdbEntry, BridgeFdbKind};
pub use bridge_port::BridgePortOptions;
pub use error::NetlinkError;
pub use fdb::FdbEntry;
pub use link::{Link, LinkDetails, LinkKind};
pub use netns::{block_on_netlink, NetnsFile, NetnsId};
pub use owner_tag::{is_pod_veth_tag, POD_VETH_TAG_PREFIX};
pub use route::{IpFamily, RouteSpec};
pub use stats::LinkStats;
pub use vxlan::{VxlanInfo, VxlanSpec, VxlanVni};

/// An open rtnetlink connection. Dropping it closes the socket.
#[derive(Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    connection: JoinHandle<()>,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the current network namespace and
    /// spawns its I/O task on the ambient tokio runtime.
    pub async fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _unsolicited) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        let connection = tokio::spawn(connection);
        Ok(Netlink { handle, connection })
    }

    /// Sends one request and waits for the kernel's ACK, for the few
    /// requests whose header flags rtnetlink's builders cannot express.
    async fn acked(&self, message: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut replies = self.handle.clone().request(request)?;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(err) = reply.payload {
                return Err(rtnetlink::Error::NetlinkError(err));
            }
        }
        Ok(())
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The task would also end once every handle clone is gone, but
        // aborting makes the socket's lifetime exactly this value's.
        self.connection.abort();
    }
}
