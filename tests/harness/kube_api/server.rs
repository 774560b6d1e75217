//! The HTTPS server: accept loop, TLS, HTTP/1.1, and per request the order
//! the apiserver applies: (faults), authentication, routing, RBAC, then the
//! list/watch/object handlers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, USER_AGENT};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::list::list;
use super::log::ApiRequest;
use super::objects;
use super::query::Query;
use super::resource::{route, Route};
use super::select::Selector;
use super::state::{lock, until, State};
use super::status::ApiError;
use super::watch::{self, Body, WatchRequest};

/// The apiserver's request body limit.
const MAX_BODY: usize = 3 << 20;
/// `timeoutSeconds` absent: the apiserver picks 30-60 min.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Accepts until the server goes down, then drops the listener (so new
/// connections are refused) and returns.
pub async fn serve(state: Arc<State>, tls: Arc<rustls::ServerConfig>, listener: TcpListener) {
    let mut faults = state.faults.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, client)) => {
                    tokio::spawn(connection(state.clone(), TlsAcceptor::from(tls.clone()), tcp, client));
                }
                // E.g. EMFILE: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = until(&mut faults, |f| f.down) => return,
        }
    }
}

async fn connection(state: Arc<State>, tls: TlsAcceptor, tcp: TcpStream, client: SocketAddr) {
    let mut faults = state.faults.subscribe();
    let serve = async {
        let Ok(stream) = tls.accept(tcp).await else { return };
        let svc = service_fn(|req| handle(state.clone(), client, req));
        let _ = http1::Builder::new().timer(TokioTimer::new()).serve_connection(TokioIo::new(stream), svc).await;
    };
    // Going down closes every connection, open watches included.
    tokio::select! {
        _ = serve => {}
        _ = until(&mut faults, |f| f.down) => {}
    }
}

fn response(code: u16, content_type: &str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    resp
}

fn json(code: u16, v: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(v.to_string())).map_err(|never| match never {}).boxed();
    response(code, "application/json", body)
}

async fn handle(state: Arc<State>, client: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).unwrap_or("").to_owned();
    let (user_agent, content_type, auth) = (header(USER_AGENT), header(CONTENT_TYPE), header(AUTHORIZATION));
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let q = Query::parse(&raw_query);
    let route = route(&method, &path, q.flag("watch"), &state.listen.to_string());
    let verb = match &route {
        Route::Resource(t) => t.verb,
        Route::Discovery(_) => "discovery",
        Route::NotFound => "unknown",
    };
    let i = state.log.push(ApiRequest {
        client,
        method,
        verb: verb.to_owned(),
        path,
        query: raw_query,
        user_agent,
        content_type: content_type.clone(),
        body: String::new(),
        at: Instant::now(),
        status: None,
    });
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            state.log.answered(i, 413);
            let e = ApiError::new(413, "RequestEntityTooLarge", format!("reading the request body: {e}"));
            return Ok(json(413, &e.status()));
        }
    };
    state.log.update(i, |r| r.body = String::from_utf8_lossy(&body).into_owned());
    // Hung requests wait for the switch (or for the connection to close).
    until(&mut state.faults.subscribe(), |f| !f.hang).await;
    let resp = match respond(&state, route, &q, &content_type, &auth, &body).await {
        Ok(resp) => resp,
        Err(e) => json(e.code, &e.status()),
    };
    state.log.answered(i, resp.status().as_u16());
    Ok(resp)
}

async fn respond(
    state: &Arc<State>,
    route: Route,
    q: &Query,
    content_type: &str,
    auth: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    if let Some(code) = state.faults().fail {
        return Err(ApiError::injected(code));
    }
    let token = lock(&state.token).clone();
    if auth.strip_prefix("Bearer ").map(str::trim) != Some(token.as_str()) {
        return Err(ApiError::unauthorized());
    }
    let t = match route {
        // Discovery is open to every authenticated user (system:discovery).
        Route::Discovery(doc) => return Ok(json(200, &doc)),
        Route::NotFound => return Err(ApiError::no_route()),
        Route::Resource(t) => t,
    };
    let selector = Selector::parse(q.get("labelSelector"), q.get("fieldSelector"))?;
    if let Some(rbac) = lock(&state.rbac).as_ref() {
        let name = if t.name.is_empty() { selector.pinned_name().unwrap_or_default() } else { t.name.as_str() };
        if !rbac.allows(&t, name) {
            let sub = t.subresource.as_deref();
            return Err(ApiError::forbidden(t.resource, &state.user, t.verb, &t.namespace, name, sub));
        }
    }
    match t.verb {
        "watch" => {
            let rv = match q.get("resourceVersion") {
                "" | "0" => None,
                s => Some(s.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))?),
            };
            let mut http_410 = false;
            state.set_faults(|f| {
                http_410 = f.http_410_watches > 0;
                f.http_410_watches = f.http_410_watches.saturating_sub(1);
            });
            if http_410 {
                return Err(ApiError::expired(rv.unwrap_or(0), state.read(|s| s.floor(t.resource))));
            }
            // A black-holed watch request gets no response head either.
            until(&mut state.faults.subscribe(), |f| !f.black_hole).await;
            let timeout = match q.get("timeoutSeconds") {
                "" => DEFAULT_WATCH_TIMEOUT,
                s => Duration::from_secs(
                    s.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
                ),
            };
            let w = WatchRequest {
                resource: t.resource,
                namespace: t.namespace.clone(),
                selector,
                rv,
                timeout,
                bookmarks: q.flag("allowWatchBookmarks"),
                send_initial: q.flag("sendInitialEvents"),
            };
            Ok(response(200, "application/json", watch::start(state.clone(), w)))
        }
        "list" => Ok(json(200, &state.read(|s| list(s, &t, q, &selector))?)),
        _ => {
            let (code, v) = state.write(|s| objects::handle(s, &t, content_type, body))?;
            Ok(json(code, &v))
        }
    }
}
