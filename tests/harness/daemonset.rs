//! A DaemonSet's pod run on one simulated node the way a kubelet runs it,
//! with podman ([`PodmanNode`]) as the container runtime: the manifest's
//! init containers to completion, in order, then its containers, each with
//! the command, arguments, environment (downward-API `fieldRef`s resolved
//! to the node, `envFrom` ConfigMaps from the manifest, Secrets that exist),
//! volume mounts (`hostPath` volumes under a per-node directory standing in
//! for the node's filesystem; device paths are the real devices), privilege
//! and host network of the pod spec, plus what a kubelet adds to every pod:
//! the service-account token directory and the `KUBERNETES_SERVICE_*`
//! variables pointing at the API server.
//!
//! [`container_run`] derives a container's invocation without running
//! anything; [`DaemonSetPod`] runs them. Dropping a pod removes its
//! containers and the node's podman holder (their processes die with it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http::http_request;
use crate::manifest::{Container, DaemonSet, HttpGetAction, Manifest, PodSpec, Volume};
use crate::netns::Netns;
use crate::podman::{PodmanNode, PODMAN_TIMEOUT};
use crate::wait::stop_waiting;

/// Where a kubelet mounts the pod's service-account token, CA and namespace.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Bound for loading an image archive into a node's store.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Grace period when the pod spec gives none (the API's default).
const DEFAULT_GRACE_SECS: u64 = 30;

/// The in-cluster API access a kubelet gives a pod.
#[derive(Debug, Clone)]
pub struct InClusterApi {
    /// Holds `token`, `ca.crt` and `namespace`; mounted read-only at
    /// [`SERVICE_ACCOUNT_MOUNT`].
    pub service_account_dir: PathBuf,
    /// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`, ...
    pub env: Vec<(String, String)>,
}

/// What one node's kubelet knows when it starts the DaemonSet's pod there.
#[derive(Debug, Clone)]
pub struct PodContext {
    /// The Node's name (`spec.nodeName`).
    pub node_name: String,
    /// The node's address (`status.hostIP`, and `status.podIP` on the host network).
    pub node_ip: Ipv4Addr,
    /// The pod's name (`metadata.name`), e.g. `weft-node0`.
    pub pod_name: String,
    /// The node's filesystem: `hostPath` volumes resolve below it, except
    /// paths under `/dev`, which are the real devices.
    pub host_root: PathBuf,
    /// API access; `None`: a pod that finds no API (no token mounted).
    pub api: Option<InClusterApi>,
    /// Secrets that exist in the pod's namespace: name -> key -> value.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Test-only variables added to every container after the manifest's
    /// (each use must say why it departs from the manifest).
    pub extra_env: Vec<(String, String)>,
}

impl PodContext {
    /// `path` on the node (a `hostPath`) as a path of this machine.
    pub fn host_path(&self, path: &str) -> Result<PathBuf> {
        let rel = path.strip_prefix('/').with_context(|| format!("hostPath {path:?} is not absolute"))?;
        if rel.split('/').any(|c| c == "..") {
            bail!("hostPath {path:?} contains ..");
        }
        if path == "/dev" || path.starts_with("/dev/") {
            return Ok(PathBuf::from(path));
        }
        Ok(self.host_root.join(rel))
    }
}

/// A bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// How a kubelet would start one container: everything `podman run` needs.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    pub name: String,
    pub image: String,
    /// The container's `command`, replacing the image's entrypoint.
    pub command: Vec<String>,
    /// The container's `args`, replacing the image's cmd.
    pub args: Vec<String>,
    /// Final environment, in the order a kubelet builds it, later wins.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub privileged: bool,
}

