//! The real image, run exactly as `deploy/weft.yaml`'s DaemonSet runs it.
//!
//! The image is built by the documented command (`bash deploy/build-image`,
//! what CI runs), loaded into each node's podman as the manifest tells
//! users to, and the DaemonSet's pod is run on two node namespaces: the
//! manifest's init container installs weft-net into the node's
//! /opt/cni/bin, the router container (host network, privileged, the
//! manifest's env and host mounts) becomes ready, connects to the other
//! node it finds in the Node list and writes 05-weft.conflist; pods added
//! through the installed plugin and that conflist ping across nodes. The
//! API is the harness's double on the wire, reached the way a pod reaches
//! it (service-account token mounted, KUBERNETES_SERVICE_HOST/PORT), and it
//! grants only the manifest's RBAC. Needs root, podman, runc and
//! the reference CNI plugins (scripts/setup installs them); fails, never
//! skips, without them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use weft_tests::cni::standard_plugin;
use weft_tests::daemonset::{ContainerState, DaemonSetPod, InClusterApi, PodContext};
use weft_tests::kube_cluster::{holds_for, node_name, target_of, targets, KubeCluster, PEER_MAP, WEFT_NAMESPACE};
use weft_tests::manifest::Container;
use weft_tests::*;

/// Bound for `deploy/build-image` (a cold release build of two binaries).
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Bound for a router container to answer its readiness probe with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const REACH: Duration = Duration::from_secs(20);
/// How long node 0 is watched, alone, before node 1 starts.
const ALONE_FOR: Duration = Duration::from_secs(3);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory `deploy/build-image` staged the image's binaries in.
fn image_context() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    target.join("image-context")
}

/// Runs the documented build; returns the OCI archive it printed last.
fn build_image() -> Result<PathBuf> {
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("deploy/build-image")).current_dir(repo());
    let out = run_bounded(cmd, BUILD_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "bash deploy/build-image failed ({}):\n{stderr}\n{stdout}", out.status);
    for line in stdout.lines().filter(|l| l.starts_with("build-image:")) {
        eprintln!("{line}");
    }
    eprintln!("[image] bash deploy/build-image took {:.1?}", started.elapsed());
    let archive = PathBuf::from(stdout.lines().last().context("build-image printed nothing")?.trim());
    ensure!(archive.is_file(), "build-image's archive {} does not exist", archive.display());
    let name = format!("weft-{}.oci.tar", workspace_version());
    ensure!(archive.file_name().is_some_and(|n| n == name.as_str()), "archive {} is not {name}", archive.display());
    let image = format!("localhost/weft:{}", workspace_version());
    let mut exists = Command::new("podman");
    exists.args(["image", "exists", &image]);
    run_ok(exists).with_context(|| format!("build-image left no {image} in the local image store"))?;
    Ok(archive)
}

/// A directory removed on drop, also when the test fails (it holds podman
/// image stores: nothing a failed run needs for diagnosis).
struct TempTree(PathBuf);

impl TempTree {
    fn create(name: &str) -> Result<TempTree> {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempTree(path))
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The network configuration a runtime uses: the lexicographically first
/// `*.conf`, `*.conflist` or `*.json` in `conf_dir` (libcni's ConfFiles),
/// with its file name.
fn runtime_network_config(conf_dir: &Path) -> Result<(String, NetworkConfig)> {
    let mut names: Vec<String> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("listing {}", conf_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| [".conf", ".conflist", ".json"].iter().any(|ext| n.ends_with(ext)))
        .collect();
    names.sort();
    let first = names.first().with_context(|| format!("no network configuration in {}", conf_dir.display()))?;
    let text = std::fs::read_to_string(conf_dir.join(first))?;
    Ok((first.clone(), NetworkConfig::from_conflist(&text).with_context(|| format!("parsing {first}"))?))
}

/// One simulated node's view of the test: its name, filesystem and pod.
struct NodeUnderTest {
    index: usize,
    ctx: PodContext,
    pod: Option<DaemonSetPod>,
}

impl NodeUnderTest {
    fn bin_dir(&self) -> PathBuf {
        self.ctx.host_root.join("opt/cni/bin")
    }
    fn conf_dir(&self) -> PathBuf {
        self.ctx.host_root.join("etc/cni/net.d")
    }
    fn conflist(&self) -> PathBuf {
        self.conf_dir().join("05-weft.conflist")
    }
    fn pod(&self) -> Result<&DaemonSetPod> {
        self.pod.as_ref().with_context(|| format!("no pod on node {}", self.index))
    }
}

fn router_container(ds_spec: &weft_tests::manifest::PodSpec) -> Result<&Container> {
    ds_spec.container("router")
}

/// `/status` through the manifest's readiness probe.
fn readiness(node: &NodeUnderTest, router: &Container) -> Result<(u16, String)> {
    let probe = router.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).context("no readiness httpGet")?;
    node.pod()?.probe(probe, node.ctx.node_ip)
}

