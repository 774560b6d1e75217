//! The CNI plugin (`weft-net`) against real routers with IPAM, invoked
//! exactly as a container runtime invokes it (see `tests/harness/cni.rs`).
//! Needs root, `cargo build --bins` first (or `WEFT_BIN` / `WEFT_NET_BIN`)
//! and the reference plugins (containernetworking-plugins, for `portmap`);
//! fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use weft_tests::cni::SPEC_VERSIONS;
use weft_tests::cni_pod::{default_gateway, ipv4_addresses, veth_links};
use weft_tests::*;

/// Time for a pod to reach another once the routers are connected.
const REACH: Duration = Duration::from_secs(20);

fn with_cluster(n: usize, scenario: impl FnOnce(&Cluster) -> Result<()>) {
    let cluster = Cluster::new(n).expect("building the namespace cluster");
    if let Err(e) = scenario(&cluster) {
        panic!("{e:#}");
    }
}

/// Node `i`'s runtime with network configuration `config`.
fn runtime(c: &Cluster, i: usize, config: NetworkConfig) -> Result<CniRuntime> {
    let bins = CniBinDir::create(&c.dir().join("cni-bin"), &["portmap"])?;
    Ok(CniRuntime::new(c.node_ns(i), bins, config))
}

fn runtimes(c: &Cluster, nodes: &[usize]) -> Result<Vec<CniRuntime>> {
    nodes.iter().map(|&i| runtime(c, i, NetworkConfig::weft_template()?)).collect()
}

/// The MTU pods should get: the template's `mtu` if set, else the router's.
fn expected_mtu(rt: &CniRuntime, status: &IpamStatus) -> Result<u32> {
    let weft = rt.config().plugin("weft-net")?;
    Ok(match weft.get("mtu").and_then(Value::as_u64) {
        Some(m) => u32::try_from(m)?,
        None => status.mtu,
    })
}

/// Everything a correct ADD leaves behind, checked against the result, the
/// pod's namespace, the node's namespace and the router's IPAM.
fn verify_pod(c: &Cluster, rt: &CniRuntime, pod: &CniPod, status: &IpamStatus) -> Result<()> {
    let what = format!("pod {} on node {}", pod.container_id(), pod.node());
    let range = ipalloc_range();
    let gateway = status.gateway.context("node has no gateway")?;
    let r = pod.result();
    ensure!(r.cni_version == rt.config().cni_version, "{what}: result cniVersion {} != config's", r.cni_version);
    ensure!(!r.interfaces.is_empty() && !r.ips.is_empty(), "{what}: result lacks interfaces/ips: {}", r.raw);
    let ip = r.ip_of(POD_IFNAME)?;
    let iface = &r.interfaces[ip.interface.context("ips[0] without interface")?];
    ensure!(
        iface.sandbox.as_deref() == Some(pod.attachment().netns.as_str()),
        "{what}: eth0's sandbox {:?} is not CNI_NETNS {}",
        iface.sandbox,
        pod.attachment().netns
    );
    let addr = ip.address;
    ensure!(range.contains_host(addr.addr), "{what}: {addr} outside {range}");
    ensure!(addr.prefix_len == range.prefix_len, "{what}: {addr} should carry the range's /{}", range.prefix_len);
    ensure!(addr.addr != gateway, "{what}: got the node's own gateway address {gateway}");
    ensure!(ip.gateway == Some(gateway), "{what}: ips[].gateway {:?}, node bridge has {gateway}", ip.gateway);
    let route = r.default_route().with_context(|| format!("{what}: no default route in result {}", r.raw))?;
    ensure!(route.gw.or(ip.gateway) == Some(gateway), "{what}: default route {route:?} not via {gateway}");

    let host_side: Vec<_> = r.interfaces.iter().filter(|i| i.sandbox.is_none()).collect();
    ensure!(host_side.len() == 1, "{what}: expected one host-side interface in {}", r.raw);
    let link = c.node_ns(pod.node()).ip_json(&["link", "show", "dev", &host_side[0].name])?;
    let master = link.get(0).and_then(|l| l.get("master")).and_then(Value::as_str);
    ensure!(master == Some(status.bridge.as_str()), "{what}: host veth {} master {master:?}", host_side[0].name);

    let live = pod.live_addresses()?;
    ensure!(live == vec![addr], "{what}: eth0 has {live:?}, result says {addr}");
    let gw = default_gateway(pod.netns())?;
    ensure!(gw == Some(gateway), "{what}: default route in the pod via {gw:?}, want {gateway}");
    let mtu = pod.netns().link_mtu(POD_IFNAME)?.context("no eth0")?;
    ensure!(mtu == expected_mtu(rt, status)?, "{what}: eth0 MTU {mtu}");
    let lease = ipam_lookup(c, pod.node(), pod.container_id(), POD_IFNAME)?
        .with_context(|| format!("{what}: router has no allocation for it"))?;
    ensure!(lease.ip == addr, "{what}: router says {}, plugin said {addr}", lease.ip);
    Ok(())
}

