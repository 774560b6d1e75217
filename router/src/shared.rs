//! State shared between the control core, the data path threads and the
//! API: snapshots the core publishes, the MAC table, metrics, and the
//! queues into the core.

use crate::api::status::Snapshot;
use crate::command::{Command, Heartbeat};
use crate::datapath::Forwarding;
use crate::metrics::Metrics;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::sync::mpsc::UnboundedSender;
use weft_proto::mac_table::MacTable;

/// State shared between the core, the data path threads and the API.
#[derive(Debug)]
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    forwarding: RwLock<Arc<Forwarding>>,
    pub macs: Mutex<MacTable>,
    pub metrics: Metrics,
    pub nat_metrics: crate::nat::NatMetrics,
    pub kube_metrics: crate::kube::KubeMetrics,
    commands: UnboundedSender<Command>,
    pub heartbeats: mpsc::Sender<Heartbeat>,
}

impl Shared {
    pub fn new(macs: MacTable, commands: UnboundedSender<Command>, heartbeats: mpsc::Sender<Heartbeat>) -> Shared {
        Shared {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            forwarding: RwLock::new(Arc::new(Forwarding::default())),
            macs: Mutex::new(macs),
            metrics: Metrics::default(),
            nat_metrics: Default::default(),
            kube_metrics: Default::default(),
            commands,
            heartbeats,
        }
    }

    /// The core's latest status, for the API.
    pub fn publish_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// The core's latest forwarding table, for the data path.
    pub fn publish_forwarding(&self, forwarding: Forwarding) {
        *self.forwarding.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(forwarding);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn forwarding(&self) -> Arc<Forwarding> {
        self.forwarding.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn command(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
    }

    /// Asks the core and waits for its answer; None when the core is gone
    /// (the router is stopping).
    pub async fn ask<T>(&self, make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(make(tx)).ok()?;
        rx.await.ok()
    }

    pub fn lock_macs(&self) -> std::sync::MutexGuard<'_, MacTable> {
        self.macs.lock().unwrap_or_else(|e| e.into_inner())
    }
}
