//! The kernel VXLAN fast path (issue 4), end to end on namespace clusters:
//! connections come up as `fastdp` and bulk traffic bypasses the router;
//! a blocked VXLAN port falls back to the sleeve and recovers; `--no-fastdp`
//! nodes mix with fast-path ones; relaying still works; router restarts are
//! hitless and leave a clean FDB; `weft reset` removes everything.
//!
//! Needs root and `cargo build --bins` first (or `WEFT_BIN`); fails, never
//! skips, without them. The first tests here only check the harness's own
//! parsers and need neither.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use weft_tests::fastdp::*;
use weft_tests::scenario::*;
use weft_tests::*;

/// Time for routers to find each other and bring connections up.
const CONVERGE: Duration = Duration::from_secs(30);
/// Time for a pod to reach another once the routers are connected.
const REACH: Duration = Duration::from_secs(20);
/// Time for connections to prove the fast path (or to leave or regain it).
const SWITCH: Duration = Duration::from_secs(15);
/// Time for the router to program the kernel FDB once MACs are known.
const FDB: Duration = Duration::from_secs(10);
const PINGS: u32 = 5;
const BIG: u64 = 50 * 1000 * 1000;
const MEDIUM: u64 = 10 * 1000 * 1000;
const TRANSFER: Duration = Duration::from_secs(30);
/// Bytes the TAP (the sleeve's way) may carry while a bulk transfer goes
/// over VXLAN: control chatter, ARP, never the transfer itself.
const TAP_SLACK: u64 = 5 * 1000 * 1000;
const BG_INTERVAL: Duration = Duration::from_millis(100);

// ----- harness parsers (no cluster needed) ---------------------------------

#[test]
fn parse_connection_paths_from_report() {
    let report = Report(json!({"Router": {"Connections": [
        {"Address": "172.31.0.2:6783", "Outbound": true, "State": "established",
         "Info": "fastdp unencrypted 02:00:00:00:00:02(node1) mtu=1376", "Attrs": {"name": "fastdp", "mtu": 1376}},
        {"Address": "172.31.0.3:40000", "Outbound": false, "State": "established",
         "Info": "sleeve ...", "Attrs": {"name": "sleeve", "mtu": 1376, "reason": "heartbeat timeout"}},
        {"Address": "172.31.0.4:6783", "Outbound": true, "State": "retrying", "Info": "", "Attrs": {}},
    ]}}));
    let paths = connection_paths(&report).unwrap();
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[0].host(), "172.31.0.2");
    assert_eq!(paths[0].path.as_deref(), Some("fastdp"));
    assert_eq!(paths[0].mtu, Some(1376));
    assert_eq!(paths[0].reason, None);
    assert_eq!(paths[1].host(), "172.31.0.3");
    assert_eq!(paths[1].reason.as_deref(), Some("heartbeat timeout"));
    assert!(!paths[2].is_established());
    assert_eq!(paths[2].path, None);
    let empty = Report(json!({"Router": {"Connections": null}}));
    assert!(connection_paths(&empty).unwrap().is_empty());
}

