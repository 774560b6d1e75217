//! What tests of the kernel VXLAN fast path look at: each connection's path
//! as `/report` states it, the VXLAN and TAP devices' counters, the kernel
//! FDBs the router programs, and pings that run in the background while a
//! scenario disturbs the network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::cluster::{Cluster, BRIDGE};
use crate::cmd::ManagedChild;
use crate::endpoint::{Endpoint, Pod};
use crate::netns::Netns;
use crate::ping::PingStats;
use crate::report::{address_host, Report};
use crate::router::DEFAULT_PORT;
use crate::wait::wait_until;

/// The VXLAN device the router makes for bridge [`BRIDGE`]: the bridge
/// name's first 9 characters + `-vxlan`.
pub const VXLAN_DEV: &str = "weft-vxlan";
/// The router's TAP port on bridge [`BRIDGE`] (the sleeve's way in and out).
pub const TAP_DEV: &str = "weft-tap";
/// UDP port VXLAN uses: the router's port + 1.
pub const FASTDP_PORT: u16 = DEFAULT_PORT + 1;
/// The all-zero MAC: a VXLAN FDB's flood list (one entry per remote VTEP).
pub const ZERO_MAC: &str = "00:00:00:00:00:00";
/// The pods' interface, as [`crate::netns::plug_veth`] names it.
const POD_DEV: &str = "eth0";

// ----- connection paths ----------------------------------------------------

/// Which forwarding path a connection's pod frames take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    Fastdp,
    Sleeve,
}

impl Overlay {
    /// As `/report` names it in `Attrs.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlay::Fastdp => "fastdp",
            Overlay::Sleeve => "sleeve",
        }
    }
}

/// One entry of `/report` `Router.Connections`, with its `Attrs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionPath {
    /// `Address` (`ip:port`; the port is ephemeral for inbound connections).
    pub address: String,
    pub state: String,
    /// `Attrs.name`: `fastdp` or `sleeve` (absent on unestablished ones).
    pub path: Option<String>,
    /// `Attrs.reason`: why a connection is on the sleeve.
    pub reason: Option<String>,
    pub mtu: Option<u64>,
    pub info: String,
}

impl ConnectionPath {
    /// The peer's underlay address.
    pub fn host(&self) -> &str {
        address_host(&self.address)
    }

    pub fn is_established(&self) -> bool {
        self.state == "established"
    }

    fn describe(&self) -> String {
        let reason = self.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        format!("{} {} {}{reason}", self.address, self.state, self.path.as_deref().unwrap_or("-"))
    }
}

/// Every connection in `report` with its path attributes.
pub fn connection_paths(report: &Report) -> Result<Vec<ConnectionPath>> {
    let conns = report.router()?.get("Connections").context("no Router.Connections in /report")?;
    // A Go-style encoder renders an empty list as null.
    if conns.is_null() {
        return Ok(Vec::new());
    }
    let conns = conns.as_array().with_context(|| format!("Router.Connections is not an array: {conns}"))?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(conns
        .iter()
        .map(|c| {
            let attrs = c.get("Attrs").cloned().unwrap_or(Value::Null);
            ConnectionPath {
                address: s(c, "Address").unwrap_or_default(),
                state: s(c, "State").unwrap_or_default(),
                path: s(&attrs, "name"),
                reason: s(&attrs, "reason"),
                mtu: attrs.get("mtu").and_then(Value::as_u64),
                info: s(c, "Info").unwrap_or_default(),
            }
        })
        .collect())
}

/// The path a node's connection to `peer` (a node index) should be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathExpectation {
    pub peer: usize,
    pub overlay: Overlay,
    /// For the sleeve: the exact `Attrs.reason`; `None` accepts any.
    pub reason: Option<&'static str>,
}

/// The connection to node `peer` is on the fast path.
pub fn fastdp(peer: usize) -> PathExpectation {
    PathExpectation { peer, overlay: Overlay::Fastdp, reason: None }
}

/// The connection to node `peer` is on the sleeve because of `reason`.
pub fn sleeve(peer: usize, reason: &'static str) -> PathExpectation {
    PathExpectation { peer, overlay: Overlay::Sleeve, reason: Some(reason) }
}

/// Every other node of `nodes` on the fast path, for each of `nodes`.
pub fn all_fastdp(nodes: &[usize]) -> Vec<(usize, Vec<PathExpectation>)> {
    nodes.iter().map(|&i| (i, nodes.iter().filter(|&&j| j != i).map(|&j| fastdp(j)).collect())).collect()
}

