//! A namespace cluster whose routers find each other through a Kubernetes
//! API: the [`KubeApi`] double runs on an underlay host of the cluster's
//! wire, every node is registered as a Node object with its underlay
//! address as InternalIP, and routers start with no peers, a kubeconfig
//! and their node's name, as a DaemonSet pod would.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cluster::{Cluster, ClusterBuilder};
use crate::endpoint::{Endpoint, UnderlayHost};
use crate::ipam::IPALLOC_RANGE;
use crate::kube_api::KubeApi;
use crate::metrics::metric_sum;
use crate::wait::wait_until;

/// The API double's port on its underlay host.
pub const API_PORT: u16 = 6443;
/// weft's namespace for its own objects (the peer map).
pub const WEFT_NAMESPACE: &str = "weft";
pub const PEER_MAP: &str = "weft-peer-map";

/// A cluster plus its API. Field order: the API goes before its host's
/// namespace, the cluster last.
#[derive(Debug)]
pub struct KubeCluster {
    pub api: KubeApi,
    pub api_host: UnderlayHost,
    pub cluster: Cluster,
}

impl std::ops::Deref for KubeCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// The Node name of cluster node `i`.
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

impl KubeCluster {
    /// `nodes` namespaces; the first `registered` get Node objects.
    pub fn new(builder: ClusterBuilder, registered: usize) -> Result<KubeCluster> {
        let cluster = builder.build()?;
        let api_host = cluster.add_underlay_host()?;
        let api = KubeApi::start_in(api_host.netns(), SocketAddrV4::new(api_host.ip(), API_PORT))?;
        let kc = KubeCluster { api, api_host, cluster };
        for i in 0..registered {
            kc.register_node(i)?;
        }
        Ok(kc)
    }

    /// Creates node `i`'s Node object (InternalIP = its underlay address).
    pub fn register_node(&self, i: usize) -> Result<()> {
        self.api.add_node(&node_name(i), Some(self.cluster.node_ip(i)), &[])?;
        Ok(())
    }

    pub fn delete_node(&self, i: usize) -> Result<()> {
        self.api.delete_node(&node_name(i))?;
        Ok(())
    }

    /// The router arguments of a DaemonSet pod on node `i`, plus `extra`.
    pub fn router_args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        let kubeconfig = self.api.kubeconfig_path().display().to_string();
        let mut args: Vec<String> =
            ["--kubeconfig", &kubeconfig, "--node-name", &node_name(i), "--ipalloc-range", IPALLOC_RANGE]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts node `i`'s router: no peers, the API's kubeconfig.
    pub fn start_kube_router(&self, i: usize, extra: &[&str]) -> Result<()> {
        let args = self.router_args(i, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cluster.start_router(i, &args, &[])
    }

    /// Starts routers on `nodes` (all at once: with a node list, none is
    /// ready before a majority of nodes agree on the IP range) and waits
    /// for every one to be ready.
    pub fn start_kube_routers(&self, nodes: &[usize]) -> Result<()> {
        for &i in nodes {
            self.start_kube_router(i, &[])?;
        }
        for &i in nodes {
            self.cluster.wait_ready(i)?;
        }
        Ok(())
    }

    /// `/metrics` value of `name` (summed over labels containing `labels`).
    pub fn metric(&self, i: usize, name: &str, labels: &str) -> Result<f64> {
        Ok(metric_sum(&self.cluster.metrics(i)?, name, labels))
    }

    /// The peer map's data as (key → JSON value), empty if it doesn't exist.
    pub fn peer_map(&self) -> Result<BTreeMap<String, Value>> {
        let Some(cm) = self.api.configmap(WEFT_NAMESPACE, PEER_MAP) else { return Ok(BTreeMap::new()) };
        let mut out = BTreeMap::new();
        for (k, v) in cm.get("data").and_then(Value::as_object).into_iter().flatten() {
            let raw = v.as_str().with_context(|| format!("peer map value {k} is not a string: {v}"))?;
            out.insert(k.clone(), serde_json::from_str(raw).with_context(|| format!("peer map value {k}: {raw}"))?);
        }
        Ok(out)
    }

    /// Node `i`'s peer name, from its `/report`.
    pub fn peer_name(&self, i: usize) -> Result<String> {
        let r = self.cluster.report(i)?;
        Ok(r.router()?.get("Name").and_then(Value::as_str).context("no Router.Name")?.to_owned())
    }
}

/// One IPAM ring entry as a router reports it (`/report` `IPAM.Entries`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RingShare {
    pub peer: String,
    pub size: u64,
    pub reachable: bool,
}

