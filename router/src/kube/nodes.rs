//! Node discovery: every Node's router address for the core (dial
//! targets, the IPAM quorum) and the node list for the reclaimer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use super::client::LastAnswer;
use super::watch_loop::{watch_forever, Update, WATCH_TIMEOUT_SECS};
use super::{DiscoveryStatus, KubeEvent};
use crate::command::Command;
use crate::shared::Shared;

/// The node list as the reclaimer sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct NodeList {
    /// A complete list has arrived and nothing failed since: the set is
    /// current, so a missing node is a deleted node.
    pub current: bool,
    pub nodes: BTreeMap<String, Option<IpAddr>>,
}

/// In the data dir: the last node list, so a router restarted while the
/// API is down still knows whom to connect to.
pub(crate) const CACHE_FILE: &str = "kube-nodes.json";

/// The node list of the router's last run, if any.
pub(super) fn cached(data_dir: &Path) -> Option<BTreeMap<String, Option<IpAddr>>> {
    serde_json::from_slice(&std::fs::read(data_dir.join(CACHE_FILE)).ok()?).ok()
}

fn cache(data_dir: &Path, nodes: &BTreeMap<String, Option<IpAddr>>) {
    let written = serde_json::to_vec(nodes)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| crate::identity::write_atomic(&data_dir.join(CACHE_FILE), &bytes));
    if let Err(err) = written {
        tracing::warn!("cannot keep the node list in {}: {err:#}", data_dir.display());
    }
}

pub(super) async fn run(
    client: kube::Client,
    answered: Arc<LastAnswer>,
    selector: Option<String>,
    data_dir: PathBuf,
    commands: UnboundedSender<Command>,
    out: watch::Sender<NodeList>,
    shared: Arc<Shared>,
) {
    // Until the API answers, the last run's list keeps the router connected
    // (peers also dial us from theirs).
    if let Some(nodes) = cached(&data_dir) {
        tracing::info!("{} nodes from the last run's node list, until the API answers", nodes.len());
        let _ = commands.send(Command::Kube(KubeEvent::Nodes(nodes)));
    }
    let api: Api<Node> = Api::all(client);
    let mut config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    if let Some(selector) = &selector {
        config = config.labels(selector);
    }
    let mut list = NodeList::default();
    let mut status = DiscoveryStatus { answered, ..DiscoveryStatus::default() };
    watch_forever(api, config, "nodes", &shared.kube_metrics, |update| {
        let before = (list.nodes.len(), status.listed, status.error.is_some());
        let changed = match update {
            Update::Listed(nodes) => {
                let fresh: BTreeMap<String, Option<IpAddr>> =
                    nodes.iter().map(|n| (n.name_any(), address(n))).collect();
                let changed = !list.current || fresh != list.nodes;
                list = NodeList { current: true, nodes: fresh };
                status.listed = true;
                status.error = None;
                changed
            }
            Update::Applied(node) => {
                let addr = address(&node);
                list.nodes.insert(node.name_any(), addr) != Some(addr)
            }
            Update::Deleted(node) => list.nodes.remove(&node.name_any()).is_some(),
            Update::Failed(err) => {
                let since = status.error.as_ref().map_or_else(Instant::now, |(_, since)| *since);
                status.error = Some((err, since));
                list.current = false;
                out.send_replace(list.clone());
                false
            }
        };
        status.nodes = list.nodes.len();
        shared.kube_metrics.nodes_synced(list.nodes.len(), status.error.is_none());
        if changed {
            cache(&data_dir, &list.nodes);
            let _ = commands.send(Command::Kube(KubeEvent::Nodes(list.nodes.clone())));
            out.send_replace(list.clone());
        }
        if before != (list.nodes.len(), status.listed, status.error.is_some()) || status.error.is_some() {
            let _ = commands.send(Command::Kube(KubeEvent::Status(status.clone())));
        }
    })
    .await;
}

/// Where the node's router listens: its first IPv4 InternalIP, else its
/// ExternalIP (then IPv6 ones). A node gets addresses only once the kubelet
/// (or a cloud controller) reports them: a MODIFIED event brings them.
fn address(node: &Node) -> Option<IpAddr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    let pick = |kind: &str, v4: bool| {
        addrs
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv4() == v4)
    };
    pick("InternalIP", true)
        .or_else(|| pick("ExternalIP", true))
        .or_else(|| pick("InternalIP", false))
        .or_else(|| pick("ExternalIP", false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addresses: &[(&str, &str)]) -> Node {
        let addresses: Vec<serde_json::Value> =
            addresses.iter().map(|(t, a)| serde_json::json!({"type": t, "address": a})).collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": addresses},
        }))
        .expect("a valid Node")
    }

    #[test]
    fn internal_ipv4_first_then_external_then_ipv6() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("an address"));
        assert_eq!(
            address(&node(&[("Hostname", "n1"), ("ExternalIP", "203.0.113.9"), ("InternalIP", "10.0.0.1")])),
            ip("10.0.0.1")
        );
        assert_eq!(address(&node(&[("InternalIP", "fd00::1"), ("ExternalIP", "203.0.113.9")])), ip("203.0.113.9"));
        assert_eq!(address(&node(&[("InternalIP", "fd00::1")])), ip("fd00::1"));
        assert_eq!(address(&node(&[("Hostname", "n1"), ("InternalIP", "not-an-ip")])), None);
        assert_eq!(address(&node(&[])), None);
    }
}
