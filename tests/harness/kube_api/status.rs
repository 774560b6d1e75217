//! `Status` objects exactly as the apiserver sends them for errors (and for
//! a successful delete): clients branch on `reason` and `code`.

use serde_json::{json, Value};

use super::resource::Resource;

/// An API error: HTTP code, `reason`, `message` and optional `details`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn about(mut self, r: &Resource, name: &str) -> ApiError {
        let mut d = json!({"name": name, "kind": r.plural});
        if !r.group.is_empty() {
            d["group"] = json!(r.group);
        }
        self.details = Some(d);
        self
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} {name:?} not found", r.qualified())).about(r, name)
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} {name:?} already exists", r.qualified())).about(r, name)
    }

    /// The optimistic-concurrency failure of an update with a stale
    /// `metadata.resourceVersion` (or an unmet delete precondition).
    pub fn conflict(r: &Resource, name: &str, why: &str) -> ApiError {
        let message = format!("Operation cannot be fulfilled on {} {name:?}: {why}", r.qualified());
        ApiError::new(409, "Conflict", message).about(r, name)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// The 404 for a path that names no served resource.
    pub fn no_route() -> ApiError {
        let mut e = ApiError::new(404, "NotFound", "the server could not find the requested resource");
        e.details = Some(json!({}));
        e
    }

    /// Watch cache and etcd compaction: the resourceVersion is older than
    /// the oldest event still kept.
    pub fn expired(rv: u64, floor: u64) -> ApiError {
        ApiError::new(410, "Expired", format!("too old resource version: {rv} ({floor})"))
    }

    /// RBAC's denial, message as `ForbiddenStatusError` builds it.
    pub fn forbidden(r: &Resource, user: &str, verb: &str, ns: &str, name: &str, sub: Option<&str>) -> ApiError {
        let resource = match sub {
            Some(s) => format!("{}/{s}", r.plural),
            None => r.plural.to_owned(),
        };
        let scope = if ns.is_empty() { "at the cluster scope".to_owned() } else { format!("in the namespace {ns:?}") };
        let why = format!("User {user:?} cannot {verb} resource {resource:?} in API group {:?} {scope}", r.group);
        let subject = if name.is_empty() { r.qualified() } else { format!("{} {name:?}", r.qualified()) };
        let mut e = ApiError::new(403, "Forbidden", format!("{subject} is forbidden: {why}")).about(r, name);
        if name.is_empty() {
            if let Some(d) = e.details.as_mut().and_then(Value::as_object_mut) {
                d.remove("name");
            }
        }
        e
    }

    /// An injected failure (`fail_requests`): the reason the real server
    /// gives with that code.
    pub fn injected(code: u16) -> ApiError {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        ApiError::new(code, reason, format!("injected failure (test double): HTTP {code}"))
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// What DELETE returns for types that do not return the deleted object
/// (`finalizeDelete`: `details.kind` is the resource, not the kind).
pub fn delete_success(r: &Resource, name: &str, uid: &Value) -> Value {
    let mut d = json!({"name": name, "kind": r.plural, "uid": uid});
    if !r.group.is_empty() {
        d["group"] = json!(r.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}