impl ContainerRun {
    /// The value the process sees for `key`.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `podman run` arguments for this container, named `podman_name`, on
    /// the host network, never pulling.
    pub fn podman_args(&self, podman_name: &str, detach: bool) -> Result<Vec<String>> {
        let mut a: Vec<String> = vec!["run".into()];
        if detach {
            a.push("--detach".into());
        }
        a.extend(["--name".into(), podman_name.into(), "--pull".into(), "never".into()]);
        a.extend(["--network".into(), "host".into(), "--restart".into(), "no".into()]);
        // podman asks for more than this machine's hard limits by default;
        // give the container what the test process may have (as a
        // containerd node gives its own limits).
        for (name, resource) in [("nofile", libc::RLIMIT_NOFILE), ("nproc", libc::RLIMIT_NPROC)] {
            let limit = hard_limit(resource).with_context(|| format!("reading RLIMIT_{name}"))?;
            a.extend(["--ulimit".into(), format!("{name}={limit}:{limit}")]);
        }
        if self.privileged {
            a.push("--privileged".into());
        }
        for m in &self.mounts {
            let mode = if m.read_only { ":ro" } else { "" };
            a.extend(["--volume".into(), format!("{}:{}{mode}", m.host.display(), m.container)]);
        }
        for (k, v) in dedup_env(&self.env) {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        let mut rest = self.args.clone();
        if let Some((entry, more)) = self.command.split_first() {
            a.extend(["--entrypoint".into(), entry.clone()]);
            rest = more.iter().cloned().chain(rest).collect();
        }
        a.push(self.image.clone());
        a.extend(rest);
        Ok(a)
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(lim.rlim_max)
}

/// Later entries win; order of first appearance kept.
fn dedup_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        match out.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// How the kubelet would run container `container` of `ds` on the node of `ctx`.
pub fn container_run(
    manifest: &Manifest,
    ds: &DaemonSet,
    container: &Container,
    ctx: &PodContext,
) -> Result<ContainerRun> {
    let spec = &ds.spec.template.spec;
    let namespace = ds.metadata.namespace.as_deref().unwrap_or("default");
    if !spec.host_network {
        bail!("the harness runs host-network pods only; {} has hostNetwork: false", ds.metadata.name);
    }
    if spec.host_pid {
        bail!("hostPID is not supported by the harness");
    }
    if container.image_pull_policy.as_deref() == Some("Always") {
        bail!("container {}: imagePullPolicy Always needs a registry; nodes load the image", container.name);
    }
    let mut env: Vec<(String, String)> = Vec::new();
    // The kubelet's own variables come first; the manifest's override them.
    let automount = spec.automount_service_account_token.unwrap_or(true);
    if let (Some(api), true) = (&ctx.api, automount) {
        env.extend(api.env.iter().cloned());
    }
    for from in &container.env_from {
        let prefix = from.prefix.as_deref().unwrap_or("");
        if let Some(cm) = &from.config_map_ref {
            match manifest.config_map(namespace, &cm.name) {
                Ok(data) => env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
                Err(_) if cm.optional => {}
                Err(e) => return Err(e.context(format!("container {}: envFrom ConfigMap {}", container.name, cm.name))),
            }
        }
        if let Some(sr) = &from.secret_ref {
            match ctx.secrets.get(&sr.name) {
                Some(data) => env.extend(data.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone()))),
                None if sr.optional => {}
                None => bail!("container {}: envFrom Secret {} does not exist", container.name, sr.name),
            }
        }
    }
    for var in &container.env {
        let value = match (&var.value, &var.value_from) {
            (Some(v), None) => Some(v.clone()),
            (None, None) => Some(String::new()),
            (None, Some(from)) => env_from_source(manifest, namespace, ctx, from)
                .with_context(|| format!("container {}: env {}", container.name, var.name))?,
            (Some(_), Some(_)) => bail!("container {}: env {} has both value and valueFrom", container.name, var.name),
        };
        if let Some(value) = value {
            env.push((var.name.clone(), value));
        }
    }
    env.extend(ctx.extra_env.iter().cloned());

    let mut mounts = Vec::new();
    for vm in &container.volume_mounts {
        let volume = spec.volume(&vm.name).with_context(|| format!("container {}", container.name))?;
        let host = host_path_of(volume, ctx)?;
        mounts.push(Mount { host, container: vm.mount_path.clone(), read_only: vm.read_only });
    }
    if let (Some(api), true) = (&ctx.api, automount) {
        mounts.push(Mount {
            host: api.service_account_dir.clone(),
            container: SERVICE_ACCOUNT_MOUNT.into(),
            read_only: true,
        });
    }
    Ok(ContainerRun {
        name: container.name.clone(),
        image: container.image.clone(),
        command: container.command.clone(),
        args: container.args.clone(),
        env,
        mounts,
        privileged: container.privileged(),
    })
}

/// An `env[].valueFrom`; `None`: an optional source that is absent (the
/// variable is not set at all, as the kubelet does).
fn env_from_source(
    manifest: &Manifest,
    namespace: &str,
    ctx: &PodContext,
    from: &crate::manifest::EnvVarSource,
) -> Result<Option<String>> {
    match (&from.field_ref, &from.secret_key_ref, &from.config_map_key_ref) {
        (Some(f), None, None) => {
            let v = match f.field_path.as_str() {
                "spec.nodeName" => ctx.node_name.clone(),
                "metadata.namespace" => namespace.to_owned(),
                "metadata.name" => ctx.pod_name.clone(),
                "status.hostIP" | "status.podIP" => ctx.node_ip.to_string(),
                other => bail!("fieldRef {other:?} is not supported by the harness"),
            };
            Ok(Some(v))
        }
        (None, Some(s), None) => match ctx.secrets.get(&s.name).and_then(|d| d.get(&s.key)) {
            Some(v) => Ok(Some(v.clone())),
            None if s.optional => Ok(None),
            None => bail!("Secret {}/{} key {} does not exist (the pod would not start)", namespace, s.name, s.key),
        },
        (None, None, Some(c)) => {
            let data = manifest.config_map(namespace, &c.name);
            match data.ok().and_then(|d| d.get(&c.key).cloned()) {
                Some(v) => Ok(Some(v)),
                None if c.optional => Ok(None),
                None => bail!("ConfigMap {}/{} key {} does not exist", namespace, c.name, c.key),
            }
        }
        _ => bail!("valueFrom must have exactly one source"),
    }
}

