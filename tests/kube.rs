//! weft on a Kubernetes API: routers started with no peers find each other
//! from the Node list, a new Node is connected within seconds, a deleted
//! Node's addresses come back to the pool exactly once (also when the
//! delete was missed, and when routers race), the API being down or
//! failing never disturbs the data plane, and the router reports it all.
//! The API is the harness's double (`tests/harness/kube_api/`), spoken to by
//! the router's real kube-rs client; deploy/weft.yaml's RBAC is enforced.
//! Needs root and the release binaries; fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use weft_tests::kube_cluster::*;
use weft_tests::*;

/// A new Node's router connected by every other router.
const CONNECT: Duration = Duration::from_secs(20);
/// A deleted Node's space reclaimed and agreed by every live router
/// (the reclaimer's grace of 5 s, rmpeer's confirmation round, gossip).
const RECLAIM: Duration = Duration::from_secs(60);
const REACH: Duration = Duration::from_secs(20);

fn with_kube(nodes: usize, registered: usize, scenario: impl FnOnce(&KubeCluster) -> Result<()>) {
    let kc = KubeCluster::new(Cluster::builder().nodes(nodes), registered).expect("building the cluster and its API");
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/weft.yaml")).unwrap();
    kc.api.enforce_rbac(&rbac).expect("deploy/weft.yaml's RBAC");
    if let Err(e) = scenario(&kc) {
        weft_tests::scenario::dump_connections(&kc);
        panic!("{e:#}");
    }
}

/// One pod per node in `nodes`, through the real plugin and conflist.
fn pods(kc: &KubeCluster, nodes: &[usize]) -> Result<Vec<CniPod>> {
    let bins = CniBinDir::create(&kc.dir().join("cni-bin"), &["portmap"])?;
    nodes
        .iter()
        .map(|&i| {
            let rt = CniRuntime::new(kc.node_ns(i), bins.clone(), NetworkConfig::weft_template()?);
            CniPod::add(kc, i, &rt, &format!("k{i}"))
        })
        .collect()
}

fn ping_all(pods: &[CniPod]) -> Result<()> {
    for a in pods {
        for b in pods {
            if a.ip() != b.ip() {
                a.ping_ok(b.ip(), 2, REACH)?;
            }
        }
    }
    Ok(())
}

fn reclaims(kc: &KubeCluster, nodes: &[usize]) -> Result<f64> {
    nodes.iter().map(|&i| kc.metric(i, "weft_kube_reclaims_total", "")).sum()
}

/// Waits until routers `nodes` have reclaimed `n` peers between them, then
/// checks that it stays at exactly `n`: no peer is retired twice.
fn expect_reclaims(kc: &KubeCluster, nodes: &[usize], n: f64) -> Result<()> {
    wait_until(RECLAIM, Duration::from_millis(250), || Ok(reclaims(kc, nodes)? >= n))?;
    std::thread::sleep(Duration::from_secs(3));
    let got = reclaims(kc, nodes)?;
    ensure!(got == n, "routers {nodes:?} reclaimed {got} peers, expected exactly {n}");
    Ok(())
}

#[test]
fn routers_find_each_other_from_the_node_list_and_a_new_node_joins_in_seconds() {
    with_kube(4, 3, |kc| {
        kc.start_kube_routers(&[0, 1, 2])?;
        kc.wait_mesh(&[0, 1, 2], CONNECT)?;
        // The range was divided among the three without a consensus=N.
        let ring = wait_ring_agreed(kc, &[0, 1, 2], &[], IPAM_CONVERGE)?;
        ensure!(ring.len() == 3, "three nodes should share the range: {ring:?}");
        let line = wait_discovery_line(kc, 0, "kubernetes (3 nodes, synced", CONNECT)?;
        eprintln!("node0: {line}");
        let p = pods(kc, &[0, 1, 2])?;
        ping_all(&p)?;

        // Node 3 joins: its Node object first, then its router.
        let added = Instant::now();
        kc.register_node(3)?;
        kc.start_kube_router(3, &[])?;
        kc.wait_mesh(&[0, 1, 2, 3], CONNECT)?;
        eprintln!("node3 in the mesh {:.1?} after its Node was added", added.elapsed());
        for i in 0..3 {
            let t = targets(kc, i)?;
            ensure!(t.contains(&target_of(kc, 3)), "node {i} does not target node3: {t:?}");
        }
        wait_discovery_line(kc, 0, "kubernetes (4 nodes, synced", CONNECT)?;
        let p3 = pods(kc, &[3])?;
        p3[0].ping_ok(p[0].ip(), 2, REACH)?;

        // Readiness set the Node condition, as Weave and flannel do.
        let node = kc.api.node("node0").context("node0's Node object")?;
        let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
        ensure!(
            conditions.iter().any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False"),
            "node0 conditions: {conditions:?}"
        );
        // One peer map key per peer, each naming its node.
        let map = kc.peer_map()?;
        ensure!(map.len() == 4, "peer map: {map:?}");
        for i in 0..4 {
            let peer = kc.peer_name(i)?;
            ensure!(
                map.values().any(|v| v["peer"] == peer.as_str() && v["node"] == node_name(i).as_str()),
                "no peer map entry for {peer} on {}: {map:?}",
                node_name(i)
            );
        }
        Ok(())
    });
}

