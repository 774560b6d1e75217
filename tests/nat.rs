//! Pod egress and host access through weft's nftables table (`table ip
//! weft`), against real routers with IPAM and pods added by the real CNI
//! chain (weft-net + the reference portmap): masquerading to the outside,
//! none between pods, hostPorts, NO_MASQ_LOCAL, iptables FORWARD policy
//! DROP, the table restored after deletion and kept across restarts, and
//! `weft reset` removing it all.
//!
//! Every node starts with `ip_forward=0` and `bridge-nf-call-iptables=0`,
//! so whatever works, works because the router set them. The "outside"
//! host is a namespace on the underlay with no route to the pod range:
//! only a masquerade lets its replies find their way back.
//!
//! Needs root, `cargo build --release --bins` (WEFT_BIN), nftables and
//! iptables (scripts/setup); fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use weft_tests::scenario::{with_built_cluster, with_cluster};
use weft_tests::*;

/// Time for a connection through the table to succeed.
const REACH: Duration = Duration::from_secs(20);
/// The router checks its table every 2 s; this is "within seconds".
const RESTORE: Duration = Duration::from_secs(15);
const ECHO_PORT: u16 = 8080;

/// Sets the sysctls the router must set to their "off" values.
fn sysctls_off(c: &Cluster, nodes: &[usize]) -> Result<()> {
    for &i in nodes {
        c.node_ns(i).sysctl("net.ipv4.ip_forward", "0")?;
        c.node_ns(i).sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
    }
    Ok(())
}

fn sysctl(c: &Cluster, i: usize, key: &str) -> Result<String> {
    Ok(c.node_ns(i).run_ok("sysctl", &["-n", key])?.trim().to_owned())
}

fn runtime(c: &Cluster, i: usize) -> Result<CniRuntime> {
    let bins = CniBinDir::create(&c.dir().join("cni-bin"), &["portmap"])?;
    Ok(CniRuntime::new(c.node_ns(i), bins, NetworkConfig::weft_template()?))
}

/// Routers with IPAM on `nodes` (sysctls off first), their runtimes, and
/// the IPAM status of each (for the node's gateway).
fn setup(c: &Cluster, nodes: &[usize]) -> Result<(Vec<CniRuntime>, Vec<IpamStatus>)> {
    sysctls_off(c, nodes)?;
    start_ipam_routers(c, nodes, &[])?;
    let rts = nodes.iter().map(|&i| runtime(c, i)).collect::<Result<Vec<_>>>()?;
    let statuses = wait_ipam_ready_all(c, nodes)?;
    Ok((rts, statuses))
}

fn gateway(s: &IpamStatus) -> Result<Ipv4Addr> {
    s.gateway.context("node without gateway")
}

fn at(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, ECHO_PORT))
}

/// Who a listener in `server` sees when `client` connects to `target`.
fn seen(server: &Netns, client: &Netns, target: SocketAddr) -> Result<Ipv4Addr> {
    let _echo = PeerEcho::start(server, target.port())?;
    peer_seen(client, target, REACH)
}

fn nft(c: &Cluster, i: usize, args: &[&str]) -> Result<String> {
    c.node_ns(i).run_ok("nft", args).with_context(|| format!("nft {args:?} on node {i}"))
}

/// `nft -j list table ip weft` on node `i`, `None` if there is none.
fn weft_table(c: &Cluster, i: usize) -> Result<Option<Vec<Value>>> {
    let out = c.node_ns(i).run("nft", &["-j", "list", "table", "ip", "weft"], Duration::from_secs(10))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(err.contains("No such file or directory"), "nft list table ip weft on node {i}: {err}");
        return Ok(None);
    }
    let json: Value = serde_json::from_slice(&out.stdout)?;
    Ok(Some(json["nftables"].as_array().context("no nftables array")?.clone()))
}

/// The rules of chain `chain` in the table listing.
fn rules_of<'a>(table: &'a [Value], chain: &str) -> Vec<&'a Value> {
    table.iter().filter_map(|o| o.get("rule")).filter(|r| r["chain"] == chain).collect()
}

