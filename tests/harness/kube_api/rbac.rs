//! RBAC as the apiserver's authorizer evaluates it, for one service
//! account, from ClusterRole/Role/ClusterRoleBinding/RoleBinding documents
//! (e.g. `deploy/weft.yaml`; other kinds in the file are ignored).

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::resource::Target;

#[derive(Debug, Clone)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

/// The rules that apply to the service account, with where they apply.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    /// From ClusterRoleBindings: everywhere.
    cluster: Vec<Rule>,
    /// From RoleBindings: (namespace, rule), only inside that namespace.
    namespaced: Vec<(String, Rule)>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn rules_of(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| Rule {
                    groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    verbs: strings(&r["verbs"]),
                    names: strings(&r["resourceNames"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a binding's subject is `system:serviceaccount:{ns}:{name}`.
fn binds(binding: &Value, sa_ns: &str, sa_name: &str) -> bool {
    let user = format!("system:serviceaccount:{sa_ns}:{sa_name}");
    binding["subjects"].as_array().into_iter().flatten().any(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("ServiceAccount") => name == sa_name && s["namespace"].as_str() == Some(sa_ns),
            Some("User") => name == user,
            Some("Group") => {
                ["system:serviceaccounts", "system:authenticated"].contains(&name)
                    || name == format!("system:serviceaccounts:{sa_ns}")
            }
            _ => false,
        }
    })
}

impl Rbac {
    /// Reads multi-document YAML and keeps what binds the service account.
    pub fn parse(yaml: &str, sa_ns: &str, sa_name: &str) -> Result<Rbac> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("parsing RBAC YAML")?;
        let docs: Vec<&Value> = docs.iter().filter(|d| d.is_object()).collect();
        let find = |kind: &str, name: &str, ns: &str| {
            docs.iter().find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == name
                    && (ns.is_empty() || d["metadata"]["namespace"] == ns)
            })
        };
        let mut rbac = Rbac::default();
        for b in docs.iter().filter(|d| binds(d, sa_ns, sa_name)) {
            let (ref_kind, ref_name) =
                (b["roleRef"]["kind"].as_str().unwrap_or(""), b["roleRef"]["name"].as_str().unwrap_or(""));
            let ns = b["metadata"]["namespace"].as_str().unwrap_or("");
            let role = match (b["kind"].as_str(), ref_kind) {
                (Some("ClusterRoleBinding"), "ClusterRole") | (Some("RoleBinding"), "ClusterRole") => {
                    find("ClusterRole", ref_name, "")
                }
                (Some("RoleBinding"), "Role") => find("Role", ref_name, ns),
                _ => continue,
            };
            // A dangling roleRef grants nothing on a real cluster either,
            // but in a test file it is almost surely a typo.
            let Some(role) = role else {
                bail!("{} {:?} refers to missing {ref_kind} {ref_name:?}", b["kind"], b["metadata"]["name"])
            };
            let rules = rules_of(role);
            if b["kind"] == "ClusterRoleBinding" {
                rbac.cluster.extend(rules);
            } else {
                rbac.namespaced.extend(rules.into_iter().map(|r| (ns.to_owned(), r)));
            }
        }
        Ok(rbac)
    }

    /// Whether the request is allowed. `name` is the object's name, or the
    /// one a `metadata.name` field selector pins on list/watch.
    pub fn allows(&self, t: &Target, name: &str) -> bool {
        let resource = match &t.subresource {
            Some(s) => format!("{}/{s}", t.resource.plural),
            None => t.resource.plural.to_owned(),
        };
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let res_ok = |r: &Rule| {
            r.resources.iter().any(|x| {
                x == "*"
                    || *x == resource
                    || t.subresource.as_ref().is_some_and(|s| *x == format!("*/{s}"))
                    || x.strip_suffix("/*").is_some_and(|p| p == t.resource.plural && t.subresource.is_some())
            })
        };
        let ok = |r: &Rule| {
            any(&r.verbs, t.verb)
                && any(&r.groups, t.resource.group)
                && res_ok(r)
                && (r.names.is_empty() || (!name.is_empty() && r.names.iter().any(|n| n == name)))
        };
        self.cluster.iter().any(ok)
            || (!t.namespace.is_empty() && self.namespaced.iter().any(|(ns, r)| *ns == t.namespace && ok(r)))
    }
}
