//! Kubernetes: node discovery, the peer map and reclaiming deleted nodes'
//! addresses, the Node's network condition. Each is a task of its own that
//! talks to the core through `Command`s; the data plane never waits on the
//! API (when it is down, slow or failing, current peers and connections
//! stay and only discovery and reclaim wait).

mod client;
mod condition;
mod errors;
mod metrics;
mod nodes;
mod peer_map;
mod reclaim;
mod stale_identity;
mod watch_loop;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use weft_proto::PeerName;

use crate::command::Command;
use crate::config::Config;
use crate::shared::Shared;

pub use metrics::KubeMetrics;

/// What the Kubernetes task tells the core.
#[derive(Debug)]
pub enum KubeEvent {
    /// Every Node the API lists now (ours included), by name, with the
    /// address its router listens on (None: the Node has no usable one yet).
    Nodes(BTreeMap<String, Option<IpAddr>>),
    /// How the API looks from here.
    Status(DiscoveryStatus),
}

/// The API as the node watcher last saw it, for `weft status`.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryStatus {
    /// Nodes in the node list (ours included).
    pub nodes: usize,
    /// A complete node list has arrived (since the router started).
    pub listed: bool,
    /// The current problem, if the API is failing; with when it started.
    pub error: Option<(String, Instant)>,
    /// When the API last answered a request of ours, shared with the client.
    pub answered: Arc<client::LastAnswer>,
}

impl DiscoveryStatus {
    /// When the node list was last known current: the API's last answer
    /// (each watch is re-opened every minute, so a healthy watch keeps
    /// this within a minute), once a list has arrived.
    pub fn synced_at(&self) -> Option<Instant> {
        self.answered.get().filter(|_| self.listed)
    }
}

/// A connection to the Kubernetes API, found the way kubectl finds one,
/// and what the router needs to know to use it.
pub struct Kube {
    client: ::kube::Client,
    answered: Arc<client::LastAnswer>,
    /// Namespace of weft's own objects (the peer map).
    namespace: String,
    /// This node's name.
    node: String,
    nickname: String,
    node_selector: Option<String>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").field("namespace", &self.namespace).field("node", &self.node).finish_non_exhaustive()
    }
}

impl Kube {
    /// None when the API is turned off or no credentials are found; the
    /// router then works from the peers it is given, as before.
    pub async fn connect(cfg: &Config) -> Option<Kube> {
        if !cfg.kube {
            tracing::info!("Kubernetes API not used (--no-kube)");
            return None;
        }
        match client::connect(cfg.kubeconfig.as_deref(), cfg.kube_namespace.as_deref()).await {
            Ok(Some(found)) => {
                tracing::info!(
                    "Kubernetes API at {} ({}); this is node {:?}, weft's objects in namespace {:?}",
                    found.url,
                    found.source,
                    cfg.node_name,
                    found.namespace
                );
                Some(Kube {
                    client: found.client,
                    answered: found.answered,
                    namespace: found.namespace,
                    node: cfg.node_name.clone(),
                    nickname: cfg.nickname.clone(),
                    node_selector: cfg.kube_node_selector.clone(),
                    data_dir: cfg.data_dir.clone(),
                })
            }
            Ok(None) => {
                tracing::info!(
                    "no Kubernetes credentials (no in-cluster service account, no KUBECONFIG): \
                     peers come from the command line, `weft connect` and gossip"
                );
                None
            }
            Err(err) => {
                tracing::error!("Kubernetes credentials found but unusable, running without the API: {err:#}");
                None
            }
        }
    }

    /// Forgets the data dir's identity if our peer was reclaimed while the
    /// router was away, so it comes back as a new peer.
    pub async fn guard_reclaimed(&self, data_dir: &Path) {
        stale_identity::guard(&self.client, &self.namespace, data_dir).await;
    }

    /// Starts the Kubernetes tasks: the node watcher (targets and the IPAM
    /// quorum for the core), the peer map watcher, the reclaimer and the
    /// Node condition.
    pub fn spawn(
        self,
        name: PeerName,
        commands: UnboundedSender<Command>,
        shared: Arc<Shared>,
        ready: watch::Receiver<bool>,
    ) {
        let (nodes_tx, nodes_rx) = watch::channel(nodes::NodeList::default());
        let (map_tx, map_rx) = watch::channel(peer_map::MapView::default());
        tokio::spawn(nodes::run(
            self.client.clone(),
            self.answered.clone(),
            self.node_selector.clone(),
            self.data_dir.clone(),
            commands.clone(),
            nodes_tx,
            shared.clone(),
        ));
        tokio::spawn(peer_map::watch(self.client.clone(), self.namespace.clone(), map_tx, shared.clone()));
        let me = reclaim::Me { peer: name, node: self.node.clone(), nickname: self.nickname.clone() };
        tokio::spawn(reclaim::run(
            reclaim::Context {
                client: self.client.clone(),
                namespace: self.namespace,
                data_dir: self.data_dir,
                me,
                shared,
            },
            nodes_rx,
            map_rx,
        ));
        tokio::spawn(condition::run(self.client, self.node, ready));
    }
}
