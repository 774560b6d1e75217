//! WATCH: one JSON `WatchEvent` per line on a chunked body, from a
//! resourceVersion on (or from the current state), with BOOKMARKs, the
//! in-stream 410 Expired, a clean end after `timeoutSeconds`, and the
//! fault switches for open watches.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::resource::Resource;
use super::select::Selector;
use super::state::{OpenWatch, State};
use super::status::ApiError;
use super::store::{Change, Store};

pub type Body = BoxBody<Bytes, io::Error>;
type Tx = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

/// What a watch request asked for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub resource: &'static Resource,
    /// Empty: all namespaces (or a cluster-scoped resource).
    pub namespace: String,
    pub selector: Selector,
    /// `resourceVersion`: `None` (absent or `0`) starts with the current
    /// objects as ADDED events, a number streams the changes after it.
    pub rv: Option<u64>,
    pub timeout: Duration,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: current objects as ADDED, then a BOOKMARK
    /// annotated `k8s.io/initial-events-end`.
    pub send_initial: bool,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = json!({"type": kind, "object": object}).to_string().into_bytes();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(r: &Resource, rev: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rev.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line("BOOKMARK", &json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": meta}))
}

impl WatchRequest {
    fn in_scope(&self, o: &Value) -> bool {
        (self.namespace.is_empty() || o["metadata"]["namespace"] == self.namespace.as_str()) && self.selector.matches(o)
    }

    /// The event a change is for this watch: an object entering or leaving
    /// the selector is ADDED or DELETED, as the watch cache reports it.
    fn event(&self, ch: &Change) -> Option<Bytes> {
        let was = ch.old.as_ref().is_some_and(|o| self.in_scope(o));
        match &ch.new {
            Some(new) => match (was, self.in_scope(new)) {
                (true, true) => Some(line("MODIFIED", new)),
                (false, true) => Some(line("ADDED", new)),
                (true, false) => Some(line("DELETED", new)),
                (false, false) => None,
            },
            None if was => {
                let mut gone = ch.old.clone()?;
                gone["metadata"]["resourceVersion"] = json!(ch.rv.to_string());
                Some(line("DELETED", &gone))
            }
            None => None,
        }
    }

    /// Starting point and initial events, read in one go from the store.
    fn start(&self, s: &Store) -> Result<(u64, Vec<Bytes>), ApiError> {
        match self.rv {
            Some(rv) if !self.send_initial => match s.floor(self.resource) {
                floor if rv < floor => Err(ApiError::expired(rv, floor)),
                _ => Ok((rv, Vec::new())),
            },
            _ => {
                let objects = s.objects(self.resource, &self.namespace);
                let events = objects.iter().filter(|o| self.in_scope(o)).map(|o| line("ADDED", o)).collect();
                Ok((s.rev(), events))
            }
        }
    }
}

/// Starts the watch task; returns the response body it feeds (expiry is
/// reported in the stream, as the watch cache does).
pub fn start(state: Arc<State>, w: WatchRequest) -> Body {
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move { run(&state, &w, &tx).await });
    StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed()
}

async fn send(tx: &Tx, b: Bytes) -> bool {
    tx.send(Ok(Frame::data(b))).await.is_ok()
}

async fn send_all(tx: &Tx, lines: Vec<Bytes>) -> bool {
    for b in lines {
        if !send(tx, b).await {
            return false;
        }
    }
    true
}

async fn run(state: &State, w: &WatchRequest, tx: &Tx) {
    let _open = OpenWatch::new(state);
    let mut faults = state.faults.subscribe();
    let mut revs = state.revs.subscribe();
    let (drop0, expire0) = {
        let f = faults.borrow_and_update();
        (f.drop_epoch, f.expire_epoch)
    };
    let deadline = Instant::now() + w.timeout;
    let mut last_bookmark = Instant::now();
    let mut last = match state.read(|s| w.start(s).map(|(rv, events)| (rv, events, s.rev()))) {
        Ok((rv, events, rev)) => {
            let mut events = events;
            if w.send_initial {
                events.push(bookmark(w.resource, rev, true));
            }
            if !send_all(tx, events).await {
                return;
            }
            rv
        }
        Err(e) => {
            send(tx, line("ERROR", &e.status())).await;
            return;
        }
    };
    loop {
        let f = faults.borrow_and_update().clone();
        if f.down || f.drop_epoch != drop0 {
            // Cut mid-body: the client sees a truncated chunked stream.
            let _ = tx.send(Err(io::Error::other("watch dropped by the test"))).await;
            return;
        }
        if f.black_hole {
            tokio::select! {
                _ = faults.changed() => continue,
                _ = tx.closed() => return,
            }
        }
        if f.expire_epoch != expire0 {
            let floor = state.read(|s| s.floor(w.resource));
            send(tx, line("ERROR", &ApiError::expired(last, floor).status())).await;
            return;
        }
        let bookmark_due = w.bookmarks && Instant::now() >= last_bookmark + f.bookmark_interval;
        let batch = state.read(|s| {
            let changes = s.changes_after(w.resource, last).map_err(|floor| ApiError::expired(last, floor))?;
            let mut lines: Vec<Bytes> = changes.iter().filter_map(|ch| w.event(ch)).collect();
            if bookmark_due {
                lines.push(bookmark(w.resource, s.rev(), false));
            }
            Ok::<_, ApiError>((s.rev(), lines))
        });
        match batch {
            Ok((rev, lines)) => {
                last = rev;
                if !send_all(tx, lines).await {
                    return;
                }
            }
            Err(e) => {
                send(tx, line("ERROR", &e.status())).await;
                return;
            }
        }
        if bookmark_due {
            last_bookmark = Instant::now();
        }
        if Instant::now() >= deadline {
            return;
        }
        let wake = if w.bookmarks { deadline.min(last_bookmark + f.bookmark_interval) } else { deadline };
        tokio::select! {
            _ = revs.changed() => {}
            _ = faults.changed() => {}
            _ = sleep_until(wake) => {}
            _ = tx.closed() => return,
        }
    }
}
