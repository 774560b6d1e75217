//! ADD: a veth pair from the node's bridge into the pod, addressed by IPAM.
//!
//! Either the whole attachment exists afterwards or none of it: any failure
//! after the address was allocated deletes the veth pair and releases the
//! address before the error is reported.

use std::net::IpAddr;
use std::os::fd::AsFd;

use weft_netlink::{block_on_netlink, LinkKind, Netlink, NetlinkError, NetnsFile, RouteSpec};

use crate::config::{NetConf, DEFAULT_BRIDGE};
use crate::env::{Attachment, CniEnv};
use crate::error::PluginError;
use crate::garp;
use crate::host_end::{remove_host_end, Removal};
use crate::ipam::{Allocation, Ipam};
use crate::result::{format_mac, CniResult, Interface, IpConfig, Route};
use crate::sandbox::open_pod_netns;
use crate::veth_name::VethNames;

/// The host end, as set up.
#[derive(Debug)]
struct HostEnd {
    mac: [u8; 6],
    mtu: u32,
}

pub fn add(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<CniResult, PluginError> {
    let attachment = env.attachment()?;
    let netns_path = env.required_netns()?;
    // Everything that can be refused without side effects comes before the
    // allocation.
    let netns = open_pod_netns(netns_path)?;
    let ipam = Ipam::new(conf, env, stdin)?;
    let allocation = ipam.allocate(&attachment)?;
    let names = VethNames::for_attachment(&attachment);
    let routes = effective_routes(&allocation);

    let plumbed = plumb(conf, (&netns, netns_path), &attachment, &names, &allocation, &routes);
    let (host, pod_mac) = match plumbed {
        Ok(ends) => ends,
        Err(err) => {
            undo(&names, &ipam, &attachment);
            return Err(err);
        }
    };

    let ours = CniResult {
        interfaces: vec![
            Interface { name: names.host, mac: Some(format_mac(host.mac)), mtu: Some(host.mtu), sandbox: None },
            Interface {
                name: attachment.ifname,
                mac: Some(format_mac(pod_mac)),
                mtu: Some(host.mtu),
                sandbox: Some(netns_path.to_owned()),
            },
        ],
        ips: allocation.ips.into_iter().map(|ip| IpConfig { interface: Some(1), ..ip }).collect(),
        routes,
        dns: if conf.dns.is_empty() { allocation.dns } else { conf.dns.clone() },
    };
    // Chained after another plugin: its result first, ours after it.
    let mut result = conf.prev_result.clone().unwrap_or_default();
    result.append(ours);
    Ok(result)
}

/// The routes to install: IPAM's, with a missing `gw` filled in from the
/// gateway of an address of the same family (as the reference plugins'
/// `ipam.ConfigureIface` does).
fn effective_routes(allocation: &Allocation) -> Vec<Route> {
    allocation
        .routes
        .iter()
        .map(|route| Route {
            dst: route.dst,
            gw: route.gw.or_else(|| {
                allocation.ips.iter().filter_map(|ip| ip.gateway).find(|gw| gw.is_ipv4() == route.dst.addr.is_ipv4())
            }),
        })
        .collect()
}

fn plumb(
    conf: &NetConf,
    (netns, netns_path): (&NetnsFile, &str),
    attachment: &Attachment,
    names: &VethNames,
    allocation: &Allocation,
    routes: &[Route],
) -> Result<(HostEnd, [u8; 6]), PluginError> {
    let bridge = conf.bridge.as_deref().or(allocation.bridge.as_deref()).unwrap_or(DEFAULT_BRIDGE);
    let mtu = conf.mtu.or(allocation.mtu);
    let host = block_on_netlink(|nl| async move { host_side(&nl, names, bridge, mtu, conf.hairpin, netns).await })??;
    let pod_mac = netns.run(|nl| async move {
        pod_side(&nl, &attachment.ifname, &names.pod_temporary, &allocation.ips, routes, netns_path).await
    })??;
    Ok((host, pod_mac))
}

/// Creates the pair, puts the host end on the bridge and up, and moves the
/// pod end into `netns`.
async fn host_side(
    nl: &Netlink,
    names: &VethNames,
    bridge: &str,
    mtu: Option<u32>,
    hairpin: bool,
    netns: &NetnsFile,
) -> Result<HostEnd, PluginError> {
    let bridge_link = nl.link_by_name(bridge).await?.ok_or_else(|| {
        PluginError::TryAgainLater(format!(
            "bridge {bridge:?} does not exist on this node; it is created by the weft router (is it running?), \
             or set `bridge` in the network configuration"
        ))
    })?;
    if bridge_link.kind != LinkKind::Bridge {
        return Err(PluginError::InvalidConfig(format!(
            "{bridge:?} is a {} device, not a bridge; fix `bridge` in the network configuration",
            bridge_link.kind
        )));
    }
    let mtu = mtu.unwrap_or(bridge_link.mtu);

    // A link with our name and tag is left over from an earlier ADD of this
    // very attachment that died midway (or was never DELeted).
    match remove_host_end(nl, names).await? {
        Removal::Absent => {}
        Removal::Removed => eprintln!("weft-net: removed {} left by an earlier ADD", names.host),
        Removal::NotOurs { alias } => {
            return Err(PluginError::HostNameTaken { name: names.host.clone(), owner: alias });
        }
    }
    let host_index = nl.create_veth(&names.host, &names.pod_temporary).await?;
    nl.set_alias(host_index, &names.owner).await?;
    let pod_index = link_index(nl, &names.pod_temporary).await?;
    nl.set_mtu(host_index, mtu).await?;
    nl.set_mtu(pod_index, mtu).await?;
    nl.set_master(host_index, bridge_link.index).await?;
    nl.set_bridge_port_hairpin(host_index, hairpin).await?;
    nl.set_up(host_index).await?;
    let mac = nl.link_mac(host_index).await?;
    nl.move_to_netns(pod_index, netns.as_fd()).await?;
    Ok(HostEnd { mac, mtu })
}

/// Inside the pod: names the moved end, addresses it, routes through it,
/// announces it. Returns its MAC.
async fn pod_side(
    nl: &Netlink,
    ifname: &str,
    temporary: &str,
    ips: &[IpConfig],
    routes: &[Route],
    netns: &str,
) -> Result<[u8; 6], PluginError> {
    if nl.link_by_name(ifname).await?.is_some() {
        return Err(PluginError::InterfaceExists { ifname: ifname.to_owned(), netns: netns.to_owned() });
    }
    let index = link_index(nl, temporary).await?;
    nl.rename(index, ifname).await?;
    nl.set_up(index).await?;
    for ip in ips {
        nl.add_address(index, ip.address.addr, ip.address.prefix).await?;
    }
    for route in routes {
        let spec =
            RouteSpec { destination: route.dst.addr, prefix: route.dst.prefix, gateway: route.gw, device: Some(index) };
        nl.replace_route(&spec).await?;
    }
    let mac = nl.link_mac(index).await?;
    for ip in ips {
        if let IpAddr::V4(v4) = ip.address.addr {
            // Best effort: a lost announcement only delays peers until
            // their ARP entries expire.
            if let Err(e) = garp::announce(index, mac, v4) {
                eprintln!("weft-net: gratuitous ARP for {v4} on {ifname}: {e}");
            }
        }
    }
    Ok(mac)
}

async fn link_index(nl: &Netlink, name: &str) -> Result<u32, PluginError> {
    nl.link_index(name).await?.ok_or_else(|| {
        PluginError::Netlink(NetlinkError::BadReply {
            op: format!("look up {name:?}"),
            problem: "the link vanished right after it was made".to_owned(),
        })
    })
}

/// Rolls back a failed ADD. Failures here are only logged: the error the
/// runtime sees is the one that made ADD fail, and its DEL will retry.
fn undo(names: &VethNames, ipam: &Ipam<'_>, attachment: &Attachment) {
    // The pod end goes with the host end, wherever it has got to. A failed
    // `set_alias` leaves a pair we made but did not tag: the pod end still
    // has its temporary name then, which nobody else uses.
    let removed = block_on_netlink(|nl| async move {
        let host = remove_host_end(&nl, names).await?;
        nl.delete_link(&names.pod_temporary).await?;
        Ok::<_, NetlinkError>(host)
    });
    match removed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) | Err(e) => eprintln!("weft-net: rolling back: deleting {}: {e}", names.host),
    }
    if let Err(e) = ipam.release(attachment) {
        eprintln!("weft-net: rolling back: releasing the address: {e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::result::Dns;

    #[test]
    fn missing_gateways_come_from_same_family_addresses() {
        let allocation = Allocation {
            ips: vec![
                IpConfig {
                    interface: None,
                    address: "10.1.0.2/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                },
                IpConfig {
                    interface: None,
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                },
            ],
            routes: vec![
                Route { dst: "0.0.0.0/0".parse().unwrap(), gw: None },
                Route { dst: "::/0".parse().unwrap(), gw: None },
                Route { dst: "192.168.0.0/16".parse().unwrap(), gw: Some("10.1.0.254".parse().unwrap()) },
            ],
            dns: Dns::default(),
            mtu: None,
            bridge: None,
        };
        let routes = effective_routes(&allocation);
        assert_eq!(routes[0].gw, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(routes[1].gw, Some("fd00::1".parse().unwrap()));
        assert_eq!(routes[2].gw, Some("10.1.0.254".parse().unwrap()));
    }
}
