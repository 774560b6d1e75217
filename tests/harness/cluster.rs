//! A multi-node cluster on one machine: a "wire" namespace with a bridge as
//! the underlay, one namespace per node, routers and pods on top.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cmd::{run_bounded, CMD_TIMEOUT, TERM_GRACE};
use crate::endpoint::{Pod, PodSpec, UnderlayHost};
use crate::http::http_request;
use crate::netns::plug_veth;
use crate::netns::{sweep_stale, unique_prefix, Netns};
use crate::preflight::require_env;
use crate::report::Report;
use crate::router::{
    describe_exit, has_flag, http_addr_in, log_marker, scrub_weft_env, spawn_router, tail, weft_bin, RouterProcess,
    DEFAULT_HTTP_ADDR,
};
use crate::underlay_block::{self, BlockId, Traffic};
use crate::wait::{stop_waiting, wait_until};

/// Name of the bridge the router creates in each node namespace.
pub const BRIDGE: &str = "weft";
/// Prefix length of the flat pod network 10.32.0.0/12.
pub const POD_PREFIX_LEN: u8 = 12;
/// Name of the underlay bridge inside the wire namespace.
pub const WIRE_BRIDGE: &str = "br0";

/// How long routers get to answer `/status` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `add_pod` waits for the router to create its bridge.
pub const BRIDGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of each node log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// Underlay address of node `i`: 172.31.0.(i+1).
pub fn node_ip(i: usize) -> Ipv4Addr {
    assert!(i < 199, "node index {i} out of range (underlay hosts use .200 and up)");
    Ipv4Addr::new(172, 31, 0, i as u8 + 1)
}

/// A conventional address for pod `k` on node `n`: 10.32.n.(k+1).
pub fn pod_ip(node: usize, k: usize) -> Ipv4Addr {
    assert!(node < 256 && k < 254, "pod_ip({node}, {k}) out of range");
    Ipv4Addr::new(10, 32, node as u8, k as u8 + 1)
}

/// Options for [`Cluster`]; start from [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    underlay_mtu: u32,
    weft_bin: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl ClusterBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// MTU of the underlay veths and bridge (default 1500).
    pub fn underlay_mtu(mut self, mtu: u32) -> Self {
        self.underlay_mtu = mtu;
        self
    }

    /// Use this router binary instead of [`weft_bin`]'s choice.
    pub fn weft_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.weft_bin = Some(path.into());
        self
    }

    /// Extra environment for every router process (e.g. `RUST_LOG=debug`).
    pub fn router_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn build(self) -> Result<Cluster> {
        require_env();
        sweep_stale();
        let prefix = unique_prefix();
        let scratch = Scratch::create(std::env::temp_dir().join(&prefix))?;
        let wire = Netns::create(format!("{prefix}w"))?;
        let mtu = self.underlay_mtu.to_string();
        wire.ip(&["link", "add", WIRE_BRIDGE, "mtu", &mtu, "type", "bridge"])?;
        wire.ip(&["link", "set", WIRE_BRIDGE, "up"])?;
        let mut nodes = Vec::with_capacity(self.nodes);
        for i in 0..self.nodes {
            let netns = Netns::create(format!("{prefix}n{i}"))?;
            let ip = node_ip(i);
            plug_veth(&wire, &format!("n{i}"), WIRE_BRIDGE, &netns, &format!("{ip}/24"), self.underlay_mtu)?;
            let data_dir = scratch.path.join(format!("node{i}-data"));
            std::fs::create_dir_all(&data_dir)?;
            nodes.push(Node {
                index: i,
                netns,
                ip,
                data_dir,
                log_path: scratch.path.join(format!("node{i}.log")),
                router: Mutex::new(RouterSlot::default()),
            });
        }
        Ok(Cluster {
            prefix,
            nodes,
            wire,
            scratch,
            weft_bin: self.weft_bin,
            env: self.env,
            next_pod: AtomicU32::new(0),
            next_host: AtomicU32::new(0),
            next_block: AtomicU32::new(0),
        })
    }
}

/// The per-cluster temp directory (logs, data dirs); kept when a test fails.
#[derive(Debug)]
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn create(path: PathBuf) -> Result<Scratch> {
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path, keep: false })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[derive(Debug, Default)]
struct RouterSlot {
    process: Option<RouterProcess>,
    /// Arguments of the last start, reused by restarts.
    args: Option<Vec<String>>,
    http_addr: Option<SocketAddr>,
}

/// One simulated host.
#[derive(Debug)]
pub struct Node {
    index: usize,
    netns: Netns,
    ip: Ipv4Addr,
    data_dir: PathBuf,
    log_path: PathBuf,
    router: Mutex<RouterSlot>,
}

