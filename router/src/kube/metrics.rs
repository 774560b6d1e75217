//! The Kubernetes tasks' counters, for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The watched kinds, as labels.
const KINDS: [&str; 2] = ["nodes", "peer map"];

#[derive(Debug, Default)]
pub struct KubeMetrics {
    nodes: AtomicU64,
    /// Unix time of the last node list or change the API sent.
    synced_at: AtomicU64,
    api_up: AtomicU64,
    lists: [AtomicU64; 2],
    watch_errors: [AtomicU64; 2],
    /// Peers this router retired (it held the claim and rmpeer removed them).
    reclaims: AtomicU64,
    reclaim_failures: AtomicU64,
    /// Writes to the peer map refused because another router wrote first.
    conflicts: AtomicU64,
}

fn kind(what: &str) -> usize {
    KINDS.iter().position(|k| *k == what).unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl KubeMetrics {
    pub(super) fn listed(&self, what: &str) {
        self.lists[kind(what)].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn watch_error(&self, what: &str) {
        self.watch_errors[kind(what)].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn nodes_synced(&self, nodes: usize, up: bool) {
        self.nodes.store(nodes as u64, Ordering::Relaxed);
        self.api_up.store(u64::from(up), Ordering::Relaxed);
        if up {
            self.synced_at.store(unix_now(), Ordering::Relaxed);
        }
    }

    pub(super) fn reclaimed(&self) {
        self.reclaims.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn reclaim_failed(&self) {
        self.reclaim_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP weft_kube_api_up Whether the last Kubernetes node watch request succeeded.");
        let _ = writeln!(out, "# TYPE weft_kube_api_up gauge");
        let _ = writeln!(out, "weft_kube_api_up {}", get(&self.api_up));
        let _ = writeln!(out, "# HELP weft_kube_nodes Nodes in the Kubernetes node list.");
        let _ = writeln!(out, "# TYPE weft_kube_nodes gauge");
        let _ = writeln!(out, "weft_kube_nodes {}", get(&self.nodes));
        let _ =
            writeln!(out, "# HELP weft_kube_last_sync_timestamp_seconds When the API last confirmed the node list.");
        let _ = writeln!(out, "# TYPE weft_kube_last_sync_timestamp_seconds gauge");
        let _ = writeln!(out, "weft_kube_last_sync_timestamp_seconds {}", get(&self.synced_at));
        let _ =
            writeln!(out, "# HELP weft_kube_lists_total Complete lists received (at start and after errors or 410s).");
        let _ = writeln!(out, "# TYPE weft_kube_lists_total counter");
        for (i, k) in KINDS.iter().enumerate() {
            let _ = writeln!(out, "weft_kube_lists_total{{resource=\"{k}\"}} {}", get(&self.lists[i]));
        }
        let _ = writeln!(out, "# HELP weft_kube_watch_errors_total Failed Kubernetes list or watch requests.");
        let _ = writeln!(out, "# TYPE weft_kube_watch_errors_total counter");
        for (i, k) in KINDS.iter().enumerate() {
            let _ = writeln!(out, "weft_kube_watch_errors_total{{resource=\"{k}\"}} {}", get(&self.watch_errors[i]));
        }
        let _ = writeln!(
            out,
            "# HELP weft_kube_reclaims_total Deleted nodes' peers whose addresses this router reclaimed."
        );
        let _ = writeln!(out, "# TYPE weft_kube_reclaims_total counter");
        let _ = writeln!(out, "weft_kube_reclaims_total {}", get(&self.reclaims));
        let _ = writeln!(out, "# HELP weft_kube_reclaim_failures_total Reclaim attempts that failed (retried).");
        let _ = writeln!(out, "# TYPE weft_kube_reclaim_failures_total counter");
        let _ = writeln!(out, "weft_kube_reclaim_failures_total {}", get(&self.reclaim_failures));
        let _ = writeln!(out, "# HELP weft_kube_peer_map_conflicts_total Peer map writes another router won first.");
        let _ = writeln!(out, "# TYPE weft_kube_peer_map_conflicts_total counter");
        let _ = writeln!(out, "weft_kube_peer_map_conflicts_total {}", get(&self.conflicts));
    }
}
