//! Services: kube-proxy's iptables-mode DNAT on a node (written with the
//! real `iptables`, as kube-proxy writes it: nat PREROUTING/OUTPUT →
//! KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* → DNAT, KUBE-MARK-MASQ for the
//! hairpin, KUBE-POSTROUTING masquerading what is marked) and pods reaching
//! ClusterIPs whose backend is on another node, on the same bridge, or is
//! the client itself.
//!
//! Nodes start with `bridge-nf-call-iptables=0` and `ip_forward=0`: a
//! reply bridged straight back to the client (same bridge, or over the
//! overlay) only meets the DNAT's conntrack entry when the router has
//! turned bridge netfilter on.
//!
//! Needs root, `cargo build --release --bins` (WEFT_BIN) and iptables
//! (scripts/setup); fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weft_tests::scenario::with_cluster;
use weft_tests::*;

const REACH: Duration = Duration::from_secs(20);
const BACKEND_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;

fn runtime(c: &Cluster, i: usize) -> Result<CniRuntime> {
    let bins = CniBinDir::create(&c.dir().join("cni-bin"), &["portmap"])?;
    Ok(CniRuntime::new(c.node_ns(i), bins, NetworkConfig::weft_template()?))
}

/// kube-proxy's chains that every Service shares.
fn kube_proxy_base(ns: &Netns) -> Result<()> {
    let nat = |args: &[&str]| -> Result<()> {
        let mut all = vec!["-w", "-t", "nat"];
        all.extend_from_slice(args);
        ns.run_ok("iptables", &all).map(drop).with_context(|| format!("iptables -t nat {args:?}"))
    };
    for chain in ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        nat(&["-N", chain])?;
    }
    nat(&["-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"])?;
    nat(&["-A", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"])?;
    nat(&[
        "-A",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "kubernetes postrouting rules",
        "-j",
        "KUBE-POSTROUTING",
    ])?;
    nat(&["-A", "KUBE-MARK-MASQ", "-j", "MARK", "--set-xmark", "0x4000/0x4000"])?;
    nat(&["-A", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", "0x4000/0x4000", "-j", "RETURN"])?;
    nat(&["-A", "KUBE-POSTROUTING", "-j", "MARK", "--set-xmark", "0x4000/0x0"])?;
    nat(&[
        "-A",
        "KUBE-POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "kubernetes service traffic requiring SNAT",
        "-j",
        "MASQUERADE",
        "--random-fully",
    ])
}

/// One ClusterIP Service `cluster_ip:80` with the single endpoint
/// `endpoint:8080`, the rules kube-proxy writes for it (`n` names chains).
fn kube_proxy_service(ns: &Netns, n: usize, cluster_ip: Ipv4Addr, endpoint: Ipv4Addr) -> Result<()> {
    let (svc, sep) = (format!("KUBE-SVC-WEFT{n}"), format!("KUBE-SEP-WEFT{n}"));
    let (vip, ep) = (format!("{cluster_ip}/32"), format!("{endpoint}/32"));
    let (dport, to) = (SERVICE_PORT.to_string(), format!("{endpoint}:{BACKEND_PORT}"));
    let nat = |args: &[&str]| -> Result<()> {
        let mut all = vec!["-w", "-t", "nat"];
        all.extend_from_slice(args);
        ns.run_ok("iptables", &all).map(drop).with_context(|| format!("iptables -t nat {args:?}"))
    };
    nat(&["-N", &svc])?;
    nat(&["-N", &sep])?;
    nat(&["-A", "KUBE-SERVICES", "-d", &vip, "-p", "tcp", "-m", "tcp", "--dport", &dport, "-j", &svc])?;
    // clusterCIDR = the pod range: only traffic from outside it is marked.
    nat(&[
        "-A",
        &svc,
        "!",
        "-s",
        IPALLOC_RANGE,
        "-d",
        &vip,
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        &dport,
        "-j",
        "KUBE-MARK-MASQ",
    ])?;
    nat(&["-A", &svc, "-j", &sep])?;
    // The hairpin: an endpoint reaching its own Service is masqueraded.
    nat(&["-A", &sep, "-s", &ep, "-j", "KUBE-MARK-MASQ"])?;
    nat(&["-A", &sep, "-p", "tcp", "-m", "tcp", "-j", "DNAT", "--to-destination", &to])
}

fn vip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, last)
}

#[test]
fn pods_reach_cluster_ips_backed_on_another_node_the_same_bridge_and_themselves() {
    with_cluster(2, |c| {
        for i in 0..2 {
            c.node_ns(i).sysctl("net.ipv4.ip_forward", "0")?;
            c.node_ns(i).sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
        }
        start_ipam_routers(c, &[0, 1], &[])?;
        let statuses = wait_ipam_ready_all(c, &[0, 1])?;
        let gateway0 = statuses[0].gateway.context("no gateway on node 0")?;
        let (rt0, rt1) = (runtime(c, 0)?, runtime(c, 1)?);
        let client = CniPod::add(c, 0, &rt0, "client")?;
        let local = CniPod::add(c, 0, &rt0, "local")?;
        let remote = CniPod::add(c, 1, &rt1, "remote")?;

        let node0 = c.node_ns(0);
        // A node routes the service range somewhere (its default route);
        // the DNAT in OUTPUT then reroutes to the backend.
        node0.ip(&["route", "add", "10.96.0.0/12", "dev", "eth0"])?;
        kube_proxy_base(node0)?;
        kube_proxy_service(node0, 1, vip(10), remote.ip())?;
        kube_proxy_service(node0, 2, vip(11), local.ip())?;
        kube_proxy_service(node0, 3, vip(12), client.ip())?;

        let _echoes = [
            PeerEcho::start(remote.netns(), BACKEND_PORT)?,
            PeerEcho::start(local.netns(), BACKEND_PORT)?,
            PeerEcho::start(client.netns(), BACKEND_PORT)?,
        ];
        let service = |ip: Ipv4Addr| SocketAddr::from((ip, SERVICE_PORT));

        // Backend on node 1: DNAT on node 0, the reply comes back over the
        // overlay and is bridged to the client through conntrack.
        let seen = peer_seen(client.netns(), service(vip(10)), REACH).context("ClusterIP with a remote backend")?;
        ensure!(seen == client.ip(), "remote backend saw {seen}, not the client pod {}", client.ip());
        // Backend on the same bridge: the reply never leaves the bridge.
        let seen =
            peer_seen(client.netns(), service(vip(11)), REACH).context("ClusterIP with a same-bridge backend")?;
        ensure!(seen == client.ip(), "same-bridge backend saw {seen}, not the client pod {}", client.ip());
        // The client's own Service: kube-proxy masquerades it to the
        // bridge's address (weft leaves marked packets to kube-proxy). The
        // DNATed frame goes back out of the port it came in by, so this
        // also needs hairpin mode on the pod's bridge port (weft-net's
        // default `hairpinMode: true`; with it off this part fails).
        let seen = peer_seen(client.netns(), service(vip(12)), REACH).context("a pod reaching its own Service")?;
        ensure!(seen == gateway0, "hairpinned pod saw {seen}, not node 0's gateway {gateway0}");
        // The node itself (kube-proxy's OUTPUT path) reaches both backends.
        let seen = peer_seen(node0, service(vip(10)), REACH).context("the node to a ClusterIP")?;
        ensure!(seen == gateway0, "remote backend saw {seen} for node 0");
        peer_seen(node0, service(vip(11)), REACH).context("the node to a same-bridge ClusterIP")?;

        let text = c.weft_cli_ok(0, &["status"])?;
        ensure!(text.contains("Netfilter: br_netfilter on (bridge-nf-call-iptables=1, was 0: set by weft)"), "{text}");
        Ok(())
    });
}