/// Waits for the readiness probe to answer 200, checking on the way that
/// the conflist never exists while the probe says "not ready".
fn wait_ready_watching_conflist(node: &NodeUnderTest, router: &Container) -> Result<()> {
    let mut last = String::new();
    wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
        node.pod()?.check_running()?;
        // In this order: a conflist seen before the answer must come with 200.
        let conflist_exists = node.conflist().exists();
        let (status, body) = match readiness(node, router) {
            Ok(r) => r,
            Err(e) => {
                last = format!("{e:#}");
                return Ok(false);
            }
        };
        if status != 200 && conflist_exists {
            return Err(stop_waiting(format!(
                "node {}: {} exists while the router is not ready ({status}): {body}",
                node.index,
                node.conflist().display()
            )));
        }
        last = format!("{status}: {body}");
        Ok(status == 200)
    })
    .with_context(|| format!("router on node {} not ready; last readiness answer: {last}", node.index))
}

fn wait_connected(c: &Cluster, nodes: &[NodeUnderTest]) -> Result<()> {
    wait_until(IPAM_CONVERGE, Duration::from_millis(200), || {
        for n in nodes {
            n.pod()?.check_running()?;
            let r = c.report(n.index)?;
            let (peers, established) = (r.peers()?.len(), r.established_count()?);
            if peers != nodes.len() || established != nodes.len() - 1 {
                bail!("node {}: {peers} peers, {established} established connections", n.index);
            }
        }
        Ok(true)
    })
    .context("the routers did not connect to each other")
}

