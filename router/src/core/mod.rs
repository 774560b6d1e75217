//! The control core: one task that owns every protocol state machine
//! (control connections, topology, dial targets) and drives them with
//! bytes and time from the I/O tasks, quinn-style. The data path reads the
//! forwarding table it publishes; the HTTP API reads its status snapshot.

mod conn;
mod readiness;
mod retired_sessions;
mod snapshot;
mod startup;
mod target;
mod targets_from_kube;

use conn::{classify, send_sleeve_heartbeat, Conn, Origin, Refused, REFUSED_SHOWN_FOR};
use target::Target;

pub use startup::run;

use crate::command::{Command, Heartbeat, SleeveHeartbeat};
use crate::config::Config;
use crate::control::{self, canonical_target};
use crate::datapath::sleeve_session::SleeveSession;
use crate::datapath::{Forwarding, Neighbour};
use crate::ipam::ReclaimOutcome;
use crate::metrics::ConnFailure;
use crate::shared::Shared;
use anyhow::Result;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{Receiver, UnboundedReceiver, UnboundedSender};
use weft_proto::control::{
    keep_new_connection, Candidate, Connection, ConnectionError, Event, LocalPeer, Message, RemotePeer, State, Timers,
};
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
    /// The sleeve's offloads, as `weft status` shows them.
    sleeve: String,
    /// Keys of duplicate connections just closed (see the module).
    retired_sessions: retired_sessions::RetiredSessions,
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
    /// What the Kubernetes task last told us; None without the API.
    kube: Option<crate::kube::DiscoveryStatus>,
    /// What the NAT task last told us.
    nat: crate::nat::NatState,
    /// This node's IPAM ranges, for the NAT rules.
    nat_tx: tokio::sync::watch::Sender<crate::nat::NatInput>,
    /// Whether the router is ready (for the Kubernetes task's Node condition
    /// and the conflist).
    ready_tx: tokio::sync::watch::Sender<bool>,
}

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
        consider(self.retired_sessions.poll_timeout());
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
            Command::Kube(crate::kube::KubeEvent::Nodes(nodes)) => {
                self.kube_nodes(nodes, now);
                return true;
            }
            Command::Kube(crate::kube::KubeEvent::Status(status)) => {
                if let Some(known) = &mut self.kube {
                    *known = status;
                    self.dirty = true;
                }
            }
            Command::Nat(state) => {
                self.nat = state;
                return true;
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
            Command::Reachable(reply) => {
                let routes = self.topology.routes();
                let reachable = self.topology.peers().map(|p| p.name).filter(|p| routes.reachable(*p)).collect();
                let _ = reply.send(reachable);
            }
            Command::Reclaim { peer, reply } => {
                let _ = reply.send(self.retire(peer, now));
                return true;
            }
            // Handled by the run loop before it gets here.
            Command::PathMtu(addr) => self.recheck_path_mtu(addr),
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
        match self.retire(name, now) {
            ReclaimOutcome::Reachable if self.is_connected(name) => {
                Err(format!("{name} is connected to us: stop its router before removing it"))
            }
            outcome @ (ReclaimOutcome::Removed { .. } | ReclaimOutcome::AlreadyRemoved) => Ok(outcome.describe(name)),
            outcome => Err(outcome.describe(name)),
        }
    }

    /// `rmpeer` for the CLI and the Kubernetes reclaimer: only for a peer
    /// that is neither us nor connected to us.
    fn retire(&mut self, name: PeerName, now: Instant) -> ReclaimOutcome {
        if name == self.local.name {
            return ReclaimOutcome::Refused("refusing to remove ourselves".to_string());
        }
        if self.is_connected(name) {
            return ReclaimOutcome::Reachable;
        }
        self.ipam.retire(now, name)
    }

    fn is_connected(&self, name: PeerName) -> bool {
        self.conns.values().any(|c| c.remote().is_some_and(|r| r.name == name))
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
            // Our share may have changed: the NAT rules follow it.
            let local = self.ipam.owned_ranges();
            self.nat_tx.send_if_modified(|input| std::mem::replace(&mut input.local, local.clone()) != local);
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
        if self.retired_sessions.prune(now) {
            self.refresh_forwarding();
        }
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
        let proto = Connection::new(
            self.local.clone(),
            self.timers.clone(),
            conn_id,
            outbound,
            now,
            rand::random::<[u8; 32]>(),
        );
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
            if let Some(mut c) = self.conns.remove(&loser) {
                c.reader.abort();
                tracing::debug!("closing duplicate connection {} to {}", c.addr, remote.name);
                // The peer may have sealed datagrams with its keys already.
                let keys = c.proto.take_sleeve_keys().map(|k| Arc::new(SleeveSession::new(k)));
                if let Some(session) = c.session.take().or(keys) {
                    self.retired_sessions.retire(remote.name, session, now);
                    self.refresh_forwarding();
                }
            }
            if loser == id {
                return;
            }
        }
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.udp_addr = Some(SocketAddr::new(c.addr.ip(), remote.udp_port));
        c.session = c.proto.take_sleeve_keys().map(|keys| Arc::new(SleeveSession::new(keys)));
        self.refused.remove(&c.addr.ip());
        let cipher = c.proto.cipher().map(|cipher| format!(", encrypted with {cipher}")).unwrap_or_default();
        tracing::info!("connected to {}({}) at {}{cipher}", remote.name, remote.nickname, c.addr);
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
        fwd.retired = self.retired_sessions.by_peer();
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
        self.shared.publish_forwarding(fwd);
    }

    /// Peer discovery: dial peers we learn about through gossip but have
    /// no connection to, at the addresses other peers reach them on.
    fn refresh_discovery(&mut self, now: Instant) {
        let connected: Vec<PeerName> = self.conns.values().filter_map(|c| c.remote().map(|r| r.name)).collect();
        let mut wanted: HashMap<String, PeerName> = HashMap::new();
        for p in self.topology.peers().filter(|_| self.cfg.discovery) {
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
        self.targets.retain(|key, t| {
            t.user || t.kube_node.is_some() || t.conn.is_some() || t.dialing || wanted.contains_key(key)
        });
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
        self.readiness_changed(snap.not_ready.is_empty());
        self.shared.publish_snapshot(snap);
        self.last_publish = Some(now);
        self.dirty = false;
    }
}