impl Node {
    pub fn index(&self) -> usize {
        self.index
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// Underlay address (on `eth0`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// The router's `--data-dir`, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// Router stdout+stderr, appended across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    pub fn nickname(&self) -> String {
        format!("node{}", self.index)
    }
    fn slot(&self) -> MutexGuard<'_, RouterSlot> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A set of node namespaces on a shared underlay. Dropping it stops every
/// router (SIGTERM, then SIGKILL) and deletes all its namespaces; when the
/// drop happens during a panic, each node's log tail is printed first.
#[derive(Debug)]
pub struct Cluster {
    prefix: String,
    // Declared before `wire` so node namespaces go first.
    nodes: Vec<Node>,
    wire: Netns,
    scratch: Scratch,
    weft_bin: Option<PathBuf>,
    env: Vec<(String, String)>,
    next_pod: AtomicU32,
    next_host: AtomicU32,
    next_block: AtomicU32,
}

impl Cluster {
    /// `n` nodes with default options.
    pub fn new(n: usize) -> Result<Cluster> {
        Cluster::builder().nodes(n).build()
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder { nodes: 1, underlay_mtu: 1500, weft_bin: None, env: Vec::new() }
    }

    /// Unique prefix of every namespace of this cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`; panics on a bad index (a test bug).
    pub fn node(&self, i: usize) -> &Node {
        match self.nodes.get(i) {
            Some(n) => n,
            None => panic!("node index {i} out of range (cluster has {})", self.nodes.len()),
        }
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.node(i).ip
    }

    pub fn node_ns(&self, i: usize) -> &Netns {
        &self.node(i).netns
    }

    /// The underlay namespace (holds bridge [`WIRE_BRIDGE`]).
    pub fn wire(&self) -> &Netns {
        &self.wire
    }

    /// Temp directory holding logs and data dirs.
    pub fn dir(&self) -> &Path {
        &self.scratch.path
    }

    fn bin(&self) -> Result<PathBuf> {
        match &self.weft_bin {
            Some(p) => Ok(p.clone()),
            None => weft_bin(),
        }
    }

    // ----- routers -------------------------------------------------------

    /// Starts `weft router` on node `i` with `--nickname node{i}` and
    /// `--data-dir` (unless `extra_args` sets them), `extra_args`, and the
    /// underlay addresses of nodes `peers` as peers.
    pub fn start_router(&self, i: usize, extra_args: &[&str], peers: &[usize]) -> Result<()> {
        let node = self.node(i);
        let mut args = vec!["router".to_owned()];
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        if !has_flag(&extra, "--nickname") {
            args.extend(["--nickname".into(), node.nickname()]);
        }
        if !has_flag(&extra, "--data-dir") {
            args.extend(["--data-dir".into(), node.data_dir.display().to_string()]);
        }
        args.extend(extra);
        args.extend(peers.iter().map(|&p| self.node_ip(p).to_string()));
        self.start_router_args(i, args)
    }

    /// Starts `weft ARGS...` on node `i` exactly as given (`args[0]` is
    /// normally `router`).
    pub fn start_router_args(&self, i: usize, args: Vec<String>) -> Result<()> {
        let node = self.node(i);
        let bin = self.bin()?;
        let http_addr = http_addr_in(&args)?.unwrap_or(DEFAULT_HTTP_ADDR);
        let mut slot = node.slot();
        if let Some(p) = slot.process.as_mut() {
            if p.child.try_exited().is_none() {
                bail!("router on node {i} is already running (pid {})", p.child.pid());
            }
        }
        let process = spawn_router(&bin, &node.netns, &args, &node.log_path, &self.env)
            .with_context(|| format!("starting router on node {i}"))?;
        slot.process = Some(process);
        slot.args = Some(args);
        slot.http_addr = Some(http_addr);
        Ok(())
    }

    /// SIGTERM the router on node `i`, SIGKILL after 10 s. `Err` if it was
    /// not running or needed the SIGKILL.
    pub fn stop_router(&self, i: usize) -> Result<ExitStatus> {
        let node = self.node(i);
        let mut process = node.slot().process.take().with_context(|| format!("no router on node {i}"))?;
        log_marker(&node.log_path, "SIGTERM");
        process.child.terminate(Duration::from_secs(10)).with_context(|| format!("stopping router on node {i}"))
    }

    /// SIGKILL the router on node `i` and reap it; returns when the signal was sent.
    pub fn kill_router(&self, i: usize) -> Result<Instant> {
        let node = self.node(i);
        let mut process = node.slot().process.take().with_context(|| format!("no router on node {i}"))?;
        log_marker(&node.log_path, "SIGKILL");
        let at = Instant::now();
        process.child.kill()?;
        Ok(at)
    }