#[test]
fn image_runs_as_the_daemonset_on_two_nodes() {
    weft_tests::podman::require_podman_tools();
    let archive = build_image().expect("building the image with bash deploy/build-image");
    let manifest = Manifest::load(&weft_manifest_path()).unwrap();
    let ds = manifest.daemonset().unwrap();
    let spec = ds.spec.template.spec.clone();
    let router = router_container(&spec).unwrap().clone();

    // Two Node objects, the API double on an underlay host, enforcing
    // exactly the manifest's RBAC for weft's service account.
    let kc = KubeCluster::new(Cluster::builder().nodes(2), 2).expect("building the cluster and its API");
    kc.api.enforce_rbac_file(&weft_manifest_path()).unwrap();
    let c: &Cluster = &kc.cluster;
    let api = InClusterApi { service_account_dir: kc.api.service_account_dir(), env: kc.api.in_cluster_env() };
    let tmp = TempTree::create(&format!("{}-image", c.prefix())).unwrap();
    let mut nodes: Vec<NodeUnderTest> = (0..2)
        .map(|i| NodeUnderTest {
            index: i,
            ctx: PodContext {
                node_name: node_name(i),
                node_ip: c.node_ip(i),
                pod_name: format!("weft-{}", node_name(i)),
                host_root: tmp.0.join(format!("node{i}-root")),
                api: Some(api.clone()),
                secrets: BTreeMap::new(),
                extra_env: Vec::new(),
            },
            pod: None,
        })
        .collect();

    let scenario = |nodes: &mut Vec<NodeUnderTest>| -> Result<()> {
        // What the nodes have before weft: the reference portmap (as a
        // link into the host's package, which the router container cannot
        // resolve) and, on node 1, Weave's leftover config.
        for n in nodes.iter() {
            std::fs::create_dir_all(n.bin_dir())?;
            std::fs::create_dir_all(n.conf_dir())?;
            std::os::unix::fs::symlink(standard_plugin("portmap"), n.bin_dir().join("portmap"))?;
        }
        std::fs::write(
            nodes[1].conf_dir().join("10-weave.conflist"),
            r#"{"cniVersion": "0.3.0", "name": "weave", "plugins": [{"type": "weave-net", "hairpinMode": true}]}"#,
        )?;

        let start = |n: &mut NodeUnderTest| -> Result<()> {
            // No peers named anywhere: the routers have only the Node list.
            for ctr in &spec.containers {
                let run = container_run(&manifest, &ds, ctr, &n.ctx)?;
                for var in ["WEFT_PEERS", "KUBE_PEERS"] {
                    ensure!(run.env_value(var).is_none(), "{}: {var} is set", ctr.name);
                }
            }
            let state = tmp.0.join(format!("node{}-podman", n.index));
            let pod = DaemonSetPod::start(c.node_ns(n.index), &state, &archive, &manifest, &n.ctx)
                .with_context(|| format!("starting the DaemonSet's pod on node {}", n.index))?;
            n.pod = Some(pod);
            Ok(())
        };

        // The init step installed the image's plugin, executable.
        start(&mut nodes[0])?;
        let installed = std::fs::read(nodes[0].bin_dir().join("weft-net")).context("weft-net not installed")?;
        let shipped = std::fs::read(image_context().join("weft-net"))?;
        ensure!(installed == shipped, "the installed weft-net differs from the image's");
        let log = nodes[0].pod()?.init_log("install-cni").unwrap_or_default().to_owned();
        ensure!(log.contains("installed"), "install-cni said: {log}");

        // Alone, node 0 must not divide the range (node 1 is in the Node
        // list): not ready, so no conflist, yet alive for the kubelet.
        let liveness = router.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).context("liveness httpGet")?;
        wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
            nodes[0].pod()?.check_running()?;
            Ok(readiness(&nodes[0], &router).is_ok())
        })
        .context("node 0's router never answered its readiness probe")?;
        holds_for(ALONE_FOR, "node 0 alone: not ready, no conflist, alive", || {
            nodes[0].pod()?.check_running()?;
            let exists = nodes[0].conflist().exists();
            let (status, body) = readiness(&nodes[0], &router)?;
            let (alive, _) = nodes[0].pod()?.probe(liveness, nodes[0].ctx.node_ip)?;
            if status == 200 || exists || alive != 200 {
                bail!("readiness {status} ({body}), conflist exists: {exists}, liveness {alive}");
            }
            Ok(true)
        })?;
        start(&mut nodes[1])?;
        for n in nodes.iter() {
            wait_ready_watching_conflist(n, &router)?;
        }
        for n in nodes.iter() {
            for probe in [&router.liveness_probe, &router.startup_probe] {
                let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).context("liveness/startup httpGet")?;
                let (status, body) = n.pod()?.probe(get, n.ctx.node_ip)?;
                ensure!(status == 200, "node {}: {} answered {status}: {body}", n.index, get.path);
            }
        }
        // Found from the Node list: no peers were named anywhere.
        wait_connected(c, nodes)?;
        for n in nodes.iter() {
            let t = targets(c, n.index)?;
            ensure!(t == [target_of(c, 1 - n.index)], "node {}: targets {t:?}", n.index);
            let node = kc.api.node(&n.ctx.node_name).context("Node object gone")?;
            let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
            ensure!(
                conditions.iter().any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False"),
                "node {}: no NetworkUnavailable=False condition: {conditions:?}",
                n.index
            );
        }
        let peer_map = kc.peer_map()?;
        ensure!(peer_map.len() == 2, "{WEFT_NAMESPACE}/{PEER_MAP} should list both peers: {peer_map:?}");

        // The conflist, once ready: what deploy/05-weft.conflist says (the
        // node has portmap), first in the runtime's order, Weave's left alone.
        let shipped_conflist = std::fs::read_to_string(repo().join("deploy/05-weft.conflist"))?;
        for n in nodes.iter() {
            wait_until(Duration::from_secs(10), Duration::from_millis(100), || Ok(n.conflist().exists()))
                .with_context(|| format!("node {}: no 05-weft.conflist after ready", n.index))?;
            ensure!(std::fs::read_to_string(n.conflist())? == shipped_conflist, "node {}: conflist differs", n.index);
        }
        ensure!(nodes[1].conf_dir().join("10-weave.conflist").exists(), "Weave's leftover config was removed");

        // Pods through the installed plugin and the conflist the runtime picks.
        let runtimes: Vec<CniRuntime> = nodes
            .iter()
            .map(|n| -> Result<CniRuntime> {
                let (file, config) = runtime_network_config(&n.conf_dir())?;
                ensure!(file == "05-weft.conflist", "node {}: the runtime would use {file}", n.index);
                Ok(CniRuntime::new(c.node_ns(n.index), CniBinDir::existing(&n.bin_dir())?, config))
            })
            .collect::<Result<_>>()?;
        let a = CniPod::add(c, 0, &runtimes[0], "a")?;
        let b = CniPod::add(c, 1, &runtimes[1], "b")?;
        ensure!(a.ip() != b.ip(), "both pods got {}", a.ip());
        for (node, pod) in [(0, &a), (1, &b)] {
            let lease = ipam_lookup(c, node, pod.container_id(), POD_IFNAME)?
                .with_context(|| format!("node {node}'s IPAM has no lease for {}", pod.container_id()))?;
            ensure!(lease.ip.addr == pod.ip(), "pod {}: IPAM says {}", pod.ip(), lease.ip);
        }
        a.ping_ok(b.ip(), 3, REACH)?;
        b.ping_ok(a.ip(), 3, REACH)?;
        a.del(&runtimes[0])?;
        b.del(&runtimes[1])?;

        // Stopping: SIGTERM, exit 0 within the grace period; node 1 sees the
        // connection close; the conflist and plugin stay for the next router.
        for n in nodes.iter_mut() {
            let states = n.pod()?.stop()?;
            for (name, state) in &states {
                let ContainerState { exit_code, running, .. } = state;
                ensure!(!running && *exit_code == 0, "node {}: {name} after stop: {state:?}", n.index);
            }
            if n.index == 0 {
                wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
                    Ok(c.report(1)?.established_count()? == 0)
                })
                .context("node 1 still has a connection after node 0's router stopped")?;
            }
            n.pod.as_mut().context("pod")?.remove()?;
            let left = n.pod()?.podman_containers()?;
            ensure!(left.is_empty(), "node {}: containers left: {left:?}", n.index);
            ensure!(readiness(n, &router).is_err(), "node {}: something still answers the probe", n.index);
            ensure!(n.conflist().exists() && n.bin_dir().join("weft-net").exists(), "node {}: CNI files gone", n.index);
        }

        // Everything the routers asked, the manifest's RBAC allowed; and
        // they did ask, each from its node's address (the host network).
        let requests = kc.api.requests();
        let forbidden: Vec<String> = requests
            .iter()
            .filter(|r| r.status == Some(403))
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect();
        ensure!(forbidden.is_empty(), "requests the manifest's RBAC forbids: {forbidden:#?}");
        for n in nodes.iter() {
            let from_node = requests.iter().filter(|r| r.client.ip() == std::net::IpAddr::V4(n.ctx.node_ip)).count();
            ensure!(from_node > 0, "node {}'s router never called the API", n.index);
        }
        Ok(())
    };
    // Panicking while the pods live: their drop prints the containers' logs.
    if let Err(e) = scenario(&mut nodes) {
        panic!("{e:#}");
    }
}