/// All pod addresses distinct, and none is a node's gateway.
fn ensure_unique<'a>(pods: impl IntoIterator<Item = &'a CniPod>, gateways: &[Ipv4Addr]) -> Result<()> {
    let mut seen: HashMap<Ipv4Addr, &str> = HashMap::new();
    for p in pods {
        ensure!(!gateways.contains(&p.ip()), "{} got gateway address {}", p.container_id(), p.ip());
        if let Some(other) = seen.insert(p.ip(), p.container_id()) {
            bail!("duplicate address {}: {other} and {}", p.ip(), p.container_id());
        }
    }
    Ok(())
}

fn gateways(statuses: &[IpamStatus]) -> Result<Vec<Ipv4Addr>> {
    statuses.iter().map(|s| s.gateway.context("no gateway")).collect()
}

fn ensure_released(c: &Cluster, node: usize, container_id: &str) -> Result<()> {
    let lease = ipam_lookup(c, node, container_id, POD_IFNAME)?;
    ensure!(lease.is_none(), "{container_id} still holds {lease:?} on node {node}");
    Ok(())
}

/// Pings from every pod to every other, one reply each, in parallel per source.
fn ping_all_pairs(pods: &[&CniPod]) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|a| {
                s.spawn(move || -> Result<()> {
                    for b in pods.iter().filter(|b| b.ip() != a.ip()) {
                        a.wait_reachable(b.ip(), REACH)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().unwrap())
    })
}

