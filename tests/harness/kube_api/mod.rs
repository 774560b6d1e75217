//! A Kubernetes API server test double that speaks the real protocol as
//! kube-rs and kubectl use it: HTTPS (its own CA), bearer token, Nodes,
//! ConfigMaps, Leases and Events with list (paged, selectors), watch
//! (chunked JSON lines, BOOKMARK, in-stream 410, `timeoutSeconds`), get,
//! create, update with optimistic concurrency, merge and strategic merge
//! patch, delete; minimal discovery; optional RBAC; fault switches; a
//! request log. See `/work/shared/research/k8s.md` §2 for what is modelled.
//!
//! Not modelled: server-side apply and JSON patch (415), protobuf bodies
//! (415), Table output, `/openapi`, dryRun, managedFields, generation,
//! finalizers (DELETE removes at once), validation of object contents,
//! namespace existence, deletecollection, HTTP/2.
//!
//! ```no_run
//! # use weft_tests::{Cluster, Endpoint, KubeApi};
//! # fn t(cluster: &Cluster) -> anyhow::Result<()> {
//! let host = cluster.add_underlay_host()?;
//! let api = KubeApi::start_in(host.netns(), std::net::SocketAddrV4::new(host.ip(), 6443))?;
//! api.add_node("node0", Some(cluster.node_ip(0)), &[])?;
//! // routers get api.kubeconfig_path() (KUBECONFIG) or the in-cluster env + SA dir
//! # Ok(()) }
//! ```

mod faults;
mod list;
mod log;
mod objects;
mod patch;
mod query;
mod rbac;
mod resource;
mod select;
mod server;
mod state;
mod status;
mod store;
mod tls;
mod watch;

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

pub use faults::DEFAULT_BOOKMARK_INTERVAL;
pub use log::ApiRequest;
pub use objects::{MERGE_PATCH, STRATEGIC_PATCH};
pub use status::ApiError;
pub use store::{rfc3339, DEFAULT_HISTORY};
pub use tls::SERVICE_ACCOUNT_MOUNT;

use crate::netns::{in_netns, unique_prefix, Netns};
use crate::wait::wait_until;
use resource::by_kind;
use state::{lock, State};

/// Namespace of the service account the token belongs to (and the
/// kubeconfig's default namespace), as in `deploy/weft.yaml`.
pub const NAMESPACE: &str = "weft";
/// The service account the token authenticates as.
pub const SERVICE_ACCOUNT: &str = "weft";

/// A running API double. Dropping it stops the server and removes its
/// credential files.
#[derive(Debug)]
pub struct KubeApi {
    state: Arc<State>,
    runtime: Option<Runtime>,
    tls: Arc<rustls::ServerConfig>,
    /// Where to bind again after `set_down(false)`.
    netns: Option<String>,
    addr: SocketAddrV4,
    accept: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    ca_pem: String,
}

