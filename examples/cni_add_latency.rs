//! Figure for the CNI issue: latency of `weft-net ADD` as a runtime sees it
//! (exec of the plugin, IPAM over the router's API, veth + netns work),
//! over 200 pods created one after another on one node of a 2-node cluster.
//! Run as root after `cargo build --release --bins`:
//!   cargo run --release --example cni_add_latency [PODS]
//! Prints p50/p90/p99/max. A benchmark, not a test: nothing is asserted.

use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use weft_tests::*;

fn main() -> Result<()> {
    let pods: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let cluster = Cluster::new(2).context("building the namespace cluster")?;
    cluster.start_router(0, &[], &[1])?;
    cluster.start_router(1, &[], &[0])?;
    cluster.wait_ready_all()?;
    cluster.wait_mesh(&[0, 1], Duration::from_secs(30))?;
    let bins = CniBinDir::create(&cluster.dir().join("cni-bin"), &["portmap"])?;
    let rt = CniRuntime::new(cluster.node_ns(0), bins, NetworkConfig::weft_only("1.0.0")?);

    // The first ADD also waits for the cluster to agree on the range
    // division: reported apart from the steady state.
    let mut namespaces = Vec::with_capacity(pods + 1);
    let first_ns = cluster.create_netns("lat0")?;
    let t = Instant::now();
    rt.add_ok(&Attachment::new("latency-first", &first_ns, "eth0"))?;
    let first = t.elapsed();
    namespaces.push(first_ns);

    let mut samples = Vec::with_capacity(pods);
    for k in 0..pods {
        let ns = cluster.create_netns(&format!("lat{}", k + 1))?;
        let att = Attachment::new(format!("latency-{k}"), &ns, "eth0");
        let t = Instant::now();
        rt.add_ok(&att)?;
        samples.push(t.elapsed());
        namespaces.push(ns);
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    println!("weft-net ADD latency over {pods} pods (one node, sequential):");
    println!("  first ADD (incl. range consensus): {first:.1?}");
    println!("  p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}", pct(0.50), pct(0.90), pct(0.99), pct(1.0));
    Ok(())
}
