//! The HTTP API on 127.0.0.1:6784, Weave-style, so `curl` habits and
//! scripts carry over. Reads come from the published snapshot; writes are
//! commands to the control core.

pub mod status;

use crate::command::Command;
use crate::ipam::IpamReply;
use crate::shared::Shared;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, RawForm, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/status/peers", get(status_peers))
        .route("/status/connections", get(status_connections))
        .route("/status/targets", get(status_targets))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/shutdown", post(shutdown))
        .route("/status/ipam", get(status_ipam))
        .route("/rmpeer", post(rmpeer))
        .route("/ipam/allocate", post(ipam_allocate))
        .route("/ipam/release", post(ipam_release))
        .route("/ipam/lookup", get(ipam_lookup))
        .route("/ipam/gc", post(ipam_gc))
        .route("/ipam/status", get(ipam_status))
        .route("/ip/{id}", post(weave_ip_allocate).delete(weave_ip_release))
        .with_state(shared)
}

fn text(body: String) -> Response {
    ([("content-type", "text/plain; charset=utf-8")], body).into_response()
}

fn render(shared: &Shared, f: impl FnOnce(&status::Snapshot) -> String) -> Response {
    let snap = shared.snapshot();
    if !snap.ready {
        return (StatusCode::SERVICE_UNAVAILABLE, "weft router is starting\n").into_response();
    }
    text(f(&snap))
}

/// Also the readiness probe: 503 until bridge, rules, IPAM and (with
/// Kubernetes) the first node list are ready, with the status saying why.
async fn status(State(s): State<Arc<Shared>>) -> Response {
    let snap = s.snapshot();
    if snap.ready && !snap.not_ready.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, text(snap.render_status())).into_response();
    }
    render(&s, |s| s.render_status())
}

/// The liveness probe: fails when the core's loop no longer turns (a
/// wedged router), never because of peers, the API or IPAM, so that a
/// partition does not get routers restarted.
async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match tokio::time::timeout(LIVENESS_TIMEOUT, s.ask(Command::Ping)).await {
        Ok(Some(())) => text("ok\n".to_string()),
        Ok(None) => (StatusCode::SERVICE_UNAVAILABLE, "the router's core has stopped\n").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the router's core did not answer within {}s\n", LIVENESS_TIMEOUT.as_secs()),
        )
            .into_response(),
    }
}

const LIVENESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn status_peers(State(s): State<Arc<Shared>>) -> Response {
    render(&s, |s| s.render_peers())
}

async fn status_connections(State(s): State<Arc<Shared>>) -> Response {
    render(&s, |s| s.render_connections())
}

async fn status_targets(State(s): State<Arc<Shared>>) -> Response {
    render(&s, |s| s.render_targets())
}

async fn report(State(s): State<Arc<Shared>>) -> Response {
    let body = serde_json::to_string_pretty(&s.snapshot().report()).unwrap_or_default();
    ([("content-type", "application/json")], body).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let gauges = s.snapshot().gauges();
    let mut body = s.metrics.render(&gauges);
    s.nat_metrics.render(&mut body);
    s.kube_metrics.render(&mut body);
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

async fn status_ipam(State(s): State<Arc<Shared>>) -> Response {
    render(&s, |s| s.ipam_text.clone())
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

/// Asks the core and waits for its answer.
async fn ask<T>(s: &Shared, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Response> {
    s.ask(make).await.ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "weft router is shutting down"))
}

/// Admits only requests from processes on this node: the IPAM endpoints
/// hand out and free addresses, so they stay local even if --http-addr is
/// widened.
struct FromNode;

impl<S: Send + Sync> FromRequestParts<S> for FromNode {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let ConnectInfo(peer) =
            ConnectInfo::<SocketAddr>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        if peer.ip().is_loopback() {
            Ok(FromNode)
        } else {
            Err(error(StatusCode::FORBIDDEN, "the IPAM API is only available from the node itself"))
        }
    }
}

/// A JSON request body, rejected with our JSON error shape.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(t)) => Ok(Body(t)),
            Err(e) => Err(error(StatusCode::BAD_REQUEST, format!("bad request body: {e}"))),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AllocateReq {
    container_id: String,
    #[serde(default = "default_ifname")]
    ifname: String,
}

fn default_ifname() -> String {
    "eth0".to_string()
}

// The error is a ready-made response; its size is irrelevant next to the
// HTTP round trip.
#[allow(clippy::result_large_err)]
fn check_id(id: &str) -> Result<(), Response> {
    if id.is_empty() || id.len() > 256 {
        return Err(error(StatusCode::BAD_REQUEST, "container_id must be 1 to 256 characters"));
    }
    Ok(())
}

async fn allocate(s: &Shared, container_id: String, ifname: String) -> Result<crate::ipam::Lease, Response> {
    check_id(&container_id)?;
    match ask(s, |reply| Command::IpamAllocate { container_id, ifname, reply }).await? {
        IpamReply::Ok(lease) => Ok(lease),
        IpamReply::Unavailable(why) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("no address available yet: {why}"), "retry": true })),
        )
            .into_response()),
        IpamReply::Refused(why) => Err(error(StatusCode::CONFLICT, why)),
    }
}

