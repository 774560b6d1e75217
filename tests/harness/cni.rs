//! Running CNI plugins exactly as a container runtime does (like `cnitool`
//! or libcni): the `CNI_*` environment, the network configuration on stdin,
//! the result or error JSON on stdout, the plugin process inside the node's
//! network namespace (where the router's API listens on 127.0.0.1).
//!
//! A [`NetworkConfig`] is a conflist; [`CniRuntime`] chains its plugins the
//! way libcni does: ADD and CHECK in order, DEL in reverse, each plugin's
//! configuration augmented with the list's `name`/`cniVersion` and the
//! previous result (`prevResult`), with ADD results cached per attachment for
//! DEL and CHECK.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::cmd::run_bounded_input;
use crate::cni_result::CniResult;
use crate::netns::Netns;
use crate::router::target_bin;

/// One plugin execution is bounded by this: ADD may legitimately wait ~20 s
/// for the router's IPAM to become ready.
pub const CNI_TIMEOUT: Duration = Duration::from_secs(45);

/// Every spec version weft-net claims to support.
pub const SPEC_VERSIONS: &[&str] = &["1.1.0", "1.0.0", "0.4.0", "0.3.1", "0.3.0"];

/// Spec error codes (CNI spec, "Error" section).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u64 = 1;
    pub const UNSUPPORTED_FIELD: u64 = 2;
    pub const UNKNOWN_CONTAINER: u64 = 3;
    pub const INVALID_ENV: u64 = 4;
    pub const IO_FAILURE: u64 = 5;
    pub const DECODE_FAILURE: u64 = 6;
    pub const INVALID_CONFIG: u64 = 7;
    pub const TRY_AGAIN_LATER: u64 = 11;
}

/// Where runtimes usually find the reference plugins (Debian's
/// containernetworking-plugins installs into the first).
const STANDARD_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"];

/// The weft-net binary built by this workspace (`$WEFT_NET_BIN` overrides).
pub fn weft_net_bin() -> Result<PathBuf> {
    target_bin("weft-net", "WEFT_NET_BIN")
}

/// A reference plugin (`portmap`, `bridge`, ...) from the system's CNI
/// directories; panics with the package to install when it is missing.
pub fn standard_plugin(name: &str) -> PathBuf {
    for dir in STANDARD_PLUGIN_DIRS {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "CNI plugin `{name}` not found in {STANDARD_PLUGIN_DIRS:?}: install the Debian package \
         `containernetworking-plugins` (scripts/setup does)"
    );
}

/// The repository's conflist template (`deploy/05-weft.conflist`).
pub fn conflist_template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/05-weft.conflist")
}

/// A directory to use as `CNI_PATH`: weft-net plus the reference plugins a
/// conflist may chain, as symlinks (so a rebuilt weft-net is picked up).
#[derive(Debug, Clone)]
pub struct CniBinDir {
    path: PathBuf,
}

impl CniBinDir {
    /// Creates `dir` holding `weft-net` and each of `standard` (e.g. `portmap`).
    pub fn create(dir: &Path, standard: &[&str]) -> Result<CniBinDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut links = vec![("weft-net".to_owned(), weft_net_bin()?)];
        links.extend(standard.iter().map(|name| (name.to_string(), standard_plugin(name))));
        for (name, target) in links {
            let link = dir.join(&name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
        }
        Ok(CniBinDir { path: dir.to_owned() })
    }

    /// A directory whose plugins something else installed (e.g. a node's
    /// /opt/cni/bin as weft's init container left it), used as it is.
    pub fn existing(dir: &Path) -> Result<CniBinDir> {
        if !dir.is_dir() {
            bail!("CNI plugin directory {} does not exist", dir.display());
        }
        Ok(CniBinDir { path: dir.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The executable for plugin `type`, as a runtime resolves it in `CNI_PATH`.
    pub fn plugin(&self, plugin_type: &str) -> Result<PathBuf> {
        if plugin_type.is_empty() || plugin_type.contains('/') {
            bail!("bad plugin type {plugin_type:?}");
        }
        let p = self.path.join(plugin_type);
        if !p.exists() {
            bail!("plugin {plugin_type:?} not in CNI_PATH {}", self.path.display());
        }
        Ok(p)
    }
}

/// The `CNI_*` variables of one execution; `None` leaves a variable unset
/// (for testing the plugin's handling of a broken runtime).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    /// What a runtime sets for `command` on `att`.
    pub fn for_attachment(command: &str, att: &Attachment, cni_path: &Path) -> CniEnv {
        CniEnv {
            command: Some(command.to_owned()),
            container_id: Some(att.container_id.clone()),
            netns: Some(att.netns.clone()),
            ifname: Some(att.ifname.clone()),
            args: None,
            path: Some(cni_path.display().to_string()),
        }
    }

    /// The variables of commands without a container (VERSION, STATUS, GC).
    pub fn global(command: &str, cni_path: &Path) -> CniEnv {
        CniEnv { command: Some(command.to_owned()), path: Some(cni_path.display().to_string()), ..CniEnv::default() }
    }

    fn apply(&self, cmd: &mut Command) {
        let vars = [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ];
        for (key, value) in vars {
            if let Some(v) = value {
                cmd.env(key, v);
            }
        }
    }
}

/// A container's attachment to the network: what CNI identifies it by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`: `/var/run/netns/NAME`, or `""` once the namespace is gone.
    pub netns: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, netns: &Netns, ifname: &str) -> Attachment {
        Attachment { container_id: container_id.into(), netns: netns_path(netns), ifname: ifname.to_owned() }
    }

