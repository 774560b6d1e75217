//! A Kubernetes manifest (`deploy/weft.yaml`) parsed into the typed subset
//! of the API a kubelet needs to run a DaemonSet's pod: containers, env,
//! volumes, probes. Fields the harness does not model are refused rather
//! than ignored (`deny_unknown_fields` where they would change how a
//! container runs), so the test never runs a pod differently from a
//! kubelet without saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// The repository's manifest, `deploy/weft.yaml`.
pub fn weft_manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/weft.yaml")
}

/// The version in the workspace's Cargo.toml (what `deploy/build-image` tags).
pub fn workspace_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Every object of a multi-document YAML manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    objects: Vec<Value>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Manifest::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Manifest> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing YAML")?;
        let mut objects = Vec::new();
        for (i, value) in docs.into_iter().enumerate() {
            if value.is_null() {
                continue;
            }
            for key in ["apiVersion", "kind"] {
                if !value.get(key).is_some_and(Value::is_string) {
                    bail!("YAML document {i} has no {key}: {value}");
                }
            }
            objects.push(value);
        }
        Ok(Manifest { objects })
    }

    pub fn objects(&self) -> &[Value] {
        &self.objects
    }

    /// The objects of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    /// The one object of `kind` named `name` (in `namespace`, for namespaced kinds).
    pub fn find(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<&Value> {
        let mut found =
            self.objects.iter().filter(|o| o["kind"] == kind).filter(|o| {
                o["metadata"]["name"] == name && namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
            });
        let first = found.next().with_context(|| format!("no {kind} {namespace:?}/{name} in the manifest"))?;
        if found.next().is_some() {
            bail!("more than one {kind} {namespace:?}/{name} in the manifest");
        }
        Ok(first)
    }

    /// The only DaemonSet of the manifest, typed.
    pub fn daemonset(&self) -> Result<DaemonSet> {
        let all: Vec<&Value> = self.of_kind("DaemonSet").collect();
        let [ds] = all.as_slice() else { bail!("expected one DaemonSet in the manifest, found {}", all.len()) };
        DaemonSet::deserialize(*ds).context("the DaemonSet (a field the harness does not model?)")
    }

    /// The `data` of ConfigMap `namespace/name`.
    pub fn config_map(&self, namespace: &str, name: &str) -> Result<BTreeMap<String, String>> {
        let cm = self.find("ConfigMap", Some(namespace), name)?;
        match cm.get("data") {
            None => Ok(BTreeMap::new()),
            Some(data) => BTreeMap::deserialize(data)
                .with_context(|| format!("ConfigMap {namespace}/{name}: data must map names to strings")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSet {
    pub metadata: ObjectMeta,
    pub spec: DaemonSetSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSetSpec {
    pub selector: Value,
    pub update_strategy: Option<Value>,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodTemplate {
    pub metadata: Value,
    pub spec: PodSpec,
}

/// The pod spec; scheduling-only fields (priority, tolerations, node
/// selector) are kept for the test to inspect, they change nothing on a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    pub service_account_name: Option<String>,
    pub automount_service_account_token: Option<bool>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default, rename = "hostPID")]
    pub host_pid: bool,
    pub priority_class_name: Option<String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Value>,
    pub termination_grace_period_seconds: Option<u64>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

impl PodSpec {
    pub fn volume(&self, name: &str) -> Result<&Volume> {
        self.volumes.iter().find(|v| v.name == name).with_context(|| format!("no volume {name:?} in the pod spec"))
    }

    pub fn container(&self, name: &str) -> Result<&Container> {
        self.containers
            .iter()
            .chain(&self.init_containers)
            .find(|c| c.name == name)
            .with_context(|| format!("no container {name:?} in the pod spec"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub env_from: Vec<EnvFromSource>,
    pub security_context: Option<SecurityContext>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    pub readiness_probe: Option<Probe>,
    pub liveness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    /// Scheduling and cgroup sizing only.
    pub resources: Option<Value>,
}

impl Container {
    pub fn privileged(&self) -> bool {
        self.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource {
    pub field_ref: Option<FieldRef>,
    pub secret_key_ref: Option<KeyRef>,
    pub config_map_key_ref: Option<KeyRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldRef {
    pub field_path: String,
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFromSource {
    pub config_map_ref: Option<NameRef>,
    pub secret_ref: Option<NameRef>,
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRef {
    pub name: String,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    pub privileged: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub host_path: Option<HostPathVolume>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathVolume {
    pub path: String,
    /// `DirectoryOrCreate`, `Directory`, `CharDevice`, ...; "" checks nothing.
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub http_get: Option<HttpGetAction>,
    pub initial_delay_seconds: Option<u64>,
    pub period_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub success_threshold: Option<u64>,
    pub failure_threshold: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGetAction {
    /// Default: the pod's IP (the node's, on the host network).
    pub host: Option<String>,
    pub port: u16,
    pub path: String,
}
