//! The sleeve with offloads: the TAP hands weft 64 KB super-frames, weft
//! cuts them into MTU-sized segments, sends runs of datagrams as one UDP
//! GSO message, and the receiver merges a flow's segments back into one
//! super-frame for its TAP. Every byte must arrive exactly once and every
//! checksum a pod sees must be right: plain and encrypted (both ciphers),
//! with offloads on one side only, through a relay, with the pod MTU
//! lowered and raised, over a jumbo underlay, and under random loss.
//! Needs root and the release binaries; fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use weft_tests::metrics::metric_sum;
use weft_tests::scenario::{self, with_built_cluster, with_cluster};
use weft_tests::*;

const CONVERGE: Duration = Duration::from_secs(30);
const REACH: Duration = Duration::from_secs(20);
/// The bar: 200 MB checked byte for byte.
const BYTES: u64 = 200 * 1000 * 1000;
const TRANSFER: Duration = Duration::from_secs(180);
const TAP: &str = "weft-tap";

/// Starts routers on the sleeve only (`--no-fastdp`), `extra[i]` added to
/// router `i`'s arguments; routers 1.. are told of router 0 (and a third
/// of the second, for a chain).
fn start_sleeve(c: &Cluster, peers: &[&[usize]], extra: &[&[&str]]) -> Result<()> {
    for (i, p) in peers.iter().enumerate() {
        let mut args = vec!["--no-fastdp"];
        args.extend(extra.get(i).copied().unwrap_or(&[]));
        c.start_router(i, &args, p)?;
    }
    c.wait_ready_all()
}

/// Two sleeve nodes, node 1 dialling node 0, and a pod on each that
/// reaches the other.
fn two_nodes_pinging(c: &Cluster) -> Result<Vec<Pod>> {
    start_sleeve(c, &[&[], &[0]], &[])?;
    c.wait_mesh(&[0, 1], CONVERGE)?;
    let p = pods(c, &[0, 1])?;
    p[0].ping_ok(p[1].ip(), 3, REACH)?;
    Ok(p)
}

fn pods(c: &Cluster, nodes: &[usize]) -> Result<Vec<Pod>> {
    nodes.iter().map(|&i| c.add_pod(i, pod_ip(i, 0))).collect()
}

fn metric(c: &Cluster, i: usize, name: &str, labels: &str) -> Result<f64> {
    Ok(metric_sum(&c.metrics(i)?, name, labels))
}

/// The TAP's own drop counters on node `i` (tx: the kernel could not
/// queue a frame for weft to read; rx: weft wrote one the kernel refused).
fn tap_drops(c: &Cluster, i: usize) -> Result<(u64, u64)> {
    let read = |what: &str| -> Result<u64> {
        let path = format!("/sys/class/net/{TAP}/statistics/{what}");
        let text = c.node_ns(i).run_ok("cat", &[&path])?;
        text.trim().parse().with_context(|| format!("{path}: {text:?}"))
    };
    Ok((read("tx_dropped")?, read("rx_dropped")?))
}

/// What the kernel counted as checksum errors in a pod's namespace: TCP
/// and UDP segments it received with a bad checksum. Must stay 0.
fn checksum_errors(pod: &Pod) -> Result<u64> {
    let snmp = pod.netns().run_ok("cat", &["/proc/net/snmp"])?;
    let mut total = 0;
    for proto in ["Tcp:", "Udp:"] {
        let mut lines = snmp.lines().filter(|l| l.starts_with(proto));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else { bail!("no {proto} in /proc/net/snmp") };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if name == "InCsumErrors" {
                total += value.parse::<u64>().context("InCsumErrors")?;
            }
        }
    }
    Ok(total)
}