async fn ipam_allocate(State(s): State<Arc<Shared>>, _: FromNode, Body(req): Body<AllocateReq>) -> Response {
    match allocate(&s, req.container_id, req.ifname).await {
        Ok(lease) => Json(lease).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct ReleaseReq {
    container_id: String,
    ifname: Option<String>,
}

async fn ipam_release(State(s): State<Arc<Shared>>, _: FromNode, Body(req): Body<ReleaseReq>) -> Response {
    match ask(&s, |reply| Command::IpamRelease { container_id: req.container_id, ifname: req.ifname, reply }).await {
        Ok(n) => Json(json!({ "released": n })).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct LookupReq {
    container_id: String,
    #[serde(default = "default_ifname")]
    ifname: String,
}

async fn ipam_lookup(State(s): State<Arc<Shared>>, _: FromNode, Query(q): Query<LookupReq>) -> Response {
    match ask(&s, |reply| Command::IpamLookup { container_id: q.container_id, ifname: q.ifname, reply }).await {
        Ok(Some(lease)) => Json(lease).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no address allocated for that container and interface"),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct GcReq {
    valid: Vec<ReleaseReq>,
}

async fn ipam_gc(State(s): State<Arc<Shared>>, _: FromNode, Body(req): Body<GcReq>) -> Response {
    let valid = req.valid.into_iter().map(|v| (v.container_id, v.ifname.unwrap_or_else(default_ifname))).collect();
    match ask(&s, |reply| Command::IpamGc { valid, reply }).await {
        Ok(n) => Json(json!({ "released": n })).into_response(),
        Err(r) => r,
    }
}

async fn ipam_status(State(s): State<Arc<Shared>>, _: FromNode) -> Response {
    let snap = s.snapshot();
    if !snap.ipam_ready {
        s.command(Command::IpamWanted);
    }
    Json(json!({
        "ready": snap.ready && snap.ipam_ready,
        "range": snap.ipam_range,
        "mtu": snap.mtu,
        "bridge": snap.bridge,
        "gateway": snap.ipam_gateway,
    }))
    .into_response()
}

/// Weave's `POST /ip/<id>`: the address as text.
async fn weave_ip_allocate(
    State(s): State<Arc<Shared>>,
    _: FromNode,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match allocate(&s, id, default_ifname()).await {
        Ok(lease) => text(format!("{}\n", lease.ip)),
        Err(r) => r,
    }
}

async fn weave_ip_release(
    State(s): State<Arc<Shared>>,
    _: FromNode,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match ask(&s, |reply| Command::IpamRelease { container_id: id, ifname: None, reply }).await {
        Ok(_) => text(String::new()),
        Err(r) => r,
    }
}

async fn rmpeer(State(s): State<Arc<Shared>>, _: FromNode, RawForm(form): RawForm) -> Response {
    let Some(name) = form_urlencoded_pairs(&form).into_iter().find(|(k, _)| k == "peer").map(|(_, v)| v) else {
        return error(StatusCode::BAD_REQUEST, "rmpeer needs peer=NAME or NICKNAME");
    };
    match ask(&s, |reply| Command::Rmpeer { peer: name, reply }).await {
        Ok(Ok(msg)) => text(format!("{msg}\n")),
        Ok(Err(msg)) => (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response(),
        Err(r) => r,
    }
}

/// Parses `peer=a&peer=b&replace=true` (repeatable keys, which axum's
/// typed `Form` can't express).
fn parse_peers(form: &[u8]) -> Result<(Vec<String>, bool), String> {
    let mut peers = Vec::new();
    let mut replace = false;
    for (k, v) in form_urlencoded_pairs(form) {
        match k.as_str() {
            "peer" => {
                crate::control::parse_target(&v).map_err(|e| format!("peer {v:?}: {e}"))?;
                peers.push(v);
            }
            "replace" => replace = v == "true",
            _ => return Err(format!("unknown form field {k:?}")),
        }
    }
    Ok((peers, replace))
}

fn form_urlencoded_pairs(form: &[u8]) -> Vec<(String, String)> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (b'+', _, _) => out.push(b' '),
                (b'%', Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                (b, _, _) => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(form)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

async fn connect(State(s): State<Arc<Shared>>, RawForm(form): RawForm) -> Response {
    match parse_peers(&form) {
        Ok((peers, replace)) => {
            s.command(Command::Connect { peers, replace });
            text(String::new())
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn forget(State(s): State<Arc<Shared>>, RawForm(form): RawForm) -> Response {
    match parse_peers(&form) {
        Ok((peers, _)) => {
            s.command(Command::Forget { peers });
            text(String::new())
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// `weft reset` stops the router before removing what it made.
async fn shutdown(State(s): State<Arc<Shared>>, _: FromNode) -> Response {
    s.command(Command::Shutdown);
    text("shutting down\n".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_peers_and_escapes() {
        let (peers, replace) = parse_peers(b"peer=10.0.0.1%3A6783&peer=b.example&replace=true").unwrap();
        assert_eq!(peers, vec!["10.0.0.1:6783", "b.example"]);
        assert!(replace);
        assert!(parse_peers(b"bogus=1").is_err());
        assert!(parse_peers(b"peer=host:notaport").is_err());
    }
}
