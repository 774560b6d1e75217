//! The Node's `NetworkUnavailable=False` condition, set once the router is
//! ready, as Weave and flannel do (some clusters taint nodes until a
//! network plugin clears it).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::watch;
use weft_proto::backoff::Backoff;

use super::errors::describe;
use super::peer_map::now_rfc3339;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn run(client: kube::Client, node: String, mut ready: watch::Receiver<bool>) {
    if ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let api: Api<Node> = Api::all(client);
    let mut backoff = Backoff::with_limits(Duration::from_secs(1), Duration::from_secs(60));
    let mut warned = false;
    loop {
        let now = now_rfc3339();
        // Strategic merge: conditions merge by type, others' stay.
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "WeftIsUp",
            "message": "weft router is running on this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.patch_status(&node, &PatchParams::default(), &Patch::Strategic(&patch)),
        )
        .await;
        let error = match result {
            Ok(Ok(_)) => {
                tracing::info!("Node {node}: condition NetworkUnavailable=False (WeftIsUp)");
                return;
            }
            Ok(Err(err)) => describe(&err),
            Err(_) => format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        };
        if !warned {
            tracing::warn!("cannot set Node {node}'s NetworkUnavailable condition yet, retrying: {error}");
            warned = true;
        } else {
            tracing::debug!("setting Node {node}'s NetworkUnavailable condition: {error}");
        }
        tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
    }
}
