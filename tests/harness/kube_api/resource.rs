//! The resource types the double serves, how request paths map onto them
//! (the apiserver's `RequestInfo`), and the discovery documents kubectl
//! reads before it touches a resource.

use serde_json::{json, Value};

/// One served resource type, as the apiserver's discovery describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural name, the one in URLs and RBAC rules.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource: writes to the main resource keep the old
    /// status, writes to `/status` change nothing else.
    pub status_subresource: bool,
    pub short_names: &'static [&'static str],
}

impl Resource {
    /// `v1` or `group/version`, as in objects' `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `leases.coordination.k8s.io`, as in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const fn core(plural: &'static str, singular: &'static str, kind: &'static str, namespaced: bool) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        status_subresource: false,
        short_names: &[],
    }
}

/// Everything served. Both Event APIs are listed because kubectl and
/// client-go write core/v1 Events while kube-rs's `Recorder` writes
/// `events.k8s.io/v1` ones; unlike the real server they are stored apart.
pub static RESOURCES: &[Resource] = &[
    Resource { status_subresource: true, short_names: &["no"], ..core("nodes", "node", "Node", false) },
    Resource { short_names: &["cm"], ..core("configmaps", "configmap", "ConfigMap", true) },
    Resource { short_names: &["ev"], ..core("events", "event", "Event", true) },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        status_subresource: false,
        short_names: &[],
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
        short_names: &["ev"],
    },
];

/// The resource whose objects have this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// A request for a resource, decoded from method, path and query the way
/// the apiserver's `RequestInfoFactory` does.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: &'static Resource,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// Empty for cluster-scoped resources and all-namespace lists.
    pub namespace: String,
    /// Empty for list, watch and create (unless a `metadata.name` field
    /// selector names one, which RBAC `resourceNames` then applies to).
    pub name: String,
    pub subresource: Option<String>,
}

/// What a path is: a resource request, a discovery document, or neither.
#[derive(Debug)]
pub enum Route {
    Resource(Target),
    Discovery(Value),
    NotFound,
}

/// Decodes `method path?query`. `watch` is the `watch` query parameter.
pub fn route(method: &str, path: &str, watch: bool, listen: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Discovery(version_doc()),
        ["api"] => return Route::Discovery(api_versions(listen)),
        ["apis"] => return Route::Discovery(api_groups()),
        ["api", v] => return discovery_for("", v),
        ["apis", g, v] => return discovery_for(g, v),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (*ns, rest),
        _ => ("", rest),
    };
    let (plural, name, subresource) = match rest {
        [p] => (*p, "", None),
        [p, n] => (*p, *n, None),
        [p, n, s] => (*p, *n, Some(s.to_string())),
        _ => return Route::NotFound,
    };
    let Some(resource) = RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    else {
        return Route::NotFound;
    };
    if (!namespace.is_empty() && !resource.namespaced)
        || subresource.as_deref().is_some_and(|s| s != "status" || !resource.status_subresource)
    {
        return Route::NotFound;
    }
    let verb = match (method, name.is_empty()) {
        ("GET", true) if watch => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", true) => "create",
        ("PUT", false) => "update",
        ("PATCH", false) => "patch",
        ("DELETE", false) => "delete",
        _ => return Route::NotFound,
    };
    Route::Resource(Target { resource, verb, namespace: namespace.to_owned(), name: name.to_owned(), subresource })
}

fn version_doc() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-weft-test-double",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"
    })
}

fn api_versions(listen: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": listen}]
    })
}

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = RESOURCES.iter().map(|r| r.group).filter(|g| !g.is_empty()).collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn api_groups() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn discovery_for(group: &str, version: &str) -> Route {
    let served: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return Route::NotFound;
    }
    let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
    let mut resources = Vec::new();
    for r in served {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": verbs, "shortNames": r.short_names,
        }));
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    let mut doc = json!({"kind": "APIResourceList", "groupVersion": gv, "resources": resources});
    // The core group's list carries no apiVersion; the named groups' do.
    if !group.is_empty() {
        doc["apiVersion"] = json!("v1");
    }
    Route::Discovery(doc)
}
