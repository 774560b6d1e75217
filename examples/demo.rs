//! weft in miniature: three nodes in network namespaces, each running
//! `weft router`; two pods per node attached by the `weft-net` CNI plugin
//! exactly as a container runtime runs it (the real conflist, addresses from
//! weft's cluster-wide IPAM); every pod pings every other pod and a host
//! outside the pod network (through the node's masquerade), and the
//! routers' status is printed. Everything is removed at the end, also after
//! Ctrl-C.
//!
//! `cargo build --release --bins && cargo run --release --example demo`
//! (as root; `WEFT_BIN` may point at another `weft`; with `WEFT_PASSWORD`
//! set, the cluster is encrypted with it).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_tests::*;

const NODES: usize = 3;
const PODS_PER_NODE: usize = 2;
const PINGS: u32 = 3;
const CONVERGE: Duration = Duration::from_secs(30);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// `Err` once Ctrl-C was pressed; ends waits at once.
fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(stop_waiting("interrupted"));
    }
    Ok(())
}

fn main() -> ExitCode {
    install_signal_handlers();
    let mut builder = Cluster::builder().nodes(NODES);
    if let Some(password) = std::env::var("WEFT_PASSWORD").ok().filter(|p| !p.is_empty()) {
        builder = builder.router_env("WEFT_PASSWORD", &password);
    }
    let result = builder.build().context("building the namespace cluster").and_then(|cluster| {
        let r = demo(&cluster);
        if r.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
            cluster.dump_logs();
        }
        println!("\ncleaning up: stopping routers, deleting namespaces {}*", cluster.prefix());
        r
    });
    match result {
        Ok(()) => {
            println!("done.");
            ExitCode::SUCCESS
        }
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            println!("interrupted; cleaned up.");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(c: &Cluster) -> Result<()> {
    println!("weft demo: {NODES} nodes on underlay 172.31.0.0/24, {PODS_PER_NODE} pods each from {IPALLOC_RANGE}");
    for i in 0..NODES {
        // Each router is told about the others, as KUBE_PEERS would: the
        // range is divided once a majority of the three agree.
        let peers: Vec<usize> = (0..NODES).filter(|&p| p != i).collect();
        c.start_router(i, &["--ipalloc-range", IPALLOC_RANGE], &peers)?;
        println!("  node{i}: namespace {}, underlay {}, weft router started", c.node_ns(i).name(), c.node_ip(i));
    }
    let start = Instant::now();
    wait_until(CONVERGE, Duration::from_millis(200), || {
        check_interrupt()?;
        for i in 0..NODES {
            c.check_alive(i)?;
            let r = c.report(i)?;
            if r.peers()?.len() != NODES || r.established_count()? != NODES - 1 {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .context("routers did not form a full mesh")?;
    println!("routers converged into a full mesh in {:.1?}", start.elapsed());

    // The plugin as a runtime runs it: deploy/'s conflist (weft-net, then
    // portmap), CNI_* environment, config on stdin, in the node namespace.
    let bins = CniBinDir::create(&c.dir().join("cni-bin"), &["portmap"])?;
    let mut pods = Vec::new();
    for node in 0..NODES {
        let rt = CniRuntime::new(c.node_ns(node), bins.clone(), NetworkConfig::weft_template()?);
        for k in 0..PODS_PER_NODE {
            check_interrupt()?;
            pods.push(CniPod::add(c, node, &rt, &format!("d{node}{k}"))?);
        }
    }
    println!("{} pods attached by weft-net; addresses from weft's IPAM:", pods.len());
    for p in &pods {
        println!("  node{}: {} ({})", p.node(), p.ip(), p.container_id());
    }
    // First contact resolves ARP across the overlay; not part of the table.
    for p in &pods[1..] {
        check_interrupt()?;
        pods[0].wait_reachable(p.ip(), Duration::from_secs(10))?;
    }

    check_interrupt()?;
    let matrix = ping_matrix(&pods)?;
    check_interrupt()?;
    print_matrix(&pods, &matrix);

    // A host on the underlay with no route to the pod range: pods reach it
    // through their node's masquerade, and it sees the node's address.
    let outside = c.add_underlay_host()?;
    let from = &pods[PODS_PER_NODE];
    from.wait_reachable(outside.ip(), Duration::from_secs(10))?;
    let egress = from.ping(outside.ip(), PINGS)?;
    println!(
        "\npod {} on node{} -> outside host {}: {}/{} replies (masqueraded to the node's {})",
        from.ip(),
        from.node(),
        outside.ip(),
        egress.received,
        egress.transmitted,
        c.node_ip(from.node())
    );

    for args in [&["status"][..], &["status", "connections"][..], &["status", "ipam"][..]] {
        check_interrupt()?;
        println!("\n$ ip netns exec {} weft {}", c.node_ns(0).name(), args.join(" "));
        print!("{}", c.weft_cli_ok(0, args)?);
    }

    let failed = matrix.iter().flatten().flatten().filter(|s| !s.all_received()).count();
    if failed > 0 {
        bail!("{failed} pod pairs did not ping cleanly");
    }
    if !egress.all_received() {
        bail!("the pod could not reach the outside host cleanly: {egress:?}");
    }
    Ok(())
}

/// `matrix[i][j]`: pings from pod i to pod j (`None` on the diagonal), one
/// thread per source pod.
fn ping_matrix(pods: &[CniPod]) -> Result<Vec<Vec<Option<PingStats>>>> {
    std::thread::scope(|s| {
        let rows: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, from)| {
                s.spawn(move || -> Result<Vec<Option<PingStats>>> {
                    pods.iter()
                        .enumerate()
                        .map(|(j, to)| {
                            check_interrupt()?;
                            if i == j {
                                Ok(None)
                            } else {
                                from.ping(to.ip(), PINGS).map(Some)
                            }
                        })
                        .collect()
                })
            })
            .collect();
        rows.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("ping thread panicked"))).collect()
    })
}

fn print_matrix(pods: &[CniPod], matrix: &[Vec<Option<PingStats>>]) {
    const W: usize = 11;
    println!("\nping -c {PINGS}: replies received (row = from, column = to)");
    print!("{:>W$} ", "from \\ to");
    for p in pods {
        print!("{:>W$}", p.ip().to_string());
    }
    println!();
    for (p, row) in pods.iter().zip(matrix) {
        print!("{:>W$} ", p.ip().to_string());
        for cell in row {
            let text = match cell {
                None => "-".to_owned(),
                Some(s) if s.duplicates > 0 => format!("{}/{}+{}dup", s.received, s.transmitted, s.duplicates),
                Some(s) => format!("{}/{}", s.received, s.transmitted),
            };
            print!("{text:>W$}");
        }
        println!();
    }
}
