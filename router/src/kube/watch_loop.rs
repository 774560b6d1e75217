//! Watching one kind of object without ever giving up, and without ever
//! hammering the API: kube-rs's watcher (one list, then one long watch,
//! resumed from the last resourceVersion; a 410 Expired re-lists), and
//! after any error a fresh watcher after a backoff, so that every recovery
//! starts from a complete list (which also finds deletes missed meanwhile).

use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use weft_proto::backoff::Backoff;

use super::errors::describe;
use super::metrics::KubeMetrics;

/// The server ends each watch after this long and the watcher resumes it
/// (one request per minute per watched kind, whatever the cluster's
/// size); a watch that goes silent (a black-holed connection) is given up
/// a few seconds after it.
pub(super) const WATCH_TIMEOUT_SECS: u32 = 60;
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(16);

/// What a watch tells its owner.
#[derive(Debug)]
pub(super) enum Update<K> {
    /// A complete list: everything that exists now.
    Listed(Vec<K>),
    Applied(K),
    Deleted(K),
    /// The API failed; a fresh list follows once it answers again.
    Failed(String),
}

/// Runs forever, calling `on` with every update. `what` names the kind in
/// logs and metrics ("nodes", "peer map").
pub(super) async fn watch_forever<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    metrics: &KubeMetrics,
    mut on: impl FnMut(Update<K>),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut backoff = Backoff::with_limits(RETRY_FIRST, RETRY_CAP);
    let mut failing_since: Option<Instant> = None;
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), config.clone()));
        let mut listing: Vec<K> = Vec::new();
        let error = loop {
            match stream.next().await {
                Some(Ok(Event::Init)) => listing.clear(),
                Some(Ok(Event::InitApply(obj))) => listing.push(obj),
                Some(Ok(Event::InitDone)) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            "Kubernetes API: {what} listed again, after {}s of errors",
                            since.elapsed().as_secs()
                        );
                    }
                    backoff.reset();
                    metrics.listed(what);
                    on(Update::Listed(std::mem::take(&mut listing)));
                }
                Some(Ok(Event::Apply(obj))) => on(Update::Applied(obj)),
                Some(Ok(Event::Delete(obj))) => on(Update::Deleted(obj)),
                Some(Err(err)) => break describe(&err),
                None => break "the watch stream ended".to_string(),
            }
        };
        metrics.watch_error(what);
        if failing_since.is_none() {
            // Once per episode; the rest of it at debug level.
            tracing::warn!(
                "Kubernetes API: watching {what} failed; retrying with backoff (peers and connections stay): {error}"
            );
            failing_since = Some(Instant::now());
        } else {
            tracing::debug!("Kubernetes API: watching {what} failed again: {error}");
        }
        on(Update::Failed(error));
        tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
    }
}
