//! The control core: one task that owns every protocol state machine
//! (control connections, topology, dial targets) and drives them with
//! bytes and time from the I/O tasks, quinn-style. The data path reads the
//! forwarding table it publishes; the HTTP API reads its status snapshot.

use crate::config::{Config, RouterArgs, MTU_OVERHEAD};
use crate::control::{self, canonical_target};
use crate::datapath::{Forwarding, Neighbour};
use crate::metrics::{ConnFailure, Metrics};
use crate::status::{ConnView, MacView, PeerConnView, PeerView, Snapshot};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, Receiver, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use weft_proto::backoff::Backoff;
use weft_proto::control::{
    keep_new_connection, Candidate, Connection, ConnectionError, Event, LocalPeer, Message, RemotePeer, State, Timers,
};
use weft_proto::fastdp::{FastDpHeartbeat, Path};
use weft_proto::mac_table::MacTable;
use weft_proto::topology::{ConnectionInfo, Topology};
use weft_proto::PeerName;

/// How long a learned MAC stays without traffic (the kernel bridge's default).
const MAC_TTL: Duration = Duration::from_secs(300);
/// Status snapshots are rebuilt at most this often (but right away after
/// an API command), so a busy cluster doesn't rebuild them per heartbeat.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(200);
/// Upper bound on the core's sleep, so periodic work (MAC expiry, dials)
/// never waits on a forgotten deadline.
const MAX_TICK: Duration = Duration::from_millis(500);
/// A connection that lived this long resets its target's backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Everything the I/O tasks, the data path and the API tell the core.
#[derive(Debug)]
pub enum Command {
    Connect {
        peers: Vec<String>,
        replace: bool,
    },
    Forget {
        peers: Vec<String>,
    },
    Accepted {
        stream: TcpStream,
        addr: SocketAddr,
    },
    Dialed {
        target: String,
        result: Result<(TcpStream, SocketAddr), String>,
    },
    Input {
        id: u64,
        data: Vec<u8>,
    },
    Closed {
        id: u64,
        reason: String,
    },
    IpamAllocate {
        container_id: String,
        ifname: String,
        reply: crate::ipam::Waiter,
    },
    IpamRelease {
        container_id: String,
        ifname: Option<String>,
        reply: oneshot::Sender<usize>,
    },
    IpamLookup {
        container_id: String,
        ifname: String,
        reply: oneshot::Sender<Option<crate::ipam::Lease>>,
    },
    IpamGc {
        valid: Vec<(String, String)>,
        reply: oneshot::Sender<usize>,
    },
    Rmpeer {
        peer: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A runtime asked whether IPAM is ready.
    IpamWanted,
    /// The pod MACs on our bridge, as the kernel task last read them.
    LocalMacs(Vec<weft_proto::ethernet::MacAddr>),
    /// The kernel task applied this generation of the fast-path state.
    FastDpApplied(u64),
    /// `weft reset` asks the router to exit.
    Shutdown,
}

/// A UDP heartbeat seen by the data path, for the connection it belongs to.
#[derive(Debug)]
pub struct SleeveHeartbeat {
    pub sender: PeerName,
    pub conn_id: u64,
    pub from: SocketAddr,
}

/// Heartbeats from the data path threads, through one bounded queue so
/// that a flood of them can cost drops but never unbounded memory.
#[derive(Debug)]
pub enum Heartbeat {
    Sleeve(SleeveHeartbeat),
    FastDp(FastDpHeartbeat),
}

/// State shared between the core, the data path threads and the API.
#[derive(Debug)]
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    forwarding: RwLock<Arc<Forwarding>>,
    pub macs: Mutex<MacTable>,
    pub metrics: Metrics,
    commands: UnboundedSender<Command>,
    pub heartbeats: mpsc::Sender<Heartbeat>,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn forwarding(&self) -> Arc<Forwarding> {
        self.forwarding.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn command(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
    }

    pub fn lock_macs(&self) -> std::sync::MutexGuard<'_, MacTable> {
        self.macs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

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
    let tap = crate::tap::Tap::open(&tap_name, false).with_context(|| format!("opening TAP {tap_name}"))?;
    tap.set_nonblocking(true)?;
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
                password.cipher,
                password.source,
                started.elapsed().as_millis()
            );
            Some(Arc::new(enc))
        }
    };
    let fastdp_off = if !cfg.fastdp {
        Some(crate::fastdp::Availability::Disabled)
    } else if encryption.is_some() {
        Some(crate::fastdp::Availability::Encrypted(crate::fastdp_kernel::encrypted_kernel_note()))
    } else {
        None
    };
    let (availability, device) = crate::fastdp_kernel::setup(
        &nl,
        fastdp_off,
        crate::fastdp_kernel::Bridge { name: &cfg.bridge, index: bridge.index, tap_index },
        cfg.port,
        pod_mtu,
        name,
    )
    .await;
    tracing::info!("fast path: {}", availability.describe());

    let udp = bind_udp(cfg.port).with_context(|| format!("binding UDP port {}", cfg.port))?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.port))
        .await
        .with_context(|| format!("binding TCP port {}", cfg.port))?;
    let http = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding the HTTP API on {}", cfg.http_addr))?;

    let (tx, rx) = mpsc::unbounded_channel();
    let (hb_tx, hb_rx) = mpsc::channel(1024);
    let shared = Arc::new(Shared {
        snapshot: RwLock::new(Arc::new(Snapshot::default())),
        forwarding: RwLock::new(Arc::new(Forwarding::default())),
        macs: Mutex::new(MacTable::new(MAC_TTL)),
        metrics: Metrics::default(),
        commands: tx.clone(),
        heartbeats: hb_tx,
    });

    crate::datapath::start(shared.clone(), tap, udp.try_clone()?, name)?;
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(None);
    let (socket, inherited) = match device {
        Some(d) => {
            let rx = d.socket.try_clone()?;
            crate::fastdp_kernel::spawn_heartbeat_reader(rx, shared.clone())?;
            tokio::spawn(crate::fastdp_kernel::run(
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
    let ipam = crate::ipam::IpamService::load(
        name,
        &cfg.data_dir,
        cfg.ipalloc_range,
        cfg.consensus_count,
        pod_mtu,
        &cfg.bridge,
        now,
    )?;
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
        bridge: cfg.bridge.clone(),
        bridge_index: bridge.index,
        ipam,
        nl,
        fastdp,
        desired_tx,
        last_publish: None,
        dirty: true,
        refused: BTreeMap::new(),
        cfg,
    };
    let initial = core.cfg.peers.clone();
    core.connect(initial, false, now);
    core.fastdp_changed();
    core.run(rx, hb_rx).await;
    Ok(())
}

/// How a connection error counts: as a connection failure, and for
/// encryption problems also as a handshake failure.
fn classify(err: &ConnectionError) -> (ConnFailure, Option<crate::metrics::HandshakeFailure>) {
    use crate::metrics::HandshakeFailure;
    use weft_proto::control::Refusal;
    let handshake = match err {
        ConnectionError::Refused(Refusal::PasswordDiffers) | ConnectionError::PeerRefused => {
            Some(HandshakeFailure::PasswordDiffers)
        }
        ConnectionError::Refused(Refusal::PeerHasNoPassword | Refusal::PeerRequiresPassword) => {
            Some(HandshakeFailure::EncryptionMismatch)
        }
        ConnectionError::Refused(Refusal::CipherMismatch { .. }) => Some(HandshakeFailure::CipherMismatch),
        ConnectionError::Noise(_) | ConnectionError::HandshakeFrame(_) => Some(HandshakeFailure::Malformed),
        _ => None,
    };
    let conn = match err {
        ConnectionError::HeartbeatTimeout { .. } => ConnFailure::HeartbeatTimeout,
        ConnectionError::SelfConnection => ConnFailure::SelfConnection,
        ConnectionError::Handshake(_) | ConnectionError::HandshakeTimeout { .. } => ConnFailure::Handshake,
        _ if handshake.is_some() => ConnFailure::Handshake,
        _ => ConnFailure::Protocol,
    };
    (conn, handshake)
}

/// One sleeve heartbeat to `addr`, sealed on an encrypted connection.
fn send_sleeve_heartbeat(
    udp: &UdpSocket,
    addr: SocketAddr,
    local: PeerName,
    c: &Conn,
    now: Instant,
    metrics: &Metrics,
) {
    use weft_proto::sleeve::{write_heartbeat, SEALED_HEADER_LEN, SEAL_OVERHEAD};
    const PLAIN: usize = 64;
    let mut buf = [0u8; PLAIN + SEAL_OVERHEAD];
    let front = if c.session.is_some() { SEALED_HEADER_LEN } else { 0 };
    let plain = match write_heartbeat(&mut buf[front..], local, c.proto.conn_id(), PLAIN) {
        Ok(plain) => plain,
        Err(err) => return tracing::warn!("sleeve heartbeat to {addr}: {err}"),
    };
    let len = match &c.session {
        None => plain,
        Some(session) => match session.sealing(metrics).seal(&mut buf, plain, local, now) {
            Ok(len) => len,
            Err(err) => return tracing::warn!("sealing a sleeve heartbeat to {addr}: {err}"),
        },
    };
    if let Err(err) = udp.send_to(&buf[..len], addr) {
        tracing::debug!("sleeve heartbeat to {addr}: {err}");
    }
}

fn bind_udp(port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
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

/// Where a connection came from: a target we dial (user-given or learned
/// through gossip) or an inbound accept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Inbound,
    Target(String),
}

#[derive(Debug)]
struct Conn {
    proto: Connection,
    addr: SocketAddr,
    origin: Origin,
    writer: UnboundedSender<Vec<u8>>,
    reader: AbortHandle,
    udp_addr: Option<SocketAddr>,
    path_mtu: u32,
    since: Instant,
    /// The sleeve's keys, on an encrypted connection.
    session: Option<Arc<crate::sleeve_session::SleeveSession>>,
    /// Control-stream key rotations already counted in the metrics.
    rekeys_counted: (u64, u64),
}

impl Conn {
    fn remote(&self) -> Option<&RemotePeer> {
        self.proto.remote()
    }
}

#[derive(Debug)]
struct Target {
    /// Named by the user (`weft connect`, command line) rather than learned.
    user: bool,
    backoff: Backoff,
    next_attempt: Option<Instant>,
    dialing: bool,
    conn: Option<u64>,
    /// Who answered at this address last time.
    peer: Option<PeerName>,
    last_error: Option<String>,
    /// Dialing this address reaches ourselves: never again.
    is_self: bool,
}

impl Target {
    fn new(user: bool, now: Instant) -> Self {
        Target {
            user,
            backoff: Backoff::new(),
            next_attempt: Some(now),
            dialing: false,
            conn: None,
            peer: None,
            last_error: None,
            is_self: false,
        }
    }
}

struct Core {
    cfg: Config,
    local: LocalPeer,
    timers: Timers,
    topology: Topology,
    conns: BTreeMap<u64, Conn>,
    targets: BTreeMap<String, Target>,
    next_id: u64,
    terminations: u64,
    udp: UdpSocket,
    tx: UnboundedSender<Command>,
    shared: Arc<Shared>,
    pod_mtu: u32,
    bridge: String,
    bridge_index: u32,
    ipam: crate::ipam::IpamService,
    nl: Arc<weft_netlink::Netlink>,
    fastdp: crate::fastdp::FastDp,
    desired_tx: tokio::sync::watch::Sender<Option<Arc<crate::fastdp::Desired>>>,
    last_publish: Option<Instant>,
    dirty: bool,
    /// Recent handshake failures of inbound connections, by remote IP, so
    /// the refusing side's `weft status` says who was refused and why.
    refused: BTreeMap<std::net::IpAddr, Refused>,
}

/// An inbound connection that failed its handshake.
#[derive(Debug)]
struct Refused {
    address: SocketAddr,
    peer: Option<String>,
    reason: String,
    at: Instant,
}

/// How long a refused inbound connection stays in `weft status`.
const REFUSED_SHOWN_FOR: Duration = Duration::from_secs(120);

impl Core {
    async fn run(&mut self, mut rx: UnboundedReceiver<Command>, mut hb_rx: Receiver<Heartbeat>) {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!("cannot watch SIGTERM: {err}");
                return;
            }
        };
        let mut int = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!("cannot watch SIGINT: {err}");
                return;
            }
        };
        self.publish(Instant::now(), true);
        loop {
            let now = Instant::now();
            let deadline = self.next_deadline(now);
            let mut urgent = false;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown) => { tracing::info!("shutdown requested through the API"); break; }
                    Some(cmd) => urgent = self.handle_command(cmd, Instant::now()),
                    None => break,
                },
                hb = hb_rx.recv() => match hb {
                    Some(Heartbeat::Sleeve(hb)) => self.handle_sleeve_heartbeat(hb, Instant::now()),
                    Some(Heartbeat::FastDp(hb)) => self.fastdp.handle_heartbeat(Instant::now(), &hb, &self.shared.metrics),
                    None => {}
                },
                _ = tokio::time::sleep_until(deadline.into()) => {},
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            }
            let now = Instant::now();
            self.handle_timeouts(now);
            self.settle_ipam(now);
            self.pump(now);
            self.publish(now, urgent);
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Dropping the writers flushes and closes every TCP connection; the
        // peers see EOF and drop us from their routes at once instead of
        // waiting for a heartbeat timeout.
        for (_, c) in std::mem::take(&mut self.conns) {
            c.reader.abort();
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut deadline = now + MAX_TICK;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                deadline = deadline.min(t);
            }
        };
        for c in self.conns.values() {
            consider(c.proto.poll_timeout());
        }
        consider(self.topology.poll_timeout());
        consider(self.ipam.poll_timeout());
        consider(self.fastdp.poll_timeout());
        for t in self.targets.values() {
            if !t.dialing && t.conn.is_none() {
                consider(t.next_attempt);
            }
        }
        if self.dirty {
            consider(self.last_publish.map(|p| p + PUBLISH_INTERVAL));
        }
        deadline.max(now)
    }

    /// Returns true when the change should be visible in the API at once.
    fn handle_command(&mut self, cmd: Command, now: Instant) -> bool {
        match cmd {
            Command::Connect { peers, replace } => {
                self.connect(peers, replace, now);
                return true;
            }
            Command::Forget { peers } => {
                for p in peers {
                    if let Ok(key) = canonical_target(&p) {
                        if self.targets.get(&key).is_some_and(|t| t.user) {
                            self.targets.remove(&key);
                        }
                    }
                }
                self.refresh_discovery(now);
                return true;
            }
            Command::Accepted { stream, addr } => {
                if self.conns.len() >= self.cfg.conn_limit {
                    tracing::warn!("refusing connection from {addr}: connection limit {} reached", self.cfg.conn_limit);
                    self.shared.metrics.conn_failure(ConnFailure::Limit);
                    return false;
                }
                self.add_conn(stream, addr, Origin::Inbound, now);
            }
            Command::Dialed { target, result } => {
                let Some(t) = self.targets.get_mut(&target) else { return false };
                t.dialing = false;
                match result {
                    Ok((stream, addr)) => {
                        self.add_conn(stream, addr, Origin::Target(target), now);
                    }
                    Err(err) => {
                        tracing::debug!("dial {target}: {err}");
                        self.shared.metrics.conn_failure(ConnFailure::Dial);
                        Self::retry_later(t, err, now);
                    }
                }
            }
            Command::Input { id, data } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    if let Err(err) = c.proto.handle_input(now, &data) {
                        self.fail_conn(id, &err, now);
                    }
                }
            }
            Command::Closed { id, reason } => {
                if self.conns.contains_key(&id) {
                    self.close_conn(id, &reason, ConnFailure::Closed, now);
                }
            }
            Command::IpamAllocate { container_id, ifname, reply } => {
                self.ipam.allocate(now, container_id, ifname, reply);
                return true;
            }
            Command::IpamRelease { container_id, ifname, reply } => {
                let _ = reply.send(self.ipam.release(&container_id, ifname.as_deref()));
                return true;
            }
            Command::IpamLookup { container_id, ifname, reply } => {
                let _ = reply.send(self.ipam.lookup(&container_id, &ifname));
            }
            Command::IpamGc { valid, reply } => {
                let _ = reply.send(self.ipam.gc(&valid));
                return true;
            }
            Command::Rmpeer { peer, reply } => {
                let _ = reply.send(self.rmpeer(&peer, now));
                return true;
            }
            Command::IpamWanted => {
                self.ipam.want();
                return true;
            }
            Command::LocalMacs(macs) => {
                if self.fastdp.set_local_macs(macs) {
                    self.send_local_macs(None);
                }
            }
            Command::FastDpApplied(generation) => {
                if self.fastdp.applied(generation) {
                    self.refresh_forwarding();
                    self.dirty = true;
                }
            }
            // Handled by the run loop before it gets here.
            Command::Shutdown => {}
        }
        false
    }

    /// `weft rmpeer NAME|NICKNAME`: the name must be a peer we know of (or
    /// a well-formed peer name) and not connected to us.
    fn rmpeer(&mut self, peer: &str, now: Instant) -> Result<String, String> {
        let by_nick: Vec<PeerName> = self.topology.peers().filter(|p| p.nickname == peer).map(|p| p.name).collect();
        let name = match (peer.parse::<PeerName>(), by_nick.as_slice()) {
            (Ok(name), _) => name,
            (Err(_), [one]) => *one,
            (Err(_), []) => return Err(format!("no peer named or nicknamed {peer:?}")),
            (Err(_), _) => return Err(format!("several peers are nicknamed {peer:?}: give the peer name")),
        };
        if name == self.local.name {
            return Err("refusing to remove ourselves".to_string());
        }
        if self.conns.values().any(|c| c.remote().is_some_and(|r| r.name == name)) {
            return Err(format!("{name} is connected to us: stop its router before removing it"));
        }
        self.ipam.rmpeer(now, name).map_err(|e| format!("{e:#}"))
    }

    /// Lets IPAM retry waiting requests, then carries out what it asks:
    /// gossip to every peer, the bridge's gateway address.
    fn settle_ipam(&mut self, now: Instant) {
        self.ipam.handle_timeout(now);
        let effects = self.ipam.settle(now);
        if let Some(update) = effects.gossip {
            for c in self.conns.values_mut() {
                if c.remote().is_some() {
                    if let Err(err) = c.proto.send(Message::Ipam(update.clone())) {
                        tracing::error!("IPAM state too large to gossip: {err}");
                    }
                }
            }
            self.dirty = true;
        }
        if let Some((addr, prefix)) = effects.expose {
            let (nl, index) = (self.nl.clone(), self.bridge_index);
            tokio::spawn(async move {
                match nl.add_address(index, addr.into(), prefix).await {
                    Ok(()) => tracing::info!("bridge gateway address {addr}/{prefix}"),
                    Err(err) => tracing::error!("cannot put {addr}/{prefix} on the bridge: {err}"),
                }
            });
            self.dirty = true;
        }
    }

    fn retry_later(t: &mut Target, err: String, now: Instant) {
        let delay = t.backoff.next_delay(rand::random::<f64>());
        t.last_error = Some(err);
        t.next_attempt = Some(now + delay);
    }

    fn connect(&mut self, peers: Vec<String>, replace: bool, now: Instant) {
        if replace {
            self.targets.retain(|_, t| !t.user);
        }
        for p in peers {
            match canonical_target(&p) {
                Ok(key) => {
                    let t = self.targets.entry(key).or_insert_with(|| Target::new(true, now));
                    t.user = true;
                    if t.conn.is_none() && !t.dialing {
                        // An explicit connect skips any backoff in progress.
                        t.next_attempt = Some(now);
                    }
                }
                Err(err) => tracing::warn!("ignoring peer {p:?}: {err}"),
            }
        }
    }

    fn handle_sleeve_heartbeat(&mut self, hb: SleeveHeartbeat, now: Instant) {
        let conn = self.conns.values_mut().find(|c| {
            c.remote().is_some_and(|r| r.name == hb.sender && r.conn_id == hb.conn_id) && c.addr.ip() == hb.from.ip()
        });
        if let Some(c) = conn {
            // Follow the address the peer's datagrams really come from
            // (a NAT may rewrite the port).
            c.udp_addr = Some(hb.from);
            c.proto.handle_sleeve_heartbeat(now);
        } else {
            tracing::debug!("sleeve heartbeat from unknown connection {} of {} at {}", hb.conn_id, hb.sender, hb.from);
            self.shared.metrics.drop(crate::metrics::Drop::UnknownPeer, 1);
        }
    }

    fn handle_timeouts(&mut self, now: Instant) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            if c.proto.poll_timeout().is_some_and(|t| t <= now) {
                if let Err(err) = c.proto.handle_timeout(now) {
                    self.fail_conn(id, &err, now);
                }
            }
        }
        if self.topology.poll_timeout().is_some_and(|t| t <= now) {
            let dropped = self.topology.handle_timeout(now);
            if !dropped.is_empty() {
                tracing::info!("dropped unreachable peers: {dropped:?}");
                self.topology_changed(now);
            }
        }
        self.dial_due(now);
        if self.fastdp.poll(now, &self.shared.metrics) {
            self.fastdp_changed();
        }
        let before = self.refused.len();
        self.refused.retain(|_, r| now.saturating_duration_since(r.at) < REFUSED_SHOWN_FOR);
        if self.refused.len() != before {
            self.dirty = true;
        }
        let expired = self.shared.lock_macs().expire(now);
        if expired > 0 {
            self.dirty = true;
        }
    }

    fn dial_due(&mut self, now: Instant) {
        let connected: Vec<PeerName> = self.conns.values().filter_map(|c| c.remote().map(|r| r.name)).collect();
        let mut budget = self.cfg.conn_limit.saturating_sub(self.conns.len());
        for (key, t) in self.targets.iter_mut() {
            if t.is_self || t.dialing || t.conn.is_some() || budget == 0 {
                continue;
            }
            // Someone at this address is already connected to us under
            // another connection (e.g. it dialed us first): no second dial.
            if t.peer.is_some_and(|p| connected.contains(&p)) {
                continue;
            }
            if t.next_attempt.is_some_and(|at| at <= now) {
                t.dialing = true;
                t.next_attempt = None;
                budget -= 1;
                control::spawn_dial(key.clone(), self.tx.clone());
            }
        }
    }

    fn add_conn(&mut self, stream: TcpStream, addr: SocketAddr, origin: Origin, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        // The connection id in the handshake must not be guessable across
        // restarts; the local counter only keys the map.
        let conn_id = rand::random::<u64>();
        let outbound = matches!(origin, Origin::Target(_));
        let (writer, reader) = control::spawn_io(id, stream, self.tx.clone());
        let proto =
            Connection::new(self.local.clone(), self.timers.clone(), conn_id, outbound, now, rand::random::<[u8; 32]>());
        if let Origin::Target(key) = &origin {
            if let Some(t) = self.targets.get_mut(key) {
                t.conn = Some(id);
            }
        }
        let path_mtu = crate::path_mtu::path_mtu(addr.ip()).unwrap_or(1500);
        self.conns.insert(
            id,
            Conn {
                proto,
                addr,
                origin,
                writer,
                reader,
                udp_addr: None,
                path_mtu,
                since: now,
                session: None,
                rekeys_counted: (0, 0),
            },
        );
        self.dirty = true;
    }

    fn fail_conn(&mut self, id: u64, err: &ConnectionError, now: Instant) {
        let (reason, handshake_failure) = classify(err);
        if let Some(failure) = handshake_failure {
            self.shared.metrics.handshake_failure(failure);
        }
        if matches!(err, ConnectionError::ControlAuth(_)) {
            self.shared.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(c) = self.conns.get_mut(&id) {
            // A refusal carries its reason to the peer: send it before closing.
            let mut farewell = Vec::new();
            if c.proto.poll_transmit(&mut farewell) {
                let _ = c.writer.send(farewell);
            }
            if handshake_failure.is_some() {
                let peer = c.proto.announced().map(|r| format!("{}({})", r.name, r.nickname));
                tracing::warn!("refused {} at {}: {err}", peer.as_deref().unwrap_or("a peer"), c.addr);
                if c.origin == Origin::Inbound {
                    let refused = Refused { address: c.addr, peer, reason: err.to_string(), at: now };
                    self.refused.insert(c.addr.ip(), refused);
                }
            }
        }
        if reason == ConnFailure::SelfConnection {
            if let Some(Origin::Target(key)) = self.conns.get(&id).map(|c| c.origin.clone()) {
                if let Some(t) = self.targets.get_mut(&key) {
                    t.is_self = true;
                }
            }
        }
        self.close_conn(id, &err.to_string(), reason, now);
    }

    fn close_conn(&mut self, id: u64, reason: &str, kind: ConnFailure, now: Instant) {
        let Some(c) = self.conns.remove(&id) else { return };
        c.reader.abort();
        let who = c.remote().map(|r| format!("{}({})", r.name, r.nickname)).unwrap_or_default();
        if c.remote().is_some() {
            self.terminations += 1;
            tracing::info!("connection {} {who} ended: {reason}", c.addr);
        } else {
            tracing::info!("connection {} failed: {reason}", c.addr);
        }
        self.shared.metrics.conn_failure(kind);
        if let Origin::Target(key) = &c.origin {
            if let Some(t) = self.targets.get_mut(key) {
                t.conn = None;
                if now.duration_since(c.since) > STABLE_AFTER {
                    t.backoff.reset();
                }
                if !t.is_self {
                    Self::retry_later(t, reason.to_string(), now);
                }
            }
        }
        if let Some(r) = c.remote() {
            let name = r.name;
            if !self.conns.values().any(|o| o.remote().is_some_and(|r| r.name == name)) {
                self.fastdp.disconnected(now, name);
                self.push_fastdp_state();
            }
            // Refreshes forwarding, the fast-path set included.
            self.local_connections_changed(now);
        }
        self.dirty = true;
    }

    /// Paths or kernel entries changed: the data path gets the new
    /// fast-path set at once (it only grows here), the kernel task the new
    /// entries; peers leaving the set follow once the kernel confirms.
    fn fastdp_changed(&mut self) {
        self.push_fastdp_state();
        self.refresh_forwarding();
        self.dirty = true;
    }

    /// The kernel task's half of [`Core::fastdp_changed`].
    fn push_fastdp_state(&mut self) {
        if self.fastdp.enabled() {
            let desired = self.fastdp.desired();
            self.desired_tx.send_replace(Some(Arc::new(desired)));
        }
    }

    /// Our pod MACs to every fast-path-capable peer (or just `only`).
    fn send_local_macs(&mut self, only: Option<u64>) {
        let Some(macs) = self.fastdp.local_macs().filter(|_| self.fastdp.enabled()).map(<[_]>::to_vec) else {
            return;
        };
        for (id, c) in self.conns.iter_mut() {
            let capable = c.remote().is_some_and(|r| r.features & weft_proto::control::FEATURE_FASTDP != 0);
            if capable && only.is_none_or(|o| o == *id) {
                if let Err(err) = c.proto.send(Message::LocalMacs(macs.clone())) {
                    tracing::error!("too many local MACs to send on connection {id}: {err}");
                }
            }
        }
    }

    /// Drains every connection's events (which may queue messages on
    /// others), then flushes their bytes and sleeve heartbeats.
    fn pump(&mut self, now: Instant) {
        for _ in 0..8 {
            let mut any = false;
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                while let Some(ev) = self.conns.get_mut(&id).and_then(|c| c.proto.poll_event()) {
                    any = true;
                    self.handle_event(id, ev, now);
                }
            }
            if !any {
                break;
            }
        }
        let mut out = Vec::new();
        let metrics = &self.shared.metrics;
        for c in self.conns.values_mut() {
            if c.proto.poll_transmit(&mut out) {
                let _ = c.writer.send(std::mem::take(&mut out));
            }
            if c.proto.poll_sleeve_heartbeat(now) {
                if let Some(addr) = c.udp_addr {
                    send_sleeve_heartbeat(&self.udp, addr, self.local.name, c, now, metrics);
                }
            }
            let (tx, rx) = c.proto.rekeys();
            let (seen_tx, seen_rx) = std::mem::replace(&mut c.rekeys_counted, (tx, rx));
            metrics.rekeys_tx.fetch_add(tx - seen_tx, std::sync::atomic::Ordering::Relaxed);
            metrics.rekeys_rx.fetch_add(rx - seen_rx, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn handle_event(&mut self, id: u64, ev: Event, now: Instant) {
        match ev {
            Event::HandshakeComplete(remote) => self.handshake_complete(id, remote, now),
            Event::Established | Event::Unestablished => {
                if let Some(c) = self.conns.get(&id) {
                    if let Some(r) = c.remote() {
                        tracing::info!(
                            "connection {} {}({}) {}",
                            c.addr,
                            r.name,
                            r.nickname,
                            if c.proto.state() == State::Established { "established" } else { "lost its sleeve" }
                        );
                    }
                }
                self.local_connections_changed(now);
            }
            Event::Message(Message::Gossip(update)) => match self.topology.apply_update(now, &update) {
                Ok(changed) => {
                    if !changed.is_empty() {
                        // The sender already has what it sent us, except when
                        // it told us about our own stale record: our bumped
                        // record must reach it too (a restarted leaf).
                        let except = (!changed.contains(&self.local.name)).then_some(id);
                        self.gossip(&changed, except);
                        self.topology_changed(now);
                    }
                }
                Err(err) => {
                    tracing::warn!("bad gossip on connection {id}: {err}");
                    self.shared.metrics.conn_failure(ConnFailure::Protocol);
                }
            },
            Event::Message(Message::Ipam(update)) => match self.ipam.handle_gossip(now, &update) {
                Ok(_) => self.dirty = true,
                Err(err) => {
                    tracing::warn!("bad IPAM gossip on connection {id}: {err:#}");
                    self.shared.metrics.conn_failure(ConnFailure::Protocol);
                }
            },
            Event::Message(Message::LocalMacs(macs)) => {
                let Some(name) = self.conns.get(&id).and_then(|c| c.remote()).map(|r| r.name) else { return };
                if self.fastdp.set_peer_macs(name, macs) {
                    self.fastdp_changed();
                }
            }
            Event::Message(other) => tracing::debug!("ignoring message {other:?} on connection {id}"),
        }
    }

    fn handshake_complete(&mut self, id: u64, remote: RemotePeer, now: Instant) {
        // Duplicate connection to the same peer: both ends keep the same one.
        let dup = self.conns.iter().filter(|(other, _)| **other != id).find_map(|(other, c)| {
            let r = c.remote().filter(|r| r.name == remote.name)?;
            Some((*other, Candidate { outbound: c.proto.outbound(), remote_uid: r.uid }))
        });
        let Some(c) = self.conns.get(&id) else { return };
        let new = Candidate { outbound: c.proto.outbound(), remote_uid: remote.uid };
        if let Origin::Target(key) = &c.origin {
            if let Some(t) = self.targets.get_mut(key) {
                t.peer = Some(remote.name);
                t.last_error = None;
                t.backoff.reset();
            }
        }
        if let Some((other, existing)) = dup {
            let keep_new = keep_new_connection(self.local.name, remote.name, existing, new);
            let loser = if keep_new { other } else { id };
            // A target whose dial lost stays quiet while the peer is
            // connected; it is not an error.
            if let Some(Origin::Target(key)) = self.conns.get(&loser).map(|c| c.origin.clone()) {
                if let Some(t) = self.targets.get_mut(&key) {
                    t.conn = None;
                    t.next_attempt = Some(now + Duration::from_secs(1));
                }
            }
            self.shared.metrics.conn_failure(ConnFailure::Duplicate);
            if let Some(c) = self.conns.remove(&loser) {
                c.reader.abort();
                tracing::debug!("closing duplicate connection {} to {}", c.addr, remote.name);
            }
            if loser == id {
                return;
            }
        }
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.udp_addr = Some(SocketAddr::new(c.addr.ip(), remote.udp_port));
        c.session = c.proto.take_sleeve_keys().map(|keys| Arc::new(crate::sleeve_session::SleeveSession::new(keys)));
        self.refused.remove(&c.addr.ip());
        tracing::info!("connected to {}({}) at {}", remote.name, remote.nickname, c.addr);
        let mut all = Vec::new();
        self.topology.encode_all(&mut all);
        if let Err(err) = c.proto.send(Message::Gossip(all)) {
            tracing::error!("topology too large to send to {}: {err}", remote.name);
        }
        if let Err(err) = c.proto.send(Message::Ipam(self.ipam.encode_gossip())) {
            tracing::error!("IPAM state too large to send to {}: {err}", remote.name);
        }
        let (local_conn_id, ip) = (c.proto.conn_id(), c.addr.ip());
        let capable = remote.features & weft_proto::control::FEATURE_FASTDP != 0;
        if self.fastdp.connected(now, remote.name, remote.conn_id, local_conn_id, ip, capable) {
            self.send_local_macs(Some(id));
        }
        self.push_fastdp_state();
        // Refreshes forwarding, the fast-path set included.
        self.local_connections_changed(now);
    }

    fn local_connections_changed(&mut self, now: Instant) {
        let conns: Vec<ConnectionInfo> = self
            .conns
            .values()
            .filter_map(|c| {
                c.remote().map(|r| ConnectionInfo {
                    remote: r.name,
                    address: c.addr.to_string(),
                    outbound: c.proto.outbound(),
                    established: c.proto.state() == State::Established,
                })
            })
            .collect();
        if self.topology.set_local_connections(conns, now) {
            let me = [self.local.name];
            self.gossip(&me, None);
        }
        self.topology_changed(now);
    }

    fn gossip(&mut self, names: &[PeerName], except: Option<u64>) {
        let mut update = Vec::new();
        self.topology.encode_peers(names, &mut update);
        for (id, c) in self.conns.iter_mut() {
            if Some(*id) != except && c.remote().is_some() {
                if let Err(err) = c.proto.send(Message::Gossip(update.clone())) {
                    tracing::error!("gossip update too large for connection {id}: {err}");
                }
            }
        }
    }

    fn topology_changed(&mut self, now: Instant) {
        let known: Vec<PeerName> = self.topology.peers().map(|p| p.name).collect();
        let routes = self.topology.routes();
        let reachable: Vec<PeerName> = known.iter().copied().filter(|p| routes.reachable(*p)).collect();
        self.ipam.set_peers(now, &known, &reachable);
        self.refresh_forwarding();
        self.refresh_discovery(now);
        self.dirty = true;
    }

    fn refresh_forwarding(&mut self) {
        let routes = self.topology.routes();
        let mut fwd = Forwarding { encrypted: self.local.encryption.is_some(), ..Forwarding::default() };
        for c in self.conns.values() {
            let (Some(r), Some(addr)) = (c.remote(), c.udp_addr) else { continue };
            if let Some(session) = &c.session {
                fwd.sessions.insert(r.name, session.clone());
            }
            if c.proto.state() == State::Established {
                fwd.neighbours.insert(r.name, Neighbour::new(addr, c.path_mtu, c.session.clone()));
            }
        }
        for (dest, via) in routes.unicast() {
            if fwd.neighbours.contains_key(&via) {
                fwd.next_hop.insert(dest, via);
            }
        }
        for p in self.topology.peers() {
            let hops: Vec<PeerName> =
                routes.broadcast_next_hops(p.name).iter().copied().filter(|h| fwd.neighbours.contains_key(h)).collect();
            if !hops.is_empty() {
                fwd.broadcast.insert(p.name, hops);
            }
        }
        fwd.fastdp = self.fastdp.fastdp_set();
        fwd.fastdp_macs = self.fastdp.confirmed_macs();
        fwd.local_flood = if fwd.fastdp.is_empty() {
            // No fast path: our broadcasts follow our broadcast tree.
            fwd.broadcast.get(&self.local.name).into_iter().flatten().map(|&h| (h, PeerName::BROADCAST)).collect()
        } else {
            // The kernel floods to the fast-path peers; the sleeve must
            // reach every other peer exactly once, and a tree through a
            // fast-path peer would deliver there a second time. So: one
            // copy addressed to each, relayed without local delivery.
            let mut flood: Vec<(PeerName, PeerName)> = fwd
                .next_hop
                .iter()
                .filter(|(dest, _)| !fwd.fastdp.contains(dest))
                .map(|(&dest, &hop)| (hop, dest))
                .collect();
            flood.sort();
            flood
        };
        // MACs of peers we can no longer reach would only black-hole.
        {
            let mut macs = self.shared.lock_macs();
            for p in self.topology.peers() {
                if p.name != self.local.name && !routes.reachable(p.name) {
                    macs.forget_peer(p.name);
                }
            }
        }
        *self.shared.forwarding.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fwd);
    }

    /// Peer discovery: dial peers we learn about through gossip but have
    /// no connection to, at the addresses other peers reach them on.
    fn refresh_discovery(&mut self, now: Instant) {
        if !self.cfg.discovery {
            return;
        }
        let connected: Vec<PeerName> = self.conns.values().filter_map(|c| c.remote().map(|r| r.name)).collect();
        let mut wanted: HashMap<String, PeerName> = HashMap::new();
        for p in self.topology.peers() {
            for c in &p.connections {
                if c.remote == self.local.name || connected.contains(&c.remote) {
                    continue;
                }
                let Ok(addr) = c.address.parse::<SocketAddr>() else { continue };
                // An inbound connection's address has the dialer's ephemeral
                // port; the peer listens on the cluster's port.
                let addr = if c.outbound { addr } else { SocketAddr::new(addr.ip(), self.cfg.port) };
                wanted.insert(addr.to_string(), c.remote);
            }
        }
        for (key, peer) in &wanted {
            let t = self.targets.entry(key.clone()).or_insert_with(|| Target::new(false, now));
            if t.peer.is_none() {
                t.peer = Some(*peer);
            }
        }
        // Learned targets go when nobody mentions them and they're idle.
        self.targets.retain(|key, t| t.user || t.conn.is_some() || t.dialing || wanted.contains_key(key));
        self.dirty = true;
    }

    fn publish(&mut self, now: Instant, force: bool) {
        if !self.dirty && !force {
            return;
        }
        if !force && self.last_publish.is_some_and(|p| now.duration_since(p) < PUBLISH_INTERVAL) {
            return;
        }
        let snap = self.snapshot(now);
        *self.shared.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.last_publish = Some(now);
        self.dirty = false;
    }

    fn nickname_of(&self, name: PeerName) -> String {
        self.topology.peer(&name).map(|p| p.nickname.clone()).unwrap_or_default()
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let routes = self.topology.routes();
        let peers = self
            .topology
            .peers()
            .map(|p| PeerView {
                name: p.name,
                nickname: p.nickname.clone(),
                uid: p.uid,
                version: p.version,
                connections: p
                    .connections
                    .iter()
                    .map(|c| PeerConnView {
                        name: c.remote,
                        nickname: self.nickname_of(c.remote),
                        address: c.address.clone(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let via: HashMap<PeerName, PeerName> = routes.unicast().collect();
        let mut connections: Vec<ConnView> = self
            .conns
            .values()
            .map(|c| {
                let established = c.proto.state() == State::Established;
                let path = c.remote().and_then(|r| self.fastdp.path(r.name));
                // Without a confirmed sleeve our frames to the peer take a
                // detour through another one: say so rather than a reason
                // about a direct link that carries nothing.
                let relayed =
                    !established && c.remote().is_some_and(|r| via.get(&r.name).is_some_and(|hop| *hop != r.name));
                let (overlay, reason) = match path {
                    Some(Path::FastDp) => ("fastdp", None),
                    _ if relayed => ("sleeve", Some(weft_proto::fastdp::SleeveReason::Relay.to_string())),
                    Some(Path::Sleeve(why)) => ("sleeve", Some(why.to_string())),
                    None => ("sleeve", None),
                };
                let (state, info) = match c.remote() {
                    Some(r) => (
                        if established { "established" } else { "pending" },
                        format!(
                            "{overlay} {} {}({}) mtu={}{}{}",
                            if c.proto.encrypted() { "encrypted" } else { "unencrypted" },
                            r.name,
                            r.nickname,
                            self.pod_mtu,
                            reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
                            if established { "" } else { " (confirming UDP path)" }
                        ),
                    ),
                    None => ("pending", "handshaking".to_string()),
                };
                ConnView {
                    address: c.addr.to_string(),
                    outbound: c.proto.outbound(),
                    state,
                    info,
                    overlay,
                    encrypted: c.remote().map(|_| c.proto.encrypted()),
                    reason,
                    mtu: Some(self.pod_mtu),
                }
            })
            .collect();
        for (key, t) in &self.targets {
            if t.conn.is_some()
                || t.peer.is_some_and(|p| self.conns.values().any(|c| c.remote().is_some_and(|r| r.name == p)))
            {
                continue;
            }
            let (state, info) = if t.is_self {
                ("failed", "cannot connect to ourself".to_string())
            } else if t.dialing {
                ("connecting", String::new())
            } else {
                let retry = t
                    .next_attempt
                    .map(|at| format!(", retry in {}s", at.saturating_duration_since(now).as_secs()))
                    .unwrap_or_default();
                ("retrying", format!("{}{retry}", t.last_error.clone().unwrap_or_default()))
            };
            connections.push(ConnView {
                address: key.clone(),
                outbound: true,
                state,
                info,
                overlay: "",
                encrypted: None,
                reason: None,
                mtu: None,
            });
        }
        for r in self.refused.values() {
            connections.push(ConnView {
                address: r.address.to_string(),
                outbound: false,
                state: "failed",
                info: format!(
                    "{}{}, {}s ago",
                    r.peer.as_ref().map(|p| format!("{p}: ")).unwrap_or_default(),
                    r.reason,
                    now.saturating_duration_since(r.at).as_secs()
                ),
                overlay: "",
                encrypted: None,
                reason: None,
                mtu: None,
            });
        }
        let macs = self
            .shared
            .lock_macs()
            .iter()
            .map(|(mac, owner, last_seen)| {
                let peer = match owner {
                    weft_proto::mac_table::Owner::Peer(p) => p,
                    weft_proto::mac_table::Owner::Local => self.local.name,
                };
                MacView {
                    mac: mac.to_string(),
                    peer,
                    nickname: self.nickname_of(peer),
                    age_secs: now.saturating_duration_since(last_seen).as_secs(),
                }
            })
            .collect();
        let nick = |p: PeerName| self.nickname_of(p);
        let (used, free, unreachable) = self.ipam.gauges();
        Snapshot {
            ipam_ready: self.ipam.gateway().is_some(),
            ipam_range: self.ipam.range().to_string(),
            ipam_gateway: self.ipam.gateway().map(|g| g.to_string()),
            ipam_text: self.ipam.render_status(nick),
            ipam_report: self.ipam.report(nick),
            ipam_gauges: (used, free, unreachable, self.ipam.conflicts() as u64),
            ready: true,
            name: self.local.name,
            nickname: self.local.nickname.clone(),
            port: self.cfg.port,
            encryption: self.local.encryption.is_some(),
            cipher: self.local.encryption.as_ref().map(|e| e.cipher.to_string()),
            fastdp: self.fastdp.availability().describe(),
            discovery: self.cfg.discovery,
            mtu: self.pod_mtu,
            bridge: self.bridge.clone(),
            peers,
            unicast_routes: routes.unicast().collect(),
            broadcast_routes: self
                .topology
                .peers()
                .map(|p| (p.name, routes.broadcast_next_hops(p.name).to_vec()))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            connections,
            targets: self.targets.iter().filter(|(_, t)| t.user).map(|(k, _)| k.clone()).collect(),
            termination_count: self.terminations,
            macs,
        }
    }
}