/// The `local` set's elements as (first, last) address pairs.
fn local_set(table: &[Value]) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    let set = table.iter().filter_map(|o| o.get("set")).find(|s| s["name"] == "local").context("no set local")?;
    let mut out = Vec::new();
    for e in set["elem"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if let Some(p) = e.get("prefix") {
            let net =
                Ipv4Net::new(p["addr"].as_str().context("addr")?.parse()?, p["len"].as_u64().context("len")? as u8)?;
            out.push((net.network(), net.broadcast()));
        } else if let Some(r) = e.get("range") {
            out.push((r[0].as_str().context("range")?.parse()?, r[1].as_str().context("range")?.parse()?));
        } else if let Some(a) = e.as_str() {
            out.push((a.parse()?, a.parse()?));
        } else {
            bail!("unexpected element {e}");
        }
    }
    Ok(out)
}

fn in_set(set: &[(Ipv4Addr, Ipv4Addr)], ip: Ipv4Addr) -> bool {
    set.iter().any(|&(a, b)| a <= ip && ip <= b)
}

fn status(c: &Cluster, i: usize) -> Result<String> {
    c.weft_cli_ok(i, &["status"])
}

/// Waits until `weft status` on node `i` has a line containing `needle`.
fn wait_status(c: &Cluster, i: usize, needle: &str, timeout: Duration) -> Result<String> {
    let mut last = String::new();
    wait_until(timeout, Duration::from_millis(200), || {
        c.check_alive(i)?;
        last = status(c, i)?;
        Ok(last.contains(needle))
    })
    .with_context(|| format!("node {i}'s status never said {needle:?}; last:\n{last}"))?;
    Ok(last)
}

fn metric(c: &Cluster, i: usize, name: &str) -> Result<f64> {
    Ok(metric_sum(&c.metrics(i)?, name, ""))
}

fn iptables_forward(c: &Cluster, i: usize) -> Result<String> {
    c.node_ns(i).run_ok("iptables", &["-S", "FORWARD"])
}

const ACCEPT_IN: &str = "-A FORWARD -i weft -m comment --comment \"weft: forward pod traffic\" -j ACCEPT";
const ACCEPT_OUT: &str = "-A FORWARD -o weft -m comment --comment \"weft: forward pod traffic\" -j ACCEPT";

#[test]
fn pods_reach_outside_as_their_node_and_each_other_as_themselves() {
    with_cluster(2, |c| {
        let (rts, st) = setup(c, &[0, 1])?;
        let a = CniPod::add(c, 0, &rts[0], "a")?;
        let b = CniPod::add(c, 1, &rts[1], "b")?;
        let outside = c.add_underlay_host()?;

        // Out: the outside host sees each node's own address.
        let from_a = seen(outside.netns(), a.netns(), at(outside.ip()))?;
        ensure!(from_a == c.node_ip(0), "outside host saw {from_a} for pod {} on node 0", a.ip());
        let from_b = seen(outside.netns(), b.netns(), at(outside.ip()))?;
        ensure!(from_b == c.node_ip(1), "outside host saw {from_b} for pod {} on node 1", b.ip());
        a.ping_ok(outside.ip(), 3, REACH)?;

        // Pod to pod across nodes: never NATed, both ways.
        let ab = seen(b.netns(), a.netns(), at(b.ip()))?;
        ensure!(ab == a.ip(), "pod {} saw {ab} for pod {}", b.ip(), a.ip());
        let ba = seen(a.netns(), b.netns(), at(a.ip()))?;
        ensure!(ba == b.ip(), "pod {} saw {ba} for pod {}", a.ip(), b.ip());
        // The node reaches a remote pod (from its bridge address).
        let node_to_b = seen(b.netns(), c.node_ns(0), at(b.ip()))?;
        ensure!(node_to_b == gateway(&st[0])?, "pod {} saw {node_to_b} for node 0", b.ip());
        c.node_ns(0).run_ok("ping", &["-c", "1", "-W", "5", &b.ip().to_string()])?;

        // What the router set and says.
        for i in 0..2 {
            ensure!(sysctl(c, i, "net.ipv4.ip_forward")? == "1", "node {i}: ip_forward not set");
            ensure!(sysctl(c, i, "net.bridge.bridge-nf-call-iptables")? == "1", "node {i}: bridge-nf not set");
            let text = status(c, i)?;
            for line in [
                "NAT: masquerading 10.32.0.0/12 egress, client addresses kept for this node's ",
                "(nftables table ip weft, restored 0 times)",
                "Netfilter: br_netfilter on (bridge-nf-call-iptables=1, was 0: set by weft), ip_forward=1 (was 0: \
                 set by weft)",
                "Forwarding: no iptables FORWARD chain (ip filter): nothing to amend",
                "Ready: yes",
            ] {
                ensure!(text.contains(line), "node {i} status lacks {line:?}:\n{text}");
            }
            eprintln!("node {i} status:\n{text}");
        }
        // The set holds this node's ranges: a's address on node 0, b's not.
        let t0 = weft_table(c, 0)?.context("no table ip weft on node 0")?;
        let local = local_set(&t0)?;
        ensure!(in_set(&local, a.ip()) && !in_set(&local, b.ip()), "node 0's local set {local:?}");
        ensure!(rules_of(&t0, "postrouting").len() == 5 && rules_of(&t0, "input").len() == 1, "{t0:?}");
        let m = c.metrics(0)?;
        ensure!(metric_sum(&m, "weft_nat_rules_applied_total", "") >= 1.0, "{m}");
        ensure!(metric_sum(&m, "weft_nat_ready", "") == 1.0);
        ensure!(metric_sum(&m, "weft_nat_local_ranges", "") == local.len() as f64, "{m}");
        Ok(())
    });
}

