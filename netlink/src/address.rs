//! IP addresses on links (`ip addr`).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

use super::error::errno_of;
use super::{Netlink, NetlinkError};

impl Netlink {
    /// Adds `addr/prefix` to the link; an address already there is success,
    /// so setup can be re-run after a restart.
    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        match self.handle.address().add(index, addr, prefix).execute().await {
            Err(err) if errno_of(&err) != Some(libc::EEXIST) => {
                Err(NetlinkError::request(format!("add address {addr}/{prefix} to ifindex {index}"), err))
            }
            _ => Ok(()),
        }
    }

    /// Removes `addr/prefix` from the link; `Ok(false)` if it was not there.
    pub async fn del_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
        let op = || format!("delete address {addr}/{prefix} from ifindex {index}");
        let found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr)
            .set_prefix_length_filter(prefix)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|err| NetlinkError::request(op(), err))?;
        let Some(message) = found.into_iter().next() else {
            return Ok(false);
        };
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(err) if errno_of(&err) == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(err) => Err(NetlinkError::request(op(), err)),
        }
    }

    /// The addresses on a link, as `(address, prefix length)`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let messages = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|err| NetlinkError::request(format!("list addresses of ifindex {index}"), err))?;
        Ok(messages.iter().filter_map(local_address).collect())
    }
}

/// The link's own address in an address message: `IFA_LOCAL` where present,
/// because on point-to-point links `IFA_ADDRESS` is the far end.
fn local_address(message: &AddressMessage) -> Option<(IpAddr, u8)> {
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(local) => return Some((*local, message.header.prefix_len)),
            AddressAttribute::Address(addr) => address = Some(*addr),
            _ => {}
        }
    }
    address.map(|addr| (addr, message.header.prefix_len))
}