#[test]
fn a_fresh_cluster_never_divides_the_range_without_a_majority_of_its_nodes() {
    with_kube(3, 3, |kc| {
        kc.start_kube_router(0, &[])?;
        // Alone among three listed nodes: never ready, never allocating.
        wait_discovery_line(kc, 0, "kubernetes (3 nodes, synced", CONNECT)?;
        holds_for(Duration::from_secs(8), "router 0 staying unready alone", || {
            let status = ipam_status(kc, 0)?;
            ensure!(!status.ready && status.gateway.is_none(), "router 0 took the range alone: {status:?}");
            Ok(kc.http(0, "GET", "/status", None)?.0 == 503)
        })?;
        // A second node makes a majority of three.
        kc.start_kube_router(1, &[])?;
        kc.wait_ready(0)?;
        kc.wait_ready(1)?;
        kc.start_kube_router(2, &[])?;
        kc.wait_ready(2)?;
        let ring = wait_ring_agreed(kc, &[0, 1, 2], &[], IPAM_CONVERGE)?;
        ensure!(ring.len() >= 2, "{ring:?}");
        let gateways: Vec<_> = (0..3).map(|i| ipam_status(kc, i).map(|s| s.gateway)).collect::<Result<_>>()?;
        let distinct: std::collections::BTreeSet<_> = gateways.iter().collect();
        ensure!(distinct.len() == 3, "bridge addresses must differ: {gateways:?}");
        Ok(())
    });
}

/// Nodes 0..3 up with a pod each; returns node 2's peer name after its
/// router stopped.
fn three_up_then_stop_two(kc: &KubeCluster) -> Result<(String, Vec<CniPod>)> {
    kc.start_kube_routers(&[0, 1, 2])?;
    kc.wait_mesh(&[0, 1, 2], CONNECT)?;
    wait_ring_agreed(kc, &[0, 1, 2], &[], IPAM_CONVERGE)?;
    let p = pods(kc, &[0, 1, 2])?;
    let gone = kc.peer_name(2)?;
    kc.stop_router(2)?;
    Ok((gone, p))
}

#[test]
fn a_deleted_node_is_forgotten_and_its_space_reclaimed_exactly_once() {
    with_kube(3, 3, |kc| {
        let (gone, p) = three_up_then_stop_two(kc)?;
        kc.delete_node(2)?;
        let ring = wait_ring_agreed(kc, &[0, 1], &[&gone], RECLAIM)?;
        ensure!(ring.len() == 2, "the survivors own everything: {ring:?}");
        // Exactly one router retired the peer, and nobody does it again.
        expect_reclaims(kc, &[0, 1], 1.0)?;
        for i in 0..2 {
            let t = targets(kc, i)?;
            ensure!(!t.contains(&target_of(kc, 2)), "node {i} still dials the deleted node: {t:?}");
            let text = kc.weft_cli_ok(i, &["status", "ipam"])?;
            ensure!(!text.contains("unreachable"), "node {i}:\n{text}");
        }
        ensure!(!kc.peer_map()?.values().any(|v| v["peer"] == gone.as_str()), "the entry of {gone} stays");
        // The survivors still talk, and allocate from the reclaimed space.
        p[0].ping_ok(p[1].ip(), 2, REACH)?;
        Ok(())
    });
}

