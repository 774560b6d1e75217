//! Multi-node overlay scenarios: real `weft router` processes in network
//! namespaces (see `tests/harness`). Needs root and `cargo build --bins`
//! first (or `WEFT_BIN`); fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Shutdown, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use weft_tests::report::address_host;
use weft_tests::scenario::{self, with_cluster};
use weft_tests::*;

/// Time for routers to find each other and bring connections up.
const CONVERGE: Duration = Duration::from_secs(30);
/// Time for a pod to reach another once the routers are connected.
const REACH: Duration = Duration::from_secs(20);
const PINGS: u32 = 5;

/// Starts routers: `peers[i]` lists the nodes router `i` is told about.
fn start_routers(c: &Cluster, peers: &[&[usize]]) -> Result<()> {
    scenario::start_routers(c, peers, &[])
}

/// B and C are told only of A; all three connect (B and C by gossip).
fn three_node_mesh(c: &Cluster) -> Result<()> {
    start_routers(c, &[&[], &[0], &[0]])?;
    c.wait_mesh(&[0, 1, 2], CONVERGE)
}

fn ping_both_ways(a: &Pod, b: &Pod) -> Result<()> {
    scenario::ping_both_ways(a, b, PINGS, REACH)
}

#[test]
fn two_nodes_ping_and_bulk_transfer() {
    with_cluster(2, |c| {
        start_routers(c, &[&[], &[0]])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let a = c.add_pod(0, pod_ip(0, 0))?;
        let b = c.add_pod(1, pod_ip(1, 0))?;
        ping_both_ways(&a, &b)?;

        const BYTES: u64 = 50 * 1000 * 1000;
        let stats = a.tcp_transfer_to(&b, BYTES, Duration::from_secs(120))?;
        ensure!(stats.bytes == BYTES);
        eprintln!("50 MB pod to pod across nodes in {:.2?} ({:.0} Mbit/s)", stats.elapsed, stats.mbit_per_sec());
        Ok(())
    });
}

#[test]
fn three_nodes_learn_each_other_through_gossip() {
    with_cluster(3, |c| {
        // B and C only know A; B must find C by gossip.
        three_node_mesh(c)?;
        for i in 0..3 {
            let r = c.report(i)?;
            ensure!(r.peers()?.len() == 3, "node {i} peers: {:?}", r.peer_nicknames()?);
            let conns = r.connections()?;
            ensure!(conns.len() == 2 && conns.iter().all(|x| x.is_established()), "node {i} connections: {conns:?}");
        }
        let b = c.add_pod(1, pod_ip(1, 0))?;
        let cc = c.add_pod(2, pod_ip(2, 0))?;
        ping_both_ways(&b, &cc)
    });
}

#[test]
fn frames_are_relayed_around_a_partition() {
    with_cluster(3, |c| {
        let (a, b, cn) = (0, 1, 2);
        c.block_underlay(a, cn)?;
        start_routers(c, &[&[b], &[], &[b]])?;
        // Everyone learns of everyone, though A and C cannot connect.
        wait_until(CONVERGE, Duration::from_millis(200), || {
            for i in 0..3 {
                ensure!(c.report(i)?.peers()?.len() == 3, "node {i} does not know 3 peers yet");
            }
            let ra = c.report(a)?;
            let rc = c.report(cn)?;
            Ok(ra.has_established_to(&c.node_ip(b).to_string())? && rc.has_established_to(&c.node_ip(b).to_string())?)
        })
        .context("A-B and C-B never established")?;

        let pa = c.add_pod(a, pod_ip(a, 0))?;
        let pc = c.add_pod(cn, pod_ip(cn, 0))?;
        ping_both_ways(&pa, &pc)?;

        let ra = c.report(a)?;
        ensure!(
            !ra.has_established_to(&c.node_ip(cn).to_string())?,
            "A claims a direct connection to C through a blocked underlay: {:?}",
            ra.connections()?
        );
        let (name_b, name_c) = (c.report(b)?.name()?, c.report(cn)?.name()?);
        let routes = ra.unicast_routes()?;
        ensure!(
            routes.contains(&(name_c.clone(), name_b.clone())),
            "A should route to C ({name_c}) via B ({name_b}): {routes:?}"
        );
        Ok(())
    });
}