/// Node `i`'s view of who owns how much of the range.
pub fn ring_shares(c: &Cluster, i: usize) -> Result<Vec<RingShare>> {
    let r = c.report(i)?;
    let entries = r.get("IPAM").and_then(|v| v.get("Entries")).and_then(Value::as_array).context("no IPAM.Entries")?;
    let mut out: Vec<RingShare> = entries
        .iter()
        .map(|e| {
            Ok(RingShare {
                peer: e.get("Peer").and_then(Value::as_str).context("Peer")?.to_owned(),
                size: e.get("Size").and_then(Value::as_u64).context("Size")?,
                reachable: e.get("IsKnownPeer").and_then(Value::as_bool).context("IsKnownPeer")?,
            })
        })
        .collect::<Result<_>>()?;
    out.retain(|s| s.size > 0);
    out.sort();
    Ok(out)
}

/// Waits until every router in `nodes` reports the same ring, in which
/// only reachable peers own space, none of them `gone`, and all of the
/// range is owned. Returns that ring.
pub fn wait_ring_agreed(c: &Cluster, nodes: &[usize], gone: &[&str], timeout: Duration) -> Result<Vec<RingShare>> {
    let mut last = Vec::new();
    wait_until(timeout, Duration::from_millis(250), || {
        let views: Vec<Vec<RingShare>> = nodes.iter().map(|&i| ring_shares(c, i)).collect::<Result<_>>()?;
        last = views.clone();
        let first = &views[0];
        if views.iter().any(|v| v != first) {
            return Ok(false);
        }
        if first.iter().any(|s| !s.reachable || gone.contains(&s.peer.as_str())) {
            return Ok(false);
        }
        Ok(!first.is_empty())
    })
    .with_context(|| format!("routers {nodes:?} never agreed on a ring without {gone:?}; last views: {last:#?}"))?;
    Ok(last.into_iter().next().unwrap_or_default())
}

/// Waits until node `i`'s `weft status` has a `PeerDiscovery:` line
/// containing `text`; returns the line.
pub fn wait_discovery_line(c: &Cluster, i: usize, text: &str, timeout: Duration) -> Result<String> {
    let mut line = String::new();
    wait_until(timeout, Duration::from_millis(200), || {
        c.check_alive(i)?;
        let (_, body) = c.http(i, "GET", "/status", None)?;
        line = body.lines().find(|l| l.contains("PeerDiscovery:")).unwrap_or("").trim().to_owned();
        Ok(line.contains(text))
    })
    .with_context(|| format!("node {i}: PeerDiscovery never showed {text:?}; last: {line:?}"))?;
    Ok(line)
}

/// The addresses node `i` dials (`weft status targets`).
pub fn targets(c: &Cluster, i: usize) -> Result<Vec<String>> {
    Ok(c.get(i, "/status/targets")?.lines().map(str::to_owned).collect())
}

/// The underlay address of node `i` as a target (`ip:port`).
pub fn target_of(c: &Cluster, i: usize) -> String {
    format!("{}:{}", c.node_ip(i), crate::router::DEFAULT_PORT)
}

/// Fails unless `cond` holds for `hold`, sampled every 250 ms.
pub fn holds_for(hold: Duration, what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < hold {
        if !cond()? {
            bail!("{what} stopped holding after {:.1?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}