#[test]
fn a_delete_missed_while_routers_were_down_is_reclaimed_when_they_return() {
    with_kube(3, 3, |kc| {
        let (gone, _p) = three_up_then_stop_two(kc)?;
        // Everyone who could reclaim is down when the Node goes.
        kc.stop_router(1)?;
        kc.stop_router(0)?;
        kc.delete_node(2)?;
        std::thread::sleep(Duration::from_secs(2));
        kc.start_kube_router(0, &[])?;
        kc.start_kube_router(1, &[])?;
        kc.wait_ready(0)?;
        kc.wait_ready(1)?;
        wait_ring_agreed(kc, &[0, 1], &[&gone], RECLAIM)?;
        expect_reclaims(kc, &[0, 1], 1.0)?;
        Ok(())
    });
}

#[test]
fn a_router_down_during_the_delete_agrees_when_it_returns() {
    with_kube(3, 3, |kc| {
        let (gone, _p) = three_up_then_stop_two(kc)?;
        kc.stop_router(1)?;
        kc.delete_node(2)?;
        expect_reclaims(kc, &[0], 1.0)?;
        kc.start_kube_router(1, &[])?;
        kc.wait_ready(1)?;
        let ring = wait_ring_agreed(kc, &[0, 1], &[&gone], RECLAIM)?;
        ensure!(ring.len() == 2, "{ring:?}");
        ensure!(reclaims(kc, &[0, 1])? == 1.0, "reclaims: {}", reclaims(kc, &[0, 1])?);
        Ok(())
    });
}

#[test]
fn routers_racing_for_several_deleted_nodes_reclaim_each_once() {
    with_kube(5, 5, |kc| {
        let all = [0, 1, 2, 3, 4];
        kc.start_kube_routers(&all)?;
        kc.wait_mesh(&all, CONNECT)?;
        wait_ring_agreed(kc, &all, &[], IPAM_CONVERGE)?;
        let gone = [kc.peer_name(3)?, kc.peer_name(4)?];
        kc.stop_router(3)?;
        kc.stop_router(4)?;
        // Both deletes reach the three survivors at the same moment.
        kc.delete_node(3)?;
        kc.delete_node(4)?;
        let ring = wait_ring_agreed(kc, &[0, 1, 2], &[&gone[0], &gone[1]], RECLAIM)?;
        ensure!(ring.len() == 3, "{ring:?}");
        expect_reclaims(kc, &[0, 1, 2], 2.0)?;
        Ok(())
    });
}

#[test]
fn a_node_recreated_with_a_fresh_disk_is_a_new_peer_and_the_old_one_is_reclaimed() {
    with_kube(3, 3, |kc| {
        let (old, _p) = three_up_then_stop_two(kc)?;
        // Same node name, empty disk: a new peer.
        std::fs::remove_dir_all(kc.node(2).data_dir())?;
        kc.start_kube_router(2, &[])?;
        kc.wait_ready(2)?;
        let new = kc.peer_name(2)?;
        ensure!(new != old, "a fresh data dir must mean a new peer name");
        wait_ring_agreed(kc, &[0, 1, 2], &[&old], RECLAIM)?;
        expect_reclaims(kc, &[0, 1, 2], 1.0)?;
        let p = pods(kc, &[2, 0])?;
        p[0].ping_ok(p[1].ip(), 2, REACH)?;
        Ok(())
    });
}

#[test]
fn a_reclaimed_router_coming_back_with_its_old_disk_starts_as_a_new_peer() {
    with_kube(3, 3, |kc| {
        let (old, _p) = three_up_then_stop_two(kc)?;
        kc.delete_node(2)?;
        wait_ring_agreed(kc, &[0, 1], &[&old], RECLAIM)?;
        // The machine comes back under the same name, disk intact.
        kc.register_node(2)?;
        kc.start_kube_router(2, &[])?;
        kc.wait_ready(2)?;
        let new = kc.peer_name(2)?;
        ensure!(new != old, "a reclaimed peer must not return: still {old}");
        let ring = wait_ring_agreed(kc, &[0, 1, 2], &[&old], RECLAIM)?;
        ensure!(ring.iter().any(|s| s.peer == new), "the new peer got no space: {ring:?}");
        let conflicts: f64 = (0..3).map(|i| kc.metric(i, "weft_ipam_conflicts", "")).sum::<Result<f64>>()?;
        ensure!(conflicts == 0.0, "IPAM conflicts: {conflicts}");
        Ok(())
    });
}