/// Transfers `bytes` from `a` to `b`, checked byte for byte, and checks
/// that the receiving pod saw no bad checksum.
fn transfer(a: &Pod, b: &Pod, bytes: u64) -> Result<TransferStats> {
    let before = checksum_errors(b)?;
    let stats = a.tcp_transfer_to(b, bytes, TRANSFER)?;
    ensure!(stats.bytes == bytes, "{} of {bytes} bytes arrived", stats.bytes);
    let after = checksum_errors(b)?;
    ensure!(after == before, "pod {} saw {} segments with a bad checksum", b.ip(), after - before);
    eprintln!(
        "{} MB {} -> {} in {:.2?} ({:.0} Mbit/s)",
        bytes / 1_000_000,
        a.ip(),
        b.ip(),
        stats.elapsed,
        stats.mbit_per_sec()
    );
    Ok(stats)
}

/// Super-frames node `i` cut (tx) or merged (rx).
fn superframes(c: &Cluster, i: usize, dir: &str) -> Result<f64> {
    metric(c, i, "weft_sleeve_superframes_total", &format!("direction=\"{dir}\""))
}

#[test]
fn offloads_are_on_and_200_mb_cross_byte_exact_in_super_frames() {
    with_cluster(2, |c| {
        start_sleeve(c, &[&[], &[0]], &[])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        for i in 0..2 {
            let features = c.node_ns(i).run_ok("ethtool", &["-k", TAP])?;
            for feature in ["tcp-segmentation-offload: on", "tx-checksumming: on"] {
                ensure!(features.contains(feature), "node {i}: `ethtool -k {TAP}` lacks {feature:?}:\n{features}");
            }
            let status = c.weft_cli_ok(i, &["status"])?;
            ensure!(
                status.contains("Sleeve: TAP offloads csum,tso4,tso6") && status.contains("UDP GSO on, GRO on"),
                "node {i} status:\n{status}"
            );
        }
        let p = pods(c, &[0, 1])?;
        scenario::ping_both_ways(&p[0], &p[1], 3, REACH)?;
        let drops = tap_drops(c, 0)?;
        let (tx0, rx1) = (superframes(c, 0, "tx")?, superframes(c, 1, "rx")?);
        transfer(&p[0], &p[1], BYTES)?;
        // A single stream fills weft's TAP with 64 KB super-frames, not
        // 45 frames each: the TAP's queue no longer overflows.
        let after = tap_drops(c, 0)?;
        ensure!(after.0 - drops.0 <= 20, "node 0's TAP dropped {} frames during the transfer", after.0 - drops.0);
        let cut = superframes(c, 0, "tx")? - tx0;
        let merged = superframes(c, 1, "rx")? - rx1;
        ensure!(cut >= 1000.0, "node 0 cut only {cut} super-frames for 200 MB");
        ensure!(merged >= 1000.0, "node 1 merged only {merged} super-frames for 200 MB");
        ensure!(metric(c, 0, "weft_sleeve_gso_sends_total", "")? > 0.0, "node 0 sent no UDP GSO message");
        // And the other way round.
        transfer(&p[1], &p[0], BYTES / 4)?;
        for i in 0..2 {
            let bad = metric(c, i, "weft_drops_total", "reason=\"bad_offload\"")?;
            ensure!(bad == 0.0, "node {i} dropped {bad} frames as bad_offload");
        }
        Ok(())
    });
}

#[test]
fn the_encrypted_sleeve_carries_super_frames_with_both_ciphers() {
    for cipher in ["chacha20-poly1305", "aes-256-gcm"] {
        with_cluster(2, |c| {
            let path = c.dir().join("password");
            std::fs::write(&path, "offload\n")?;
            let path = path.display().to_string();
            let args: &[&str] = &["--password-file", &path, "--cipher", cipher];
            start_sleeve(c, &[&[], &[0]], &[args, args])?;
            c.wait_mesh(&[0, 1], CONVERGE)?;
            let status = c.weft_cli_ok(0, &["status"])?;
            ensure!(status.contains(&format!("Encryption: enabled ({cipher})")), "status:\n{status}");
            let p = pods(c, &[0, 1])?;
            scenario::ping_both_ways(&p[0], &p[1], 3, REACH)?;
            transfer(&p[0], &p[1], BYTES).with_context(|| cipher.to_string())?;
            ensure!(superframes(c, 0, "tx")? >= 1000.0, "{cipher}: no super-frames cut");
            for i in 0..2 {
                for reason in ["auth_failed", "replay", "unknown_epoch", "bad_offload"] {
                    let n = metric(c, i, "weft_drops_total", &format!("reason=\"{reason}\""))?;
                    ensure!(n == 0.0, "{cipher}: node {i} dropped {n} datagrams as {reason}");
                }
            }
            Ok(())
        });
    }
}

