//! Figures for weft on Kubernetes, against the harness's API double:
//! - time from a Node ADDED to an established connection from an existing
//!   router to the new node's router (median of 10);
//! - API requests per router per minute at steady state;
//! - router RSS when idle, with and without the API watch.
//!
//! `cargo build --release --bins && cargo run --release --example kube_figures [STEADY_SECS]`
//! (as root; `WEFT_BIN` may point at another `weft`). Timing is shared-
//! machine noisy: quote medians and ratios from one run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use weft_tests::kube_cluster::{node_name, KubeCluster};
use weft_tests::*;

const ROUNDS: usize = 10;
const WAIT: Duration = Duration::from_secs(30);

fn main() -> Result<()> {
    let steady_secs: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(120);
    let kc = KubeCluster::new(Cluster::builder().nodes(3), 2)?;
    let result = run(&kc, steady_secs);
    if result.is_err() {
        kc.dump_logs();
    }
    result
}

/// Whether node `from`'s router has an established connection to `peer`.
fn connected_to(kc: &KubeCluster, from: usize, peer: &str) -> Result<bool> {
    let r = kc.report(from)?;
    let conns = r.connections()?;
    Ok(conns.iter().any(|c| c.is_established() && c.info.contains(peer)))
}

/// When node0's log last said a connection to `peer` was established.
fn established_at(log: &str, peer: &str) -> Option<SystemTime> {
    let line = log.lines().rev().find(|l| l.contains(peer) && l.ends_with("established"))?;
    parse_rfc3339(line.split_whitespace().next()?)
}

/// `2026-12-02T18:14:45.624500Z` (as the router logs) as a SystemTime.
fn parse_rfc3339(ts: &str) -> Option<SystemTime> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days since the epoch of a proleptic Gregorian date (Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    let secs = u64::try_from(days).ok()? * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    line.split_whitespace().nth(1).context("VmRSS value")?.parse().context("VmRSS number")
}

fn run(kc: &KubeCluster, steady_secs: u64) -> Result<()> {
    kc.start_kube_router(0, &[])?;
    kc.start_kube_router(1, &[])?;
    kc.wait_ready(0)?;
    kc.wait_ready(1)?;
    kc.wait_mesh(&[0, 1], WAIT)?;

    // The joining node's router neither reads the API nor dials anyone, so
    // each connection is made by the existing routers, from the Node list.
    let mut samples = Vec::new();
    for round in 0..ROUNDS {
        if kc.api.node(&node_name(2)).is_some() {
            kc.delete_node(2)?;
        }
        if kc.router_pid(2).is_some() {
            kc.stop_router(2)?;
        }
        kc.start_router(2, &["--no-kube", "--ipalloc-range", IPALLOC_RANGE], &[])?;
        kc.wait_ready(2)?;
        let peer = kc.peer_name(2)?;
        wait_until(WAIT, Duration::from_millis(50), || Ok(!connected_to(kc, 0, &peer)?))?;
        let added = SystemTime::now();
        kc.register_node(2)?;
        wait_until(WAIT, Duration::from_millis(20), || connected_to(kc, 0, &peer))
            .with_context(|| format!("round {round}: node0 never connected to the new node"))?;
        // The status API publishes at most every 200 ms; the router's log
        // says when the connection was established.
        let at = established_at(&std::fs::read_to_string(kc.node(0).log_path())?, &peer)
            .context("no 'established' line for the new peer in node0's log")?;
        samples.push(at.duration_since(added).context("established before the Node was added?")?);
    }
    samples.sort();
    let median = (samples[ROUNDS / 2 - 1] + samples[ROUNDS / 2]) / 2;
    println!(
        "Node ADDED -> established connection from node0, {ROUNDS} rounds: median {:.0} ms (min {:.0}, max {:.0})",
        median.as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[ROUNDS - 1].as_secs_f64() * 1e3
    );

    // Steady state: three nodes, nothing changing.
    std::thread::sleep(Duration::from_secs(5));
    kc.api.clear_requests();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(steady_secs));
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    for i in 0..2 {
        let ip = kc.node_ip(i);
        let mine: Vec<_> = kc.api.requests().into_iter().filter(|r| r.client.ip() == ip).collect();
        let mut verbs = std::collections::BTreeMap::new();
        for r in &mine {
            *verbs.entry(format!("{} {}", r.verb, r.path)).or_insert(0) += 1;
        }
        println!(
            "node{i}: {} API requests in {steady_secs} s = {:.1} per minute at steady state ({verbs:?})",
            mine.len(),
            mine.len() as f64 / minutes
        );
    }
    let with_watch = rss_kib(kc.router_pid(0).context("router 0")?)?;
    let without = rss_kib(kc.router_pid(2).context("router 2")?)?;
    println!("router RSS idle: {with_watch} KiB with the API watch (node0), {without} KiB with --no-kube (node2)");
    if samples.is_empty() {
        bail!("no samples");
    }
    Ok(())
}