#[test]
fn pods_added_through_cni_get_unique_addresses_and_reach_each_other() {
    with_cluster(3, |c| {
        start_ipam_routers(c, &[0, 1, 2], &[])?;
        let rts = runtimes(c, &[0, 1, 2])?;
        let mut pods = Vec::new();
        for (node, rt) in rts.iter().enumerate() {
            for k in 0..3 {
                pods.push(CniPod::add(c, node, rt, &format!("n{node}k{k}"))?);
            }
        }
        let statuses = wait_ipam_ready_all(c, &[0, 1, 2])?;
        let gws = gateways(&statuses)?;
        for (i, s) in statuses.iter().enumerate() {
            ensure!(s.range == ipalloc_range(), "node {i} range {}", s.range);
            let on_bridge = ipv4_addresses(c.node_ns(i), &s.bridge)?;
            ensure!(
                on_bridge.iter().any(|a| a.addr == gws[i] && a.prefix_len == s.range.prefix_len),
                "node {i}: bridge {} has {on_bridge:?}, not the gateway {}/{}",
                s.bridge,
                gws[i],
                s.range.prefix_len
            );
        }
        for p in &pods {
            verify_pod(c, &rts[p.node()], p, &statuses[p.node()])?;
        }
        ensure_unique(&pods, &gws)?;
        ping_all_pairs(&pods.iter().collect::<Vec<_>>())?;

        // DEL, DEL again (idempotent), ADD again: a working, unique address.
        let mut first = pods.remove(0);
        let old_veths = veth_links(c.node_ns(0))?;
        first.del(&rts[0])?;
        ensure!(first.live_addresses()?.is_empty(), "eth0 still addressed after DEL");
        ensure!(first.netns().link_mtu(POD_IFNAME)?.is_none(), "eth0 still exists after DEL");
        ensure_released(c, 0, first.container_id())?;
        let veths = veth_links(c.node_ns(0))?;
        ensure!(veths.len() + 1 == old_veths.len(), "DEL left the host veth: {old_veths:?} -> {veths:?}");
        first.del(&rts[0]).context("second DEL must succeed too")?;
        first.readd(&rts[0])?;
        verify_pod(c, &rts[0], &first, &statuses[0])?;
        pods.push(first);
        ensure_unique(&pods, &gws)?;
        let readded = pods.last().unwrap();
        readded.wait_reachable(pods[3].ip(), REACH)?;
        pods[3].wait_reachable(readded.ip(), REACH)?;

        // DEL after the namespace is gone (CNI_NETNS="").
        let gone = pods.remove(0);
        let gone_id = gone.container_id().to_owned();
        let att = gone.destroy_netns();
        rts[0].del(&att.without_netns())?.ok().context("DEL with CNI_NETNS=\"\"")?;
        ensure_released(c, 0, &gone_id)?;

        // CHECK passes on a healthy pod and fails once its address is gone.
        let victim = &pods[3];
        rts[victim.node()].check(victim.attachment())?.ok().context("CHECK of a healthy pod")?;
        let addr = victim.address().to_string();
        victim.netns().ip(&["addr", "del", &addr, "dev", POD_IFNAME])?;
        let out = rts[victim.node()].check(victim.attachment())?;
        ensure!(!out.success(), "CHECK passed though {addr} was removed from eth0: {}", out.stdout);
        let err = out.error()?;
        ensure!(!err.msg.is_empty(), "CHECK failure without a message: {err:?}");

        // VERSION needs no container, no namespace and no stdin.
        let env = CniEnv {
            command: Some("VERSION".into()),
            container_id: Some("dummy".into()),
            netns: Some("dummy".into()),
            ifname: Some("dummy".into()),
            args: None,
            path: Some("dummy".into()),
        };
        let v = rts[0].exec_raw("weft-net", &env, None)?.ok_json().context("VERSION")?;
        let supported: Vec<&str> = v
            .get("supportedVersions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for want in SPEC_VERSIONS {
            ensure!(supported.contains(want), "VERSION lacks {want}: {v}");
        }
        ensure!(v.get("cniVersion").and_then(Value::as_str).is_some(), "VERSION without cniVersion: {v}");

        // Spec 1.1.0: STATUS while the router is up; GC releases what is
        // not in the valid list, on this node only.
        let weft11 = runtime(c, 1, NetworkConfig::weft_only("1.1.0")?)?;
        for out in weft11.status()? {
            out.ok().context("STATUS with the router up")?;
        }
        let node1: Vec<&CniPod> = pods.iter().filter(|p| p.node() == 1).collect();
        let (dropped, kept) = node1.split_first().context("no pods on node 1")?;
        let valid: Vec<Attachment> = kept.iter().map(|p| p.attachment().clone()).collect();
        for out in weft11.gc(&valid)? {
            out.ok().context("GC")?;
        }
        ensure_released(c, 1, dropped.container_id())?;
        for p in pods.iter().filter(|p| p.container_id() != dropped.container_id()) {
            ensure!(
                ipam_lookup(c, p.node(), p.container_id(), POD_IFNAME)?.is_some(),
                "GC on node 1 released {} of node {}",
                p.container_id(),
                p.node()
            );
        }
        Ok(())
    });
}

/// A runtime speaking spec 1.1.0 asks STATUS before it creates any pod, so
/// the network must become ready (space agreed, gateway on the bridge)
/// without waiting for a first ADD.
#[test]
fn ipam_is_ready_before_the_first_pod() {
    with_cluster(2, |c| {
        start_ipam_routers(c, &[0, 1], &[])?;
        let statuses = wait_ipam_ready_all(c, &[0, 1]).context("IPAM never got ready without a pod being added")?;
        for (i, s) in statuses.iter().enumerate() {
            let gw = s.gateway.context("ready without a gateway")?;
            let on_bridge = ipv4_addresses(c.node_ns(i), &s.bridge)?;
            ensure!(on_bridge.iter().any(|a| a.addr == gw), "node {i}: bridge has {on_bridge:?}, gateway is {gw}");
            let rt = runtime(c, i, NetworkConfig::weft_only("1.1.0")?)?;
            for out in rt.status()? {
                out.ok().with_context(|| format!("STATUS on node {i} before any pod"))?;
            }
        }
        Ok(())
    });
}

