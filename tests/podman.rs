//! A real container runtime on weft: podman (CNI backend, runc) on two
//! nodes uses `deploy/05-weft.conflist` with `weft-net` and `portmap`, and
//! its containers ping each other across the overlay. Needs root, podman,
//! runc and busybox-static (scripts/setup installs them) and the built
//! binaries; fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use weft_tests::cni::{conflist_template_path, standard_plugin};
use weft_tests::cni_pod::veth_links;
use weft_tests::ipam::PODMAN_DEFAULT_RANGE;
use weft_tests::podman::{busybox_rootfs_tar, IMAGE};
use weft_tests::*;

const REACH: Duration = Duration::from_secs(20);

/// A container podman started, with what it reports about its network.
struct Container {
    node: usize,
    name: String,
    id: String,
    ip: Ipv4Addr,
}

fn inspect_ip(p: &PodmanNode, name: &str, network: &str) -> Result<Ipv4Addr> {
    let out = p.podman_ok(&["container", "inspect", name])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("podman inspect output: {out}"))?;
    let nets = &v[0]["NetworkSettings"]["Networks"];
    let ip = nets[network]["IPAddress"]
        .as_str()
        .with_context(|| format!("container {name} is not on network {network:?}; its networks: {nets}"))?;
    ip.parse().with_context(|| format!("container {name} IPAddress {ip:?}"))
}

fn run_container(c: &Cluster, p: &PodmanNode, node: usize, name: &str, network: &str) -> Result<Container> {
    let id = p.podman_ok(&[
        "run",
        "--detach",
        "--pull",
        "never",
        "--name",
        name,
        "--network",
        network,
        "--cap-add",
        "NET_RAW",
        IMAGE,
        "/bin/sleep",
        "600",
    ])?;
    let ip = inspect_ip(p, name, network)?;
    let podman_net: Ipv4Net = PODMAN_DEFAULT_RANGE.parse()?;
    ensure!(!podman_net.contains(ip), "{name} got {ip} from podman's own bridge: weft's conflist was not used");
    let range = ipalloc_range();
    ensure!(range.contains_host(ip), "{name} got {ip}, outside weft's range {range}");
    // What the container itself sees, and what weft's IPAM recorded for
    // podman's container id (the CNI_CONTAINERID it passed).
    let inside = p.podman_ok(&["exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
    let want = format!("{ip}/{}", range.prefix_len);
    ensure!(inside.contains(&want), "{name}: eth0 inside the container lacks {want}: {inside}");
    let lease = ipam_lookup(c, node, &id, "eth0")?
        .with_context(|| format!("weft's IPAM on node {node} has no allocation for podman container {id}"))?;
    ensure!(lease.ip.addr == ip, "{name}: podman says {ip}, weft's IPAM says {}", lease.ip);
    Ok(Container { node, name: name.to_owned(), id, ip })
}

/// `ping` from inside container `from` until one reply, then 3 more.
fn container_ping(p: &PodmanNode, from: &Container, to: Ipv4Addr) -> Result<()> {
    let target = to.to_string();
    wait_until(REACH, Duration::from_millis(200), || {
        let out = p.podman(&["exec", &from.name, "ping", "-c", "1", "-W", "1", &target], Duration::from_secs(10))?;
        Ok(out.status.success())
    })
    .with_context(|| format!("container {} ({}) cannot ping {to}", from.name, from.ip))?;
    p.podman_ok(&["exec", &from.name, "ping", "-c", "3", "-W", "2", &target])
        .with_context(|| format!("{} -> {to}: not every ping answered", from.name))?;
    Ok(())
}

#[test]
fn podman_containers_on_two_nodes_ping_through_weft() {
    let cluster = Cluster::new(2).expect("building the namespace cluster");
    let c = &cluster;
    let scenario = || -> Result<()> {
        start_ipam_routers(c, &[0, 1], &[])?;
        let conflist = std::fs::read_to_string(conflist_template_path())?;
        let network = NetworkConfig::from_conflist(&conflist)?.name;
        let plugins = [("weft-net", weft_net_bin()?), ("portmap", standard_plugin("portmap"))];
        let tar = busybox_rootfs_tar(&c.dir().join("image"))?;
        let tar = tar.to_str().context("image path is not UTF-8")?;
        let nodes: Vec<PodmanNode> = (0..2)
            .map(|i| {
                PodmanNode::start(
                    c.node_ns(i),
                    &c.dir().join(format!("podman{i}")),
                    "05-weft.conflist",
                    &conflist,
                    &plugins,
                )
            })
            .collect::<Result<_>>()?;
        for (i, p) in nodes.iter().enumerate() {
            // Podman drops a network whose plugins fail VERSION with only a warning.
            let nets = p.podman_ok(&["network", "ls", "--format", "{{.Name}}"])?;
            ensure!(
                nets.lines().any(|l| l.trim() == network),
                "node {i}: podman did not load network {network:?}: {nets}"
            );
            p.podman_ok(&["import", tar, IMAGE])?;
        }
        let baseline: Vec<Vec<String>> = (0..2).map(|i| veth_links(c.node_ns(i))).collect::<Result<_>>()?;
        let a = run_container(c, &nodes[0], 0, "weft-a", &network)?;
        let b = run_container(c, &nodes[1], 1, "weft-b", &network)?;
        ensure!(a.ip != b.ip, "both containers got {}", a.ip);
        container_ping(&nodes[0], &a, b.ip)?;
        container_ping(&nodes[1], &b, a.ip)?;

        // Removing a container runs DEL: the address is released, the veth gone.
        for (p, ctr) in [(&nodes[0], &a), (&nodes[1], &b)] {
            p.podman_ok(&["rm", "--force", "--time", "0", &ctr.name])?;
            let lease = ipam_lookup(c, ctr.node, &ctr.id, "eth0")?;
            ensure!(lease.is_none(), "{} still holds {lease:?} after podman rm", ctr.name);
            let veths = veth_links(c.node_ns(ctr.node))?;
            ensure!(veths == baseline[ctr.node], "node {}: veths left after podman rm: {veths:?}", ctr.node);
        }
        Ok(())
    };
    if let Err(e) = scenario() {
        panic!("{e:#}");
    }
}
