//! Pods whose network a CNI plugin set up (as opposed to [`crate::Pod`],
//! which the harness plugs in by hand), and what tests inspect around them.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::cni::{Attachment, CniOutput, CniRuntime};
use crate::cni_result::CniResult;
use crate::endpoint::Endpoint;
use crate::ipam::Ipv4Net;
use crate::netns::Netns;

/// The interface name runtimes ask for.
pub const POD_IFNAME: &str = "eth0";

/// A namespace ADDed to the network through a [`CniRuntime`]. Dropping it
/// deletes the namespace only; DEL is the test's business (as with a
/// runtime that crashed).
#[derive(Debug)]
pub struct CniPod {
    netns: Netns,
    node: usize,
    attachment: Attachment,
    result: CniResult,
    address: Ipv4Net,
}

impl CniPod {
    /// Creates an empty namespace (container id derived from its unique
    /// name) and ADDs it through `rt`, node `node`'s runtime.
    pub fn add(c: &Cluster, node: usize, rt: &CniRuntime, tag: &str) -> Result<CniPod> {
        let netns = c.create_netns(tag)?;
        let att = Attachment::new(format!("{}-ctr", netns.name()), &netns, POD_IFNAME);
        let result = rt.add_ok(&att).with_context(|| format!("ADD of pod {tag} on node {node}"))?;
        CniPod::from_result(netns, node, att, result)
    }

    /// Wraps an ADD that already succeeded.
    pub fn from_result(netns: Netns, node: usize, attachment: Attachment, result: CniResult) -> Result<CniPod> {
        let address = result.ip_of(&attachment.ifname)?.address;
        Ok(CniPod { netns, node, attachment, result, address })
    }

    pub fn node(&self) -> usize {
        self.node
    }

    pub fn attachment(&self) -> &Attachment {
        &self.attachment
    }

    pub fn container_id(&self) -> &str {
        &self.attachment.container_id
    }

    pub fn result(&self) -> &CniResult {
        &self.result
    }

    /// The address with the prefix length the plugin gave.
    pub fn address(&self) -> Ipv4Net {
        self.address
    }

    /// The addresses actually configured on the pod's interface now.
    pub fn live_addresses(&self) -> Result<Vec<Ipv4Net>> {
        ipv4_addresses(&self.netns, &self.attachment.ifname)
    }

    /// Replaces the result after a new ADD of the same attachment.
    pub fn readd(&mut self, rt: &CniRuntime) -> Result<()> {
        let result = rt.add_ok(&self.attachment)?;
        self.address = result.ip_of(&self.attachment.ifname)?.address;
        self.result = result;
        Ok(())
    }

    pub fn del(&self, rt: &CniRuntime) -> Result<()> {
        rt.del_ok(&self.attachment)
    }

    pub fn check(&self, rt: &CniRuntime) -> Result<CniOutput> {
        rt.check(&self.attachment)
    }

    /// Deletes the namespace (as a runtime does after a container exits)
    /// and returns the attachment, for a later DEL with `CNI_NETNS=""`.
    pub fn destroy_netns(self) -> Attachment {
        self.attachment
    }
}

impl Endpoint for CniPod {
    fn netns(&self) -> &Netns {
        &self.netns
    }
    fn ip(&self) -> Ipv4Addr {
        self.address.addr
    }
}

/// IPv4 addresses (with prefix) on `dev` inside `ns`; empty if `dev` is missing.
pub fn ipv4_addresses(ns: &Netns, dev: &str) -> Result<Vec<Ipv4Net>> {
    let links = ns.ip_json(&["-4", "addr", "show"])?;
    let mut out = Vec::new();
    for link in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        if link.get("ifname").and_then(Value::as_str) != Some(dev) {
            continue;
        }
        for a in link.get("addr_info").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let (Some(local), Some(len)) =
                (a.get("local").and_then(Value::as_str), a.get("prefixlen").and_then(Value::as_u64))
            else {
                continue;
            };
            out.push(Ipv4Net::new(local.parse()?, u8::try_from(len)?)?);
        }
    }
    Ok(out)
}

/// Names of the veth devices in `ns`: on a node, one per attached pod plus
/// its own underlay `eth0`, so compare against a baseline.
pub fn veth_links(ns: &Netns) -> Result<Vec<String>> {
    let links = ns.ip_json(&["link", "show", "type", "veth"])?;
    Ok(links
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str).map(str::to_owned))
        .collect())
}

/// The default route's gateway inside `ns`, if there is a default route.
pub fn default_gateway(ns: &Netns) -> Result<Option<Ipv4Addr>> {
    let routes = ns.ip_json(&["-4", "route", "show", "default"])?;
    let gw = routes.as_array().and_then(|r| r.first()).and_then(|r| r.get("gateway")).and_then(Value::as_str);
    gw.map(|g| g.parse().with_context(|| format!("default gateway {g:?}"))).transpose()
}
