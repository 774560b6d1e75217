//! Label and field selectors (`labelSelector=`, `fieldSelector=`), parsed
//! once per request into a filter.

use serde_json::Value;

use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A label selector and a field selector, both ANDed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Req>,
    /// On `metadata.name` / `metadata.namespace` only (what this double's
    /// resources support for every type).
    fields: Vec<Req>,
}

/// Splits on commas outside parentheses (`a in (x,y),b`).
fn split_terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn parse_set(key: &str, rest: &str, negate: bool) -> Option<Req> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    let values = inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
    let key = key.trim().to_owned();
    Some(if negate { Req::NotIn(key, values) } else { Req::In(key, values) })
}

fn parse_term(t: &str) -> Option<Req> {
    let kv = |k: &str, v: &str| (k.trim().to_owned(), v.trim().to_owned());
    if let Some((k, v)) = t.split_once("!=") {
        let (k, v) = kv(k, v);
        return Some(Req::Ne(k, v));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        let (k, v) = kv(k, v);
        return Some(Req::Eq(k, v));
    }
    if let Some((k, rest)) = t.split_once(" notin ") {
        return parse_set(k, rest, true);
    }
    if let Some((k, rest)) = t.split_once(" in ") {
        return parse_set(k, rest, false);
    }
    match t.strip_prefix('!') {
        Some(k) => Some(Req::Absent(k.trim().to_owned())),
        None if !t.contains(char::is_whitespace) => Some(Req::Exists(t.to_owned())),
        None => None,
    }
}

impl Selector {
    pub fn parse(labels: &str, fields: &str) -> Result<Selector, ApiError> {
        let labels = split_terms(labels)
            .into_iter()
            .map(|t| parse_term(t).ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: {t:?}"))))
            .collect::<Result<_, _>>()?;
        let mut field_reqs = Vec::new();
        for t in split_terms(fields) {
            let req = parse_term(t);
            let key = match &req {
                Some(Req::Eq(k, _) | Req::Ne(k, _)) => k.as_str(),
                _ => return Err(ApiError::bad_request(format!("invalid selector: '{fields}'"))),
            };
            if key != "metadata.name" && key != "metadata.namespace" {
                return Err(ApiError::bad_request(format!("field label not supported: {key}")));
            }
            field_reqs.extend(req);
        }
        Ok(Selector { labels, fields: field_reqs })
    }

    /// The name an equality `metadata.name` field selector pins, which the
    /// apiserver authorizes as a request for that name.
    pub fn pinned_name(&self) -> Option<&str> {
        self.fields.iter().find_map(|r| match r {
            Req::Eq(k, v) if k == "metadata.name" => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let label = |k: &str| meta["labels"][k].as_str().map(str::to_owned);
        let field = |k: &str| meta[k.trim_start_matches("metadata.")].as_str().map(str::to_owned);
        let ok = |r: &Req, get: &dyn Fn(&str) -> Option<String>| match r {
            Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
            Req::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.contains(&x)),
            Req::Exists(k) => get(k).is_some(),
            Req::Absent(k) => get(k).is_none(),
        };
        // A missing field reads as "" (a cluster-scoped object's namespace).
        let field_or_empty = |k: &str| Some(field(k).unwrap_or_default());
        self.labels.iter().all(|r| ok(r, &label)) && self.fields.iter().all(|r| ok(r, &field_or_empty))
    }
}
