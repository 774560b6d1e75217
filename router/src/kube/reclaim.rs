//! Reclaiming deleted nodes' addresses, exactly once: the plan is
//! `weft_proto::reclaim`'s (pure, property-tested); this task feeds it the
//! node list, the peer map and the core's reachability, and carries out
//! what it says — registering our own entry, claiming a dead peer's entry
//! with a compare-and-swap on the map, asking the core to `rmpeer` the
//! peer once the claim is ours, and removing the entry.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use tokio::sync::watch;
use weft_proto::reclaim::{Action, Gone, Reclaimer, View};
use weft_proto::PeerName;

use super::errors::describe;
use super::nodes::NodeList;
use super::peer_map::{self, MapView, Value, Written};
use crate::command::Command;
use crate::ipam::ReclaimOutcome;
use crate::shared::Shared;

/// The plan is re-made at least this often (reachability changes come
/// without an event); it is all local, no API request.
const TICK: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(super) struct Me {
    pub peer: PeerName,
    pub node: String,
    pub nickname: String,
}

pub(super) struct Context {
    pub client: kube::Client,
    pub namespace: String,
    pub data_dir: PathBuf,
    pub me: Me,
    pub shared: Arc<Shared>,
}

pub(super) async fn run(ctx: Context, mut nodes: watch::Receiver<NodeList>, mut map: watch::Receiver<MapView>) {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let mut planner = Reclaimer::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut recorded_uid: Option<String> = None;
    let mut warned = false;
    loop {
        let now = Instant::now();
        let wake = planner.poll_timeout(now).map_or(now + TICK, |t| t.min(now + TICK));
        tokio::select! {
            r = nodes.changed() => if r.is_err() { return },
            r = map.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let node_list = nodes.borrow_and_update().clone();
        let view = map.borrow_and_update().clone();
        // Only a current node list tells a deleted node from one we
        // haven't heard of; with the API failing, nothing is decided.
        if !node_list.current || !view.current {
            continue;
        }
        let (entries, bad) = view.map.as_ref().map(peer_map::entries).unwrap_or_default();
        for key in bad {
            if reported.insert(key.clone()) {
                tracing::warn!("peer map {}/{}: ignoring malformed entry {key:?}", ctx.namespace, peer_map::NAME);
            }
        }
        if let Some(m) = &view.map {
            let registered = entries.iter().any(|e| e.peer == ctx.me.peer && e.node == ctx.me.node);
            let uid = m.metadata.uid.clone();
            if registered && uid.is_some() && uid != recorded_uid {
                match super::stale_identity::record(&ctx.data_dir, ctx.me.peer, uid.as_deref().unwrap_or_default()) {
                    Ok(()) => recorded_uid = uid,
                    Err(err) => tracing::error!("cannot record the peer map registration: {err:#}"),
                }
            }
        }
        let Some(reachable) = ctx.shared.ask(Command::Reachable).await else { return };
        let node_names: BTreeSet<String> = node_list.nodes.keys().cloned().collect();
        let actions = planner.plan(
            Instant::now(),
            View {
                me: ctx.me.peer,
                my_node: &ctx.me.node,
                nodes: &node_names,
                entries: &entries,
                reachable: &reachable,
            },
        );
        for action in actions {
            match act(&ctx, &api, view.map.as_ref(), &entries, action).await {
                Ok(Step::Wrote) => {
                    warned = false;
                    // The map changed: plan again on the watch's copy.
                    break;
                }
                Ok(Step::Next) => warned = false,
                Ok(Step::Conflict) => {
                    ctx.shared.kube_metrics.conflict();
                    break;
                }
                Err(err) => {
                    if !warned {
                        tracing::warn!("peer map {}/{}: {err}", ctx.namespace, peer_map::NAME);
                        warned = true;
                    } else {
                        tracing::debug!("peer map: {err}");
                    }
                    break;
                }
            }
        }
    }
}

/// What carrying out one action came to.
enum Step {
    /// The map was written.
    Wrote,
    /// Nothing written; go on with the next action.
    Next,
    /// Another router wrote first.
    Conflict,
}

async fn act(
    ctx: &Context,
    api: &Api<ConfigMap>,
    map: Option<&ConfigMap>,
    entries: &[weft_proto::reclaim::Entry],
    action: Action,
) -> Result<Step, String> {
    let me = &ctx.me;
    match action {
        Action::Register => {
            let since = map.and_then(|m| peer_map::value_of(m, me.peer)).map(|v| v.since).unwrap_or_default();
            let value = Value {
                peer: me.peer.to_string(),
                node: me.node.clone(),
                nickname: me.nickname.clone(),
                since: if since.is_empty() { peer_map::now_rfc3339() } else { since },
                claimed_by: None,
                claimed_at: None,
            };
            let written = timed(peer_map::register(api, me.peer, &value)).await?;
            if matches!(written, Written::Done) {
                tracing::info!("registered peer {} for node {} in the peer map", me.peer, me.node);
            }
            Ok(step(written))
        }
        Action::Claim { peer, gone } => {
            let Some(map) = map else { return Ok(Step::Next) };
            let mut value = peer_map::value_of(map, peer).ok_or("a claimed entry vanished")?;
            value.claimed_by = Some(me.peer.to_string());
            value.claimed_at = Some(peer_map::now_rfc3339());
            let raw = serde_json::to_string(&value).map_err(|e| e.to_string())?;
            let written = timed(peer_map::update(api, map, |data| {
                data.insert(peer_map::key(peer), raw);
            }))
            .await?;
            match &written {
                Written::Done => {
                    tracing::info!("{}: this router reclaims peer {peer}'s addresses", why(&value.node, gone))
                }
                Written::Conflict => tracing::debug!("another router claimed peer {peer} first"),
            }
            Ok(step(written))
        }
        Action::Release { peer } => {
            let Some(map) = map else { return Ok(Step::Next) };
            let Some(mut value) = peer_map::value_of(map, peer) else { return Ok(Step::Next) };
            tracing::info!("peer {peer} is alive after all: dropping our claim on it");
            value.claimed_by = None;
            value.claimed_at = None;
            let raw = serde_json::to_string(&value).map_err(|e| e.to_string())?;
            Ok(step(
                timed(peer_map::update(api, map, |data| {
                    data.insert(peer_map::key(peer), raw);
                }))
                .await?,
            ))
        }
        Action::Reclaim { peer, gone } => {
            let Some(map) = map else { return Ok(Step::Next) };
            let node = entries.iter().find(|e| e.peer == peer).map(|e| e.node.clone()).unwrap_or_default();
            let Some(outcome) = ctx.shared.ask(|reply| Command::Reclaim { peer, reply }).await else {
                return Ok(Step::Next);
            };
            match &outcome {
                ReclaimOutcome::Removed { .. } => {
                    ctx.shared.kube_metrics.reclaimed();
                    tracing::info!("reclaimed peer {peer} ({}): {}", why(&node, gone), outcome.describe(peer));
                }
                ReclaimOutcome::AlreadyRemoved | ReclaimOutcome::Unknown => {
                    tracing::info!("peer {peer} ({}): {}", why(&node, gone), outcome.describe(peer));
                }
                ReclaimOutcome::Reachable => {
                    tracing::debug!("peer {peer} is still reachable; reclaiming it later");
                    return Ok(Step::Next);
                }
                ReclaimOutcome::Refused(why) => {
                    ctx.shared.kube_metrics.reclaim_failed();
                    return Err(format!("cannot reclaim peer {peer}: {why}"));
                }
            }
            Ok(step(
                timed(peer_map::update(api, map, |data| {
                    data.remove(&peer_map::key(peer));
                }))
                .await?,
            ))
        }
    }
}

fn why(node: &str, gone: Gone) -> String {
    match gone {
        Gone::NodeDeleted => format!("node {node} was deleted"),
        Gone::Replaced(by) => format!("node {node} now runs peer {by}"),
    }
}

fn step(written: Written) -> Step {
    match written {
        Written::Done => Step::Wrote,
        Written::Conflict => Step::Conflict,
    }
}

async fn timed<T>(request: impl std::future::Future<Output = kube::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => Err(describe(&err)),
        Err(_) => Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
    }
}
