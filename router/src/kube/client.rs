//! Finding the API the way a pod and kubectl do: a `--kubeconfig` given;
//! in a pod, its service account (token and CA under
//! /var/run/secrets/kubernetes.io/serviceaccount, `KUBERNETES_SERVICE_HOST`
//! and `_PORT`); otherwise `KUBECONFIG`, else `~/.kube/config`.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the in-cluster credentials live (fixed by Kubernetes and kube-rs).
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// weft's objects live here unless told otherwise (deploy/weft.yaml's).
const DEFAULT_NAMESPACE: &str = "weft";

pub(super) struct Found {
    pub client: ::kube::Client,
    /// When the API last answered a request of ours with success.
    pub answered: Arc<LastAnswer>,
    pub source: &'static str,
    pub url: String,
    pub namespace: String,
}

/// None when there are no credentials at all; an error when there are
/// some but they can't be used (a broken kubeconfig, an unreadable token).
pub(super) async fn connect(kubeconfig: Option<&Path>, namespace: Option<&str>) -> Result<Option<Found>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
    let options = ::kube::config::KubeConfigOptions::default();
    let (config, source) = if let Some(path) = kubeconfig {
        let file = ::kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
        let config = ::kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .with_context(|| format!("using --kubeconfig {}", path.display()))?;
        (config, "--kubeconfig")
    } else if in_cluster {
        let config = ::kube::Config::incluster().with_context(|| {
            format!("in-cluster credentials (KUBERNETES_SERVICE_HOST is set; {SERVICE_ACCOUNT_TOKEN})")
        })?;
        (config, "in-cluster service account")
    } else if kubeconfig_present() {
        let config = ::kube::Config::from_kubeconfig(&options)
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
        .or_else(|| (in_cluster && kubeconfig.is_none()).then(|| config.default_namespace.clone()))
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let url = config.cluster_url.to_string();
    let answered = Arc::new(LastAnswer::new());
    let seen = answered.clone();
    // Every watch the server ends (each minute) is re-opened with a request
    // whose success proves the node list still current: that is what
    // "synced Ns ago" reports, without any request of its own.
    let note = tower::util::MapResponseLayer::new(move |response: http::Response<_>| {
        if response.status().is_success() {
            seen.mark();
        }
        response
    });
    let client = ::kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&note)
        .build();
    Ok(Some(Found { client, answered, source, url, namespace }))
}

/// The last successful answer of the API, readable from any thread.
#[derive(Debug)]
pub struct LastAnswer {
    base: Instant,
    /// Milliseconds after `base`, plus one (0: never).
    at: AtomicU64,
}

impl Default for LastAnswer {
    fn default() -> Self {
        Self::new()
    }
}

impl LastAnswer {
    fn new() -> Self {
        LastAnswer { base: Instant::now(), at: AtomicU64::new(0) }
    }

    fn mark(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.at.store(ms + 1, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Instant> {
        match self.at.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1)),
        }
    }
}

fn kubeconfig_present() -> bool {
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return std::env::split_paths(&paths).any(|p| p.exists());
    }
    std::env::var_os("HOME").is_some_and(|home| PathBuf::from(home).join(".kube/config").exists())
}