    /// The same attachment with `CNI_NETNS=""` (namespace already destroyed).
    pub fn without_netns(&self) -> Attachment {
        Attachment { netns: String::new(), ..self.clone() }
    }

    fn key(&self) -> (String, String) {
        (self.container_id.clone(), self.ifname.clone())
    }
}

/// The path runtimes pass in `CNI_NETNS` for a named namespace.
pub fn netns_path(ns: &Netns) -> String {
    format!("/var/run/netns/{}", ns.name())
}

/// What one plugin execution produced.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// Which plugin this was, for messages.
    pub plugin: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed, when it is JSON.
    pub json: Option<Value>,
}

/// A spec error object, from a failed execution's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u64,
    pub msg: String,
    pub details: String,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The error object of a failed execution; `Err` if the plugin failed
    /// without printing one (a spec violation) or did not fail at all.
    pub fn error(&self) -> Result<CniError> {
        if self.success() {
            bail!("{} succeeded, expected an error; stdout: {}", self.plugin, self.stdout.trim());
        }
        let json = self.json.as_ref().with_context(|| {
            format!(
                "{} failed ({}) without an error JSON on stdout; stdout: {:?} stderr: {:?}",
                self.plugin,
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            )
        })?;
        let code = json.get("code").and_then(Value::as_u64).with_context(|| format!("error without code: {json}"))?;
        let text = |k: &str| json.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(CniError { code, msg: text("msg"), details: text("details") })
    }

    /// The parsed stdout of a successful execution; `Err` describing the
    /// failure (code, message, stderr) otherwise.
    pub fn ok_json(&self) -> Result<Value> {
        if !self.success() {
            let err = self.error().map(|e| format!("code {} {:?} {:?}", e.code, e.msg, e.details));
            bail!(
                "{} failed ({}): {}; stderr: {}",
                self.plugin,
                self.status,
                err.unwrap_or_else(|e| format!("{e:#}")),
                self.stderr.trim()
            );
        }
        self.json
            .clone()
            .with_context(|| format!("{} succeeded but stdout is not JSON: {:?}", self.plugin, self.stdout))
    }

    /// Success with nothing required on stdout (DEL, CHECK, GC, STATUS).
    pub fn ok(&self) -> Result<()> {
        if self.success() {
            return Ok(());
        }
        self.ok_json().map(drop)
    }
}

