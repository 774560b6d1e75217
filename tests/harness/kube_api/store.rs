//! The object store: one global revision counter (etcd's), stamped into
//! `metadata.resourceVersion` on every write, and per resource a bounded
//! history of changes (the watch cache), from which watches are served and
//! paged lists are read at a consistent revision.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::resource::{Resource, RESOURCES};
use super::status::ApiError;

/// Objects are ordered by (namespace, name), as etcd orders their keys.
pub type Key = (String, String);

/// How many changes per resource the history keeps by default (the real
/// watch cache's default capacity is 100).
pub const DEFAULT_HISTORY: usize = 100;

/// One write: `old` is `None` for a create, `new` is `None` for a delete.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

#[derive(Debug, Default)]
struct Collection {
    objects: BTreeMap<Key, Value>,
    history: VecDeque<(Key, Change)>,
    /// Every change after this revision is still in `history`; a watch or
    /// a paged list from an older revision has expired.
    floor: u64,
}

#[derive(Debug)]
pub struct Store {
    rev: u64,
    history_limit: usize,
    collections: Vec<Collection>,
    uid_hasher: RandomState,
    uid_seq: u64,
}

fn index(r: &Resource) -> usize {
    RESOURCES.iter().position(|x| std::ptr::eq(x, r)).expect("resource from RESOURCES")
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

/// `2026-01-02T03:04:05Z`: the apiserver's `metav1.Time` format.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The object without `resourceVersion`, to spot no-op writes.
fn sans_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    o
}

impl Store {
    pub fn new() -> Store {
        Store {
            // A fresh etcd does not start at 1; neither should clients' RVs.
            rev: 100,
            history_limit: DEFAULT_HISTORY,
            collections: RESOURCES.iter().map(|_| Collection::default()).collect(),
            uid_hasher: RandomState::new(),
            uid_seq: 0,
        }
    }

    /// The current global revision.
    pub fn rev(&self) -> u64 {
        self.rev
    }

    pub fn floor(&self, r: &Resource) -> u64 {
        self.collections[index(r)].floor
    }