/// Pings from `a` to `b` every 100 ms on a thread while `during` runs;
/// returns (sent, received).
fn pinging_during(a: &CniPod, b: &CniPod, during: impl FnOnce() -> Result<()>) -> Result<(u32, u32)> {
    let target = b.ip();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let pinger = s.spawn(|| -> Result<(u32, u32)> {
            let (mut sent, mut received) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 2000 {
                let st = a.ping(target, 1)?;
                sent += 1;
                received += st.received;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok((sent, received))
        });
        let result = during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let counts = pinger.join().map_err(|_| anyhow::anyhow!("pinger panicked"))??;
        result.map(|()| counts)
    })
}

#[test]
fn an_api_outage_never_touches_the_data_plane_and_the_watch_recovers() {
    with_kube(3, 2, |kc| {
        kc.start_kube_routers(&[0, 1])?;
        kc.wait_mesh(&[0, 1], CONNECT)?;
        let p = pods(kc, &[0, 1])?;
        p[0].ping_ok(p[1].ip(), 2, REACH)?;
        // The 0–1 connection by its addresses on both ends (an inbound one
        // shows the dialler's ephemeral port): a reconnect would change them.
        let link = |i: usize, peer: usize| -> Result<Vec<String>> {
            let host = kc.node_ip(peer).to_string();
            Ok(kc
                .report(i)?
                .connections()?
                .into_iter()
                .filter(|c| c.is_established() && weft_tests::report::address_host(&c.address) == host)
                .map(|c| c.address)
                .collect())
        };
        let before = (link(0, 1)?, link(1, 0)?);
        let (sent, received) = pinging_during(&p[0], &p[1], || {
            kc.api.set_down(true)?;
            wait_discovery_line(kc, 0, "API failing", CONNECT)?;
            // A node joins while the API is down: its Node object exists,
            // but nobody can read it yet.
            kc.register_node(2)?;
            kc.start_kube_router(2, &[])?;
            std::thread::sleep(Duration::from_secs(5));
            ensure!(kc.http(0, "GET", "/status", None)?.0 == 200, "a ready router must stay ready with the API down");
            kc.api.set_down(false)?;
            wait_discovery_line(kc, 0, "kubernetes (3 nodes, synced", CONNECT)?;
            kc.wait_mesh(&[0, 1, 2], CONNECT)
        })?;
        ensure!(sent > 20, "the pinger hardly ran: {sent}");
        ensure!(received + 2 >= sent, "pod traffic suffered from the API outage: {received}/{sent}");
        // Not the termination count: node 2 joining is dialled from both
        // sides once gossip names it, and one of the two is closed.
        let after = (link(0, 1)?, link(1, 0)?);
        ensure!(before == after, "the 0–1 connection was re-made during the outage: {before:?} → {after:?}");
        ensure!(before.0.len() == 1, "node 0 should have one connection to node 1: {:?}", before.0);

        // Forced re-lists: an in-stream 410 Expired, then HTTP-level 410s.
        let lists = kc.metric(0, "weft_kube_lists_total", "resource=\"nodes\"")?;
        // Three routers, two watches each.
        kc.api.wait_watches(6, CONNECT)?;
        kc.api.expire_watches();
        wait_until(CONNECT, Duration::from_millis(200), || {
            Ok(kc.metric(0, "weft_kube_lists_total", "resource=\"nodes\"")? > lists)
        })
        .context("no re-list after an in-stream 410")?;
        kc.api.wait_watches(6, CONNECT)?;
        kc.api.http_410_next_watches(3);
        kc.api.drop_watches();
        // A Node without a router (yet): it only becomes a target.
        let lonely = std::net::Ipv4Addr::new(172, 31, 0, 99);
        kc.api.add_node("node9", Some(lonely), &[])?;
        wait_until(CONNECT, Duration::from_millis(200), || {
            Ok(targets(kc, 0)?.iter().any(|t| t.starts_with(&format!("{lonely}:"))))
        })
        .context("node9 never became a target after HTTP 410s")?;
        wait_discovery_line(kc, 0, "kubernetes (4 nodes, synced", CONNECT)?;
        Ok(())
    });
}