#[test]
fn parse_link_counters_and_fdb() {
    // As iproute2 6.1 prints them.
    let link = json!({"ifname": "weft-vxlan", "stats64": {
        "rx": {"bytes": 100, "packets": 2, "errors": 0},
        "tx": {"bytes": 300, "packets": 4, "errors": 0}}});
    let k = LinkCounters::from_ip_json(&link).unwrap();
    assert_eq!(k, LinkCounters { rx_bytes: 100, tx_bytes: 300, rx_packets: 2, tx_packets: 4 });
    let later = LinkCounters { rx_bytes: 150, tx_bytes: 1300, rx_packets: 3, tx_packets: 10 };
    assert_eq!(later.since(&k), LinkCounters { rx_bytes: 50, tx_bytes: 1000, rx_packets: 1, tx_packets: 6 });

    let out = r#"[{"mac":"02:11:22:33:44:55","flags":["sticky"],"master":"weft","state":"static"},
        {"mac":"D2:A3:18:29:63:93","flags":[],"master":"weft","state":"permanent"},
        {"mac":"02:11:22:33:44:55","dst":"172.31.0.2","flags":["self"],"state":"permanent"},
        {"mac":"00:00:00:00:00:00","dst":"172.31.0.2","flags":["self"],"state":"permanent"}]"#;
    let fdb = FdbEntry::parse_all(out, Some("weft-vxlan")).unwrap();
    assert_eq!(fdb.len(), 4);
    assert!(fdb.iter().all(|e| e.ifname.as_deref() == Some("weft-vxlan")));
    assert_eq!(fdb[1].mac, "d2:a3:18:29:63:93", "MACs are lower-cased");
    assert!(fdb[0].has_flag("sticky") && !fdb[0].is_self());
    let own: Vec<_> = fdb.iter().filter(|e| e.is_self()).collect();
    assert_eq!(own.len(), 2);
    assert_eq!(own[1].mac, ZERO_MAC);
    assert_eq!(own[1].dst, Some("172.31.0.2".parse().unwrap()));
    assert!(FdbEntry::parse_all("", None).unwrap().is_empty());
    assert!(FdbEntry::parse_all("[]\n", None).unwrap().is_empty());
}

#[test]
fn parse_background_ping_output() {
    let out = "PING 10.32.1.1 (10.32.1.1) 56(84) bytes of data.
64 bytes from 10.32.1.1: icmp_seq=1 ttl=64 time=0.05 ms
64 bytes from 10.32.1.1: icmp_seq=2 ttl=64 time=0.05 ms
64 bytes from 10.32.1.1: icmp_seq=2 ttl=64 time=0.06 ms (DUP!)
64 bytes from 10.32.1.1: icmp_seq=6 ttl=64 time=0.05 ms
64 bytes from 10.32.1.1: icmp_seq=7 ttl=64 time=0.05 ms

--- 10.32.1.1 ping statistics ---
8 packets transmitted, 4 received, +1 duplicates, 50% packet loss, time 700ms
";
    let run = PingRun::parse(out, BG_INTERVAL).unwrap();
    assert_eq!(run.stats.transmitted, 8);
    assert_eq!(run.stats.received, 4);
    assert_eq!(run.stats.duplicates, 1);
    assert_eq!(run.lost, 4);
    // 3, 4, 5 unanswered in a row; 8 alone.
    assert_eq!(run.longest_outage, BG_INTERVAL * 3);
    assert!((run.received_ratio() - 0.5).abs() < 1e-9);
}

// ----- scenarios -----------------------------------------------------------

/// `weft status` and `weft status connections` of node `i`, for messages.
fn cli_status(c: &Cluster, i: usize) -> Result<(String, String)> {
    Ok((c.weft_cli_ok(i, &["status"])?, c.weft_cli_ok(i, &["status", "connections"])?))
}

/// Counters of node `i`'s VXLAN device and TAP.
fn device_counters(c: &Cluster, i: usize) -> Result<(LinkCounters, LinkCounters)> {
    Ok((link_counters(c.node_ns(i), VXLAN_DEV)?, link_counters(c.node_ns(i), TAP_DEV)?))
}

