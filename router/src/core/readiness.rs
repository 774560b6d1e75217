//! When the router is ready (for `/status`, the conflist and the Node's
//! network condition), and what it does the moment it becomes so.

use super::Core;
use std::time::Instant;

impl Core {
    /// What still keeps the router from being ready; empty when it is.
    pub(super) fn not_ready(&self, _now: Instant) -> Vec<String> {
        let mut why = Vec::new();
        if !self.nat.ready {
            why.push("NAT rules not applied yet".to_string());
        }
        if let Some(kube) = &self.kube {
            let synced = kube.listed;
            // Started while the API is down: with a divided range and the
            // peers we know, the node can carry traffic, degraded.
            let degraded = kube.error.is_some() && self.ipam.is_ready();
            if !synced && !degraded {
                why.push("waiting for the first Kubernetes node list".to_string());
            }
            if !self.ipam.is_ready() {
                why.push("waiting for the IP range to be divided among the nodes".to_string());
            }
        }
        why
    }

    pub(super) fn readiness_changed(&mut self, ready: bool) {
        if !self.ready_tx.send_if_modified(|r| std::mem::replace(r, ready) != ready) || !ready {
            return;
        }
        tracing::info!("router ready");
        if let Some(dir) = self.cfg.cni_conf_dir.clone() {
            let bin = self.cfg.cni_bin_dir.clone();
            let http = self.cfg.http_addr;
            let http = (http.to_string() != crate::config::DEFAULT_HTTP_ADDR).then_some(http);
            tokio::task::spawn_blocking(move || match crate::cni_install::write_conflist(&dir, &bin, http) {
                Ok(path) => tracing::info!("wrote {}", path.display()),
                Err(err) => tracing::error!("cannot write the CNI conflist into {}: {err:#}", dir.display()),
            });
        }
    }
}