#[test]
fn a_peer_without_offloads_exchanges_with_one_that_has_them() {
    with_cluster(2, |c| {
        start_sleeve(c, &[&[], &[0]], &[&["--no-offload"], &[]])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let status = c.weft_cli_ok(0, &["status"])?;
        ensure!(status.contains("Sleeve: TAP offloads off; UDP GSO off, GRO off"), "node 0 status:\n{status}");
        let features = c.node_ns(0).run_ok("ethtool", &["-k", TAP])?;
        ensure!(features.contains("tcp-segmentation-offload: off"), "node 0's TAP offloads:\n{features}");
        let p = pods(c, &[0, 1])?;
        scenario::ping_both_ways(&p[0], &p[1], 3, REACH)?;
        // Offloading sender, plain receiver; then the other way round.
        transfer(&p[1], &p[0], BYTES)?;
        transfer(&p[0], &p[1], BYTES / 2)?;
        ensure!(superframes(c, 1, "tx")? > 0.0, "node 1 cut no super-frame");
        ensure!(superframes(c, 0, "tx")? == 0.0, "node 0 has no offloads, yet cut super-frames");
        Ok(())
    });
}

#[test]
fn super_frames_are_cut_for_a_relay_and_merged_at_the_far_end() {
    with_cluster(3, |c| {
        c.block_underlay(0, 2)?;
        start_sleeve(c, &[&[1], &[], &[1]], &[])?;
        let p = pods(c, &[0, 2])?;
        scenario::ping_both_ways(&p[0], &p[1], 3, REACH)?;
        let relayed = metric(c, 1, "weft_frames_total", "direction=\"out\"")?;
        transfer(&p[0], &p[1], BYTES / 2)?;
        ensure!(
            metric(c, 1, "weft_frames_total", "direction=\"out\"")? - relayed > 30_000.0,
            "node 1 did not relay the transfer"
        );
        ensure!(superframes(c, 2, "rx")? > 0.0, "node 2 merged nothing from relayed segments");
        Ok(())
    });
}

#[test]
fn the_pod_mtu_lowered_and_raised_and_a_jumbo_underlay() {
    // Lowered: smaller segments. Raised above what the sleeve carries on a
    // 1500-byte underlay: every too-big segment gets ICMP "fragmentation
    // needed" with the segment limit, and the pods' TCP adapts.
    for mtu in ["1280", "1450"] {
        with_cluster(2, |c| {
            start_sleeve(c, &[&[], &[0]], &[&["--mtu", mtu], &["--mtu", mtu]])?;
            c.wait_mesh(&[0, 1], CONVERGE)?;
            let p = pods(c, &[0, 1])?;
            ensure!(p[0].mtu().to_string() == mtu, "pod MTU {} instead of {mtu}", p[0].mtu());
            p[0].ping_ok(p[1].ip(), 3, REACH)?;
            transfer(&p[0], &p[1], BYTES / 2).with_context(|| format!("pod MTU {mtu}"))?;
            if mtu == "1450" {
                ensure!(
                    metric(c, 0, "weft_drops_total", "reason=\"frame_too_big\"")? > 0.0,
                    "no frag-needed was ever sent for the raised MTU"
                );
            }
            Ok(())
        });
    }
    with_built_cluster(Cluster::builder().nodes(2).underlay_mtu(9000), |c| {
        // Each told of the other: the MTU toward the named peers is the underlay's.
        start_sleeve(c, &[&[1], &[0]], &[])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let p = pods(c, &[0, 1])?;
        for pod in &p {
            ensure!(pod.mtu() == 9000 - 124, "pod MTU {} on a 9000-byte underlay", pod.mtu());
        }
        p[0].ping_ok(p[1].ip(), 3, REACH)?;
        transfer(&p[0], &p[1], BYTES / 2).context("jumbo underlay")?;
        ensure!(superframes(c, 1, "rx")? > 0.0, "node 1 merged nothing on a jumbo underlay");
        Ok(())
    });
}

