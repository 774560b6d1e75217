//! The router's IPAM API as seen from a test: typed reads of `/ipam/status`
//! and `/ipam/lookup` (the mutating calls go through the CNI plugin, as in
//! production), and the IPv4 prefix arithmetic the assertions need.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::wait::wait_until;

/// The cluster range every IPAM test starts its routers with.
pub const IPALLOC_RANGE: &str = "10.32.0.0/12";

/// Podman's own default bridge network; a container there means podman
/// ignored weft's configuration.
pub const PODMAN_DEFAULT_RANGE: &str = "10.88.0.0/16";

/// An IPv4 address with a prefix length, e.g. `10.32.0.5/12` or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Ipv4Net> {
        if prefix_len > 32 {
            bail!("prefix length {prefix_len} is longer than 32");
        }
        Ok(Ipv4Net { addr, prefix_len })
    }

    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0)
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether `ip` is a usable host address of this network (neither the
    /// network nor the broadcast address).
    pub fn contains_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }
}

impl FromStr for Ipv4Net {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Ipv4Net> {
        let (addr, len) = s.split_once('/').with_context(|| format!("{s:?} has no /prefix"))?;
        let addr = addr.parse().with_context(|| format!("{s:?}: bad IPv4 address"))?;
        let len = len.parse().with_context(|| format!("{s:?}: bad prefix length"))?;
        Ipv4Net::new(addr, len)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// [`IPALLOC_RANGE`] parsed.
pub fn ipalloc_range() -> Ipv4Net {
    match IPALLOC_RANGE.parse() {
        Ok(net) => net,
        Err(e) => panic!("IPALLOC_RANGE constant: {e:#}"),
    }
}

/// `GET /ipam/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamStatus {
    pub ready: bool,
    pub range: Ipv4Net,
    pub mtu: u32,
    pub bridge: String,
    /// The node bridge's own address; `None` until the router has one.
    pub gateway: Option<Ipv4Addr>,
}

/// One allocation as `GET /ipam/lookup` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub bridge: String,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key).and_then(Value::as_str).with_context(|| format!("no string {key:?} in {v}"))
}

fn u32_field(v: &Value, key: &str) -> Result<u32> {
    let n = v.get(key).and_then(Value::as_u64).with_context(|| format!("no number {key:?} in {v}"))?;
    u32::try_from(n).with_context(|| format!("{key:?} = {n} out of range"))
}

impl IpamStatus {
    pub fn parse(v: &Value) -> Result<IpamStatus> {
        let gateway = match v.get("gateway") {
            None | Some(Value::Null) => None,
            Some(g) => {
                let s = g.as_str().with_context(|| format!("gateway is not a string in {v}"))?;
                if s.is_empty() {
                    None
                } else {
                    Some(s.parse().with_context(|| format!("gateway {s:?}"))?)
                }
            }
        };
        Ok(IpamStatus {
            ready: v.get("ready").and_then(Value::as_bool).with_context(|| format!("no bool \"ready\" in {v}"))?,
            range: str_field(v, "range")?.parse()?,
            mtu: u32_field(v, "mtu")?,
            bridge: str_field(v, "bridge")?.to_owned(),
            gateway,
        })
    }
}

impl Lease {
    pub fn parse(v: &Value) -> Result<Lease> {
        Ok(Lease {
            ip: str_field(v, "ip")?.parse()?,
            gateway: str_field(v, "gateway")?.parse().context("gateway")?,
            mtu: u32_field(v, "mtu")?,
            bridge: str_field(v, "bridge")?.to_owned(),
        })
    }
}

fn json_body(body: &str, what: &str) -> Result<Value> {
    serde_json::from_str(body).with_context(|| format!("{what} answered non-JSON: {body}"))
}

/// `GET /ipam/status` on node `node`.
pub fn ipam_status(c: &Cluster, node: usize) -> Result<IpamStatus> {
    let body = c.get(node, "/ipam/status")?;
    IpamStatus::parse(&json_body(&body, "/ipam/status")?).with_context(|| format!("/ipam/status on node {node}"))
}

/// Waits until node `node` reports IPAM ready with a gateway; returns the status.
pub fn wait_ipam_ready(c: &Cluster, node: usize, timeout: Duration) -> Result<IpamStatus> {
    let mut last = None;
    wait_until(timeout, Duration::from_millis(100), || {
        c.check_alive(node)?;
        let s = ipam_status(c, node)?;
        let done = s.ready && s.gateway.is_some();
        last = Some(s);
        Ok(done)
    })
    .with_context(|| format!("IPAM on node {node} not ready (last /ipam/status: {last:?})"))?;
    last.ok_or_else(|| anyhow!("no status"))
}

/// `GET /ipam/lookup`: `None` when the router has no allocation for it (404).
pub fn ipam_lookup(c: &Cluster, node: usize, container_id: &str, ifname: &str) -> Result<Option<Lease>> {
    let path = format!("/ipam/lookup?container_id={container_id}&ifname={ifname}");
    let (status, body) = c.http(node, "GET", &path, None)?;
    match status {
        200 => Ok(Some(Lease::parse(&json_body(&body, "/ipam/lookup")?)?)),
        404 => Ok(None),
        s => bail!("GET {path} on node {node}: status {s}: {body}"),
    }
}

/// How long a fresh cluster gets to connect and agree on IPAM.
pub const IPAM_CONVERGE: Duration = Duration::from_secs(30);

/// Starts routers on `nodes` with `--ipalloc-range` [`IPALLOC_RANGE`], each
/// told about all the others (so the default `--ipalloc-init consensus=N`
/// is the cluster size), plus `extra` arguments, and waits for a full mesh.
/// IPAM readiness is left to the caller: a runtime does not wait for it
/// either (its first ADD does).
pub fn start_ipam_routers(c: &Cluster, nodes: &[usize], extra: &[&str]) -> Result<()> {
    for &i in nodes {
        let peers: Vec<usize> = nodes.iter().copied().filter(|&p| p != i).collect();
        let mut args = vec!["--ipalloc-range", IPALLOC_RANGE];
        args.extend_from_slice(extra);
        c.start_router(i, &args, &peers)?;
    }
    for &i in nodes {
        c.wait_ready(i)?;
    }
    if nodes.len() > 1 {
        c.wait_mesh(nodes, IPAM_CONVERGE)?;
    }
    Ok(())
}

/// [`wait_ipam_ready`] on each of `nodes`, in order.
pub fn wait_ipam_ready_all(c: &Cluster, nodes: &[usize]) -> Result<Vec<IpamStatus>> {
    nodes.iter().map(|&i| wait_ipam_ready(c, i, IPAM_CONVERGE)).collect()
}