/// Sends `bytes` from `from` to `to` and checks that the kernel carried it:
/// the sender's VXLAN device sent and the receiver's received at least that
/// much, while neither node's TAP moved more than [`TAP_SLACK`].
fn transfer_goes_through_the_kernel(c: &Cluster, from: &Pod, to: &Pod, bytes: u64) -> Result<()> {
    let (s, r) = (from.node(), to.node());
    let (vx_s, tap_s) = device_counters(c, s)?;
    let (vx_r, tap_r) = device_counters(c, r)?;
    let stats = from.tcp_transfer_to(to, bytes, TRANSFER)?;
    ensure!(stats.bytes == bytes);
    eprintln!(
        "{} MB node{s} -> node{r} in {:.2?} ({:.0} Mbit/s)",
        bytes / 1_000_000,
        stats.elapsed,
        stats.mbit_per_sec()
    );
    let (vx_s2, tap_s2) = device_counters(c, s)?;
    let (vx_r2, tap_r2) = device_counters(c, r)?;
    let (vx_s, tap_s, vx_r, tap_r) =
        (vx_s2.since(&vx_s), tap_s2.since(&tap_s), vx_r2.since(&vx_r), tap_r2.since(&tap_r));
    ensure!(
        vx_s.tx_bytes >= bytes && vx_r.rx_bytes >= bytes,
        "{bytes} bytes sent, but {VXLAN_DEV} sent {} bytes on node{s} and received {} on node{r}: \
         the transfer did not go through the kernel's VXLAN path",
        vx_s.tx_bytes,
        vx_r.rx_bytes
    );
    ensure!(
        tap_s.total_bytes() < TAP_SLACK && tap_r.total_bytes() < TAP_SLACK,
        "{TAP_DEV} moved {} bytes on node{s} and {} on node{r} during a {bytes}-byte transfer \
         (want < {TAP_SLACK}): traffic went through the router",
        tap_s.total_bytes(),
        tap_r.total_bytes()
    );
    Ok(())
}

/// Routers on two nodes, a pod on each, both connections on the fast path
/// and the pods pinging each other.
fn two_fastdp_nodes_with_pods(c: &Cluster) -> Result<(Pod, Pod)> {
    start_routers(c, &[&[], &[0]], &[])?;
    c.wait_mesh(&[0, 1], CONVERGE)?;
    let a = c.add_pod(0, pod_ip(0, 0))?;
    let b = c.add_pod(1, pod_ip(1, 0))?;
    wait_paths_on(c, &all_fastdp(&[0, 1]), SWITCH)?;
    ping_both_ways(&a, &b, PINGS, REACH)?;
    Ok((a, b))
}

#[test]
fn two_nodes_come_up_fastdp_and_carry_traffic_in_the_kernel() {
    with_cluster(2, |c| {
        let (a, b) = two_fastdp_nodes_with_pods(c)?;

        for i in 0..2 {
            let (status, conns) = cli_status(c, i)?;
            ensure!(conns.contains("fastdp"), "node{i} `weft status connections` lacks \"fastdp\":\n{conns}");
            let want = format!("FastDP: enabled ({VXLAN_DEV}, UDP {FASTDP_PORT})");
            ensure!(status.contains(&want), "node{i} `weft status` lacks {want:?}:\n{status}");
        }

        let out = "direction=\"out\"";
        let fast = "path=\"fastdp\"";
        let before = metric_sum_labels(&c.metrics(0)?, "weft_bytes_total", &[out, fast]);
        transfer_goes_through_the_kernel(c, &a, &b, BIG)?;
        wait_paths_on(c, &all_fastdp(&[0, 1]), Duration::ZERO).context("a path changed during the transfer")?;
        let mut grew = 0.0;
        wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
            grew = metric_sum_labels(&c.metrics(0)?, "weft_bytes_total", &[out, fast]) - before;
            Ok(grew >= BIG as f64)
        })
        .with_context(|| format!("weft_bytes_total{{{out},{fast}}} on node0 grew by {grew}, want >= {BIG}"))?;
        Ok(())
    });
}

#[test]
fn three_nodes_fastdp_all_pairs() {
    with_cluster(3, |c| {
        start_routers(c, &[&[], &[0], &[0]], &[])?;
        c.wait_mesh(&[0, 1, 2], CONVERGE)?;
        let pods = [c.add_pod(0, pod_ip(0, 0))?, c.add_pod(1, pod_ip(1, 0))?, c.add_pod(2, pod_ip(2, 0))?];
        wait_paths_on(c, &all_fastdp(&[0, 1, 2]), SWITCH)?;
        ping_all_pairs(&pods.iter().collect::<Vec<_>>(), PINGS, REACH)?;

        let bystander = link_counters(c.node_ns(0), VXLAN_DEV)?;
        transfer_goes_through_the_kernel(c, &pods[1], &pods[2], BIG)?;
        let seen = link_counters(c.node_ns(0), VXLAN_DEV)?.since(&bystander);
        ensure!(
            seen.total_bytes() < TAP_SLACK,
            "node0's {VXLAN_DEV} moved {} bytes during a node1 -> node2 transfer: frames were flooded to it",
            seen.total_bytes()
        );
        wait_paths_on(c, &all_fastdp(&[0, 1, 2]), Duration::ZERO).context("a path changed during the transfer")
    });
}

