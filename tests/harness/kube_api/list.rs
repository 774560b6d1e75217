//! LIST: selectors, `limit`/`continue` paging over a consistent snapshot,
//! and the `resourceVersion` / `resourceVersionMatch` semantics.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::query::Query;
use super::resource::Target;
use super::select::Selector;
use super::status::ApiError;
use super::store::Store;

/// The (namespace, name) key the continue token resumes after.
fn object_key(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (m["namespace"].as_str().unwrap_or_default().to_owned(), m["name"].as_str().unwrap_or_default().to_owned())
}

/// The apiserver's token shape: base64url of `{"v","rv","start"}` where
/// `start` is the key to continue from.
fn encode_continue(rv: u64, (ns, name): &(String, String)) -> String {
    let start = if ns.is_empty() { format!("{name}\u{0}") } else { format!("{ns}/{name}\u{0}") };
    URL_SAFE_NO_PAD.encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).to_string())
}

fn decode_continue(token: &str, namespaced: bool) -> Result<(u64, (String, String)), ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let raw = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|e| bad(&e.to_string()))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(&e.to_string()))?;
    let (Some(rv), Some(start)) = (v["rv"].as_u64(), v["start"].as_str()) else {
        return Err(bad("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
    };
    let start = start.trim_end_matches('\u{0}');
    let key = match start.split_once('/') {
        Some((ns, name)) if namespaced => (ns.to_owned(), name.to_owned()),
        _ => (String::new(), start.to_owned()),
    };
    Ok((rv, key))
}

pub fn list(store: &Store, t: &Target, q: &Query, selector: &Selector) -> Result<Value, ApiError> {
    let r = t.resource;
    let limit: usize = match q.get("limit") {
        "" => 0,
        l => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
    };
    let (rv, rv_match, token) = (q.get("resourceVersion"), q.get("resourceVersionMatch"), q.get("continue"));
    let expired_continue = |_floor| {
        ApiError::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        )
    };
    let (at, after, objects) = if !token.is_empty() {
        let (at, after) = decode_continue(token, r.namespaced)?;
        (at, Some(after), store.objects_at(r, &t.namespace, at).map_err(expired_continue)?)
    } else if rv_match == "Exact" {
        let at: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
        let objects = store.objects_at(r, &t.namespace, at).map_err(|floor| ApiError::expired(at, floor))?;
        (at, None, objects)
    } else {
        (store.rev(), None, store.objects(r, &t.namespace))
    };
    // resourceVersion=0 is served from the watch cache, which ignores limit.
    let limit = if rv == "0" && token.is_empty() { 0 } else { limit };
    let mut items: Vec<Value> = objects
        .into_iter()
        .filter(|o| selector.matches(o))
        .filter(|o| after.as_ref().is_none_or(|a| object_key(o) > *a))
        .collect();
    let mut meta = json!({"resourceVersion": at.to_string()});
    if limit > 0 && items.len() > limit {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            meta["continue"] = json!(encode_continue(at, &object_key(last)));
        }
        if selector.is_empty() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    // Items of a list carry no kind/apiVersion; the list does.
    for item in &mut items {
        if let Some(o) = item.as_object_mut() {
            o.remove("kind");
            o.remove("apiVersion");
        }
    }
    Ok(json!({
        "kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta, "items": items,
    }))
}
