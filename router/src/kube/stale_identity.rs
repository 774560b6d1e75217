//! A data dir whose peer was reclaimed while its router was away (the node
//! was deleted, and the peer's addresses handed to others) must not come
//! back as that peer: a tombstoned peer never allocates again. The router
//! records which peer map it registered in; at start, a registration that
//! has vanished from that same map (same uid) means "reclaimed": the
//! identity and IPAM state go, and the router starts as a new peer.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde::{Deserialize, Serialize};
use weft_proto::PeerName;

use super::errors::describe;
use super::peer_map::{self, NAME};

/// In the data dir: which map our peer registered in.
pub(crate) const MARKER_FILE: &str = "kube-registration";
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Marker {
    peer: String,
    config_map_uid: String,
}

/// Notes that `peer` is registered in the map with this uid.
pub(super) fn record(data_dir: &Path, peer: PeerName, uid: &str) -> anyhow::Result<()> {
    let marker = Marker { peer: peer.to_string(), config_map_uid: uid.to_string() };
    crate::identity::write_atomic(&data_dir.join(MARKER_FILE), &serde_json::to_vec(&marker)?)
}

fn recorded(data_dir: &Path) -> Option<(PeerName, String)> {
    let name: PeerName =
        std::fs::read_to_string(data_dir.join(crate::identity::NAME_FILE)).ok()?.trim().parse().ok()?;
    let marker: Marker = serde_json::from_slice(&std::fs::read(data_dir.join(MARKER_FILE)).ok()?).ok()?;
    (marker.peer == name.to_string()).then_some((name, marker.config_map_uid))
}

pub(super) async fn guard(client: &kube::Client, namespace: &str, data_dir: &Path) {
    let Some((peer, uid)) = recorded(data_dir) else { return };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = match tokio::time::timeout(CHECK_TIMEOUT, api.get_opt(NAME)).await {
        Ok(Ok(map)) => map,
        Ok(Err(err)) => return tracing::info!("cannot read the peer map ({}); keeping peer {peer}", describe(&err)),
        Err(_) => return tracing::info!("the API did not answer within {CHECK_TIMEOUT:?}; keeping peer {peer}"),
    };
    // A map deleted or re-created by an admin says nothing about us.
    let Some(map) = map.filter(|m| m.metadata.uid.as_deref() == Some(uid.as_str())) else { return };
    if peer_map::value_of(&map, peer).is_some() {
        return;
    }
    tracing::warn!(
        "peer {peer} was reclaimed while this router was away (its node was deleted or re-created): \
         starting as a new peer with fresh IPAM state"
    );
    for file in [crate::identity::NAME_FILE, crate::ipam::STATE_FILE, MARKER_FILE] {
        let path = data_dir.join(file);
        if let Err(err) = std::fs::remove_file(&path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::error!("cannot remove {}: {err}", path.display());
            }
        }
    }
}