/// Drops `percent`% of the UDP datagrams between nodes `a` and `b` on the
/// wire, at random, both ways (this kernel has no netem). Removed on drop.
struct RandomLoss<'c> {
    cluster: &'c Cluster,
    table: String,
}

impl<'c> RandomLoss<'c> {
    fn install(c: &'c Cluster, a: usize, b: usize, percent: u32) -> Result<Self> {
        let table = format!("{}loss", c.prefix());
        let mut script = format!(
            "add table bridge {table}; add chain bridge {table} c {{ type filter hook forward priority 0; policy accept; }}"
        );
        for (src, dst) in [(a, b), (b, a)] {
            script.push_str(&format!(
                "; add rule bridge {table} c ip saddr {} ip daddr {} meta l4proto udp numgen random mod 100 < {percent} counter drop",
                c.node_ip(src),
                c.node_ip(dst)
            ));
        }
        c.wire().run_ok("nft", &[&script])?;
        Ok(RandomLoss { cluster: c, table })
    }

    /// Datagrams the rule dropped so far.
    fn dropped(&self) -> Result<u64> {
        let text = self.cluster.wire().run_ok("nft", &["list", "table", "bridge", &self.table])?;
        Ok(text
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }
}

impl Drop for RandomLoss<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.wire().run_ok("nft", &["delete", "table", "bridge", &self.table]);
    }
}

#[test]
fn one_percent_random_loss_on_the_underlay_loses_no_byte() {
    with_cluster(2, |c| {
        let p = two_nodes_pinging(c)?;
        // The wire must see datagrams, not the GSO super-packets a veth
        // passes whole: the nodes' kernels segment before sending.
        for i in 0..2 {
            c.node_ns(i).run_ok("ethtool", &["-K", "eth0", "tx-udp-segmentation", "off", "gso", "off"])?;
        }
        let loss = RandomLoss::install(c, 0, 1, 1)?;
        transfer(&p[0], &p[1], BYTES)?;
        let dropped = loss.dropped()?;
        ensure!(dropped > 100, "the loss rule dropped only {dropped} datagrams");
        eprintln!("the wire dropped {dropped} datagrams at random");
        Ok(())
    });
}

