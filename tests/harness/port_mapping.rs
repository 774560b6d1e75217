//! `hostPort`s, as a runtime asks for them: libcni passes the runtime's
//! `portMappings` in `runtimeConfig` to each plugin of the list that
//! declares the `portMappings` capability (here the chained `portmap`).

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::cluster::Cluster;
use crate::cni::{Attachment, CniRuntime};
use crate::cni_pod::{CniPod, POD_IFNAME};
use crate::cni_result::CniResult;

/// One `hostPort` → `containerPort` mapping (TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
}

/// ADDs a new pod on node `node` through `rt` with `mappings`.
pub fn add_pod_with_ports(
    c: &Cluster,
    node: usize,
    rt: &CniRuntime,
    tag: &str,
    mappings: &[PortMapping],
) -> Result<CniPod> {
    let config = rt.config();
    if !config.plugins.iter().any(|p| p.pointer("/capabilities/portMappings").and_then(Value::as_bool) == Some(true)) {
        bail!("no plugin of network {} declares the portMappings capability", config.name);
    }
    let netns = c.create_netns(tag)?;
    let att = Attachment::new(format!("{}-ctr", netns.name()), &netns, POD_IFNAME);
    let ports: Vec<Value> = mappings
        .iter()
        .map(|m| json!({"hostPort": m.host_port, "containerPort": m.container_port, "protocol": "tcp"}))
        .collect();
    let args = Map::from_iter([("portMappings".to_string(), Value::Array(ports))]);
    let out = rt.add_with(&att, &args)?;
    let json = out.ok_json().with_context(|| format!("ADD of pod {tag} on node {node}"))?;
    CniPod::from_result(netns, node, att, CniResult::parse(&json)?)
}