#[test]
fn a_failing_or_hanging_api_is_reported_and_retried_with_backoff() {
    with_kube(2, 2, |kc| {
        kc.start_kube_routers(&[0, 1])?;
        kc.wait_mesh(&[0, 1], CONNECT)?;
        kc.api.wait_watches(4, CONNECT)?;
        kc.api.fail_requests(Some(500));
        kc.api.drop_watches();
        let line = wait_discovery_line(kc, 0, "API failing", CONNECT)?;
        ensure!(line.contains("500"), "the status should say what the API answered: {line}");
        let before = kc.api.requests().len();
        std::thread::sleep(Duration::from_secs(10));
        let during = kc.api.requests().len() - before;
        // Backoff, not a hot loop: two routers, two watches each, 10 s.
        ensure!(during < 60, "{during} requests in 10 s against a failing API");
        ensure!(kc.metric(0, "weft_kube_watch_errors_total", "")? > 0.0, "errors not counted");
        kc.api.fail_requests(None);
        wait_discovery_line(kc, 0, "kubernetes (2 nodes, synced", CONNECT)?;
        // A hung API leaves the router live (liveness) and connected.
        kc.api.wait_watches(4, CONNECT)?;
        kc.api.hang_requests(true);
        kc.api.drop_watches();
        std::thread::sleep(Duration::from_secs(3));
        ensure!(kc.http(0, "GET", "/healthz", None)?.0 == 200, "liveness must not depend on the API");
        kc.wait_mesh(&[0, 1], CONNECT)?;
        kc.api.hang_requests(false);
        Ok(())
    });
}

#[test]
fn steady_state_api_load_is_a_few_watch_requests_per_minute() {
    with_kube(3, 3, |kc| {
        kc.start_kube_routers(&[0, 1, 2])?;
        kc.wait_mesh(&[0, 1, 2], CONNECT)?;
        wait_ring_agreed(kc, &[0, 1, 2], &[], IPAM_CONVERGE)?;
        std::thread::sleep(Duration::from_secs(5));
        let before = kc.api.requests().len();
        std::thread::sleep(Duration::from_secs(20));
        let n = kc.api.requests().len() - before;
        // No polling: per router, only watches re-opened after their 60 s
        // timeout (two kinds) can happen; 20 s allows at most 2 each.
        ensure!(n <= 3 * 2, "{n} API requests in 20 s of steady state from 3 routers");
        let lists = kc.api.count("list", "/api/v1/nodes");
        ensure!(lists >= 3, "each router lists nodes once: {lists}");
        Ok(())
    });
}

#[test]
fn without_credentials_or_with_no_kube_the_router_runs_as_before() {
    with_kube(2, 2, |kc| {
        // --no-kube: peers from the command line only.
        kc.start_router(0, &["--no-kube"], &[1])?;
        kc.start_router(1, &["--no-kube"], &[0])?;
        kc.wait_mesh(&[0, 1], CONNECT)?;
        let status = kc.get(0, "/status")?;
        ensure!(status.contains("PeerDiscovery: enabled"), "{status}");
        ensure!(kc.api.requests().is_empty(), "--no-kube routers talked to the API");
        Ok(())
    });
}

#[test]
fn bad_credentials_are_an_error_in_status_not_a_crash() {
    with_kube(2, 2, |kc| {
        kc.api.set_token("rotated-away");
        kc.start_kube_router(0, &[])?;
        let line = wait_discovery_line(kc, 0, "API failing", CONNECT)?;
        ensure!(line.contains("401"), "{line}");
        kc.check_alive(0)?;
        bail_if_ready(kc, 0)?;
        Ok(())
    });
}

fn bail_if_ready(kc: &KubeCluster, i: usize) -> Result<()> {
    let (code, body) = kc.http(i, "GET", "/status", None)?;
    if code == 200 {
        bail!("a router that never listed its nodes must not be ready:\n{body}");
    }
    ensure!(body.contains("Ready: no"), "{body}");
    Ok(())
}

#[test]
fn routers_restarted_while_the_api_is_down_reconnect_from_the_last_node_list() {
    with_kube(3, 3, |kc| {
        kc.start_kube_routers(&[0, 1, 2])?;
        kc.wait_mesh(&[0, 1, 2], CONNECT)?;
        wait_ring_agreed(kc, &[0, 1, 2], &[], IPAM_CONVERGE)?;
        for i in 0..3 {
            kc.stop_router(i)?;
        }
        // A cluster-wide restart during an API outage: nobody can list.
        kc.api.set_down(true)?;
        kc.start_kube_routers(&[0, 1, 2])?;
        kc.wait_mesh(&[0, 1, 2], CONNECT)?;
        wait_discovery_line(kc, 0, "API failing", CONNECT)?;
        let p = pods(kc, &[0, 2])?;
        p[0].ping_ok(p[1].ip(), 2, REACH)?;
        kc.api.set_down(false)?;
        wait_discovery_line(kc, 0, "kubernetes (3 nodes, synced", CONNECT)?;
        Ok(())
    });
}
