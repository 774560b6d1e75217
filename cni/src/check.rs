//! CHECK: the attachment the previous ADD reported is still in place:
//! IPAM holds its address, the pod interface has its MAC, addresses and
//! routes, and the host end is up on the bridge.

use weft_netlink::{block_on_netlink, IpFamily, Netlink, RouteSpec};

use crate::config::{NetConf, DEFAULT_BRIDGE};
use crate::env::CniEnv;
use crate::error::PluginError;
use crate::ipam::Ipam;
use crate::result::{format_mac, IpConfig, Route};
use crate::sandbox::open_pod_netns;
use crate::version::CniVersion;
use crate::veth_name::VethNames;

pub fn check(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), PluginError> {
    if !conf.version.has_check() {
        return Err(PluginError::CommandNeedsVersion {
            command: "CHECK",
            needed: CniVersion::V0_4_0,
            have: conf.version,
        });
    }
    let attachment = env.attachment()?;
    let netns_path = env.required_netns()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        PluginError::InvalidConfig("CHECK needs `prevResult`: the result of the ADD being checked".to_owned())
    })?;
    let ifname = attachment.ifname.as_str();
    let (pod_index, pod) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.as_deref() == Some(netns_path))
        .ok_or_else(|| PluginError::CheckFailed(format!("prevResult lists no interface {ifname} in {netns_path}")))?;
    let ips: Vec<&IpConfig> = prev.ips.iter().filter(|ip| ip.interface == Some(pod_index)).collect();
    // Routes through one of our gateways are ours; a later plugin's routes
    // (which the spec lets it add) are its own business.
    let routes: Vec<&Route> = prev
        .routes
        .iter()
        .filter(|route| route.gw.is_some_and(|gw| ips.iter().any(|ip| ip.address.contains(gw))))
        .collect();

    let ipam = Ipam::new(conf, env, stdin)?;
    let router_bridge = ipam.check(&attachment, &ips)?;

    let netns = open_pod_netns(netns_path)?;
    let mac = pod.mac.as_deref();
    netns.run(|nl| async move { check_pod(&nl, ifname, mac, &ips, &routes).await })??;

    let names = VethNames::for_attachment(&attachment);
    let bridge = conf.bridge.as_deref().or(router_bridge.as_deref()).unwrap_or(DEFAULT_BRIDGE);
    block_on_netlink(|nl| async move { check_host(&nl, &names.host, bridge).await })??;
    Ok(())
}

async fn check_pod(
    nl: &Netlink,
    ifname: &str,
    mac: Option<&str>,
    ips: &[&IpConfig],
    routes: &[&Route],
) -> Result<(), PluginError> {
    let link = nl
        .link_by_name(ifname)
        .await?
        .ok_or_else(|| PluginError::CheckFailed(format!("interface {ifname} is gone from the pod")))?;
    if !link.up {
        return Err(PluginError::CheckFailed(format!("interface {ifname} is down")));
    }
    if let (Some(expected), Some(actual)) = (mac, link.mac) {
        if !expected.eq_ignore_ascii_case(&format_mac(actual)) {
            return Err(PluginError::CheckFailed(format!(
                "interface {ifname} has MAC {}, the previous result says {expected}",
                format_mac(actual)
            )));
        }
    }
    let addresses = nl.addresses(link.index).await?;
    for ip in ips {
        if !addresses.contains(&(ip.address.addr, ip.address.prefix)) {
            return Err(PluginError::CheckFailed(format!("interface {ifname} lacks address {}", ip.address)));
        }
    }
    for route in routes {
        let installed = nl.routes(IpFamily::of(route.dst.addr)).await?;
        let present = installed.iter().any(|spec: &RouteSpec| {
            spec.destination == route.dst.addr
                && spec.prefix == route.dst.prefix
                && spec.gateway == route.gw
                && spec.device == Some(link.index)
        });
        if !present {
            let via = route.gw.map(|gw| format!(" via {gw}")).unwrap_or_default();
            return Err(PluginError::CheckFailed(format!(
                "route {}{via} dev {ifname} is missing in the pod",
                route.dst
            )));
        }
    }
    Ok(())
}

async fn check_host(nl: &Netlink, host: &str, bridge: &str) -> Result<(), PluginError> {
    let link = nl
        .link_by_name(host)
        .await?
        .ok_or_else(|| PluginError::CheckFailed(format!("the host end {host} of the pod's veth pair is gone")))?;
    if !link.up {
        return Err(PluginError::CheckFailed(format!("the host end {host} is down")));
    }
    let master = match link.master {
        Some(index) => nl.link_by_index(index).await?.map(|m| m.name),
        None => None,
    };
    if master.as_deref() != Some(bridge) {
        let actual = master.map_or_else(|| "no bridge".to_owned(), |m| format!("{m:?}"));
        return Err(PluginError::CheckFailed(format!(
            "the host end {host} is attached to {actual}, not bridge {bridge:?}"
        )));
    }
    Ok(())
}
