//! A CNI plugin's success result (spec 0.3.0 to 1.1.0), parsed into typed
//! values so that tests assert on addresses, not on JSON shapes.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::ipam::Ipv4Net;

/// One entry of `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniInterface {
    pub name: String,
    pub mac: String,
    /// The namespace path for interfaces inside the container, `None` for host-side ones.
    pub sandbox: Option<String>,
}

/// One entry of `ips` (IPv4 only: weft hands out IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniIp {
    pub address: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniRoute {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
}

/// The result of ADD (and what runtimes hand back as `prevResult`).
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<CniInterface>,
    pub ips: Vec<CniIp>,
    pub routes: Vec<CniRoute>,
    /// Kept raw: its shape is free-form enough that tests compare it whole.
    pub dns: Value,
    pub raw: Value,
}

fn opt_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!("{key:?} is not a string: {other}"),
    }
}

fn opt_ipv4(v: &Value, key: &str) -> Result<Option<Ipv4Addr>> {
    opt_str(v, key)?.map(|s| s.parse().with_context(|| format!("{key:?} = {s:?} is not IPv4"))).transpose()
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a [Value]> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => bail!("{key:?} is not an array: {other}"),
    }
}

impl CniResult {
    pub fn parse(v: &Value) -> Result<CniResult> {
        let cni_version = opt_str(v, "cniVersion")?.context("result has no cniVersion")?.to_owned();
        let interfaces = array(v, "interfaces")?
            .iter()
            .map(|i| {
                Ok(CniInterface {
                    name: opt_str(i, "name")?.context("interface without name")?.to_owned(),
                    mac: opt_str(i, "mac")?.unwrap_or_default().to_owned(),
                    sandbox: opt_str(i, "sandbox")?.filter(|s| !s.is_empty()).map(str::to_owned),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ips = array(v, "ips")?
            .iter()
            .map(|ip| {
                let interface = match ip.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(n) => {
                        let n = n.as_u64().with_context(|| format!("ips[].interface is not an index: {n}"))?;
                        let idx = usize::try_from(n)?;
                        if idx >= interfaces.len() {
                            bail!("ips[].interface {idx} but only {} interfaces", interfaces.len());
                        }
                        Some(idx)
                    }
                };
                Ok(CniIp {
                    address: opt_str(ip, "address")?.context("ips[] without address")?.parse()?,
                    gateway: opt_ipv4(ip, "gateway")?,
                    interface,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let routes = array(v, "routes")?
            .iter()
            .map(|r| {
                Ok(CniRoute {
                    dst: opt_str(r, "dst")?.context("routes[] without dst")?.parse()?,
                    gw: opt_ipv4(r, "gw")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CniResult {
            cni_version,
            interfaces,
            ips,
            routes,
            dns: v.get("dns").cloned().unwrap_or(Value::Null),
            raw: v.clone(),
        })
    }

    /// The single IPv4 address given to the container interface `ifname`.
    pub fn ip_of(&self, ifname: &str) -> Result<&CniIp> {
        let mut found = self.ips.iter().filter(|ip| {
            ip.interface.and_then(|i| self.interfaces.get(i)).is_some_and(|i| i.name == ifname && i.sandbox.is_some())
        });
        let first =
            found.next().with_context(|| format!("no address for container interface {ifname}: {}", self.raw))?;
        if found.next().is_some() {
            bail!("several IPv4 addresses for {ifname}: {}", self.raw);
        }
        Ok(first)
    }

    /// The default route (`0.0.0.0/0`), if any.
    pub fn default_route(&self) -> Option<&CniRoute> {
        self.routes.iter().find(|r| r.dst.prefix_len == 0)
    }
}