/// Sum of `weft_path_switches_total{to=...}` on node `i`.
fn switches(c: &Cluster, i: usize, to: Overlay) -> Result<f64> {
    Ok(metric_sum(&c.metrics(i)?, "weft_path_switches_total", &format!("to=\"{}\"", to.as_str())))
}

#[test]
fn blocked_vxlan_port_falls_back_to_sleeve_and_back() {
    with_cluster(2, |c| {
        let (a, b) = two_fastdp_nodes_with_pods(c)?;
        let to_sleeve = switches(c, 0, Overlay::Sleeve)?;
        let to_fastdp = switches(c, 0, Overlay::Fastdp)?;

        let bg = BackgroundPing::start(c, &a, b.ip(), BG_INTERVAL, Duration::from_secs(50))?;
        // A stretch on the fast path before and after the outage, so that
        // the loss while VXLAN is silently dropped (the heartbeat timeout)
        // is a minority of the run.
        std::thread::sleep(Duration::from_secs(4));
        let block = c.block_underlay_udp(0, 1, Some(FASTDP_PORT))?;
        let blocked_at = std::time::Instant::now();
        let on_sleeve = vec![(0, vec![sleeve(1, "heartbeat timeout")]), (1, vec![sleeve(0, "heartbeat timeout")])];
        wait_paths_on(c, &on_sleeve, SWITCH).context("blocking VXLAN's port did not move the connection to sleeve")?;
        eprintln!("on the sleeve {:.1?} after blocking UDP {FASTDP_PORT}", blocked_at.elapsed());
        ping_both_ways(&a, &b, PINGS, REACH).context("traffic over the sleeve while VXLAN is blocked")?;

        c.unblock(block)?;
        let unblocked_at = std::time::Instant::now();
        wait_paths_on(c, &all_fastdp(&[0, 1]), SWITCH).context("the connection did not return to fastdp")?;
        eprintln!("back on fastdp {:.1?} after unblocking", unblocked_at.elapsed());
        std::thread::sleep(Duration::from_secs(8));
        let run = bg.finish()?;
        eprintln!("background ping: {}", run.summary());
        ensure!(run.stats.duplicates == 0, "duplicate ICMP replies across the switches: {}", run.summary());
        ensure!(
            run.received_ratio() >= 0.7,
            "want >= 70% of pings answered (loss only around the switch): {}\n{}",
            run.summary(),
            run.output
        );

        let (s, f) = (switches(c, 0, Overlay::Sleeve)?, switches(c, 0, Overlay::Fastdp)?);
        ensure!(
            s > to_sleeve && f > to_fastdp,
            "weft_path_switches_total on node0: to=sleeve {to_sleeve} -> {s}, to=fastdp {to_fastdp} -> {f}; \
             want both to grow"
        );
        transfer_goes_through_the_kernel(c, &a, &b, MEDIUM)
    });
}

#[test]
fn no_fastdp_node_is_sleeve_others_stay_fastdp() {
    with_cluster(3, |c| {
        start_routers(c, &[&[], &[0], &[0, 1]], &[(2, &["--no-fastdp"])])?;
        c.wait_mesh(&[0, 1, 2], CONVERGE)?;
        let pods = [c.add_pod(0, pod_ip(0, 0))?, c.add_pod(1, pod_ip(1, 0))?, c.add_pod(2, pod_ip(2, 0))?];
        let expected = vec![
            (0, vec![fastdp(1), sleeve(2, "peer unsupported")]),
            (1, vec![fastdp(0), sleeve(2, "peer unsupported")]),
            (2, vec![sleeve(0, "disabled"), sleeve(1, "disabled")]),
        ];
        wait_paths_on(c, &expected, SWITCH)?;
        ping_all_pairs(&pods.iter().collect::<Vec<_>>(), PINGS, REACH)?;
        let stats = pods[0].tcp_transfer_to(&pods[2], MEDIUM, TRANSFER)?;
        ensure!(stats.bytes == MEDIUM);

        let (status, _) = cli_status(c, 2)?;
        ensure!(status.contains("FastDP: disabled"), "node2 `weft status` lacks \"FastDP: disabled\":\n{status}");
        let (status, _) = cli_status(c, 0)?;
        ensure!(status.contains("FastDP: enabled"), "node0 `weft status` lacks \"FastDP: enabled\":\n{status}");
        // The mix held up under traffic.
        wait_paths_on(c, &expected, Duration::ZERO).context("a path changed under traffic")
    });
}

