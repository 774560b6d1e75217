//! `hostPort`s, as a runtime asks for them: libcni passes the runtime's
//! `portMappings` in `runtimeConfig` to each plugin of the list that
//! declares the `portMappings` capability (here the chained `portmap`).
//! [`CniRuntime::add`] passes no runtime config, so this is the same ADD
//! chain with that one addition.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::cni::{Attachment, CniEnv, CniRuntime};
use crate::cni_pod::{CniPod, POD_IFNAME};
use crate::cni_result::CniResult;

/// One `hostPort` → `containerPort` mapping (TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
}

fn wants_port_mappings(plugin: &Value) -> bool {
    plugin.pointer("/capabilities/portMappings").and_then(Value::as_bool) == Some(true)
}

/// ADDs a new pod on node `node` through `rt` with `mappings`.
pub fn add_pod_with_ports(
    c: &Cluster,
    node: usize,
    rt: &CniRuntime,
    tag: &str,
    mappings: &[PortMapping],
) -> Result<CniPod> {
    let netns = c.create_netns(tag)?;
    let att = Attachment::new(format!("{}-ctr", netns.name()), &netns, POD_IFNAME);
    let env = CniEnv::for_attachment("ADD", &att, rt.bins().path());
    let config = rt.config();
    let runtime_config = json!({
        "portMappings": mappings
            .iter()
            .map(|m| json!({"hostPort": m.host_port, "containerPort": m.container_port, "protocol": "tcp"}))
            .collect::<Vec<_>>()
    });
    let mut prev: Option<Value> = None;
    let mut asked = false;
    for (i, plugin) in config.plugins.iter().enumerate() {
        let mut stdin: Value = serde_json::from_slice(&config.plugin_stdin(i, prev.as_ref())?)?;
        if wants_port_mappings(plugin) {
            stdin["runtimeConfig"] = runtime_config.clone();
            asked = true;
        }
        let plugin_type = plugin.get("type").and_then(Value::as_str).context("plugin without type")?;
        let out = rt.exec_raw(plugin_type, &env, Some(&serde_json::to_vec(&stdin)?))?;
        prev = Some(out.ok_json().with_context(|| format!("ADD of pod {tag} on node {node}: {plugin_type}"))?);
    }
    if !asked {
        bail!("no plugin of network {} declares the portMappings capability", config.name);
    }
    let result = CniResult::parse(&prev.context("network has no plugins")?)?;
    CniPod::from_result(netns, node, att, result)
}