fn set_int_option(sock: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the option reads one int through the pointer, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Sends `buffers` UDP GSO messages of `segments` datagrams each from
/// inside `ns` to `to`: datagram k carries k (u32, big-endian) then filler
/// derived from k, so the receiver can check each one.
fn udp_gso_send(ns: &str, to: (Ipv4Addr, u16), buffers: u32, segments: u32, size: usize) -> Result<()> {
    let ns = ns.to_owned();
    let handle = spawn_in_netns(&ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(to)?;
        // Every send of more than `size` bytes is a UDP GSO super-packet.
        set_int_option(&sock, libc::SOL_UDP, libc::UDP_SEGMENT, size as libc::c_int)?;
        let mut buf = vec![0u8; size * segments as usize];
        for b in 0..buffers {
            for s in 0..segments {
                let k = b * segments + s;
                let d = &mut buf[s as usize * size..][..size];
                d[..4].copy_from_slice(&k.to_be_bytes());
                for (j, x) in d[4..].iter_mut().enumerate() {
                    *x = (k as usize).wrapping_mul(31).wrapping_add(j) as u8;
                }
            }
            sock.send(&buf)?;
            // Paced: UDP has no congestion control to keep queues short.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    });
    handle.join().map_err(|_| anyhow::anyhow!("sender panicked"))?
}

#[test]
fn udp_gso_datagrams_from_a_pod_arrive_whole_and_checked() {
    with_cluster(2, |c| {
        start_sleeve(c, &[&[], &[0]], &[])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let status = c.weft_cli_ok(0, &["status"])?;
        ensure!(status.contains("uso4,uso6"), "this kernel's TAP should take USO:\n{status}");
        let p = pods(c, &[0, 1])?;
        scenario::ping_both_ways(&p[0], &p[1], 3, REACH)?;
        const BUFFERS: u32 = 500;
        const SEGMENTS: u32 = 40;
        const SIZE: usize = 1200;
        let total = BUFFERS * SEGMENTS;
        let server_ip = p[1].ip();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let receiver = spawn_in_netns(p[1].netns().name(), move || {
            let sock = UdpSocket::bind((server_ip, 0))?;
            set_int_option(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20)?;
            port_tx.send(sock.local_addr()?.port())?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut seen = vec![false; total as usize];
            let (mut got, mut dup, mut bad) = (0u32, 0u32, 0u32);
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(60);
            while got < total && Instant::now() < deadline {
                let Ok(n) = sock.recv(&mut buf) else { break };
                let k = u32::from_be_bytes(buf[..4].try_into()?);
                let ok = n == SIZE
                    && k < total
                    && buf[4..n]
                        .iter()
                        .enumerate()
                        .all(|(j, &x)| x == (k as usize).wrapping_mul(31).wrapping_add(j) as u8);
                if !ok {
                    bad += 1;
                } else if std::mem::replace(&mut seen[k as usize], true) {
                    dup += 1;
                } else {
                    got += 1;
                }
            }
            Ok((got, dup, bad))
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10))?;
        let cut = superframes(c, 0, "tx")?;
        let before = checksum_errors(&p[1])?;
        udp_gso_send(p[0].netns().name(), (server_ip, port), BUFFERS, SEGMENTS, SIZE)?;
        let (got, dup, bad) = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        eprintln!("UDP GSO: {got}/{total} datagrams, {dup} duplicates, {bad} corrupt");
        ensure!(dup == 0 && bad == 0, "{dup} duplicated and {bad} corrupt datagrams");
        // Paced far below what the path carries: a loss here is a bug.
        ensure!(got as f64 >= total as f64 * 0.995, "only {got} of {total} datagrams arrived");
        ensure!(checksum_errors(&p[1])? == before, "the receiving pod saw bad UDP checksums");
        let cut = superframes(c, 0, "tx")? - cut;
        ensure!(cut >= BUFFERS as f64 / 2.0, "node 0 cut only {cut} UDP super-frames for {BUFFERS} GSO sends");
        Ok(())
    });
}

#[test]
fn a_route_mtu_that_shrinks_under_a_running_cluster_is_followed_and_gso_stays_on() {
    with_cluster(2, |c| {
        let p = two_nodes_pinging(c)?;
        // The route toward node 1 shrinks after the connection was made:
        // node 0's full-size datagrams no longer fit, the kernel refuses
        // them (EINVAL for a GSO run, EMSGSIZE one by one), the router
        // reads the route's MTU again and the pods get "fragmentation
        // needed" for frames beyond it.
        c.node_ns(0).run_ok("ip", &["link", "set", "eth0", "mtu", "1400"])?;
        transfer(&p[0], &p[1], BYTES / 4)?;
        let log = c.log_tail(0, 400);
        ensure!(log.contains("path MTU toward"), "node 0 never re-read the route's MTU:\n{log}");
        ensure!(
            metric(c, 0, "weft_drops_total", "reason=\"frame_too_big\"")? > 0.0,
            "no frag-needed was sent after the route shrank"
        );
        let gso = metric(c, 0, "weft_sleeve_gso_sends_total", "")?;
        transfer(&p[0], &p[1], BYTES / 4)?;
        ensure!(metric(c, 0, "weft_sleeve_gso_sends_total", "")? > gso, "GSO stayed off after the path-MTU event");
        Ok(())
    });
}
