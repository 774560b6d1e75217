//! Finding the API the way a pod and kubectl do: in a pod, its service
//! account (token and CA under /var/run/secrets/kubernetes.io/serviceaccount,
//! `KUBERNETES_SERVICE_HOST`/`PORT`); otherwise `KUBECONFIG`, else
//! `~/.kube/config`.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Where the in-cluster credentials live (fixed by Kubernetes and kube-rs).
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// weft's objects live here unless told otherwise (deploy/weft.yaml's).
const DEFAULT_NAMESPACE: &str = "weft";

pub(super) struct Found {
    pub client: ::kube::Client,
    pub source: &'static str,
    pub url: String,
    pub namespace: String,
}

/// None when there are no credentials at all; an error when there are
/// some but they can't be used (a broken kubeconfig, an unreadable token).
pub(super) async fn connect(namespace: Option<&str>) -> Result<Option<Found>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
    let (config, source) = if in_cluster {
        let config = ::kube::Config::incluster().with_context(|| {
            format!("in-cluster credentials (KUBERNETES_SERVICE_HOST is set; {SERVICE_ACCOUNT_TOKEN})")
        })?;
        (config, "in-cluster service account")
    } else if kubeconfig_present() {
        let config = ::kube::Config::from_kubeconfig(&::kube::config::KubeConfigOptions::default())
            .await
            .context("reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?;
        (config, "kubeconfig")
    } else {
        return Ok(None);
    };
    // The pod's namespace (downward API), else the service account's;
    // a kubeconfig's context namespace is the user's, not weft's.
    let namespace = namespace
        .map(str::to_string)
        .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.trim().is_empty()))
        .or_else(|| in_cluster.then(|| config.default_namespace.clone()))
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let url = config.cluster_url.to_string();
    let client = ::kube::Client::try_from(config).context("building the Kubernetes client")?;
    Ok(Some(Found { client, source, url, namespace }))
}

fn kubeconfig_present() -> bool {
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return std::env::split_paths(&paths).any(|p| p.exists());
    }
    std::env::var_os("HOME").is_some_and(|home| PathBuf::from(home).join(".kube/config").exists())
}
