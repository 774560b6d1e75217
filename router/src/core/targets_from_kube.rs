//! Dial targets from the Kubernetes node list.

use super::target::Target;
use super::Core;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

impl Core {
    /// The node list changed: every other node's router becomes a target
    /// (at once for a new one), a deleted node's or a moved node's old
    /// address stops being one, and the initial IPAM division waits for a
    /// majority of the nodes.
    pub(super) fn kube_nodes(&mut self, nodes: BTreeMap<String, Option<IpAddr>>, now: Instant) {
        if self.kube.is_none() {
            return;
        }
        let wanted: BTreeMap<String, String> = nodes
            .iter()
            .filter(|(node, _)| **node != self.cfg.node_name)
            .filter_map(|(node, ip)| Some((SocketAddr::new((*ip)?, self.cfg.port).to_string(), node.clone())))
            .collect();
        self.ipam.set_consensus_count(now, nodes.len());
        // The node will run pods: agree on the division now, not at the
        // first pod (the router isn't ready before).
        self.ipam.want();
        for (key, t) in self.targets.iter_mut() {
            if t.kube_node.is_some() && !wanted.contains_key(key) {
                tracing::info!(
                    "node {} is gone or moved: no longer connecting to {key}",
                    t.kube_node.as_deref().unwrap_or("")
                );
                t.kube_node = None;
            }
        }
        for (key, node) in wanted {
            let t = self.targets.entry(key.clone()).or_insert_with(|| {
                tracing::info!("node {node}: connecting to its router at {key}");
                Target::new(false, now)
            });
            t.kube_node = Some(node);
        }
        self.refresh_discovery(now);
    }
}