fn bind(netns: Option<&str>, addr: SocketAddrV4) -> Result<TcpListener> {
    // The socket belongs to the namespace of the thread that creates it and
    // stays there, whichever thread later accepts on it.
    let listener = match netns {
        Some(ns) => in_netns(ns, || TcpListener::bind(addr))?,
        None => TcpListener::bind(addr),
    };
    let listener = listener.with_context(|| format!("binding the API double to {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl KubeApi {
    /// On 127.0.0.1 with a free port, in this process' namespace.
    pub fn start_local() -> Result<KubeApi> {
        KubeApi::start(None, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    /// Listening on `addr` inside `netns` (e.g. an underlay host of a
    /// `Cluster`, so routers in node namespaces reach it over the wire).
    pub fn start_in(netns: &Netns, addr: SocketAddrV4) -> Result<KubeApi> {
        KubeApi::start(Some(netns.name()), addr)
    }

    fn start(netns: Option<&str>, addr: SocketAddrV4) -> Result<KubeApi> {
        let listener = bind(netns, addr)?;
        let addr = match listener.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            other => bail!("bound to non-IPv4 {other}"),
        };
        let mut ips = vec![IpAddr::V4(*addr.ip())];
        if *addr.ip() != Ipv4Addr::LOCALHOST {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let (ca_pem, config) = tls::server_tls(&ips)?;
        let token = format!("weft-test-{:016x}", RandomState::new().hash_one(Instant::now()));
        let user = format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
        let dir = std::env::temp_dir().join(format!("{}kubeapi", unique_prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-api-double")
            .enable_all()
            .build()
            .context("starting the API double's runtime")?;
        let api = KubeApi {
            state: Arc::new(State::new(addr, token.clone(), user)),
            runtime: Some(runtime),
            tls: config,
            netns: netns.map(str::to_owned),
            addr,
            accept: Mutex::new(None),
            dir,
            ca_pem,
        };
        api.write_client_token(&token)?;
        api.serve(listener)?;
        Ok(api)
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    fn serve(&self, listener: TcpListener) -> Result<()> {
        let _guard = self.runtime().enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = server::serve(self.state.clone(), self.tls.clone(), listener);
        *lock(&self.accept) = Some(self.runtime().spawn(task));
        Ok(())
    }

    // ----- where and how to connect ---------------------------------------

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// `https://ip:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig (server, CA data, token, namespace `weft`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `ca.crt`, `token` and `namespace`, as the kubelet mounts them at
    /// [`SERVICE_ACCOUNT_MOUNT`].
    pub fn service_account_dir(&self) -> PathBuf {
        self.dir.join("serviceaccount")
    }

    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`, as the kubelet
    /// sets them in every container.
    pub fn in_cluster_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), self.addr.ip().to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), self.addr.port().to_string()),
        ]
    }

    /// `system:serviceaccount:weft:weft`, whom the token authenticates.
    pub fn user(&self) -> &str {
        &self.state.user
    }

    /// The token the server currently accepts.
    pub fn token(&self) -> String {
        lock(&self.state.token).clone()
    }

    /// Changes the token the server accepts (clients still holding the old
    /// one get 401) without touching the credential files.
    pub fn set_token(&self, token: &str) {
        *lock(&self.state.token) = token.to_owned();
    }

    /// Writes `token` into the kubeconfig and the service-account dir
    /// (what a kubelet's token rotation does), without changing what the
    /// server accepts.
    pub fn write_client_token(&self, token: &str) -> Result<()> {
        tls::write_atomic(&self.kubeconfig_path(), &tls::kubeconfig(&self.url(), &self.ca_pem, token, NAMESPACE))?;
        tls::write_service_account(&self.service_account_dir(), &self.ca_pem, token, NAMESPACE)
    }

    // ----- objects --------------------------------------------------------

    fn resource(api_version: &str, kind: &str) -> Result<&'static resource::Resource> {
        by_kind(api_version, kind).ok_or_else(|| anyhow!("the API double serves no {api_version} {kind}"))
    }

    /// Registers a Node as a kubelet would: labels `kubernetes.io/hostname`,
    /// `kubernetes.io/os=linux`, `kubernetes.io/arch=amd64` plus `labels`
    /// (which win), addresses `InternalIP` (if given) and `Hostname`, and a
    /// `Ready=True` condition.
    pub fn add_node(&self, name: &str, internal_ip: Option<Ipv4Addr>, labels: &[(&str, &str)]) -> Result<Value> {
        let mut l = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"});
        for (k, v) in labels {
            l[*k] = json!(v);
        }
        let now = rfc3339(SystemTime::now());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": l},
            "spec": {},
            "status": {
                "addresses": node_addresses(name, internal_ip),
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.33.0",
                    "containerRuntimeVersion": "containerd://1.7.0", "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
            },
        });
        let r = Self::resource("v1", "Node")?;
        Ok(self.state.write(|s| s.create(r, "", node))?)
    }

    /// Sets (or with `None` removes) the Node's `InternalIP` address.
    pub fn set_node_address(&self, name: &str, internal_ip: Option<Ipv4Addr>) -> Result<Value> {
        self.modify_object("v1", "Node", "", name, |n| n["status"]["addresses"] = node_addresses(name, internal_ip))
    }

    pub fn delete_node(&self, name: &str) -> Result<()> {
        self.delete_object("v1", "Node", "", name)
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.object("v1", "Node", "", name)
    }

    pub fn configmap(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object("v1", "ConfigMap", namespace, name)
    }

    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object("coordination.k8s.io/v1", "Lease", namespace, name)
    }

    /// Any stored object; `namespace` is `""` for cluster-scoped kinds.
    pub fn object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = by_kind(api_version, kind)?;
        self.state.read(|s| s.get(r, namespace, name).cloned())
    }

    /// All objects of a kind (in one namespace, or all if `""`), in key order.
    pub fn objects(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<Value> {
        by_kind(api_version, kind).map(|r| self.state.read(|s| s.objects(r, namespace))).unwrap_or_default()
    }

    /// Creates `obj`, or replaces it unconditionally if it exists (by its
    /// `apiVersion`, `kind`, `metadata.namespace` and `metadata.name`).
    pub fn put_object(&self, mut obj: Value) -> Result<Value> {
        let r = Self::resource(obj["apiVersion"].as_str().unwrap_or(""), obj["kind"].as_str().unwrap_or(""))?;
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        if r.namespaced == ns.is_empty() {
            bail!(
                "{} {}: metadata.namespace must be set exactly for namespaced kinds",
                r.kind,
                obj["metadata"]["name"]
            );
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        Ok(self.state.write(|s| match s.get(r, &ns, &name) {
            Some(_) => s.update(r, &ns, &name, obj),
            None => s.create(r, &ns, obj),
        })?)
    }

    /// Changes a stored object in place (unconditionally), as a controller
    /// would; one MODIFIED event if anything changed.
    pub fn modify_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value> {
        let r = Self::resource(api_version, kind)?;
        Ok(self.state.write(|s| {
            let mut obj = s.get(r, namespace, name).cloned().ok_or_else(|| ApiError::not_found(r, name))?;
            f(&mut obj);
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            s.update(r, namespace, name, obj)
        })?)
    }

    pub fn delete_object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Result<()> {
        let r = Self::resource(api_version, kind)?;
        self.state.write(|s| s.delete(r, namespace, name, None, None))?;
        Ok(())
    }

    /// The store's current revision (the newest resourceVersion).
    pub fn revision(&self) -> u64 {
        self.state.read(|s| s.rev())
    }

    // ----- faults ---------------------------------------------------------

    /// Down: the listener is closed (connections refused) and every open
    /// connection, watches included, is cut before this returns. Up:
    /// listens again on the same address.
    pub fn set_down(&self, down: bool) -> Result<()> {
        if down == self.state.faults().down {
            return Ok(());
        }
        self.state.set_faults(|f| f.down = down);
        if !down {
            return self.serve(bind(self.netns.as_deref(), self.addr)?);
        }
        let task = lock(&self.accept).take();
        wait_until(Duration::from_secs(5), Duration::from_millis(2), || {
            Ok(task.as_ref().is_none_or(|t| t.is_finished()) && self.open_watches() == 0)
        })
        .context("the API double did not go down")
    }

    /// Cuts every open watch mid-stream (no final chunk); clients re-watch
    /// from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.state.set_faults(|f| f.drop_epoch += 1);
    }

    /// While on, requests are read and then not answered until it is
    /// switched off (then they are answered normally).
    pub fn hang_requests(&self, hang: bool) {
        self.state.set_faults(|f| f.hang = hang);
    }

    /// Every request (discovery and watches too) answered with this status
    /// and a `Status` body with the matching reason; `None` ends it.
    pub fn fail_requests(&self, status: Option<u16>) {
        self.state.set_faults(|f| f.fail = status);
    }

    /// Compacts the history up to now and ends every open watch with the
    /// in-stream `ERROR` 410 Expired: kube-rs re-lists.
    pub fn expire_watches(&self) {
        self.state.write(|s| s.compact());
        self.state.set_faults(|f| f.expire_epoch += 1);
    }

    /// The next `n` watch requests get an HTTP-level 410 (not the in-stream
    /// event the real server sends).
    pub fn http_410_next_watches(&self, n: u32) {
        self.state.set_faults(|f| f.http_410_watches = n);
    }

    /// While on, open watches send nothing (TCP stays open, no events,
    /// bookmarks or end) and new watch requests get no response head; off,
    /// they carry on.
    pub fn black_hole_watches(&self, on: bool) {
        self.state.set_faults(|f| f.black_hole = on);
    }

    /// How often watches that allow bookmarks get one (default 60 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.state.set_faults(|f| f.bookmark_interval = interval.max(Duration::from_millis(10)));
    }

    /// Changes kept per resource (default [`DEFAULT_HISTORY`]); older
    /// resourceVersions get 410 Expired.
    pub fn set_history_limit(&self, changes: usize) {
        self.state.write(|s| s.set_history_limit(changes));
    }

    /// From now on the service account may do only what the RBAC documents
    /// in `yaml` grant it (403 Forbidden otherwise); discovery stays open.
    pub fn enforce_rbac(&self, yaml: &str) -> Result<()> {
        let rbac = rbac::Rbac::parse(yaml, NAMESPACE, SERVICE_ACCOUNT)?;
        *lock(&self.state.rbac) = Some(rbac);
        Ok(())
    }

    /// Reads the RBAC documents from a file (e.g. `deploy/weft.yaml`).
    pub fn enforce_rbac_file(&self, path: &Path) -> Result<()> {
        let yaml = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        self.enforce_rbac(&yaml).with_context(|| format!("RBAC in {}", path.display()))
    }

    pub fn disable_rbac(&self) {
        *lock(&self.state.rbac) = None;
    }

    // ----- observation ----------------------------------------------------

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state.log.all()
    }

    /// Requests with Kubernetes verb `verb` (`list`, `watch`, `get`,
    /// `create`, `update`, `patch`, `delete`, `discovery`) whose path starts
    /// with `path_prefix`.
    pub fn count(&self, verb: &str, path_prefix: &str) -> usize {
        self.state.log.all().iter().filter(|r| r.verb == verb && r.path.starts_with(path_prefix)).count()
    }

    pub fn clear_requests(&self) {
        self.state.log.clear();
    }

    /// Watches currently streaming.
    pub fn open_watches(&self) -> usize {
        self.state.open_watches.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` watches stream. A client's watch starts a
    /// moment after its list: a fault aimed at open watches
    /// (`drop_watches`, `expire_watches`, `set_down`) must wait for it.
    pub fn wait_watches(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(timeout, Duration::from_millis(5), || Ok(self.open_watches() >= n))
            .with_context(|| format!("waiting for {n} open watches (have {})", self.open_watches()))
    }
}

fn node_addresses(name: &str, internal_ip: Option<Ipv4Addr>) -> Value {
    let mut a: Vec<Value> =
        internal_ip.map(|ip| json!({"type": "InternalIP", "address": ip.to_string()})).into_iter().collect();
    a.push(json!({"type": "Hostname", "address": name}));
    Value::Array(a)
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Blocking on shutdown is not allowed inside another runtime
            // (e.g. an async test); there the tasks end in the background.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
