//! Routes in the main table (`ip route`).

use std::net::IpAddr;

use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
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

impl RouteSpec {
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

    /// Deletes the route; `Ok(false)` if there was none.
    pub async fn del_route(&self, route: &RouteSpec) -> Result<bool, NetlinkError> {
        match self.handle.route().del(route.message()?).execute().await {
            Ok(()) => Ok(true),
            Err(err) if errno_of(&err) == Some(libc::ESRCH) => Ok(false),
            Err(err) => Err(NetlinkError::request(format!("delete route {route}"), err)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