/// Runs `f(k)` for `k` in `0..n` on `n` threads at once.
fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Vec<Result<T>> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|k| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    f(k)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_adds_on_two_nodes_get_distinct_addresses() {
    const PER_NODE: usize = 50;
    with_cluster(2, |c| {
        start_ipam_routers(c, &[0, 1], &[])?;
        let rts = runtimes(c, &[0, 1])?;
        let baseline: Vec<Vec<String>> = (0..2).map(|i| veth_links(c.node_ns(i))).collect::<Result<_>>()?;
        // Namespaces first, so that the ADDs themselves start together.
        let netns: Vec<Netns> = (0..2 * PER_NODE).map(|k| c.create_netns(&format!("c{k}"))).collect::<Result<_>>()?;
        let started = Instant::now();
        let results = parallel(2 * PER_NODE, |k| {
            let node = k / PER_NODE;
            let att = Attachment::new(format!("{}-ctr", netns[k].name()), &netns[k], POD_IFNAME);
            rts[node].add_ok(&att).with_context(|| format!("ADD #{k} on node {node}")).map(|r| (node, att, r))
        });
        let took = started.elapsed();
        let mut pods = Vec::new();
        let mut errors = Vec::new();
        for (ns, r) in netns.into_iter().zip(results) {
            match r {
                Ok((node, att, result)) => pods.push(CniPod::from_result(ns, node, att, result)?),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        ensure!(
            errors.is_empty(),
            "{} of {} concurrent ADDs failed:\n{}",
            errors.len(),
            2 * PER_NODE,
            errors.join("\n")
        );
        eprintln!("{} concurrent ADDs on 2 nodes took {took:.2?}", 2 * PER_NODE);
        let gws = gateways(&wait_ipam_ready_all(c, &[0, 1])?)?;
        ensure_unique(&pods, &gws)?;
        let range = ipalloc_range();
        for p in &pods {
            ensure!(range.contains_host(p.ip()), "{} outside {range}", p.ip());
            ensure!(p.live_addresses()? == vec![p.address()], "{}: eth0 does not carry {}", p.container_id(), p.ip());
        }

        // Every pod reaches its node's gateway; a sample reaches across.
        let pings = parallel(pods.len(), |k| pods[k].wait_reachable(gws[pods[k].node()], REACH));
        pings.into_iter().collect::<Result<Vec<()>>>()?;
        for k in (0..PER_NODE).step_by(10) {
            pods[k].wait_reachable(pods[PER_NODE + k].ip(), REACH)?;
        }

        // And concurrent DELs leave nothing behind.
        let dels = parallel(pods.len(), |k| pods[k].del(&rts[pods[k].node()]));
        dels.into_iter().collect::<Result<Vec<()>>>().context("concurrent DEL")?;
        for p in &pods {
            ensure_released(c, p.node(), p.container_id())?;
        }
        for (node, before) in baseline.iter().enumerate() {
            let left = veth_links(c.node_ns(node))?;
            ensure!(&left == before, "node {node} kept veths after every DEL: {left:?}");
        }
        Ok(())
    });
}

#[test]
fn pods_keep_their_addresses_across_a_router_kill() {
    with_cluster(2, |c| {
        start_ipam_routers(c, &[0, 1], &[])?;
        let rts = runtimes(c, &[0, 1])?;
        let mut pods = vec![
            CniPod::add(c, 0, &rts[0], "a0")?,
            CniPod::add(c, 0, &rts[0], "a1")?,
            CniPod::add(c, 1, &rts[1], "b0")?,
        ];
        let statuses = wait_ipam_ready_all(c, &[0, 1])?;
        pods[0].wait_reachable(pods[2].ip(), REACH)?;

        c.kill_router(0)?;
        c.restart_router(0)?;
        c.wait_ready(0)?;
        c.wait_mesh(&[0, 1], IPAM_CONVERGE)?;
        let after = wait_ipam_ready(c, 0, IPAM_CONVERGE)?;
        ensure!(
            after.gateway == statuses[0].gateway,
            "gateway moved: {:?} -> {:?}",
            statuses[0].gateway,
            after.gateway
        );

        for p in &pods {
            let lease = ipam_lookup(c, p.node(), p.container_id(), POD_IFNAME)?
                .with_context(|| format!("{} lost its allocation in the restart", p.container_id()))?;
            ensure!(lease.ip == p.address(), "{}: {} became {}", p.container_id(), p.address(), lease.ip);
            rts[p.node()].check(p.attachment())?.ok().with_context(|| format!("CHECK {}", p.container_id()))?;
        }
        pods[0].wait_reachable(pods[2].ip(), REACH)?;
        pods[2].wait_reachable(pods[1].ip(), REACH)?;

        pods.push(CniPod::add(c, 0, &rts[0], "a2")?);
        pods.push(CniPod::add(c, 0, &rts[0], "a3")?);
        pods.push(CniPod::add(c, 1, &rts[1], "b1")?);
        ensure_unique(&pods, &gateways(&statuses)?)?;
        for p in &pods[3..] {
            verify_pod(c, &rts[p.node()], p, &statuses[p.node()])?;
        }
        pods[3].wait_reachable(pods[2].ip(), REACH)?;
        Ok(())
    });
}

/// A plugin failure as the spec wants it: non-zero exit, an error object
/// with `code` and a message.
fn expect_error(out: &CniOutput, code: Option<u64>, what: &str) -> Result<CniError> {
    let err = out.error().with_context(|| what.to_owned())?;
    if let Some(code) = code {
        ensure!(err.code == code, "{what}: code {} ({:?}), want {code}", err.code, err.msg);
    }
    ensure!(!err.msg.is_empty(), "{what}: error without msg: {err:?}");
    Ok(err)
}

#[test]
fn bad_invocations_fail_with_spec_codes_and_leak_nothing() {
    with_cluster(1, |c| {
        start_ipam_routers(c, &[0], &[])?;
        let rt = runtime(c, 0, NetworkConfig::weft_template()?)?;
        let good = CniPod::add(c, 0, &rt, "good")?;
        let veths = veth_links(c.node_ns(0))?;
        let conf = rt.config().plugin_stdin(0, None)?;
        let ns = c.create_netns("bad")?;
        let case = |name: &str, env: &CniEnv, stdin: Option<&[u8]>, code: Option<u64>| -> Result<CniError> {
            let out = rt.exec_raw("weft-net", env, stdin)?;
            expect_error(&out, code, name)
        };
        let add = |id: &str| CniEnv::for_attachment("ADD", &Attachment::new(id, &ns, POD_IFNAME), rt.bins().path());

        let truncated = b"{\"cniVersion\": \"1.0.0\", \"name\": ";
        case("malformed JSON", &add("bad-json"), Some(truncated), Some(cni_code::DECODE_FAILURE))?;
        let mut v: Value = serde_json::from_slice(&conf)?;
        v["cniVersion"] = json!("9.9.9");
        let odd_version = serde_json::to_vec(&v)?;
        case("unknown cniVersion", &add("bad-version"), Some(&odd_version), Some(cni_code::INCOMPATIBLE_VERSION))?;
        let no_command = CniEnv { command: None, ..add("no-command") };
        case("missing CNI_COMMAND", &no_command, Some(&conf), Some(cni_code::INVALID_ENV))?;
        let no_id = CniEnv { container_id: None, ..add("no-id") };
        case("missing CNI_CONTAINERID", &no_id, Some(&conf), Some(cni_code::INVALID_ENV))?;
        let missing_ns = CniEnv { netns: Some("/var/run/netns/weft-test-no-such-netns".into()), ..add("no-netns") };
        case("netns that does not exist", &missing_ns, Some(&conf), None)?;

        for id in ["bad-json", "bad-version", "no-command", "no-netns"] {
            ensure_released(c, 0, id)?;
        }
        let now = veth_links(c.node_ns(0))?;
        ensure!(now == veths, "failed ADDs leaked veths: {veths:?} -> {now:?}");
        ensure!(ns.link_mtu(POD_IFNAME)?.is_none(), "failed ADDs left eth0 in the pod namespace");

        // Router down: "try again later", fast, and still nothing left behind.
        c.stop_router(0)?;
        let started = Instant::now();
        let err = case("router down", &add("router-down"), Some(&conf), Some(cni_code::TRY_AGAIN_LATER))?;
        eprintln!("ADD with the router down failed in {:.2?}: {err:?}", started.elapsed());
        ensure!(veth_links(c.node_ns(0))? == veths, "ADD with the router down leaked a veth");
        ensure!(ns.link_mtu(POD_IFNAME)?.is_none(), "ADD with the router down left eth0 in the pod");
        let weft11 = runtime(c, 0, NetworkConfig::weft_only("1.1.0")?)?;
        let status = weft11.status()?;
        expect_error(&status[0], None, "STATUS with the router down")?;

        c.restart_router(0)?;
        c.wait_ready(0)?;
        wait_ipam_ready(c, 0, IPAM_CONVERGE)?;
        ensure_released(c, 0, "router-down")?;
        ensure!(ipam_lookup(c, 0, good.container_id(), POD_IFNAME)?.is_some(), "the good pod lost its address");
        Ok(())
    });
}

/// Lines of `weft status ipam` on node `i`.
fn status_ipam(c: &Cluster, i: usize) -> Result<String> {
    c.weft_cli_ok(i, &["status", "ipam"])
}

/// `/report` IPAM.Entries of node `i`: addresses owned, by peer nickname.
fn ipam_shares(c: &Cluster, i: usize) -> Result<HashMap<String, u64>> {
    let report = c.report(i)?;
    let entries = report
        .get("IPAM")
        .and_then(|v| v.get("Entries"))
        .and_then(Value::as_array)
        .with_context(|| format!("no IPAM.Entries in /report of node {i}"))?;
    let mut shares = HashMap::new();
    for e in entries {
        let nick = e.get("Nickname").and_then(Value::as_str).with_context(|| format!("entry without Nickname: {e}"))?;
        let size = e.get("Size").and_then(Value::as_u64).with_context(|| format!("entry without Size: {e}"))?;
        *shares.entry(nick.to_owned()).or_insert(0) += size;
    }
    Ok(shares)
}

#[test]
fn rmpeer_of_a_stopped_node_on_two_survivors_at_once() {
    with_cluster(3, |c| {
        start_ipam_routers(c, &[0, 1, 2], &[])?;
        let rts = runtimes(c, &[0, 1, 2])?;
        let mut pods = Vec::new();
        for (node, rt) in rts.iter().enumerate() {
            pods.push(CniPod::add(c, node, rt, &format!("n{node}"))?);
        }
        let statuses = wait_ipam_ready_all(c, &[0, 1, 2])?;
        let names: Vec<String> = (0..3).map(|i| c.report(i).and_then(|r| r.name())).collect::<Result<_>>()?;
        for i in 0..3 {
            let text = status_ipam(c, i)?;
            for (j, name) in names.iter().enumerate() {
                let nick = c.node(j).nickname();
                ensure!(
                    text.lines().any(|l| l.contains(name.as_str()) || l.contains(&nick)),
                    "`weft status ipam` on node {i} does not list node {j} ({name} / {nick}):\n{text}"
                );
            }
            ensure!(text.contains('%') || text.to_lowercase().contains("ips"), "no shares in:\n{text}");
        }

        c.stop_router(2)?;
        let removed = parallel(2, |i| c.weft_cli_ok(i, &["rmpeer", "node2"]));
        for (i, r) in removed.into_iter().enumerate() {
            let out = r.with_context(|| format!("rmpeer node2 on node {i}"))?;
            eprintln!("rmpeer on node {i}: {}", out.trim());
        }
        // Straight away, before the two claims on node2's space have met in
        // gossip: that is when duplicates would be handed out.
        for (i, rt) in rts.iter().enumerate().take(2) {
            for k in 0..3 {
                pods.push(CniPod::add(c, i, rt, &format!("after{i}k{k}"))?);
            }
        }
        ensure_unique(pods.iter().filter(|p| p.node() != 2), &gateways(&statuses[..2])?)?;
        pods[3].wait_reachable(pods[6].ip(), REACH)?;

        // The survivors come to one view: node2 owns nothing, and the
        // whole range is theirs.
        let range = ipalloc_range();
        let hosts = (1u64 << (32 - u32::from(range.prefix_len))) - 2;
        let mut views = Vec::new();
        wait_until(IPAM_CONVERGE, Duration::from_millis(200), || {
            views = (0..2).map(|i| ipam_shares(c, i)).collect::<Result<Vec<_>>>()?;
            Ok(views[0] == views[1]
                && views[0].get("node2").copied().unwrap_or(0) == 0
                && views[0].values().sum::<u64>() == hosts)
        })
        .with_context(|| format!("survivors' IPAM views after rmpeer: {views:?}"))?;
        for i in 0..2 {
            let text = status_ipam(c, i)?;
            ensure!(!text.to_lowercase().contains("conflict"), "node {i} reports a conflict:\n{text}");
            let report = c.report(i)?;
            let conflicts = report.get("IPAM").and_then(|v| v.get("Conflicts")).cloned().unwrap_or(Value::Null);
            let none = conflicts.is_null() || conflicts.as_array().is_some_and(Vec::is_empty);
            ensure!(none, "node {i} /report IPAM.Conflicts: {conflicts}");
            let log = c.log_tail(i, 500);
            ensure!(!log.to_lowercase().contains("conflict"), "node {i}'s log mentions a conflict:\n{log}");
            eprintln!("node {i} after rmpeer:\n{text}");
        }
        Ok(())
    });
}

// ----- the harness's own CNI plumbing (no routers needed) ----------------

#[test]
fn conflist_plugins_get_runtime_fields_and_prev_result() {
    let list = NetworkConfig::weft_template().unwrap();
    assert_eq!(list.plugins[0]["type"], "weft-net", "weft-net must come first in {}", list.to_conflist());
    assert!(list.plugin("portmap").is_ok(), "the template chains portmap");
    let prev = json!({"cniVersion": list.cni_version, "ips": []});
    let second: Value = serde_json::from_slice(&list.plugin_stdin(1, Some(&prev)).unwrap()).unwrap();
    assert_eq!(second["name"], json!(list.name));
    assert_eq!(second["cniVersion"], json!(list.cni_version));
    assert_eq!(second["prevResult"], prev);
    let first: Value = serde_json::from_slice(&list.plugin_stdin(0, None).unwrap()).unwrap();
    assert!(first.get("prevResult").is_none());
    assert_eq!(NetworkConfig::from_conflist(&list.to_conflist()).unwrap(), list);
    assert!(NetworkConfig::from_conflist(r#"{"name":"x","cniVersion":"1.0.0","plugins":[]}"#).is_err());
    assert!(NetworkConfig::from_conflist(r#"{"name":"x","cniVersion":"1.0.0","plugins":[{}]}"#).is_err());
}

#[test]
fn cni_results_parse_into_typed_values() {
    let raw = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "vethab12", "mac": "aa:bb:cc:dd:ee:ff"},
                       {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/var/run/netns/p"}],
        "ips": [{"address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
        "dns": {}
    });
    let r = CniResult::parse(&raw).unwrap();
    let ip = r.ip_of("eth0").unwrap();
    assert_eq!(ip.address, "10.32.0.5/12".parse().unwrap());
    assert_eq!(ip.gateway, Some(Ipv4Addr::new(10, 32, 0, 1)));
    assert_eq!(r.default_route().unwrap().gw, Some(Ipv4Addr::new(10, 32, 0, 1)));
    assert!(r.ip_of("vethab12").is_err(), "host-side interfaces carry no pod address");
    let mut bad = raw.clone();
    bad["ips"][0]["interface"] = json!(7);
    assert!(CniResult::parse(&bad).is_err());
    assert!(CniResult::parse(&json!({"ips": []})).is_err(), "cniVersion is required");

    let range = ipalloc_range();
    assert!(range.contains_host(Ipv4Addr::new(10, 47, 255, 254)));
    assert!(!range.contains_host(Ipv4Addr::new(10, 47, 255, 255)));
    assert!(!range.contains_host(Ipv4Addr::new(10, 32, 0, 0)));
    assert!(!range.contains(Ipv4Addr::new(10, 48, 0, 1)));
    assert!("10.32.0.0/33".parse::<Ipv4Net>().is_err());
}
