//! Bringing a router up: devices, sockets, tasks and threads, then the
//! core's loop.

use super::{Core, MAC_TTL};
use crate::config::{Config, RouterArgs, MTU_OVERHEAD};
use crate::control;
use crate::shared::Shared;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use weft_proto::control::{LocalPeer, Timers};
use weft_proto::mac_table::MacTable;
use weft_proto::topology::Topology;

pub fn run(args: RouterArgs, http_addr: String) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Config::from_args(args, &http_addr)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(serve(cfg));
    // The data path threads block in syscalls; the process exit ends them.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve(mut cfg: Config) -> Result<()> {
    // The API is asked before the identity is loaded: a data dir whose peer
    // was reclaimed while the router was away must not come back as it.
    let kube = crate::kube::Kube::connect(&cfg).await;
    if let Some(kube) = &kube {
        kube.guard_reclaimed(&cfg.data_dir).await;
    }
    let name = crate::identity::load_or_create_name(&cfg.data_dir, cfg.name)?;
    let uid = crate::identity::new_uid();
    let nl = weft_netlink::Netlink::connect().await.context("opening netlink")?;

    let underlay_mtu = detect_underlay_mtu(&cfg).await;
    let pod_mtu = cfg.mtu.unwrap_or(crate::path_mtu::overlay_mtu(underlay_mtu, MTU_OVERHEAD));
    let nl = Arc::new(nl);
    let bridge = nl.ensure_bridge(&cfg.bridge).await.with_context(|| format!("setting up bridge {}", cfg.bridge))?;
    if bridge.created {
        nl.set_mtu(bridge.index, pod_mtu).await?;
    }
    let tap_name = crate::devices::tap_name(&cfg.bridge);
    // The TCP port first: a second router on this node fails here, before
    // it could join our UDP port's group or add a queue to our TAP.
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.port))
        .await
        .with_context(|| format!("binding TCP port {}", cfg.port))?;
    let sockets = (0..cfg.sleeve_workers.max(1))
        .map(|_| bind_udp(cfg.port))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("binding UDP port {}", cfg.port))?;
    let udp = sockets[0].try_clone()?;
    let sleeve = crate::datapath::SleeveIo::open(&tap_name, cfg.offload, sockets)
        .with_context(|| format!("opening TAP {tap_name}"))?;
    let tap = sleeve.tap();
    let tap_index = nl.link_index(tap.name()).await?.with_context(|| format!("TAP {} vanished", tap.name()))?;
    nl.set_mtu(tap_index, pod_mtu).await?;
    nl.set_master(tap_index, bridge.index).await?;
    nl.set_up(tap_index).await?;
    nl.set_up(bridge.index).await?;
    tracing::info!(
        "peer {name} ({}) bridge {} (mtu {pod_mtu}, underlay {underlay_mtu}){}",
        cfg.nickname,
        cfg.bridge,
        if bridge.created { ", created" } else { "" }
    );

    // Only the derived key stays in memory, not the password.
    let encryption = match cfg.password.take() {
        None => None,
        Some(password) => {
            let started = Instant::now();
            let enc = password.encryption().context("deriving the key from the password")?;
            tracing::info!(
                "encryption on ({}, password from {}; key derived in {} ms)",
                password.cipher_description(),
                password.source,
                started.elapsed().as_millis()
            );
            Some(Arc::new(enc))
        }
    };
    let fastdp_off = if !cfg.fastdp {
        Some(crate::fastdp::Availability::Disabled)
    } else if encryption.is_some() {
        Some(crate::fastdp::Availability::Encrypted(crate::fastdp::kernel::encrypted_kernel_note()))
    } else {
        None
    };
    let (availability, device) = crate::fastdp::kernel::setup(
        &nl,
        fastdp_off,
        crate::fastdp::kernel::Bridge { name: &cfg.bridge, index: bridge.index, tap_index },
        cfg.port,
        pod_mtu,
        name,
    )
    .await;
    tracing::info!("fast path: {}", availability.describe());

    let http = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding the HTTP API on {}", cfg.http_addr))?;

    let (tx, rx) = mpsc::unbounded_channel();
    let (hb_tx, hb_rx) = mpsc::channel(1024);
    let shared = Arc::new(Shared::new(MacTable::new(MAC_TTL), tx.clone(), hb_tx));

    let sleeve_status = sleeve.describe();
    tracing::info!("sleeve: {sleeve_status}");
    crate::datapath::start(shared.clone(), sleeve, name, cfg.sleeve_spin)?;
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(None);
    let (socket, inherited) = match device {
        Some(d) => {
            let rx = d.socket.try_clone()?;
            crate::fastdp::kernel::spawn_heartbeat_reader(rx, shared.clone())?;
            tokio::spawn(crate::fastdp::kernel::run(
                nl.clone(),
                bridge.index,
                tap_index,
                d.index,
                desired_rx,
                tx.clone(),
                shared.clone(),
            ));
            (Some(d.socket), d.inherited)
        }
        None => (None, Vec::new()),
    };
    tokio::spawn(control::accept_loop(listener, tx.clone()));
    let api = crate::api::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        if let Err(err) = axum::serve(http, api).await {
            tracing::error!("HTTP API stopped: {err}");
        }
    });

    let now = Instant::now();
    // With a node list, the initial division waits for it (the quorum comes
    // from the node count); without one, the peers named at start count.
    let consensus = match (cfg.ipalloc_init, &kube) {
        (Some(n), _) => n,
        (None, Some(_)) => weft_proto::ipam::CONSENSUS_UNKNOWN,
        (None, None) => cfg.peers.iter().filter(|p| !control::is_local_target(p)).count() + 1,
    };
    let ipam =
        crate::ipam::IpamService::load(name, &cfg.data_dir, cfg.ipalloc_range, consensus, pod_mtu, &cfg.bridge, now)?;
    let (nat_tx, nat_rx) = tokio::sync::watch::channel(crate::nat::NatInput { local: ipam.owned_ranges() });
    crate::nat::spawn(
        crate::nat::NatConfig {
            enabled: cfg.nat,
            range: cfg.ipalloc_range,
            bridge: cfg.bridge.clone(),
            no_masq_local: cfg.no_masq_local,
            http_port: cfg.http_addr.port(),
        },
        nat_rx,
        tx.clone(),
        shared.clone(),
    );
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let kube_enabled = kube.is_some();
    if let Some(kube) = kube {
        kube.spawn(name, tx.clone(), shared.clone(), ready_rx);
    }
    let fastdp = crate::fastdp::FastDp::new(availability, socket, inherited, name, pod_mtu, now);
    let features = if fastdp.enabled() { weft_proto::control::FEATURE_FASTDP } else { 0 };
    let local = LocalPeer { name, nickname: cfg.nickname.clone(), uid, udp_port: cfg.port, features, encryption };
    let mut core = Core {
        topology: Topology::new(name, cfg.nickname.clone(), uid, now),
        local,
        timers: Timers::default(),
        conns: BTreeMap::new(),
        targets: BTreeMap::new(),
        next_id: 1,
        terminations: 0,
        udp,
        tx,
        shared,
        pod_mtu,
        sleeve: sleeve_status,
        retired_sessions: Default::default(),
        bridge: cfg.bridge.clone(),
        bridge_index: bridge.index,
        ipam,
        nl,
        fastdp,
        desired_tx,
        last_publish: None,
        dirty: true,
        refused: BTreeMap::new(),
        kube: kube_enabled.then(crate::kube::DiscoveryStatus::default),
        nat: crate::nat::NatState::default(),
        nat_tx,
        ready_tx,
        cfg,
    };
    let initial = core.cfg.peers.clone();
    core.connect(initial, false, now);
    core.fastdp_changed();
    core.run(rx, hb_rx).await;
    Ok(())
}

fn bind_udp(port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // One socket per sleeve worker, the kernel spreading datagrams over
    // them by their addresses and ports.
    sock.set_reuse_port(true)?;
    // Big buffers absorb bursts between the data path's batches.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    // recvmmsg wakes up at least this often, so the thread notices shutdown.
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(sock.into())
}

/// The MTU toward the named peers (the smallest), else that of the
/// default route's interface, else Ethernet's 1500.
async fn detect_underlay_mtu(cfg: &Config) -> u32 {
    let mut mtu: Option<u32> = None;
    for peer in &cfg.peers {
        let Ok((host, port)) = control::parse_target(peer) else { continue };
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await else { continue };
        for addr in addrs {
            if let Ok(m) = crate::path_mtu::path_mtu(addr.ip()) {
                mtu = Some(mtu.map_or(m, |x| x.min(m)));
            }
        }
    }
    mtu.or_else(crate::path_mtu::default_route_mtu).unwrap_or(1500)
}
