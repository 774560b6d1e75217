//! The peer map: ConfigMap `weft-peer-map` in weft's namespace, one key
//! per peer (not per node: a node re-created with a fresh disk is a new
//! peer, and the old one must still be found to be reclaimed), saying which
//! node the peer ran on and whether some router is reclaiming it.
//! Routers add their own key with a merge patch (different keys never
//! conflict); claims and removals are full updates carrying the map's
//! `resourceVersion`, so of two routers writing at once exactly one wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_proto::reclaim::Entry;
use weft_proto::PeerName;

use super::watch_loop::{watch_forever, Update, WATCH_TIMEOUT_SECS};
use crate::shared::Shared;

pub(super) const NAME: &str = "weft-peer-map";

/// The map as the reclaimer sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct MapView {
    /// Listed and nothing failed since.
    pub current: bool,
    /// None: the map doesn't exist (yet).
    pub map: Option<ConfigMap>,
}

/// One key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Value {
    pub peer: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nickname: String,
    /// When the peer registered (RFC 3339), for people reading the map.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<String>,
}

/// A peer name as a ConfigMap key (`[-._a-zA-Z0-9]+`): `02-ab-…`.
pub(super) fn key(peer: PeerName) -> String {
    peer.to_string().replace(':', "-")
}

pub(super) fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// The entries of the map the reclaimer understands; a malformed one (a
/// hand edit) is skipped and reported, never acted on.
pub(super) fn entries(map: &ConfigMap) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (k, v) in map.data.iter().flatten() {
        let parsed = serde_json::from_str::<Value>(v).ok().and_then(|value| {
            let peer: PeerName = value.peer.parse().ok()?;
            let claimed_by = match value.claimed_by.as_deref() {
                None => None,
                Some(c) => Some(c.parse::<PeerName>().ok()?),
            };
            (key(peer) == *k).then_some(Entry { peer, node: value.node, claimed_by })
        });
        match parsed {
            Some(e) => entries.push(e),
            None => bad.push(k.clone()),
        }
    }
    (entries, bad)
}

pub(super) fn value_of(map: &ConfigMap, peer: PeerName) -> Option<Value> {
    let raw = map.data.as_ref()?.get(&key(peer))?;
    serde_json::from_str(raw).ok()
}

pub(super) async fn watch(client: kube::Client, namespace: String, out: watch::Sender<MapView>, shared: Arc<Shared>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}")).timeout(WATCH_TIMEOUT_SECS);
    watch_forever(api, config, "peer map", &shared.kube_metrics, |update| {
        out.send_modify(|view| match update {
            Update::Listed(maps) => *view = MapView { current: true, map: maps.into_iter().find(is_ours) },
            Update::Applied(map) if is_ours(&map) => view.map = Some(map),
            Update::Deleted(map) if is_ours(&map) => view.map = None,
            Update::Applied(_) | Update::Deleted(_) => {}
            Update::Failed(_) => view.current = false,
        })
    })
    .await;
}

fn is_ours(map: &ConfigMap) -> bool {
    map.metadata.name.as_deref() == Some(NAME)
}

/// What a write came to.
#[derive(Debug)]
pub(super) enum Written {
    Done,
    /// Someone wrote first (409): wait for the watch and plan again.
    Conflict,
}

/// Adds or replaces our own key (creating the map if needed). Keys are
/// per peer, so concurrent registrations merge.
pub(super) async fn register(api: &Api<ConfigMap>, peer: PeerName, value: &Value) -> kube::Result<Written> {
    let raw = serde_json::to_string(value).map_err(kube::Error::SerdeError)?;
    let data = BTreeMap::from([(key(peer), raw)]);
    let patch = serde_json::json!({ "data": data });
    match api.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(Written::Done),
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            let map = ConfigMap {
                metadata: kube::api::ObjectMeta { name: Some(NAME.to_string()), ..Default::default() },
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &map).await {
                Ok(_) => Ok(Written::Done),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(Written::Conflict),
                Err(err) => Err(err),
            }
        }
        Err(err) => Err(err),
    }
}

/// Replaces the map with `map` as changed by `change`, only if nobody
/// wrote since `map` was read (its resourceVersion rides along).
pub(super) async fn update(
    api: &Api<ConfigMap>,
    map: &ConfigMap,
    change: impl FnOnce(&mut BTreeMap<String, String>),
) -> kube::Result<Written> {
    let mut next = map.clone();
    change(next.data.get_or_insert_with(BTreeMap::new));
    match api.replace(NAME, &PostParams::default(), &next).await {
        Ok(_) => Ok(Written::Done),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(Written::Conflict),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, n])
    }

    fn map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn keys_are_configmap_keys_and_values_round_trip() {
        assert_eq!(key(peer(10)), "02-00-00-00-00-0a");
        let v = Value {
            peer: peer(10).to_string(),
            node: "n1".into(),
            nickname: "n1".into(),
            since: "2026-12-02T10:00:00Z".into(),
            claimed_by: Some(peer(3).to_string()),
            claimed_at: None,
        };
        let raw = serde_json::to_string(&v).expect("serializable");
        assert!(raw.contains("\"claimedBy\""), "{raw}");
        let m = map(&[(&key(peer(10)), &raw)]);
        let (entries, bad) = entries(&m);
        assert!(bad.is_empty());
        assert_eq!(entries, vec![Entry { peer: peer(10), node: "n1".into(), claimed_by: Some(peer(3)) }]);
        assert_eq!(value_of(&m, peer(10)), Some(v));
    }

    #[test]
    fn malformed_entries_are_reported_not_used() {
        let good = serde_json::json!({"peer": peer(1).to_string(), "node": "n1"}).to_string();
        let wrong_key = serde_json::json!({"peer": peer(2).to_string(), "node": "n2"}).to_string();
        let bad_claim = serde_json::json!({"peer": peer(3).to_string(), "node": "n3", "claimedBy": "x"}).to_string();
        let m = map(&[
            (&key(peer(1)), &good),
            ("02-00-00-00-00-09", &wrong_key),
            (&key(peer(3)), &bad_claim),
            ("junk", "{not json"),
        ]);
        let (entries, mut bad) = entries(&m);
        assert_eq!(entries.len(), 1);
        bad.sort();
        assert_eq!(bad, vec!["02-00-00-00-00-03", "02-00-00-00-00-09", "junk"]);
    }
}
