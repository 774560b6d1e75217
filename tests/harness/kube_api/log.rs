//! The request log: every request as it arrived, with its answer once given.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

/// One request the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// The client's address: which router (node address) sent it.
    pub client: SocketAddr,
    /// HTTP method (`GET`, `PATCH`, ...).
    pub method: String,
    /// Kubernetes verb: `get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`; `discovery` for discovery documents and `/version`;
    /// `unknown` for paths that name nothing served.
    pub verb: String,
    pub path: String,
    /// Raw query string (without `?`), e.g. `&limit=500&labelSelector=...`.
    pub query: String,
    pub user_agent: String,
    pub content_type: String,
    /// Request body (PATCH/PUT/POST payloads), lossily as UTF-8.
    pub body: String,
    pub at: Instant,
    /// HTTP status of the answer; `None` while unanswered (hung, or cut
    /// before an answer). A watch's is its response head's.
    pub status: Option<u16>,
}

#[derive(Debug, Default)]
pub struct RequestLog(Mutex<Vec<ApiRequest>>);

impl RequestLog {
    /// Appends `req` and returns its index for [`RequestLog::answered`].
    pub fn push(&self, req: ApiRequest) -> usize {
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.push(req);
        log.len() - 1
    }

    /// Fills in the verb once the path is decoded and the body once read.
    pub fn update(&self, i: usize, f: impl FnOnce(&mut ApiRequest)) {
        if let Some(r) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
            f(r);
        }
    }

    pub fn answered(&self, i: usize, status: u16) {
        self.update(i, |r| r.status = Some(status));
    }

    pub fn all(&self) -> Vec<ApiRequest> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