    /// Stops the router on node `i` if running, then starts it again with
    /// the arguments of its last start (same data dir, so same identity).
    pub fn restart_router(&self, i: usize) -> Result<()> {
        let args = self.node(i).slot().args.clone().with_context(|| format!("router on node {i} was never started"))?;
        if self.router_pid(i).is_some() {
            self.stop_router(i)?;
        }
        self.start_router_args(i, args)
    }

    /// PID of the router on node `i` while it runs.
    pub fn router_pid(&self, i: usize) -> Option<u32> {
        let mut slot = self.node(i).slot();
        let p = slot.process.as_mut()?;
        p.child.try_exited().is_none().then(|| p.child.pid())
    }

    /// `Err` carrying [`crate::wait::StopWaiting`] if the router on node `i`
    /// was started and has exited on its own (so waits end at once).
    pub fn check_alive(&self, i: usize) -> Result<()> {
        let node = self.node(i);
        let mut slot = node.slot();
        let Some(p) = slot.process.as_mut() else {
            return Err(stop_waiting(format!("no router running on node {i}")));
        };
        if let Some(status) = p.child.try_exited() {
            let since = p.started.elapsed();
            drop(slot);
            return Err(stop_waiting(format!(
                "router on node {i} exited ({}) {since:.1?} after start; log tail:\n{}",
                describe_exit(status),
                tail(&node.log_path, 30)
            )));
        }
        Ok(())
    }