fn host_path_of(volume: &Volume, ctx: &PodContext) -> Result<PathBuf> {
    let hp = volume
        .host_path
        .as_ref()
        .with_context(|| format!("volume {}: only hostPath volumes are supported by the harness", volume.name))?;
    ctx.host_path(&hp.path).with_context(|| format!("volume {}", volume.name))
}

/// What the kubelet checks or creates for each `hostPath` before starting
/// the pod (the volume's `type`).
fn prepare_host_paths(spec: &PodSpec, ctx: &PodContext) -> Result<()> {
    for volume in &spec.volumes {
        let Some(hp) = &volume.host_path else { continue };
        let path = ctx.host_path(&hp.path)?;
        let what = || format!("volume {} (hostPath {} type {:?})", volume.name, hp.path, hp.kind);
        match hp.kind.as_str() {
            "DirectoryOrCreate" => std::fs::create_dir_all(&path).with_context(|| format!("{}: creating", what()))?,
            "Directory" if path.is_dir() => {}
            "CharDevice" if std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_char_device()) => {}
            "Directory" | "CharDevice" => bail!("{}: {} is missing or of another type", what(), path.display()),
            other => bail!("{}: hostPath type {other:?} is not supported by the harness", what()),
        }
    }
    Ok(())
}

/// A container's state as podman reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub exit_code: i64,
}

/// The DaemonSet's pod on one node; the node's podman lives as long as it.
#[derive(Debug)]
pub struct DaemonSetPod {
    // Dropped last: removes every container, then the holder.
    podman: PodmanNode,
    ns_name: String,
    pod_name: String,
    spec: PodSpec,
    /// (container name, podman name) of the started (non-init) containers.
    containers: Vec<(String, String)>,
    /// Output of each init container, in order.
    init_logs: Vec<(String, String)>,
    /// Podman names of the (exited) init containers, kept like a kubelet
    /// keeps them until the pod is deleted.
    init_containers: Vec<String>,
}

impl DaemonSetPod {
    /// Starts a podman holder in `node_ns` with its state under
    /// `state_dir`, loads the image archive into it (`podman load`, as the
    /// manifest tells users to), checks or creates the `hostPath`s, runs
    /// the init containers to completion, then starts the containers.
    pub fn start(
        node_ns: &Netns,
        state_dir: &Path,
        image_archive: &Path,
        manifest: &Manifest,
        ctx: &PodContext,
    ) -> Result<DaemonSetPod> {
        let ds = manifest.daemonset()?;
        let spec = ds.spec.template.spec.clone();
        let podman = PodmanNode::start_host_network_only(node_ns, state_dir)?;
        let archive = image_archive.to_str().context("image archive path is not UTF-8")?;
        let out = podman.podman(&["load", "--input", archive], LOAD_TIMEOUT)?;
        if !out.status.success() {
            bail!("podman load {archive} on {}: {}", ctx.node_name, String::from_utf8_lossy(&out.stderr).trim());
        }
        prepare_host_paths(&spec, ctx).with_context(|| format!("pod {}", ctx.pod_name))?;
        let mut pod = DaemonSetPod {
            podman,
            ns_name: node_ns.name().to_owned(),
            pod_name: ctx.pod_name.clone(),
            spec: spec.clone(),
            containers: Vec::new(),
            init_logs: Vec::new(),
            init_containers: Vec::new(),
        };
        for init in &spec.init_containers {
            let run = container_run(manifest, &ds, init, ctx)?;
            let name = pod.podman_name_for(&init.name);
            let args = run.podman_args(&name, false)?;
            let out = pod.podman.podman(&str_refs(&args), PODMAN_TIMEOUT)?;
            pod.init_containers.push(name);
            let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            pod.init_logs.push((init.name.clone(), log.clone()));
            if !out.status.success() {
                bail!("init container {} on {} failed ({}): {}", init.name, ctx.node_name, out.status, log.trim());
            }
        }
        for c in &spec.containers {
            let run = container_run(manifest, &ds, c, ctx)?;
            let name = pod.podman_name_for(&c.name);
            let args = run.podman_args(&name, true)?;
            pod.podman.podman_ok(&str_refs(&args))?;
            pod.containers.push((c.name.clone(), name));
        }
        Ok(pod)
    }

