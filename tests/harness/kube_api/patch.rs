//! PATCH bodies: JSON merge patch (RFC 7386) and the subset of strategic
//! merge patch that the served types need.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, anything else
/// (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Lists that strategic merge patch merges by a key instead of replacing
/// (their `patchMergeKey` in the Go types). Everything else in the served
/// types is a map or a replaced list.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" | "addresses" => Some("type"),
        "taints" => Some("key"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Strategic merge patch: maps as in [`merge_patch`], keyed lists merged
/// element by element (`{"$patch": "delete"}` removes one), `finalizers`
/// merged as a set, `$patch: replace` on a map replaces it, and the
/// ordering directives kubectl sends (`$setElementOrder/...`,
/// `$retainKeys`) are accepted and ignored.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        match (v, merge_key(k)) {
            (Value::Null, _) => {
                t.remove(k);
            }
            (Value::Array(items), Some(key)) => {
                let list = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                merge_keyed_list(list, items, key);
            }
            (Value::Array(items), None) if k == "finalizers" => {
                let list = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(have) = list {
                    for item in items {
                        if !have.contains(item) {
                            have.push(item.clone());
                        }
                    }
                }
            }
            (Value::Object(_), _) => strategic_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v),
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn merge_keyed_list(list: &mut Value, items: &[Value], key: &str) {
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let Value::Array(have) = list else { return };
    for item in items {
        let id = &item[key];
        let pos = have.iter().position(|h| !id.is_null() && &h[key] == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                have.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut have[i], item),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge_patch(&mut fresh, item);
                have.push(fresh);
            }
        }
    }
}
