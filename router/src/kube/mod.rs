//! Kubernetes: node discovery, the peer map and reclaiming deleted nodes'
//! addresses, the Node's network condition. One task, talking to the core
//! through `Command::Kube`; the data plane never waits on the API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use weft_proto::PeerName;

use crate::command::Command;
use crate::config::Config;
use crate::shared::Shared;

/// A connection to the Kubernetes API, found the way kubectl finds one.
#[derive(Debug)]
pub struct Kube {}

impl Kube {
    /// None when the API is turned off or no credentials are found.
    pub async fn connect(_cfg: &Config) -> Option<Kube> {
        None
    }

    /// Wipes the data dir's identity if our peer was reclaimed while away.
    pub async fn guard_reclaimed(&self, _data_dir: &Path) {}

    /// Starts the Kubernetes task.
    pub fn spawn(
        self,
        _name: PeerName,
        _commands: UnboundedSender<Command>,
        _shared: Arc<Shared>,
        _ready: watch::Receiver<bool>,
    ) {
    }
}

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
    /// Nodes in the last list (ours included).
    pub nodes: usize,
    /// When the node list was last confirmed by the API.
    pub synced_at: Option<Instant>,
    /// The current problem, if the API is failing; with when it started.
    pub error: Option<(String, Instant)>,
}

/// Counters of the Kubernetes task for `/metrics`.
#[derive(Debug, Default)]
pub struct KubeMetrics {}

impl KubeMetrics {
    pub fn render(&self, _out: &mut String) {}
}