/// Whether `node`'s connections meet `expected`: each expected peer has an
/// established connection and every established connection to it is on
/// the expected path (and reason). `Err` says what was seen instead.
pub fn check_paths(c: &Cluster, node: usize, expected: &[PathExpectation]) -> Result<()> {
    let paths = connection_paths(&c.report(node)?)?;
    let mut wrong = Vec::new();
    for e in expected {
        let ip = c.node_ip(e.peer).to_string();
        let to_peer: Vec<&ConnectionPath> = paths.iter().filter(|p| p.is_established() && p.host() == ip).collect();
        let ok = !to_peer.is_empty()
            && to_peer.iter().all(|p| {
                p.path.as_deref() == Some(e.overlay.as_str()) && e.reason.is_none_or(|r| p.reason.as_deref() == Some(r))
            });
        if !ok {
            let want = match e.reason {
                Some(r) => format!("{} ({r})", e.overlay.as_str()),
                None => e.overlay.as_str().to_owned(),
            };
            let seen: Vec<String> = to_peer.iter().map(|p| p.describe()).collect();
            wrong.push(format!("to node{} ({ip}): want {want}, established: {seen:?}", e.peer));
        }
    }
    if !wrong.is_empty() {
        let all: Vec<String> = paths.iter().map(ConnectionPath::describe).collect();
        bail!("node{node}: {}; all connections: {all:?}", wrong.join("; "));
    }
    Ok(())
}

/// Waits until [`check_paths`] holds for `node`.
pub fn wait_paths(c: &Cluster, node: usize, expected: &[PathExpectation], timeout: Duration) -> Result<()> {
    wait_paths_on(c, &[(node, expected.to_vec())], timeout)
}

/// Waits until [`check_paths`] holds for every `(node, expectations)` at
/// once; on timeout the error says what was seen last.
pub fn wait_paths_on(c: &Cluster, expected: &[(usize, Vec<PathExpectation>)], timeout: Duration) -> Result<()> {
    wait_until(timeout, Duration::from_millis(200), || {
        for (node, exp) in expected {
            c.check_alive(*node)?;
            check_paths(c, *node, exp)?;
        }
        Ok(true)
    })
    .with_context(|| format!("connection paths not as expected within {timeout:?}"))
}

// ----- device counters ---------------------------------------------------

/// A link's byte and packet counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl LinkCounters {
    /// Parses one link of `ip -j -s link show` output.
    pub fn from_ip_json(link: &Value) -> Result<LinkCounters> {
        let stats = link.get("stats64").or_else(|| link.get("stats")).with_context(|| format!("no stats in {link}"))?;
        let n = |dir: &str, k: &str| {
            stats
                .get(dir)
                .and_then(|d| d.get(k))
                .and_then(Value::as_u64)
                .with_context(|| format!("no {dir}.{k} in {stats}"))
        };
        Ok(LinkCounters {
            rx_bytes: n("rx", "bytes")?,
            tx_bytes: n("tx", "bytes")?,
            rx_packets: n("rx", "packets")?,
            tx_packets: n("tx", "packets")?,
        })
    }

    /// Growth since `before`.
    pub fn since(&self, before: &LinkCounters) -> LinkCounters {
        LinkCounters {
            rx_bytes: self.rx_bytes.saturating_sub(before.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_sub(before.tx_bytes),
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.rx_bytes + self.tx_bytes
    }
}

/// Counters of `dev` in `ns` (`ip -j -s link show dev DEV`).
pub fn link_counters(ns: &Netns, dev: &str) -> Result<LinkCounters> {
    let json = ns.ip_json(&["-s", "link", "show", "dev", dev])?;
    let link = json.get(0).with_context(|| format!("no link {dev} in {}: {json}", ns.name()))?;
    LinkCounters::from_ip_json(link).with_context(|| format!("counters of {dev} in {}", ns.name()))
}

/// MAC address of `dev` in `ns` (lower case), `None` if there is no such link.
pub fn link_mac(ns: &Netns, dev: &str) -> Result<Option<String>> {
    if ns.link_mtu(dev)?.is_none() {
        return Ok(None);
    }
    let json = ns.ip_json(&["link", "show", "dev", dev])?;
    let mac = json.get(0).and_then(|l| l.get("address")).and_then(Value::as_str);
    mac.map(|m| Some(m.to_ascii_lowercase())).with_context(|| format!("no address for {dev} in {}: {json}", ns.name()))
}

/// MAC of a pod's interface.
pub fn pod_mac(pod: &Pod) -> Result<String> {
    link_mac(pod.netns(), POD_DEV)?.with_context(|| format!("pod {} has no {POD_DEV}", pod.ip()))
}

/// Links in `ns` that weft made: named like the bridge, its VXLAN device or
/// TAP, or tagged with a `weft` alias.
pub fn weft_links(ns: &Netns) -> Result<Vec<String>> {
    let json = ns.ip_json(&["link", "show"])?;
    let links = json.as_array().with_context(|| format!("`ip -j link show` is not a list: {json}"))?;
    Ok(links
        .iter()
        .filter(|l| {
            let name = l.get("ifname").and_then(Value::as_str).unwrap_or_default();
            let alias = l.get("ifalias").and_then(Value::as_str).unwrap_or_default();
            [BRIDGE, VXLAN_DEV, TAP_DEV].contains(&name) || alias.starts_with("weft")
        })
        .map(|l| {
            let name = l.get("ifname").and_then(Value::as_str).unwrap_or("?");
            match l.get("ifalias").and_then(Value::as_str) {
                Some(alias) => format!("{name} (alias {alias})"),
                None => name.to_owned(),
            }
        })
        .collect())
}

// ----- forwarding databases ------------------------------------------------

/// One `bridge -j fdb show` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// Lower case.
    pub mac: String,
    /// The port or device the entry is on.
    pub ifname: Option<String>,
    /// The bridge, for entries in a bridge's FDB.
    pub master: Option<String>,
    /// The remote VTEP, for a VXLAN device's own entries.
    pub dst: Option<IpAddr>,
    /// e.g. `self`, `sticky`.
    pub flags: Vec<String>,
    /// e.g. `permanent`, `static`; absent for learned entries.
    pub state: Option<String>,
}

