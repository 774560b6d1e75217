//! Routes in the main table (`ip route`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::RouteMessageBuilder;

use super::error::errno_of;
use super::{Netlink, NetlinkError};

/// A unicast route: `destination/prefix [via gateway] [dev device]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// Output device, by ifindex.
    pub device: Option<u32>,
}

/// Which IP version a dump is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: IpAddr) -> IpFamily {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

impl RouteSpec {
    /// Reads a dumped route; `None` for routes outside the main table or
    /// other than plain unicast (local, broadcast, blackhole, ...).
    fn parse(message: &RouteMessage) -> Option<RouteSpec> {
        if message.header.kind != RouteType::Unicast {
            return None;
        }
        // Table ids above 255 only fit the attribute; the header then says 252.
        let mut table = u32::from(message.header.table);
        let mut destination = None;
        let mut gateway = None;
        let mut device = None;
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Table(id) => table = *id,
                RouteAttribute::Destination(address) => destination = ip_of(address),
                RouteAttribute::Gateway(address) => gateway = ip_of(address),
                RouteAttribute::Oif(index) => device = Some(*index),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        // A default route carries no destination attribute.
        let destination = destination.unwrap_or(match message.header.address_family {
            rtnetlink::packet_route::AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        });
        Some(RouteSpec { destination, prefix: message.header.destination_prefix_length, gateway, device })
    }

    fn message(&self) -> Result<RouteMessage, NetlinkError> {
        // rtnetlink does not export its builder error type, hence `Display`.
        let invalid = |err: &dyn std::fmt::Display| NetlinkError::Invalid {
            op: format!("build route {self}"),
            problem: err.to_string(),
        };
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.destination, self.prefix)
            .map_err(|err| invalid(&err))?;
        builder = match self.gateway {
            Some(gateway) => builder.gateway(gateway).map_err(|err| invalid(&err))?,
            // What `ip route add PREFIX dev DEV` does: on-link, no gateway.
            None => builder.scope(RouteScope::Link),
        };
        if let Some(device) = self.device {
            builder = builder.output_interface(device);
        }
        Ok(builder.build())
    }
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.destination, self.prefix)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        if let Some(device) = self.device {
            write!(f, " dev ifindex {device}")?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Adds the route, or replaces one to the same prefix (`ip route
    /// replace`), so re-running setup is harmless.
    pub async fn replace_route(&self, route: &RouteSpec) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route.message()?)
            .replace()
            .execute()
            .await
            .map_err(|err| NetlinkError::request(format!("replace route {route}"), err))
    }

    /// The unicast routes of the main table (`ip route show`).
    pub async fn routes(&self, family: IpFamily) -> Result<Vec<RouteSpec>, NetlinkError> {
        let query = match family {
            IpFamily::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpFamily::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let messages = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|err| NetlinkError::request(format!("list {family:?} routes"), err))?;
        Ok(messages.iter().filter_map(RouteSpec::parse).collect())
    }

    /// Deletes the route; `Ok(false)` if there was none.
    pub async fn del_route(&self, route: &RouteSpec) -> Result<bool, NetlinkError> {
        match self.handle.route().del(route.message()?).execute().await {
            Ok(()) => Ok(true),
            Err(err) if errno_of(&err) == Some(libc::ESRCH) => Ok(false),
            Err(err) => Err(NetlinkError::request(format!("delete route {route}"), err)),
        }
    }
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dumped_routes_roundtrip_through_messages() {
        let default = RouteSpec {
            destination: "0.0.0.0".parse().unwrap(),
            prefix: 0,
            gateway: Some("10.32.0.1".parse().unwrap()),
            device: Some(2),
        };
        // What we send omits nothing the parser needs: a default route's
        // message has a zero-length destination which the kernel leaves out.
        let mut message = default.message().unwrap();
        message.attributes.retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        assert_eq!(RouteSpec::parse(&message), Some(default));

        let connected =
            RouteSpec { destination: "10.32.0.0".parse().unwrap(), prefix: 12, gateway: None, device: Some(2) };
        assert_eq!(RouteSpec::parse(&connected.message().unwrap()), Some(connected));
    }

    #[test]
    fn dump_skips_other_tables_and_kinds() {
        let route = RouteSpec { destination: "10.0.0.0".parse().unwrap(), prefix: 8, gateway: None, device: None };
        let mut local = route.message().unwrap();
        local.header.kind = RouteType::Local;
        assert_eq!(RouteSpec::parse(&local), None);
        let mut other_table = route.message().unwrap();
        other_table.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(RouteSpec::parse(&other_table), None);
    }

    #[test]
    fn mismatched_route_is_refused_before_sending() {
        let route = RouteSpec { destination: "10.0.0.0".parse().unwrap(), prefix: 33, gateway: None, device: None };
        assert!(matches!(route.message(), Err(NetlinkError::Invalid { .. })));
        let route = RouteSpec {
            destination: "fd00::".parse().unwrap(),
            prefix: 64,
            gateway: Some("10.0.0.1".parse().unwrap()),
            device: None,
        };
        assert!(matches!(route.message(), Err(NetlinkError::Invalid { .. })));
    }

    #[test]
    fn device_route_is_link_scoped() {
        let route = RouteSpec { destination: "10.32.0.0".parse().unwrap(), prefix: 12, gateway: None, device: Some(4) };
        assert_eq!(route.message().unwrap().header.scope, RouteScope::Link);
        assert_eq!(route.to_string(), "10.32.0.0/12 dev ifindex 4");
    }
}