#[test]
fn a_host_port_through_portmap_answers_an_outside_host() {
    with_cluster(1, |c| {
        let (rts, _) = setup(c, &[0])?;
        let mapping = PortMapping { host_port: 30080, container_port: ECHO_PORT };
        let pod = add_pod_with_ports(c, 0, &rts[0], "hp", &[mapping])?;
        let outside = c.add_underlay_host()?;
        let _echo = PeerEcho::start(pod.netns(), ECHO_PORT)?;
        let target = SocketAddr::from((c.node_ip(0), mapping.host_port));
        let from = peer_seen(outside.netns(), target, REACH)?;
        // NO_MASQ_LOCAL (on by default): the pod sees its real client.
        ensure!(from == outside.ip(), "pod behind hostPort saw {from}, not the outside host {}", outside.ip());
        // And the pod still gets out.
        let _out = PeerEcho::start(outside.netns(), ECHO_PORT)?;
        ensure!(peer_seen(pod.netns(), at(outside.ip()), REACH)? == c.node_ip(0));
        Ok(())
    });
}

#[test]
fn outside_clients_of_local_pods_keep_their_address_and_others_are_masqueraded() {
    with_cluster(2, |c| {
        let (rts, st) = setup(c, &[0, 1])?;
        let a = CniPod::add(c, 0, &rts[0], "a")?;
        let b = CniPod::add(c, 1, &rts[1], "b")?;
        let outside = c.add_underlay_host()?;
        outside.netns().ip(&["route", "add", "10.32.0.0/12", "via", &c.node_ip(0).to_string()])?;
        // To a pod of node 0 through node 0: the client address stays.
        let to_a = seen(a.netns(), outside.netns(), at(a.ip()))?;
        ensure!(to_a == outside.ip(), "local pod saw {to_a}, not the outside client {}", outside.ip());
        // To a pod of node 1 through node 0: masqueraded to node 0's bridge
        // address, so the reply comes back through node 0.
        let to_b = seen(b.netns(), outside.netns(), at(b.ip()))?;
        ensure!(to_b == gateway(&st[0])?, "remote pod saw {to_b}, not node 0's gateway");
        Ok(())
    });
}

#[test]
fn with_no_masq_local_0_outside_clients_of_local_pods_are_masqueraded() {
    with_built_cluster(Cluster::builder().nodes(1).router_env("NO_MASQ_LOCAL", "0"), |c| {
        let (rts, st) = setup(c, &[0])?;
        let a = CniPod::add(c, 0, &rts[0], "a")?;
        let outside = c.add_underlay_host()?;
        outside.netns().ip(&["route", "add", "10.32.0.0/12", "via", &c.node_ip(0).to_string()])?;
        let to_a = seen(a.netns(), outside.netns(), at(a.ip()))?;
        ensure!(to_a == gateway(&st[0])?, "local pod saw {to_a}; with NO_MASQ_LOCAL=0 it is node 0's gateway");
        let text = status(c, 0)?;
        ensure!(text.contains("NO_MASQ_LOCAL=0: outside traffic to local pods masqueraded too"), "{text}");
        let t = weft_table(c, 0)?.context("no table")?;
        ensure!(rules_of(&t, "postrouting").len() == 4, "the @local rule should be absent: {t:?}");
        Ok(())
    });
}