#[test]
fn relay_with_a_c_blocked_still_works() {
    with_cluster(3, |c| {
        let (a, b, cn) = (0, 1, 2);
        c.block_underlay(a, cn)?;
        start_routers(c, &[&[b], &[], &[b]], &[])?;
        let b_ip = c.node_ip(b).to_string();
        wait_until(CONVERGE, Duration::from_millis(200), || {
            for i in 0..3 {
                ensure!(c.report(i)?.peers()?.len() == 3, "node{i} does not know 3 peers yet");
            }
            Ok(c.report(a)?.has_established_to(&b_ip)? && c.report(cn)?.has_established_to(&b_ip)?)
        })
        .context("A-B and C-B never established")?;
        let expected = vec![(a, vec![fastdp(b)]), (b, vec![fastdp(a), fastdp(cn)]), (cn, vec![fastdp(b)])];
        wait_paths_on(c, &expected, SWITCH)?;

        let pa = c.add_pod(a, pod_ip(a, 0))?;
        let pc = c.add_pod(cn, pod_ip(cn, 0))?;
        ping_both_ways(&pa, &pc, PINGS, REACH)?;
        let stats = pa.tcp_transfer_to(&pc, MEDIUM, TRANSFER)?;
        ensure!(stats.bytes == MEDIUM);
        let stats = pc.tcp_transfer_to(&pa, MEDIUM, TRANSFER)?;
        ensure!(stats.bytes == MEDIUM);
        ensure!(
            !c.report(a)?.has_established_to(&c.node_ip(cn).to_string())?,
            "A claims a direct connection to C through a blocked underlay"
        );
        Ok(())
    });
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill,
}