#[test]
fn killed_router_is_dropped_from_routes_and_recovers() {
    with_cluster(3, |c| {
        three_node_mesh(c)?;
        let pa = c.add_pod(0, pod_ip(0, 0))?;
        let pc = c.add_pod(2, pod_ip(2, 0))?;
        pa.ping_ok(pc.ip(), PINGS, REACH)?;
        let name_c = c.report(2)?.name()?;
        // Otherwise the check below would pass on routes never being reported.
        for i in [0, 1] {
            let dests = c.report(i)?.unicast_dests()?;
            ensure!(dests.contains(&name_c), "node {i} has no unicast route to {name_c} before the kill: {dests:?}");
        }

        let killed = c.kill_router(2)?;
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            for i in [0, 1] {
                let dests = c.report(i)?.unicast_dests()?;
                if dests.contains(&name_c) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .context("the killed router stayed in the others' unicast routes")?;
        let took = killed.elapsed();
        eprintln!("dead router left the routes {took:.2?} after SIGKILL");
        ensure!(took <= Duration::from_millis(10_500), "dead router left the routes only after {took:.2?}");

        c.restart_router(2)?;
        c.wait_ready(2)?;
        let renamed = c.report(2)?.name()?;
        ensure!(renamed == name_c, "restart with the same data dir changed the name: {name_c} -> {renamed}");
        c.wait_mesh(&[0, 1, 2], CONVERGE)?;
        // The pod plugged in before the kill is reachable again.
        pa.ping_ok(pc.ip(), PINGS, REACH)?;
        pc.ping_ok(pa.ip(), PINGS, REACH)?;
        Ok(())
    });
}

/// Everything the router counts as rejected input.
fn rejections(metrics: &str) -> f64 {
    metric_sum(metrics, "weft_drops_total", "") + metric_sum(metrics, "weft_connection_failures_total", "")
}

#[test]
fn garbage_on_the_router_ports_is_counted_and_harmless() {
    with_cluster(2, |c| {
        start_routers(c, &[&[], &[0]])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let a = c.add_pod(0, pod_ip(0, 0))?;
        let b = c.add_pod(1, pod_ip(1, 0))?;
        ping_both_ways(&a, &b)?;

        let target = (c.node_ip(0), DEFAULT_PORT);
        let host = c.add_underlay_host()?;
        let before = metric_sum(&c.metrics(0)?, "weft_drops_total", "");
        const DATAGRAMS: u64 = 200;
        host.enter(|| -> Result<()> {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            for i in 0..DATAGRAMS {
                // Sizes from empty to a full underlay MTU's worth.
                let len = (i * 37 % 1473) as usize;
                sock.send_to(&payload(i, len), target)?;
                if i % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(())
        })??;
        let mut udp_drops = 0.0;
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            udp_drops = metric_sum(&c.metrics(0)?, "weft_drops_total", "") - before;
            Ok(udp_drops >= (DATAGRAMS / 2) as f64)
        })
        .with_context(|| {
            format!(
                "{DATAGRAMS} garbage datagrams but weft_drops_total grew by {udp_drops}; metrics:\n{}",
                c.metrics(0).unwrap_or_default()
            )
        })?;

        let before = rejections(&c.metrics(0)?);
        host.enter(|| -> Result<()> {
            for i in 0..10u64 {
                let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))?;
                s.set_write_timeout(Some(Duration::from_secs(5)))?;
                let len = [1, 4, 8, 64, 200, 1000, 4096, 65536, 3, 17][i as usize];
                // The peer may hang up mid-write: that is a fine reaction.
                let _ = std::io::Write::write_all(&mut s, &payload(1000 + i, len));
                let _ = s.shutdown(Shutdown::Write);
            }
            Ok(())
        })??;
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || Ok(rejections(&c.metrics(0)?) > before))
            .with_context(|| {
                format!("garbage TCP connections were not counted; metrics:\n{}", c.metrics(0).unwrap_or_default())
            })?;

        c.check_alive(0)?;
        ensure!(c.report(0)?.has_established_to(&c.node_ip(1).to_string())?, "A lost its connection to B");
        ping_both_ways(&a, &b)
    });
}

fn targets(c: &Cluster, i: usize) -> Result<Vec<String>> {
    let out = c.weft_cli_ok(i, &["status", "targets"])?;
    Ok(out.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect())
}

fn targets_mention(targets: &[String], ip: &str) -> bool {
    targets.iter().any(|t| address_host(t) == ip)
}

#[test]
fn connect_and_forget_change_targets() {
    with_cluster(2, |c| {
        start_routers(c, &[&[], &[]])?;
        let b_ip = c.node_ip(1).to_string();
        let before = targets(c, 0)?;
        ensure!(!targets_mention(&before, &b_ip), "B is a target before connect: {before:?}");

        c.weft_cli_ok(0, &["connect", &b_ip])?;
        wait_until(Duration::from_secs(5), Duration::from_millis(100), || Ok(targets_mention(&targets(c, 0)?, &b_ip)))
            .context("`weft connect` did not add the target")?;
        ensure!(
            c.report(0)?.targets()?.iter().any(|t| address_host(t) == b_ip),
            "/report Router.Targets disagrees with `weft status targets`"
        );
        c.wait_mesh(&[0, 1], CONVERGE).context("the connected peer never came up")?;

        c.weft_cli_ok(0, &["forget", &b_ip])?;
        wait_until(Duration::from_secs(5), Duration::from_millis(100), || Ok(!targets_mention(&targets(c, 0)?, &b_ip)))
            .context("`weft forget` did not remove the target")?;
        if c.report(0)?.targets()?.iter().any(|t| address_host(t) == b_ip) {
            bail!("/report still lists {b_ip} as a target after forget");
        }
        Ok(())
    });
}