impl FdbEntry {
    /// An entry in the device's own table (e.g. a VXLAN device's remotes).
    pub fn is_self(&self) -> bool {
        self.flags.iter().any(|f| f == "self")
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn describe(&self) -> String {
        let mut s = self.mac.clone();
        for (k, v) in [("dev", &self.ifname), ("master", &self.master), ("state", &self.state)] {
            if let Some(v) = v {
                s.push_str(&format!(" {k} {v}"));
            }
        }
        if let Some(dst) = self.dst {
            s.push_str(&format!(" dst {dst}"));
        }
        if !self.flags.is_empty() {
            s.push_str(&format!(" [{}]", self.flags.join(",")));
        }
        s
    }

    /// Parses `bridge -j fdb show` output; `dev` fills in `ifname`, which
    /// `bridge fdb show dev DEV` leaves out.
    pub fn parse_all(json: &str, dev: Option<&str>) -> Result<Vec<FdbEntry>> {
        if json.trim().is_empty() {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_str(json).with_context(|| format!("`bridge -j fdb show` output: {json}"))?;
        let entries = v.as_array().with_context(|| format!("`bridge -j fdb show` is not a list: {v}"))?;
        entries
            .iter()
            .map(|e| {
                let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
                let mac = s("mac").with_context(|| format!("fdb entry without mac: {e}"))?.to_ascii_lowercase();
                let dst = match s("dst") {
                    Some(d) => Some(d.parse().with_context(|| format!("fdb dst {d:?} in {e}"))?),
                    None => None,
                };
                let flags = e
                    .get("flags")
                    .and_then(Value::as_array)
                    .map(|f| f.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                Ok(FdbEntry {
                    mac,
                    ifname: s("ifname").or_else(|| dev.map(str::to_owned)),
                    master: s("master"),
                    dst,
                    flags,
                    state: s("state"),
                })
            })
            .collect()
    }
}

/// `bridge -j fdb show ARGS...` inside `ns`.
pub fn fdb_show(ns: &Netns, args: &[&str]) -> Result<Vec<FdbEntry>> {
    let mut full = vec!["-j", "fdb", "show"];
    full.extend_from_slice(args);
    let out = ns.run_ok("bridge", &full)?;
    let dev = args.windows(2).find(|w| w[0] == "dev").map(|w| w[1]);
    FdbEntry::parse_all(&out, dev).with_context(|| format!("bridge fdb show {args:?} in {}", ns.name()))
}

/// The VXLAN device's own FDB (`self` entries: MAC -> remote VTEP).
pub fn vxlan_fdb(ns: &Netns, dev: &str) -> Result<Vec<FdbEntry>> {
    Ok(fdb_show(ns, &["dev", dev])?.into_iter().filter(FdbEntry::is_self).collect())
}

/// Entries of `bridge`'s FDB (every port), the bridge's own included.
pub fn bridge_master_fdb(ns: &Netns, bridge: &str) -> Result<Vec<FdbEntry>> {
    Ok(fdb_show(ns, &["br", bridge])?.into_iter().filter(|e| e.master.as_deref() == Some(bridge)).collect())
}

/// Waits until `node`'s kernel forwards to every pod of `pods` on another
/// node over VXLAN: a VXLAN FDB entry MAC -> that node's IP and a bridge
/// entry for the MAC on the VXLAN port.
pub fn wait_fdb_has_pods(c: &Cluster, node: usize, pods: &[&Pod], timeout: Duration) -> Result<()> {
    let mut want = Vec::new();
    for p in pods.iter().filter(|p| p.node() != node) {
        want.push((pod_mac(p)?, IpAddr::V4(c.node_ip(p.node())), p.ip()));
    }
    let ns = c.node_ns(node);
    let mut missing = Vec::new();
    wait_until(timeout, Duration::from_millis(200), || {
        let vx = vxlan_fdb(ns, VXLAN_DEV)?;
        let br = bridge_master_fdb(ns, BRIDGE)?;
        missing = want
            .iter()
            .filter(|(mac, dst, _)| {
                !vx.iter().any(|e| e.mac == *mac && e.dst == Some(*dst))
                    || !br.iter().any(|e| e.mac == *mac && e.ifname.as_deref() == Some(VXLAN_DEV))
            })
            .map(|(mac, dst, ip)| format!("pod {ip} ({mac} -> {dst})"))
            .collect();
        Ok(missing.is_empty())
    })
    .with_context(|| {
        format!("node{node}: FDB never got {missing:?}; it has:\n{}", fdb_dump(ns).unwrap_or_else(|e| format!("{e:#}")))
    })
}

/// Every FDB entry of `ns` on weft's devices, one per line, for messages.
pub fn fdb_dump(ns: &Netns) -> Result<String> {
    let mut lines: Vec<String> = vxlan_fdb(ns, VXLAN_DEV)?.iter().map(FdbEntry::describe).collect();
    lines.extend(bridge_master_fdb(ns, BRIDGE)?.iter().map(FdbEntry::describe));
    Ok(lines.join("\n"))
}

/// Checks that `node`'s kernel forwarding state is exactly what the router
/// should have programmed for fast-path peers `fastdp_peers` (node
/// indices) with `pods` (on any nodes) plugged in:
///
/// * `node`'s connections to `fastdp_peers` are fastdp, and no other is;
/// * VXLAN FDB: no (MAC, dst) pair twice; the zero MAC exactly once per
///   fast-path peer and to nothing else; each unicast MAC has exactly one
///   dst, the IP of a fast-path peer X, and the MAC belongs on X: X's peer
///   name, a pod plugged into X, or one of weft's own devices on X; each
///   fast-path peer's name -> its IP (the heartbeat entry) is present,
///   and other running peers may have their heartbeat entry, nothing else;
/// * bridge FDB on the VXLAN port: every entry apart from the port's own
///   address is static, has a VXLAN FDB entry, and no pod of `node` itself
///   is pointed at the VXLAN port.
pub fn check_fdb_clean(c: &Cluster, node: usize, fastdp_peers: &[usize], pods: &[&Pod]) -> Result<()> {
    let others: Vec<usize> = (0..c.len()).filter(|&j| j != node && !fastdp_peers.contains(&j)).collect();
    let mut expected: Vec<PathExpectation> = fastdp_peers.iter().map(|&p| fastdp(p)).collect();
    check_paths(c, node, &expected).context("FDB check: the fast-path peers are not all on fastdp")?;
    // Nodes not listed must not be on the fast path (if connected at all).
    for &j in &others {
        expected = vec![fastdp(j)];
        if check_paths(c, node, &expected).is_ok() {
            bail!("FDB check: node{node} has node{j} on fastdp, but it was not listed as a fast-path peer");
        }
    }

    // Where each MAC belongs: node IP -> MACs that live on that node.
    let mut home: BTreeMap<IpAddr, (String, BTreeSet<String>)> = BTreeMap::new();
    for &p in fastdp_peers {
        let name = c.report(p)?.name()?.to_ascii_lowercase();
        let mut macs = BTreeSet::from([name.clone()]);
        for dev in [BRIDGE, TAP_DEV, VXLAN_DEV] {
            macs.extend(link_mac(c.node_ns(p), dev)?);
        }
        for pod in pods.iter().filter(|pod| pod.node() == p) {
            macs.insert(pod_mac(pod)?);
        }
        home.insert(IpAddr::V4(c.node_ip(p)), (name, macs));
    }
    // Connected peers on the sleeve keep their heartbeat entry (it is how
    // a repaired fast path is noticed), and nothing else.
    let mut probed: BTreeMap<IpAddr, String> = BTreeMap::new();
    for &j in &others {
        if c.router_pid(j).is_some() {
            probed.insert(IpAddr::V4(c.node_ip(j)), c.report(j)?.name()?.to_ascii_lowercase());
        }
    }
    let mut local_pods = BTreeSet::new();
    for pod in pods.iter().filter(|pod| pod.node() == node) {
        local_pods.insert(pod_mac(pod)?);
    }

    let ns = c.node_ns(node);
    let vx = vxlan_fdb(ns, VXLAN_DEV)?;
    let br: Vec<FdbEntry> = bridge_master_fdb(ns, BRIDGE)?
        .into_iter()
        .filter(|e| e.ifname.as_deref() == Some(VXLAN_DEV) && e.state.as_deref() != Some("permanent"))
        .collect();
    let mut problems = Vec::new();

    let mut pairs: BTreeMap<(String, Option<IpAddr>), usize> = BTreeMap::new();
    for e in &vx {
        *pairs.entry((e.mac.clone(), e.dst)).or_default() += 1;
    }
    for ((mac, dst), n) in &pairs {
        if *n > 1 {
            problems.push(format!("{mac} -> {dst:?} appears {n} times"));
        }
    }

    let mut by_mac: BTreeMap<&str, Vec<Option<IpAddr>>> = BTreeMap::new();
    for e in &vx {
        by_mac.entry(e.mac.as_str()).or_default().push(e.dst);
    }
    let flood = by_mac.remove(ZERO_MAC).unwrap_or_default();
    for ip in home.keys() {
        let n = flood.iter().filter(|d| **d == Some(*ip)).count();
        if n != 1 {
            problems.push(format!("flood entry {ZERO_MAC} -> {ip} appears {n} times, want once"));
        }
    }
    for d in flood.iter().filter(|d| d.is_none_or(|ip| !home.contains_key(&ip))) {
        problems.push(format!("flood entry {ZERO_MAC} -> {d:?} is not a fast-path peer"));
    }
    for (mac, dsts) in &by_mac {
        let [Some(dst)] = dsts.as_slice() else {
            problems.push(format!("{mac} has {} dsts {dsts:?}, want exactly one", dsts.len()));
            continue;
        };
        match home.get(dst) {
            None if probed.get(dst).is_some_and(|name| name == mac) => {}
            None => problems.push(format!("{mac} -> {dst}: not the IP of a fast-path peer")),
            Some((_, macs)) if !macs.contains(*mac) => {
                problems.push(format!("{mac} -> {dst}: not that node's peer name, a pod or device of it"))
            }
            Some(_) => {}
        }
        if local_pods.contains(*mac) {
            problems.push(format!("{mac} is a pod of node{node} itself but points at {dst}"));
        }
    }
    for (ip, (name, _)) in &home {
        if by_mac.get(name.as_str()).is_none_or(|d| d.as_slice() != [Some(*ip)]) {
            problems.push(format!("heartbeat entry {name} -> {ip} missing"));
        }
    }

    for e in &br {
        if e.state.as_deref() != Some("static") {
            problems.push(format!("bridge entry {} on {VXLAN_DEV} is not static (learned?)", e.describe()));
        }
        if !by_mac.contains_key(e.mac.as_str()) {
            problems.push(format!("bridge entry {} has no VXLAN FDB entry", e.describe()));
        }
        if local_pods.contains(&e.mac) {
            problems.push(format!("bridge entry {} points a local pod at the VXLAN port", e.describe()));
        }
    }

    if !problems.is_empty() {
        let macs = c.report(node).map(|r| r.get("Router").and_then(|r| r.get("MACs")).cloned());
        bail!(
            "node{node} FDB not clean:\n  {}\nFDB:\n{}\nrouter MAC table: {}",
            problems.join("\n  "),
            fdb_dump(ns).unwrap_or_else(|e| format!("{e:#}")),
            macs.map(|m| m.unwrap_or_default().to_string()).unwrap_or_else(|e| format!("{e:#}"))
        );
    }
    Ok(())
}

// ----- background ping -------------------------------------------------------

/// What a finished [`BackgroundPing`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingRun {
    pub stats: PingStats,
    /// Requests never answered.
    pub lost: u32,
    /// Longest run of consecutive unanswered requests, as time.
    pub longest_outage: Duration,
    pub output: String,
}

impl PingRun {
    /// Parses iputils `ping -n` output of a run with `interval` between
    /// requests.
    pub fn parse(output: &str, interval: Duration) -> Result<PingRun> {
        let stats = PingStats::parse(output)?;
        let answered: BTreeSet<u32> = output
            .lines()
            .filter(|l| !l.contains("DUP!"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")))
            .filter_map(|n| n.parse().ok())
            .collect();
        let mut longest = 0u32;
        let mut run = 0u32;
        for seq in 1..=stats.transmitted {
            if answered.contains(&seq) {
                run = 0;
            } else {
                run += 1;
                longest = longest.max(run);
            }
        }
        Ok(PingRun {
            stats,
            lost: stats.transmitted.saturating_sub(stats.received),
            longest_outage: interval * longest,
            output: output.to_owned(),
        })
    }

    /// Share of requests answered.
    pub fn received_ratio(&self) -> f64 {
        f64::from(self.stats.received) / f64::from(self.stats.transmitted.max(1))
    }

    /// One line for messages.
    pub fn summary(&self) -> String {
        format!(
            "{} sent, {} answered, {} lost, {} DUP!, longest outage {:.1?}",
            self.stats.transmitted, self.stats.received, self.lost, self.stats.duplicates, self.longest_outage
        )
    }
}

/// `ping -n -i INTERVAL -w MAX` from a pod, running while a scenario goes
/// on; its output goes to a file in the cluster's directory (kept when a
/// test fails). Dropping it ends the process (by PID).
#[derive(Debug)]
pub struct BackgroundPing {
    child: ManagedChild,
    log: PathBuf,
    interval: Duration,
    max: Duration,
    started: Instant,
    what: String,
}

impl BackgroundPing {
    /// Starts pinging `target` from `from` every `interval`, for at most `max`.
    pub fn start(
        c: &Cluster,
        from: &impl Endpoint,
        target: impl Into<IpAddr>,
        interval: Duration,
        max: Duration,
    ) -> Result<BackgroundPing> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let target = target.into();
        let log = c.dir().join(format!("ping-{}-{target}.log", NEXT.fetch_add(1, Ordering::Relaxed)));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let interval_s = format!("{:.3}", interval.as_secs_f64());
        let max_s = max.as_secs().max(1).to_string();
        let target_s = target.to_string();
        let mut cmd = from.netns().command("ping", &["-n", "-i", &interval_s, "-w", &max_s, &target_s]);
        cmd.env("LC_ALL", "C").stdin(std::process::Stdio::null()).stdout(file.try_clone()?).stderr(file);
        let child = ManagedChild::spawn(cmd)?;
        Ok(BackgroundPing {
            child,
            log,
            interval,
            max,
            started: Instant::now(),
            what: format!("background ping {} -> {target}", from.ip()),
        })
    }

    /// Ends the ping (SIGINT, upon which ping prints its summary) unless it
    /// has ended already, and parses what it printed.
    pub fn finish(mut self) -> Result<PingRun> {
        if self.started.elapsed() >= self.max {
            // It stops at its own deadline; give it a moment to get there.
            self.child.wait_timeout(Duration::from_secs(3));
        }
        self.child.signal(libc::SIGINT)?;
        let status = self.child.wait_timeout(Duration::from_secs(5));
        let output = std::fs::read_to_string(&self.log).with_context(|| format!("reading {}", self.log.display()))?;
        ensure!(status.is_some(), "{} did not exit after SIGINT; output:\n{output}", self.what);
        let run = PingRun::parse(&output, self.interval).with_context(|| self.what.clone())?;
        ensure!(run.stats.transmitted > 0, "{} sent nothing; output:\n{output}", self.what);
        Ok(run)
    }
}
