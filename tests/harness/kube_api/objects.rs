//! GET, POST, PUT, PATCH and DELETE of single objects, with the status
//! subresource rules and the checks the real apiserver makes on bodies.

use serde_json::Value;

use super::patch::{merge_patch, strategic_merge_patch};
use super::resource::{Resource, Target};
use super::status::{delete_success, ApiError};
use super::store::Store;

pub const MERGE_PATCH: &str = "application/merge-patch+json";
pub const STRATEGIC_PATCH: &str = "application/strategic-merge-patch+json";

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("json parse error: {e}")))
}

/// Decodes a create/update body and checks it is the URL's type.
fn typed_body(r: &Resource, body: &[u8]) -> Result<Value, ApiError> {
    let obj = parse_body(body)?;
    let (Some(kind), Some(av)) = (obj["kind"].as_str(), obj["apiVersion"].as_str()) else {
        return Err(ApiError::bad_request(format!("Object 'Kind' is missing in '{obj}'")));
    };
    if av != r.api_version() || kind != r.kind {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            r.api_version()
        )));
    }
    Ok(obj)
}

fn check_namespace(t: &Target, obj: &Value) -> Result<(), ApiError> {
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() && ns != t.namespace => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

/// The Node strategies' split: a write to `/status` keeps the old `spec`
/// (metadata and status change), a write to the main resource keeps the
/// old `status`.
fn split_status(t: &Target, old: &Value, mut new: Value) -> Value {
    if t.resource.status_subresource {
        let kept = if t.subresource.is_some() { "spec" } else { "status" };
        match old.get(kept) {
            Some(v) => new[kept] = v.clone(),
            None => _ = new.as_object_mut().map(|o| o.remove(kept)),
        }
    }
    new
}

fn unsupported(content_type: &str, accepted: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: {accepted} \
             (this test double speaks JSON only; got {content_type:?})"
        ),
    )
}

/// One object request; returns the HTTP status and the answer.
pub fn handle(store: &mut Store, t: &Target, content_type: &str, body: &[u8]) -> Result<(u16, Value), ApiError> {
    let r = t.resource;
    let media = content_type.split(';').next().unwrap_or_default().trim();
    // kubectl sends built-in types as protobuf, which this double does not
    // decode: say so rather than fail to parse.
    if t.verb != "patch" && !body.is_empty() && !matches!(media, "" | "application/json") {
        return Err(unsupported(content_type, "application/json"));
    }
    let current = || store.get(r, &t.namespace, &t.name).cloned().ok_or_else(|| ApiError::not_found(r, &t.name));
    match t.verb {
        "get" => Ok((200, current()?)),
        "create" => {
            let obj = typed_body(r, body)?;
            check_namespace(t, &obj)?;
            Ok((201, store.create(r, &t.namespace, obj)?))
        }
        "update" => {
            let obj = typed_body(r, body)?;
            check_namespace(t, &obj)?;
            let body_name = obj["metadata"]["name"].as_str().unwrap_or_default();
            if body_name != t.name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({})",
                    t.name
                )));
            }
            let new = split_status(t, &current()?, obj);
            Ok((200, store.update(r, &t.namespace, &t.name, new)?))
        }
        "patch" => {
            let patch = parse_body(body)?;
            let old = current()?;
            let mut new = old.clone();
            match media {
                MERGE_PATCH => merge_patch(&mut new, &patch),
                STRATEGIC_PATCH => strategic_merge_patch(&mut new, &patch),
                // No JSON patch (RFC 6902) or server-side apply.
                _ => return Err(unsupported(content_type, &format!("{MERGE_PATCH}, {STRATEGIC_PATCH}"))),
            }
            let new = split_status(t, &old, new);
            Ok((200, store.update(r, &t.namespace, &t.name, new)?))
        }
        "delete" => {
            let opts = if body.is_empty() { Value::Null } else { parse_body(body)? };
            let pre = &opts["preconditions"];
            let gone = store.delete(r, &t.namespace, &t.name, pre["resourceVersion"].as_str(), pre["uid"].as_str())?;
            Ok((200, delete_success(r, &t.name, &gone["metadata"]["uid"])))
        }
        other => Err(ApiError::new(405, "MethodNotAllowed", format!("verb {other} is not supported here"))),
    }
}