/// Pods on every node ping pods on node `victim` every 0.1 s while its
/// router is stopped (`how`), left down for 2 s and started again: the
/// kernel path carries on meanwhile (at most 3 pings lost, no `DUP!`), and
/// afterwards every node's FDB is clean. `peers` as for [`start_routers`];
/// the victim should be one that dials the others, so that it reconnects
/// without waiting out a backoff.
fn hitless_restart(c: &Cluster, peers: &[&[usize]], victim: usize, how: Stop) -> Result<()> {
    let nodes: Vec<usize> = (0..c.len()).collect();
    start_routers(c, peers, &[])?;
    c.wait_mesh(&nodes, CONVERGE)?;
    let pods: Vec<Pod> = nodes.iter().map(|&i| c.add_pod(i, pod_ip(i, 0))).collect::<Result<_>>()?;
    let pod_refs: Vec<&Pod> = pods.iter().collect();
    wait_paths_on(c, &all_fastdp(&nodes), SWITCH)?;
    ping_all_pairs(&pod_refs, PINGS, REACH)?;
    for &i in &nodes {
        wait_fdb_has_pods(c, i, &pod_refs, FDB)?;
    }
    let name = c.report(victim)?.name()?;

    let pingers: Vec<BackgroundPing> = pods
        .iter()
        .filter(|p| p.node() != victim)
        .map(|p| BackgroundPing::start(c, p, pods[victim].ip(), BG_INTERVAL, Duration::from_secs(40)))
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(1));
    match how {
        Stop::Term => {
            let status = c.stop_router(victim)?;
            ensure!(status.success(), "router on node{victim} exited with {status} on SIGTERM");
        }
        Stop::Kill => {
            c.kill_router(victim)?;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    c.restart_router(victim)?;
    c.wait_ready(victim)?;
    ensure!(c.report(victim)?.name()? == name, "the restarted router on node{victim} has a new peer name");
    wait_paths_on(c, &all_fastdp(&nodes), SWITCH).context("fastdp did not come back after the restart")?;
    std::thread::sleep(Duration::from_secs(1));
    for (p, bg) in pods.iter().filter(|p| p.node() != victim).zip(pingers) {
        let run = bg.finish()?;
        let what = format!("ping node{} -> node{victim} across the {how:?} restart", p.node());
        eprintln!("{what}: {}", run.summary());
        ensure!(run.stats.duplicates == 0, "{what}: duplicate replies: {}", run.summary());
        ensure!(
            run.lost <= 3,
            "{what}: {} (want <= 3 lost: the kernel path should not depend on the router)\n{}",
            run.summary(),
            run.output
        );
    }

    // Let the restarted router finish reconciling before judging the FDB.
    std::thread::sleep(Duration::from_secs(3));
    ping_all_pairs(&pod_refs, 2, REACH)?;
    for &i in &nodes {
        wait_fdb_has_pods(c, i, &pod_refs, FDB)?;
        let others: Vec<usize> = nodes.iter().copied().filter(|&j| j != i).collect();
        check_fdb_clean(c, i, &others, &pod_refs)?;
    }
    Ok(())
}

#[test]
fn router_restart_is_hitless_and_fdb_resyncs() {
    // Node 1 dials node 0, so it reconnects at once when restarted.
    with_cluster(2, |c| hitless_restart(c, &[&[], &[0]], 1, Stop::Term));
}

#[test]
fn router_kill_is_hitless_and_fdb_resyncs() {
    with_cluster(3, |c| hitless_restart(c, &[&[], &[0], &[0, 1]], 2, Stop::Kill));
}

#[test]
fn reset_removes_everything_weft_added() {
    with_cluster(2, |c| {
        let (a, b) = two_fastdp_nodes_with_pods(c)?;
        wait_fdb_has_pods(c, 0, &[&a, &b], FDB)?;
        let data_dir = c.node(0).data_dir().to_owned();
        let state_files = [data_dir.join("peer-name"), data_dir.join("ipam.bin")];
        ensure!(state_files[0].exists(), "{} missing before the reset", state_files[0].display());
        let ns = c.node_ns(0);
        let peer_ip = IpAddr::V4(c.node_ip(1));
        ensure!(fdb_show(ns, &[])?.iter().any(|e| e.dst == Some(peer_ip)), "no FDB entry to {peer_ip} before reset");

        let dir = data_dir.to_str().context("data dir is not UTF-8")?;
        let out = c.weft_cli_ok(0, &["reset", "--data-dir", dir])?;
        eprintln!("weft reset said:\n{}", out.trim_end());
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || Ok(c.router_pid(0).is_none()))
            .context("the router still runs after `weft reset`")?;
        let status = c.stop_router(0)?;
        ensure!(status.success(), "router asked to exit by `weft reset` exited with {status}");

        let links = weft_links(ns)?;
        ensure!(links.is_empty(), "links left after reset: {links:?}");
        let weft_devs = [BRIDGE, VXLAN_DEV, TAP_DEV];
        let on_weft = |d: &Option<String>| d.as_deref().is_some_and(|d| weft_devs.contains(&d));
        let left: Vec<FdbEntry> = fdb_show(ns, &[])?
            .into_iter()
            .filter(|e| e.dst == Some(peer_ip) || on_weft(&e.ifname) || on_weft(&e.master))
            .collect();
        ensure!(left.is_empty(), "FDB entries left after reset: {left:?}");
        for f in &state_files {
            ensure!(!f.exists(), "{} left after reset", f.display());
        }

        let again = c.weft_cli(0, &["reset", "--data-dir", dir])?;
        if !again.status.success() {
            bail!(
                "a second `weft reset` failed ({}): {}{}",
                again.status,
                String::from_utf8_lossy(&again.stderr),
                String::from_utf8_lossy(&again.stdout)
            );
        }
        Ok(())
    });
}
