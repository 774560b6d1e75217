//! Scaffolding shared by scenario tests: run a scenario on a fresh cluster
//! with diagnostics on failure, and the traffic checks most scenarios make.

use std::time::Duration;

use anyhow::Result;

use crate::cluster::{Cluster, ClusterBuilder};
use crate::endpoint::{Endpoint, Pod};

/// Runs `scenario` on a fresh `n`-node cluster. On `Err` it prints every
/// node's `weft status connections`, then panics while the cluster is still
/// alive, so that the cluster's drop adds every node's log tail.
pub fn with_cluster(n: usize, scenario: impl FnOnce(&Cluster) -> Result<()>) {
    with_built_cluster(Cluster::builder().nodes(n), scenario)
}

/// [`with_cluster`] on a cluster with options (e.g. router environment).
pub fn with_built_cluster(builder: ClusterBuilder, scenario: impl FnOnce(&Cluster) -> Result<()>) {
    let cluster = match builder.build() {
        Ok(c) => c,
        Err(e) => panic!("building the namespace cluster: {e:#}"),
    };
    if let Err(e) = scenario(&cluster) {
        dump_connections(&cluster);
        panic!("{e:#}");
    }
}

/// Starts a router on every node: `peers[i]` lists the nodes router `i` is
/// told about, and `extra` gives some nodes extra arguments (e.g.
/// `(2, &["--no-fastdp"])`). Returns once every router answers `/status`.
pub fn start_routers(c: &Cluster, peers: &[&[usize]], extra: &[(usize, &[&str])]) -> Result<()> {
    for (i, p) in peers.iter().enumerate() {
        let args = extra.iter().filter(|(n, _)| *n == i).flat_map(|(_, a)| a.iter().copied()).collect::<Vec<_>>();
        c.start_router(i, &args, p)?;
    }
    c.wait_ready_all()
}

/// Prints `weft status connections` of every node to stderr (or why it
/// could not be had, e.g. the router is not running).
pub fn dump_connections(c: &Cluster) {
    for i in 0..c.len() {
        let text = match c.weft_cli_ok(i, &["status", "connections"]) {
            Ok(out) => out,
            Err(e) => format!("(unavailable: {e:#})"),
        };
        eprintln!("\n===== node{i} `weft status connections` =====\n{}", text.trim_end());
    }
}

/// `count` pings each way between `a` and `b`, each answered exactly once
/// (no loss, no `DUP!`), after both can reach each other within `reach`.
pub fn ping_both_ways(a: &Pod, b: &Pod, count: u32, reach: Duration) -> Result<()> {
    a.ping_ok(b.ip(), count, reach)?;
    b.ping_ok(a.ip(), count, reach)?;
    Ok(())
}

/// [`ping_both_ways`] for every pair of `pods`.
pub fn ping_all_pairs(pods: &[&Pod], count: u32, reach: Duration) -> Result<()> {
    for (k, a) in pods.iter().enumerate() {
        for b in &pods[k + 1..] {
            ping_both_ways(a, b, count, reach)?;
        }
    }
    Ok(())
}