    fn podman_name_for(&self, container: &str) -> String {
        format!("{}-{container}", self.pod_name)
    }

    pub fn podman(&self) -> &PodmanNode {
        &self.podman
    }

    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    /// What init container `name` printed.
    pub fn init_log(&self, name: &str) -> Option<&str> {
        self.init_logs.iter().find(|(n, _)| n == name).map(|(_, l)| l.as_str())
    }

    fn podman_name(&self, container: &str) -> Result<&str> {
        self.containers
            .iter()
            .find(|(n, _)| n == container)
            .map(|(_, p)| p.as_str())
            .with_context(|| format!("pod {} has no running container {container}", self.pod_name))
    }

    /// The container's output so far (`podman logs`).
    pub fn logs(&self, container: &str) -> Result<String> {
        let out = self.podman.podman(&["logs", self.podman_name(container)?], PODMAN_TIMEOUT)?;
        Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    pub fn state(&self, container: &str) -> Result<ContainerState> {
        let out = self.podman.podman_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Running}} {{.State.ExitCode}}",
            self.podman_name(container)?,
        ])?;
        let mut f = out.split_whitespace();
        let (Some(status), Some(running), Some(code)) = (f.next(), f.next(), f.next()) else {
            bail!("unexpected podman inspect output {out:?}");
        };
        Ok(ContainerState {
            status: status.to_owned(),
            running: running == "true",
            exit_code: code.parse().with_context(|| format!("exit code in {out:?}"))?,
        })
    }

    /// `Err` carrying [`crate::wait::StopWaiting`] (so waits end at once)
    /// when a container of the pod is no longer running.
    pub fn check_running(&self) -> Result<()> {
        for (name, _) in &self.containers {
            let state = self.state(name)?;
            if !state.running {
                let logs = self.logs(name).unwrap_or_else(|e| format!("(no logs: {e:#})"));
                return Err(stop_waiting(format!(
                    "container {name} of pod {} is {} (exit code {}); its output:\n{}",
                    self.pod_name,
                    state.status,
                    state.exit_code,
                    tail_lines(&logs, 40)
                )));
            }
        }
        Ok(())
    }

    /// One probe the way the kubelet sends it on the host network: GET from
    /// the node's namespace. `(status, body)`.
    pub fn probe(&self, probe: &HttpGetAction, node_ip: Ipv4Addr) -> Result<(u16, String)> {
        let host: IpAddr = match &probe.host {
            Some(h) => h.parse().with_context(|| format!("probe host {h:?}"))?,
            None => IpAddr::V4(node_ip),
        };
        http_request(&self.ns_name, SocketAddr::new(host, probe.port), "GET", &probe.path, None)
    }

    /// Stops the containers as the kubelet deletes a pod: SIGTERM, then
    /// SIGKILL after the pod's grace period. Returns each container's
    /// state afterwards (exit code 137: it had to be killed).
    pub fn stop(&self) -> Result<Vec<(String, ContainerState)>> {
        let grace = self.spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECS).to_string();
        let mut states = Vec::new();
        for (name, podman_name) in &self.containers {
            self.podman.podman_ok(&["stop", "--time", &grace, podman_name])?;
            states.push((name.clone(), self.state(name)?));
        }
        Ok(states)
    }

    /// Deletes the pod: removes its (stopped) containers and init
    /// containers; what remains on the node is what the pod left on the host.
    pub fn remove(&mut self) -> Result<()> {
        let names: Vec<String> = std::mem::take(&mut self.containers).into_iter().map(|(_, p)| p).collect();
        for podman_name in names.into_iter().chain(std::mem::take(&mut self.init_containers)) {
            self.podman.podman_ok(&["rm", "--force", "--time", "0", &podman_name])?;
        }
        Ok(())
    }

    /// Names of every container podman still knows on this node.
    pub fn podman_containers(&self) -> Result<Vec<String>> {
        let out = self.podman.podman_ok(&["ps", "--all", "--format", "{{.Names}}"])?;
        Ok(out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
    }

    /// Every container's output, for a failing test.
    pub fn dump_logs(&self) {
        for (name, log) in &self.init_logs {
            eprintln!("\n===== pod {} init container {name} =====\n{}", self.pod_name, tail_lines(log, 40));
        }
        for (name, _) in &self.containers {
            let log = self.logs(name).unwrap_or_else(|e| format!("(no logs: {e:#})"));
            eprintln!("\n===== pod {} container {name} =====\n{}", self.pod_name, tail_lines(&log, 80));
        }
    }
}

impl Drop for DaemonSetPod {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("WEFT_TEST_LOGS").is_some() {
            self.dump_logs();
        }
    }
}

fn str_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