    fn uid(&mut self) -> String {
        self.uid_seq += 1;
        let a = self.uid_hasher.hash_one(self.uid_seq);
        let b = self.uid_hasher.hash_one(!self.uid_seq);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    pub fn get(&self, r: &Resource, ns: &str, name: &str) -> Option<&Value> {
        self.collections[index(r)].objects.get(&key(ns, name))
    }

    /// Current objects in `ns` (all namespaces if empty), in key order.
    pub fn objects(&self, r: &Resource, ns: &str) -> Vec<Value> {
        self.collections[index(r)]
            .objects
            .iter()
            .filter(|((n, _), _)| ns.is_empty() || n == ns)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The objects as they were at revision `at` (>= the floor), for the
    /// pages after the first of a paged list.
    pub fn objects_at(&self, r: &Resource, ns: &str, at: u64) -> Result<Vec<Value>, u64> {
        let c = &self.collections[index(r)];
        if at < c.floor {
            return Err(c.floor);
        }
        let mut objects = c.objects.clone();
        for (k, ch) in c.history.iter().rev().take_while(|(_, ch)| ch.rv > at) {
            match &ch.old {
                Some(old) => objects.insert(k.clone(), old.clone()),
                None => objects.remove(k),
            };
        }
        Ok(objects.into_iter().filter(|((n, _), _)| ns.is_empty() || n == ns).map(|(_, o)| o).collect())
    }

    /// Changes after revision `after`, or `Err(floor)` if some are gone.
    pub fn changes_after(&self, r: &Resource, after: u64) -> Result<Vec<Change>, u64> {
        let c = &self.collections[index(r)];
        if after < c.floor {
            return Err(c.floor);
        }
        Ok(c.history.iter().filter(|(_, ch)| ch.rv > after).map(|(_, ch)| ch.clone()).collect())
    }

    fn record(&mut self, r: &Resource, k: Key, old: Option<Value>, new: Option<Value>) {
        let limit = self.history_limit;
        let c = &mut self.collections[index(r)];
        match &new {
            Some(obj) => c.objects.insert(k.clone(), obj.clone()),
            None => c.objects.remove(&k),
        };
        c.history.push_back((k, Change { rv: self.rev, old, new }));
        while c.history.len() > limit {
            if let Some((_, ch)) = c.history.pop_front() {
                c.floor = ch.rv;
            }
        }
    }

    /// POST: stamps name (from `generateName` if needed), namespace, uid,
    /// creationTimestamp, resourceVersion, kind and apiVersion.
    pub fn create(&mut self, r: &'static Resource, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let mut name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() {
            let Some(prefix) = obj["metadata"]["generateName"].as_str().filter(|p| !p.is_empty()) else {
                return Err(ApiError::new(422, "Invalid", "name or generateName is required"));
            };
            let suffix: String = self.uid().chars().filter(char::is_ascii_alphanumeric).take(5).collect();
            name = format!("{prefix}{suffix}");
        }
        if self.get(r, ns, &name).is_some() {
            return Err(ApiError::already_exists(r, &name));
        }
        self.rev += 1;
        let uid = self.uid();
        obj["kind"] = json!(r.kind);
        obj["apiVersion"] = json!(r.api_version());
        let m = &mut obj["metadata"];
        m["name"] = json!(name);
        if r.namespaced {
            m["namespace"] = json!(ns);
        }
        m["uid"] = json!(uid);
        m["creationTimestamp"] = json!(rfc3339(SystemTime::now()));
        m["resourceVersion"] = json!(self.rev.to_string());
        self.record(r, key(ns, &name), None, Some(obj.clone()));
        Ok(obj)
    }

    /// PUT semantics: `metadata.resourceVersion` in `obj`, if set, must be
    /// the current one (optimistic concurrency); identity fields are kept;
    /// a write that changes nothing keeps the revision and sends no event.
    pub fn update(&mut self, r: &'static Resource, ns: &str, name: &str, mut obj: Value) -> Result<Value, ApiError> {
        let Some(old) = self.get(r, ns, name).cloned() else {
            return Err(ApiError::not_found(r, name));
        };
        let want = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        if !want.is_empty() && want != old["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
            return Err(ApiError::conflict(
                r,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        obj["kind"] = json!(r.kind);
        obj["apiVersion"] = json!(r.api_version());
        for field in ["name", "namespace", "uid", "creationTimestamp", "resourceVersion"] {
            match old["metadata"].get(field) {
                Some(v) => obj["metadata"][field] = v.clone(),
                None => _ = obj["metadata"].as_object_mut().map(|m| m.remove(field)),
            }
        }
        if sans_rv(&obj) == sans_rv(&old) {
            return Ok(old);
        }
        self.rev += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rev.to_string());
        self.record(r, key(ns, name), Some(old), Some(obj.clone()));
        Ok(obj)
    }

    /// DELETE with optional preconditions; returns the deleted object,
    /// stamped with the deletion's revision (as DELETED events carry it).
    pub fn delete(
        &mut self,
        r: &'static Resource,
        ns: &str,
        name: &str,
        pre_rv: Option<&str>,
        pre_uid: Option<&str>,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.get(r, ns, name).cloned() else {
            return Err(ApiError::not_found(r, name));
        };
        let (rv, uid) = (old["metadata"]["resourceVersion"].as_str(), old["metadata"]["uid"].as_str());
        if let Some(want) = pre_rv.filter(|w| Some(*w) != rv) {
            let why = format!(
                "the ResourceVersion in the precondition ({want}) does not match the ResourceVersion in record ({}). The object might have been modified",
                rv.unwrap_or_default()
            );
            return Err(ApiError::conflict(r, name, &why));
        }
        if let Some(want) = pre_uid.filter(|w| Some(*w) != uid) {
            let why = format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
                uid.unwrap_or_default()
            );
            return Err(ApiError::conflict(r, name, &why));
        }
        self.rev += 1;
        let mut gone = old.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rev.to_string());
        self.record(r, key(ns, name), Some(old), None);
        Ok(gone)
    }

    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        for c in &mut self.collections {
            while c.history.len() > self.history_limit {
                if let Some((_, ch)) = c.history.pop_front() {
                    c.floor = ch.rv;
                }
            }
        }
    }

    /// Compaction past every revision handed out so far, as etcd's after
    /// some unrelated write: every older resourceVersion has expired, and a
    /// fresh list's is current.
    pub fn compact(&mut self) {
        self.rev += 1;
        for c in &mut self.collections {
            c.history.clear();
            c.floor = self.rev;
        }
    }
}