/// A pod whose MTU is larger than the sleeve can carry (B is told
/// `--mtu 1450` on a 1500-byte underlay, where a sleeve datagram holds
/// frames of at most 1450 bytes, i.e. IP packets of 1436): its oversized
/// packets are answered with ICMP "fragmentation needed" naming the path's
/// MTU, counted, and TCP still gets through by path-MTU discovery.
#[test]
fn frames_too_big_for_the_path_get_frag_needed() {
    with_cluster(2, |c| {
        c.start_router(0, &[], &[])?;
        c.start_router(1, &["--mtu", "1450"], &[0])?;
        c.wait_ready_all()?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let a = c.add_pod(0, pod_ip(0, 0))?;
        let b = c.add_pod(1, pod_ip(1, 0))?;
        ensure!(b.mtu() == 1450, "pod on B got MTU {}", b.mtu());
        ping_both_ways(&a, &b)?;

        // 1422 bytes of payload + 28 of headers = a 1450-byte IP packet, DF set.
        let dst = a.ip().to_string();
        let out = b.netns().run(
            "ping",
            &["-c", "3", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1422", &dst],
            Duration::from_secs(15),
        )?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(
            text.contains("mtu = 1436") || text.contains("mtu=1436"),
            "expected ICMP fragmentation-needed with mtu 1436, ping said:\n{text}"
        );
        let too_big = metric_sum(&c.metrics(1)?, "weft_drops_total", "frame_too_big");
        ensure!(too_big >= 1.0, "frame_too_big drops not counted: {too_big}");

        let stats = b.tcp_transfer_to(&a, 5_000_000, Duration::from_secs(60))?;
        ensure!(stats.bytes == 5_000_000);
        Ok(())
    });
}

/// A link that goes silent (everything dropped on the underlay, no TCP
/// reset) is detected by the heartbeat timeout: within 10 s A routes to C
/// through B, and the pods keep talking.
#[test]
fn silent_link_times_out_and_traffic_reroutes() {
    with_cluster(3, |c| {
        start_routers(c, &[&[], &[0], &[0, 1]])?;
        c.wait_mesh(&[0, 1, 2], CONVERGE)?;
        let pa = c.add_pod(0, pod_ip(0, 0))?;
        let pc = c.add_pod(2, pod_ip(2, 0))?;
        ping_both_ways(&pa, &pc)?;
        let b_name = c.report(1)?.name()?;
        let c_name = c.report(2)?.name()?;

        let _block = c.block_underlay(0, 2)?;
        let blocked_at = std::time::Instant::now();
        wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            let routes = c.report(0)?.unicast_routes()?;
            Ok(routes.iter().any(|(d, v)| *d == c_name && *v == b_name))
        })
        .context("A never routed to C through B")?;
        let took = blocked_at.elapsed();
        eprintln!("A rerouted to C via B {took:.2?} after the link went silent");
        ensure!(took <= Duration::from_millis(10_500), "rerouting took {took:?}, more than 10 s");
        ping_both_ways(&pa, &pc)
    });
}

/// SIGTERM ends the router cleanly (exit status 0, peers see the
/// connection close at once); the bridge and its pods stay, and a
/// restarted router reuses them and reconnects.
#[test]
fn sigterm_is_clean_and_a_restart_reuses_the_bridge() {
    with_cluster(2, |c| {
        start_routers(c, &[&[], &[0]])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let a = c.add_pod(0, pod_ip(0, 0))?;
        let b = c.add_pod(1, pod_ip(1, 0))?;
        ping_both_ways(&a, &b)?;
        let a_name = c.report(0)?.name()?;

        let status = c.stop_router(0)?;
        ensure!(status.success(), "router exited with {status} on SIGTERM");
        let bridge = c.node_ns(0).run_ok("ip", &["-o", "link", "show", "weft"])?;
        ensure!(bridge.contains("weft"), "bridge gone after SIGTERM: {bridge}");
        wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
            Ok(!c.report(1)?.unicast_dests()?.contains(&a_name))
        })
        .context("node 1 still routes to the stopped router")?;

        c.restart_router(0)?;
        c.wait_ready(0)?;
        ensure!(c.report(0)?.name()? == a_name, "peer name changed across a restart");
        ping_both_ways(&a, &b)
    });
}