#[test]
fn a_forward_policy_of_drop_still_forwards_pod_traffic() {
    with_cluster(2, |c| {
        // Node 0 drops before the router starts (Docker installed first),
        // node 1 only once the routers run (Docker started later).
        // Node 0 also has Docker's own rules, which must stay first.
        for args in [
            &["-P", "FORWARD", "DROP"][..],
            &["-N", "DOCKER-USER"],
            &["-A", "DOCKER-USER", "-j", "RETURN"],
            &["-A", "FORWARD", "-j", "DOCKER-USER"],
            &["-A", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
            &["-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"],
        ] {
            c.node_ns(0).run_ok("iptables", args)?;
        }
        let docker = "-A FORWARD -j DOCKER-USER\n\
                      -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                      -A FORWARD -i docker0 ! -o docker0 -j ACCEPT\n";
        let (rts, _) = setup(c, &[0, 1])?;
        c.node_ns(1).run_ok("iptables", &["-P", "FORWARD", "DROP"])?;
        let a = CniPod::add(c, 0, &rts[0], "a")?;
        let a2 = CniPod::add(c, 0, &rts[0], "a2")?;
        let b = CniPod::add(c, 1, &rts[1], "b")?;
        let outside = c.add_underlay_host()?;
        for i in 0..2 {
            wait_status(
                c,
                i,
                "Forwarding: FORWARD policy drop: accept rules for weft inserted into ip filter FORWARD",
                RESTORE,
            )?;
            let rules = iptables_forward(c, i)?;
            let before = if i == 0 { docker } else { "" };
            let want = format!("-P FORWARD DROP\n{before}{ACCEPT_IN}\n{ACCEPT_OUT}\n");
            ensure!(rules == want, "node {i} FORWARD:\n{rules}");
            ensure!(metric(c, i, "weft_nat_forward_rules")? == 2.0);
        }
        ensure!(seen(a2.netns(), a.netns(), at(a2.ip()))? == a.ip(), "same-node pods");
        ensure!(seen(b.netns(), a.netns(), at(b.ip()))? == a.ip(), "pods across nodes");
        ensure!(seen(a.netns(), b.netns(), at(a.ip()))? == b.ip(), "pods across nodes, back");
        ensure!(seen(outside.netns(), a.netns(), at(outside.ip()))? == c.node_ip(0), "pod to outside");
        ensure!(seen(outside.netns(), b.netns(), at(outside.ip()))? == c.node_ip(1), "pod to outside from node 1");

        // Back to ACCEPT: weft's rules go, traffic still flows.
        c.node_ns(1).run_ok("iptables", &["-P", "FORWARD", "ACCEPT"])?;
        wait_status(c, 1, "Forwarding: FORWARD policy accept: nothing to amend", RESTORE)?;
        ensure!(iptables_forward(c, 1)? == "-P FORWARD ACCEPT\n", "node 1 FORWARD:\n{}", iptables_forward(c, 1)?);
        ensure!(seen(a.netns(), b.netns(), at(a.ip()))? == b.ip());
        Ok(())
    });
}

#[test]
fn an_iptables_legacy_filter_table_is_reported() {
    with_cluster(1, |c| {
        c.node_ns(0).run_ok("iptables-legacy", &["-P", "FORWARD", "DROP"])?;
        setup(c, &[0])?;
        let text = wait_status(c, 0, "iptables-legacy has a filter table here", RESTORE)?;
        ensure!(text.contains("-A FORWARD -i weft -j ACCEPT"), "{text}");
        let log = std::fs::read_to_string(c.node(0).log_path())?;
        ensure!(log.contains("iptables-legacy has a filter table in this namespace"), "not logged");
        Ok(())
    });
}

#[test]
fn the_table_is_restored_after_deletion_kept_across_restarts_and_removed_by_reset() {
    with_cluster(1, |c| {
        c.node_ns(0).run_ok("iptables", &["-P", "FORWARD", "DROP"])?;
        let (rts, _) = setup(c, &[0])?;
        let a = CniPod::add(c, 0, &rts[0], "a")?;
        let outside = c.add_underlay_host()?;
        let _echo = PeerEcho::start(outside.netns(), ECHO_PORT)?;
        ensure!(peer_seen(a.netns(), at(outside.ip()), REACH)? == c.node_ip(0));
        let wanted = weft_table(c, 0)?.context("no table")?;
        // Handles and counters change with every write; the rest must not.
        let strip = |t: &[Value]| -> Vec<Value> {
            let mut t: Vec<Value> = t.iter().filter(|o| o.get("metainfo").is_none()).cloned().collect();
            t.iter_mut().for_each(forget_handles_and_counts);
            t
        };

        // Deleted: back within seconds, the same, and traffic flows again.
        nft(c, 0, &["delete", "table", "ip", "weft"])?;
        let restored = wait_for(RESTORE, Duration::from_millis(100), || weft_table(c, 0))
            .context("table ip weft not restored after `nft delete table`")?;
        ensure!(strip(&restored) == strip(&wanted), "restored table differs:\n{restored:?}\nwanted:\n{wanted:?}");
        ensure!(peer_seen(a.netns(), at(outside.ip()), REACH)? == c.node_ip(0), "egress after the restore");
        wait_status(c, 0, "restored 1 times", RESTORE)?;

        // A flushed chain: the same.
        nft(c, 0, &["flush", "chain", "ip", "weft", "postrouting"])?;
        wait_until(RESTORE, Duration::from_millis(100), || {
            Ok(weft_table(c, 0)?.is_some_and(|t| rules_of(&t, "postrouting").len() == 5))
        })
        .context("flushed chain not restored")?;
        wait_status(c, 0, "restored 2 times", RESTORE)?;
        // A whole ruleset flush (what restarting Debian's nftables.service
        // does) takes iptables' FORWARD rules too: both come back.
        nft(c, 0, &["flush", "ruleset"])?;
        c.node_ns(0).run_ok("iptables", &["-P", "FORWARD", "DROP"])?;
        wait_status(c, 0, "restored 3 times", RESTORE)?;
        wait_until(RESTORE, Duration::from_millis(100), || {
            let rules = iptables_forward(c, 0)?;
            Ok(rules.contains(ACCEPT_IN) && rules.contains(ACCEPT_OUT))
        })
        .context("FORWARD accept rules not restored after a ruleset flush")?;
        ensure!(peer_seen(a.netns(), at(outside.ip()), REACH)? == c.node_ip(0), "egress after the ruleset flush");
        ensure!(metric(c, 0, "weft_nat_restores_total")? == 3.0);

        // A restarted router finds the table as wanted and writes nothing:
        // egress never stops across the restart.
        c.stop_router(0)?;
        ensure!(weft_table(c, 0)?.is_some(), "the table left with the router");
        ensure!(peer_seen(a.netns(), at(outside.ip()), REACH)? == c.node_ip(0), "egress while the router is down");
        c.restart_router(0)?;
        c.wait_ready(0)?;
        wait_status(c, 0, "restored 0 times", RESTORE)?;
        ensure!(metric(c, 0, "weft_nat_rules_applied_total")? == 0.0, "the restarted router rewrote an intact table");
        let log = std::fs::read_to_string(c.node(0).log_path())?;
        ensure!(log.contains("table ip weft already in place"), "no 'already in place' in the log");

        // Reset: table and FORWARD rules gone; twice is fine.
        let data = c.node(0).data_dir().to_str().unwrap().to_owned();
        let out = c.weft_cli_ok(0, &["reset", "--data-dir", &data])?;
        eprintln!("weft reset said:\n{}", out.trim_end());
        ensure!(out.contains("removed nftables table ip weft"), "{out}");
        ensure!(out.matches("of weft in iptables' ip filter FORWARD").count() == 2, "{out}");
        ensure!(weft_table(c, 0)?.is_none(), "table ip weft left after reset");
        ensure!(iptables_forward(c, 0)? == "-P FORWARD DROP\n", "FORWARD after reset:\n{}", iptables_forward(c, 0)?);
        let again = c.weft_cli_ok(0, &["reset", "--data-dir", &data])?;
        ensure!(again.contains("reset: nothing was left to remove"), "second reset said: {again}");
        Ok(())
    });
}

/// Removes `handle`s and zeroes counters anywhere in `v`.
fn forget_handles_and_counts(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            for key in ["packets", "bytes"] {
                if let Some(n) = map.get_mut(key) {
                    *n = Value::from(0);
                }
            }
            map.values_mut().for_each(forget_handles_and_counts);
        }
        Value::Array(items) => items.iter_mut().for_each(forget_handles_and_counts),
        _ => {}
    }
}