/// The manifest as a kubelet reads it, without running anything: the
/// image built here, Weave-compatible settings, the env pointing at the
/// host mounts, the optional password Secret, and exactly this RBAC.
#[test]
fn manifest_is_what_a_user_applies() {
    let manifest = Manifest::load(&weft_manifest_path()).unwrap();
    let ds = manifest.daemonset().unwrap();
    let spec = &ds.spec.template.spec;
    let image = format!("localhost/weft:{}", workspace_version());
    for ctr in spec.init_containers.iter().chain(&spec.containers) {
        assert_eq!(ctr.image, image, "{}: the image build-image tags", ctr.name);
        assert_eq!(ctr.image_pull_policy.as_deref(), Some("IfNotPresent"), "{}", ctr.name);
    }
    let ns = manifest.find("Namespace", None, "weft").unwrap();
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    assert!(spec.host_network && !spec.host_pid);
    assert_eq!(spec.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(spec.tolerations, [serde_json::json!({"operator": "Exists"})]);
    assert_eq!(ds.spec.update_strategy.as_ref().unwrap()["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(spec.service_account_name.as_deref(), Some("weft"));

    let router = spec.container("router").unwrap();
    assert!(router.privileged());
    let path = |p: &Option<weft_tests::manifest::Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
    assert_eq!(path(&router.readiness_probe), "/status");
    assert_eq!(path(&router.liveness_probe), "/healthz");
    assert_eq!(path(&router.startup_probe), "/healthz");

    let root = std::env::temp_dir().join("weft-manifest-test-root");
    let mut ctx = PodContext {
        node_name: "node-a".into(),
        node_ip: "192.0.2.1".parse().unwrap(),
        pod_name: "weft-x1".into(),
        host_root: root.clone(),
        api: None,
        secrets: BTreeMap::new(),
        extra_env: Vec::new(),
    };
    let run = container_run(&manifest, &ds, router, &ctx).unwrap();
    assert_eq!(run.command, ["/usr/bin/weft", "router"]);
    assert_eq!(run.env_value("NODE_NAME"), Some("node-a"));
    assert_eq!(run.env_value("POD_NAMESPACE"), Some("weft"));
    assert_eq!(run.env_value("IPALLOC_RANGE"), Some(IPALLOC_RANGE));
    assert_eq!(run.env_value("WEAVE_PASSWORD"), None, "the Secret is optional");
    assert_eq!(run.env_value("WEFT_PEERS"), None, "peers come from the Node list");
    // The directories the router is told about are the host's, mounted.
    let mount_of = |run: &ContainerRun, env: &str| -> PathBuf {
        let dir = run.env_value(env).unwrap_or_else(|| panic!("{} has no {env}", run.name));
        let m = run.mounts.iter().find(|m| m.container == dir).unwrap_or_else(|| panic!("{env}={dir} is not a mount"));
        m.host.clone()
    };
    assert_eq!(mount_of(&run, "WEFT_CNI_CONF_DIR"), root.join("etc/cni/net.d"));
    assert_eq!(mount_of(&run, "WEFT_CNI_BIN_DIR"), root.join("opt/cni/bin"));
    assert_eq!(mount_of(&run, "WEFT_DATA_DIR"), root.join("var/lib/weft"));
    assert!(run.mounts.iter().any(|m| m.host == Path::new("/dev/net/tun") && m.container == "/dev/net/tun"));
    let init = container_run(&manifest, &ds, &spec.init_containers[0], &ctx).unwrap();
    assert_eq!(init.command, ["/usr/bin/weft", "install-cni"]);
    assert_eq!(mount_of(&init, "WEFT_CNI_BIN_DIR"), root.join("opt/cni/bin"));

    // Weave's Secret, unchanged, turns encryption on.
    ctx.secrets.insert("weave-passwd".into(), BTreeMap::from([("weave-passwd".into(), "s3cret".into())]));
    let run = container_run(&manifest, &ds, router, &ctx).unwrap();
    assert_eq!(run.env_value("WEAVE_PASSWORD"), Some("s3cret"));

    let rules = |kind: &str, name: &str| {
        manifest.find(kind, Some("weft"), name).or_else(|_| manifest.find(kind, None, name)).unwrap()["rules"].clone()
    };
    assert_eq!(
        rules("ClusterRole", "weft"),
        serde_json::json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        ])
    );
    assert_eq!(
        rules("Role", "weft"),
        serde_json::json!([
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["weft-peer-map"],
             "verbs": ["get", "list", "watch", "update", "patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        ])
    );
    for (kind, role_kind) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let b = manifest.find(kind, Some("weft"), "weft").or_else(|_| manifest.find(kind, None, "weft")).unwrap();
        assert_eq!(
            b["roleRef"],
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "weft"})
        );
        assert_eq!(b["subjects"], serde_json::json!([{"kind": "ServiceAccount", "name": "weft", "namespace": "weft"}]));
    }
}