/// Runs plugin `bin` once inside `node_ns` with `env` (and nothing else but
/// `PATH`) and `stdin`, bounded by `timeout`.
pub fn exec_plugin(
    node_ns: &Netns,
    bin: &Path,
    env: &CniEnv,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<CniOutput> {
    exec_in(node_ns.name(), &node_ns.path(), bin, env, stdin, timeout)
}

/// A network configuration list (a single-plugin configuration is a list of one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl NetworkConfig {
    /// Parses a `.conflist`.
    pub fn from_conflist(text: &str) -> Result<NetworkConfig> {
        let v: Value = serde_json::from_str(text).context("conflist is not JSON")?;
        let s = |k: &str| {
            v.get(k).and_then(Value::as_str).map(str::to_owned).with_context(|| format!("conflist without {k}"))
        };
        let plugins = v.get("plugins").and_then(Value::as_array).context("conflist without plugins")?.clone();
        if plugins.is_empty() {
            bail!("conflist with no plugins");
        }
        for p in &plugins {
            p.get("type").and_then(Value::as_str).with_context(|| format!("plugin without type: {p}"))?;
        }
        Ok(NetworkConfig { name: s("name")?, cni_version: s("cniVersion")?, plugins })
    }

    /// The repository's `deploy/05-weft.conflist`.
    pub fn weft_template() -> Result<NetworkConfig> {
        let path = conflist_template_path();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        NetworkConfig::from_conflist(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// A list of just the template's `weft-net` plugin at `cni_version`
    /// (e.g. to exercise 1.1.0's GC and STATUS, which portmap lacks).
    pub fn weft_only(cni_version: &str) -> Result<NetworkConfig> {
        let t = NetworkConfig::weft_template()?;
        let weft = t.plugin("weft-net")?.clone();
        Ok(NetworkConfig { name: t.name, cni_version: cni_version.to_owned(), plugins: vec![weft] })
    }

    /// The first plugin of `type`.
    pub fn plugin(&self, plugin_type: &str) -> Result<&Value> {
        self.plugins
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some(plugin_type))
            .with_context(|| format!("no {plugin_type} plugin in network {}", self.name))
    }

    /// Serialised back to a `.conflist`.
    pub fn to_conflist(&self) -> String {
        json!({"cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins}).to_string()
    }

    /// What plugin `index` gets on stdin (libcni's `buildOneConfig`).
    pub fn plugin_stdin(&self, index: usize, prev_result: Option<&Value>) -> Result<Vec<u8>> {
        self.plugin_stdin_with(index, prev_result, &Map::new())
    }

    /// [`Self::plugin_stdin`] with the runtime's capability arguments
    /// (libcni's `runtimeConfig`, e.g. `portMappings`): each plugin gets
    /// those its `capabilities` ask for.
    pub fn plugin_stdin_with(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Result<Vec<u8>> {
        let plugin = self.plugins.get(index).with_context(|| format!("no plugin {index}"))?;
        let mut conf: Map<String, Value> =
            plugin.as_object().cloned().with_context(|| format!("plugin {index} is not an object"))?;
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let wanted: Map<String, Value> = capability_args
            .iter()
            .filter(|(k, _)| plugin.pointer(&format!("/capabilities/{k}")).and_then(Value::as_bool) == Some(true))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !wanted.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(wanted));
        }
        Ok(serde_json::to_vec(&Value::Object(conf))?)
    }

    fn plugin_type(&self, index: usize) -> Result<&str> {
        self.plugins.get(index).and_then(|p| p.get("type")).and_then(Value::as_str).context("plugin type")
    }
}

/// One node's container runtime: a network configuration, a `CNI_PATH`, and
/// the cache of ADD results that DEL and CHECK replay.
#[derive(Debug)]
pub struct CniRuntime {
    node_ns_name: String,
    node_ns_path: PathBuf,
    bins: CniBinDir,
    config: NetworkConfig,
    cache: Mutex<HashMap<(String, String), Value>>,
    timeout: Duration,
}

impl CniRuntime {
    pub fn new(node_ns: &Netns, bins: CniBinDir, config: NetworkConfig) -> CniRuntime {
        CniRuntime {
            node_ns_name: node_ns.name().to_owned(),
            node_ns_path: node_ns.path(),
            bins,
            config,
            cache: Mutex::new(HashMap::new()),
            timeout: CNI_TIMEOUT,
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn bins(&self) -> &CniBinDir {
        &self.bins
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Value>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached ADD result for `att` (what libcni keeps in /var/lib/cni).
    pub fn cached_result(&self, att: &Attachment) -> Option<Value> {
        self.cache().get(&att.key()).cloned()
    }

    /// Runs plugin `plugin_type` once with exactly `env` and `stdin`.
    pub fn exec_raw(&self, plugin_type: &str, env: &CniEnv, stdin: Option<&[u8]>) -> Result<CniOutput> {
        let bin = self.bins.plugin(plugin_type)?;
        exec_in(&self.node_ns_name, &self.node_ns_path, &bin, env, stdin, self.timeout)
    }

    fn exec_plugin_n(&self, index: usize, env: &CniEnv, prev: Option<&Value>) -> Result<CniOutput> {
        self.exec_plugin_with(index, env, prev, &Map::new())
    }

    fn exec_plugin_with(
        &self,
        index: usize,
        env: &CniEnv,
        prev: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Result<CniOutput> {
        let stdin = self.config.plugin_stdin_with(index, prev, capability_args)?;
        self.exec_raw(self.config.plugin_type(index)?, env, Some(&stdin))
    }

    /// ADD through the whole list; the output of the last plugin run (the
    /// first failure stops the chain, as in libcni). Success is cached.
    pub fn add(&self, att: &Attachment) -> Result<CniOutput> {
        self.add_with(att, &Map::new())
    }

    /// [`Self::add`] with the runtime's capability arguments (e.g.
    /// `portMappings` for hostPorts), as libcni passes them.
    pub fn add_with(&self, att: &Attachment, capability_args: &Map<String, Value>) -> Result<CniOutput> {
        let env = CniEnv::for_attachment("ADD", att, self.bins.path());
        let mut prev: Option<Value> = None;
        let mut last = None;
        for i in 0..self.config.plugins.len() {
            let out = self.exec_plugin_with(i, &env, prev.as_ref(), capability_args)?;
            if !out.success() {
                return Ok(out);
            }
            prev = Some(out.ok_json()?);
            last = Some(out);
        }
        if let Some(result) = prev {
            self.cache().insert(att.key(), result);
        }
        last.ok_or_else(|| anyhow!("network {} has no plugins", self.config.name))
    }

    /// ADD that must succeed; the parsed final result.
    pub fn add_ok(&self, att: &Attachment) -> Result<CniResult> {
        let out = self.add(att)?;
        let json = out.ok_json().with_context(|| format!("ADD {} on {}", att.container_id, self.node_ns_name))?;
        CniResult::parse(&json).with_context(|| format!("ADD result {json}"))
    }

    /// DEL through the list in reverse, each plugin given the cached ADD
    /// result; the cache entry goes once every plugin succeeded.
    pub fn del(&self, att: &Attachment) -> Result<CniOutput> {
        let env = CniEnv::for_attachment("DEL", att, self.bins.path());
        let prev = self.cached_result(att);
        let mut last = None;
        for i in (0..self.config.plugins.len()).rev() {
            let out = self.exec_plugin_n(i, &env, prev.as_ref())?;
            if !out.success() {
                return Ok(out);
            }
            last = Some(out);
        }
        self.cache().remove(&att.key());
        last.ok_or_else(|| anyhow!("network {} has no plugins", self.config.name))
    }

    pub fn del_ok(&self, att: &Attachment) -> Result<()> {
        self.del(att)?.ok().with_context(|| format!("DEL {} on {}", att.container_id, self.node_ns_name))
    }

    /// CHECK through the list with the cached ADD result; like libcni, an
    /// attachment without one is an error before any plugin runs.
    pub fn check(&self, att: &Attachment) -> Result<CniOutput> {
        let prev = self
            .cached_result(att)
            .with_context(|| format!("no cached ADD result for {} (CHECK needs one)", att.container_id))?;
        let env = CniEnv::for_attachment("CHECK", att, self.bins.path());
        let mut last = None;
        for i in 0..self.config.plugins.len() {
            let out = self.exec_plugin_n(i, &env, Some(&prev))?;
            if !out.success() {
                return Ok(out);
            }
            last = Some(out);
        }
        last.ok_or_else(|| anyhow!("network {} has no plugins", self.config.name))
    }

    /// GC (spec 1.1.0) of every plugin with `cni.dev/valid-attachments`.
    pub fn gc(&self, valid: &[Attachment]) -> Result<Vec<CniOutput>> {
        let attachments: Vec<Value> =
            valid.iter().map(|a| json!({"containerID": a.container_id, "ifname": a.ifname})).collect();
        let env = CniEnv::global("GC", self.bins.path());
        (0..self.config.plugins.len())
            .map(|i| {
                let mut conf: Value = serde_json::from_slice(&self.config.plugin_stdin(i, None)?)?;
                if let Some(obj) = conf.as_object_mut() {
                    obj.insert("cni.dev/valid-attachments".into(), Value::Array(attachments.clone()));
                }
                self.exec_raw(self.config.plugin_type(i)?, &env, Some(&serde_json::to_vec(&conf)?))
            })
            .collect()
    }

    /// STATUS (spec 1.1.0) of every plugin.
    pub fn status(&self) -> Result<Vec<CniOutput>> {
        let env = CniEnv::global("STATUS", self.bins.path());
        (0..self.config.plugins.len()).map(|i| self.exec_plugin_n(i, &env, None)).collect()
    }
}

fn exec_in(
    ns_name: &str,
    ns_path: &Path,
    bin: &Path,
    env: &CniEnv,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<CniOutput> {
    // nsenter, not `ip netns exec`: a runtime's plugins share its mount
    // namespace and see the host's /sys.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns_path.display())).arg("--").arg(bin);
    cmd.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    env.apply(&mut cmd);
    let out = run_bounded_input(cmd, stdin, timeout)
        .with_context(|| format!("running {} {:?} in {ns_name}", bin.display(), env.command))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.trim()).ok();
    Ok(CniOutput {
        plugin: bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        status: out.status,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    })
}
