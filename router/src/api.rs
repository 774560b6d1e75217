//! The HTTP API on 127.0.0.1:6784, Weave-style, so `curl` habits and
//! scripts carry over. Reads come from the published snapshot; writes are
//! commands to the control core.

use crate::core::{Command, Shared};
use axum::extract::{RawForm, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/status/peers", get(status_peers))
        .route("/status/connections", get(status_connections))
        .route("/status/targets", get(status_targets))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .with_state(shared)
}

fn text(body: String) -> Response {
    ([("content-type", "text/plain; charset=utf-8")], body).into_response()
}

fn render(shared: &Shared, f: impl FnOnce(&crate::status::Snapshot) -> String) -> Response {
    let snap = shared.snapshot();
    if !snap.ready {
        return (StatusCode::SERVICE_UNAVAILABLE, "weft router is starting\n").into_response();
    }
    text(f(&snap))
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    render(&s, |s| s.render_status())
}

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
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render(&gauges)).into_response()
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