    /// Polls `/status` on node `i` until it answers 200.
    pub fn wait_ready(&self, i: usize) -> Result<()> {
        wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
            self.check_alive(i)?;
            Ok(self.http(i, "GET", "/status", None)?.0 == 200)
        })
        .with_context(|| format!("router on node {i} not ready"))
    }

    pub fn wait_ready_all(&self) -> Result<()> {
        (0..self.len()).try_for_each(|i| self.wait_ready(i))
    }

    /// Waits until each of `nodes` knows exactly those nodes as peers and has
    /// an established connection to each of the others.
    pub fn wait_mesh(&self, nodes: &[usize], timeout: Duration) -> Result<()> {
        wait_until(timeout, Duration::from_millis(200), || {
            for &i in nodes {
                self.check_alive(i)?;
                let r = self.report(i)?;
                let peers = r.peers()?.len();
                let established = r.established_count()?;
                if peers != nodes.len() || established != nodes.len() - 1 {
                    bail!("node {i}: {peers} peers, {established} established connections");
                }
            }
            Ok(true)
        })
        .with_context(|| format!("nodes {nodes:?} did not form a full mesh"))
    }

    // ----- router API ----------------------------------------------------

    /// Address of node `i`'s HTTP API (inside its namespace).
    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.node(i).slot().http_addr.unwrap_or(DEFAULT_HTTP_ADDR)
    }

    /// One HTTP request to node `i`'s API: `(status, body)`.
    pub fn http(&self, i: usize, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Result<(u16, String)> {
        http_request(self.node(i).netns.name(), self.http_addr(i), method, path, form)
    }

    /// `GET path`, requiring 200.
    pub fn get(&self, i: usize, path: &str) -> Result<String> {
        let (status, body) = self.http(i, "GET", path, None)?;
        if status != 200 {
            bail!("GET {path} on node {i}: status {status}: {body}");
        }
        Ok(body)
    }

    pub fn report(&self, i: usize) -> Result<Report> {
        let body = self.get(i, "/report")?;
        let json = serde_json::from_str(&body).with_context(|| format!("/report on node {i} is not JSON: {body}"))?;
        Ok(Report(json))
    }

    /// `/metrics` text; see [`crate::metrics`] to read it.
    pub fn metrics(&self, i: usize) -> Result<String> {
        self.get(i, "/metrics")
    }

    /// Runs the `weft` CLI (`weft ARGS...`) inside node `i`, bounded.
    pub fn weft_cli(&self, i: usize, args: &[&str]) -> Result<Output> {
        let bin = self.bin()?;
        let bin = bin.to_str().context("weft path is not UTF-8")?;
        let mut cmd = self.node(i).netns.command(bin, args);
        scrub_weft_env(&mut cmd);
        cmd.env("WEFT_HTTP_ADDR", self.http_addr(i).to_string());
        run_bounded(cmd, CMD_TIMEOUT)
    }

    /// Like [`Cluster::weft_cli`] but requires success; returns stdout.
    pub fn weft_cli_ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = self.weft_cli(i, args)?;
        if !out.status.success() {
            bail!(
                "`weft {}` on node {i} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    // ----- pods and hosts ------------------------------------------------

    /// Plugs a new pod with `ip`/12 into node `node`'s `weft` bridge,
    /// waiting for the router to create the bridge; the pod's MTU is the
    /// bridge's.
    pub fn add_pod(&self, node: usize, ip: Ipv4Addr) -> Result<Pod> {
        let n = self.node(node);
        let mut mtu = None;
        wait_until(BRIDGE_TIMEOUT, Duration::from_millis(50), || {
            mtu = n.netns.link_mtu(BRIDGE)?;
            if mtu.is_none() && n.slot().process.is_some() {
                self.check_alive(node)?;
            }
            Ok(mtu.is_some())
        })
        .with_context(|| format!("bridge {BRIDGE} never appeared on node {node}"))?;
        let mtu = mtu.ok_or_else(|| anyhow!("bridge vanished"))?;
        let k = self.next_pod.fetch_add(1, Ordering::Relaxed);
        Pod::attach(PodSpec {
            node_ns: &n.netns,
            node,
            bridge: BRIDGE,
            name: format!("{}p{k}", self.prefix),
            host_veth: format!("vp{k}"),
            ip,
            prefix_len: POD_PREFIX_LEN,
            mtu,
        })
        .with_context(|| format!("adding pod {ip} on node {node}"))
    }

    /// An empty namespace (only `lo`, up) named after this cluster, deleted
    /// when the returned value drops; e.g. for a CNI plugin to fill.
    pub fn create_netns(&self, tag: &str) -> Result<Netns> {
        let k = self.next_pod.fetch_add(1, Ordering::Relaxed);
        Netns::create(format!("{}e{k}{tag}", self.prefix))
    }

    /// A plain host on the underlay (172.31.0.200 and up), not running a router.
    pub fn add_underlay_host(&self) -> Result<UnderlayHost> {
        let k = self.next_host.fetch_add(1, Ordering::Relaxed);
        if k > 50 {
            bail!("too many underlay hosts");
        }
        let ip = Ipv4Addr::new(172, 31, 0, 200 + k as u8);
        let netns = Netns::create(format!("{}h{k}", self.prefix))?;
        let mtu = self.wire.link_mtu(WIRE_BRIDGE)?.context("wire bridge missing")?;
        plug_veth(&self.wire, &format!("h{k}"), WIRE_BRIDGE, &netns, &format!("{ip}/24"), mtu)?;
        Ok(UnderlayHost { netns, ip })
    }

    // ----- underlay partitions -------------------------------------------

    /// Drops all IPv4 traffic between nodes `a` and `b` on the underlay.
    pub fn block_underlay(&self, a: usize, b: usize) -> Result<BlockId> {
        self.block_underlay_traffic(a, b, Traffic::All)
    }

    /// Drops UDP (optionally only to/from `port`) between nodes `a` and `b`.
    pub fn block_underlay_udp(&self, a: usize, b: usize, port: Option<u16>) -> Result<BlockId> {
        self.block_underlay_traffic(a, b, Traffic::Udp(port))
    }

    pub fn block_underlay_traffic(&self, a: usize, b: usize, traffic: Traffic) -> Result<BlockId> {
        self.block_ips(self.node_ip(a), self.node_ip(b), traffic)
    }

    /// Drops `traffic` between two arbitrary underlay addresses.
    pub fn block_ips(&self, a: Ipv4Addr, b: Ipv4Addr, traffic: Traffic) -> Result<BlockId> {
        let id = BlockId(self.next_block.fetch_add(1, Ordering::Relaxed));
        underlay_block::install(&self.wire, id, a, b, traffic)
            .with_context(|| format!("blocking {traffic:?} between {a} and {b}"))?;
        Ok(id)
    }

    pub fn unblock(&self, id: BlockId) -> Result<()> {
        underlay_block::remove(&self.wire, id)
    }

    // ----- diagnostics ---------------------------------------------------

    /// Last `lines` lines of node `i`'s router log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.node(i).log_path, lines)
    }

    /// Prints every node's log tail to stderr.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            eprintln!(
                "\n===== node{} ({}) log: {} =====\n{}",
                node.index,
                node.netns.name(),
                node.log_path.display(),
                tail(&node.log_path, LOG_TAIL_LINES)
            );
        }
    }

    fn stop_all_routers(&self) {
        let mut running = Vec::new();
        for node in &self.nodes {
            if let Some(mut p) = node.slot().process.take() {
                let _ = p.child.signal(libc::SIGTERM);
                running.push((node.index, p));
            }
        }
        let deadline = Instant::now() + TERM_GRACE;
        for (i, mut p) in running {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.child.wait_timeout(left).is_none() {
                eprintln!("[harness] router on node {i} ignored SIGTERM; SIGKILL");
                let _ = p.child.kill();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all_routers();
        let failing = std::thread::panicking();
        if failing || std::env::var_os("WEFT_TEST_LOGS").is_some() {
            self.dump_logs();
        }
        if failing || std::env::var_os("WEFT_TEST_KEEP").is_some() {
            self.scratch.keep = true;
            eprintln!("[harness] logs kept in {}", self.scratch.path.display());
        }
    }
}
