//! The sleeve data path: two threads, one per direction, each working in
//! batches. TAP → UDP reads every frame the bridge hands the TAP port,
//! decides its next hop(s) from the published forwarding table and the MAC
//! table, packs frames per next hop into datagrams and sends the whole
//! batch with one `sendmmsg`. UDP → TAP takes a `recvmmsg` batch, writes
//! frames for this node into the TAP and re-packs frames for others
//! (relay) the same way. Buffers are allocated once per thread.

pub mod sleeve_session;
pub mod tap;
mod udp_batch;

use crate::command::{Heartbeat, SleeveHeartbeat};
use crate::metrics::{Direction, Drop, TrafficBatch};
use crate::shared::Shared;
use sleeve_session::{Sealing, SleeveSession};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;
use tap::Tap;
use udp_batch::MsgBatch;
use weft_proto::ethernet::EthernetFrame;
use weft_proto::mac_table::{Learned, MacTable, Owner};
use weft_proto::sleeve::{self, Datagram, DatagramBuilder};
use weft_proto::PeerName;

/// Frames or datagrams handled per batch.
const BATCH: usize = 64;
/// Large enough for any datagram or frame we can meet (jumbo underlays,
/// GSO-sized TAP reads are not enabled).
const BUF_LEN: usize = 65536;

/// A directly connected peer whose sleeve is confirmed both ways.
#[derive(Debug, Clone)]
pub struct Neighbour {
    pub addr: SocketAddr,
    /// Largest UDP payload that crosses the path unfragmented.
    pub max_datagram: usize,
    /// Largest Ethernet frame that fits in one such datagram.
    pub max_frame: usize,
    /// The link's keys when the cluster is encrypted.
    pub session: Option<Arc<SleeveSession>>,
}

impl Neighbour {
    pub fn new(addr: SocketAddr, path_mtu: u32, session: Option<Arc<SleeveSession>>) -> Self {
        let max_datagram = sleeve::max_datagram_payload(path_mtu as usize);
        let max_frame = match session {
            Some(_) => sleeve::sealed_max_frame_len(max_datagram),
            None => sleeve::max_frame_len(max_datagram),
        };
        Neighbour { addr, max_datagram, max_frame, session }
    }
}

/// What the data path needs to know to move a frame, published by the
/// core as an immutable snapshot after every topology or connection change.
#[derive(Debug, Default)]
pub struct Forwarding {
    pub neighbours: HashMap<PeerName, Neighbour>,
    /// Destination peer → neighbour to send through.
    pub next_hop: HashMap<PeerName, PeerName>,
    /// Broadcast source → neighbours we pass its broadcasts on to.
    pub broadcast: HashMap<PeerName, Vec<PeerName>>,
    /// Peers the kernel's VXLAN device carries (or may carry) pod frames
    /// to: `local_flood` leaves them out, or floods would arrive twice.
    pub fastdp: HashSet<PeerName>,
    /// Pod MACs whose bridge entries (to the VXLAN port) the kernel
    /// confirmed: a unicast frame for one reaches the TAP only as a flood,
    /// which the kernel has carried already.
    pub fastdp_macs: HashSet<weft_proto::ethernet::MacAddr>,
    /// (next hop, destination) copies of a broadcast or unknown-unicast
    /// frame from a local pod; the destination is `BROADCAST` for a tree.
    pub local_flood: Vec<(PeerName, PeerName)>,
    /// With a password: every connected peer's sleeve keys (also before its
    /// sleeve is confirmed: heartbeats are sealed too). Datagrams that are
    /// not sealed, or from a peer without keys, are dropped.
    pub encrypted: bool,
    pub sessions: HashMap<PeerName, Arc<SleeveSession>>,
}

impl Forwarding {
    fn broadcast_hops(&self, source: PeerName) -> &[PeerName] {
        self.broadcast.get(&source).map(Vec::as_slice).unwrap_or(&[])
    }
}

pub fn start(shared: Arc<Shared>, tap: Tap, udp: UdpSocket, local: PeerName) -> anyhow::Result<()> {
    let tap = Arc::new(tap);
    let udp = Arc::new(udp);
    let (t, u, s) = (tap.clone(), udp.clone(), shared.clone());
    std::thread::Builder::new().name("weft-tap-rx".into()).spawn(move || TapToUdp::new(s, local).run(&t, &u))?;
    std::thread::Builder::new()
        .name("weft-udp-rx".into())
        .spawn(move || UdpToTap::new(shared, local).run(&tap, &udp))?;
    Ok(())
}

/// One frame to put in a datagram toward `hop`. `frame` indexes the
/// thread's frame storage so that plans can be reused across batches.
#[derive(Debug, Clone, Copy)]
struct Planned {
    hop: PeerName,
    origin: PeerName,
    dest: PeerName,
    buf: usize,
    start: usize,
    end: usize,
}

/// Packs planned frames into datagrams per next hop and sends them.
#[derive(Debug)]
struct Encapsulator {
    local: PeerName,
    out: Vec<Box<[u8]>>,
    msgs: Vec<(SocketAddr, usize, usize)>,
    batch: MsgBatch,
    traffic: TrafficBatch,
}

impl Encapsulator {
    fn new(local: PeerName) -> Self {
        Encapsulator {
            local,
            out: Vec::new(),
            msgs: Vec::new(),
            batch: MsgBatch::new(BATCH),
            traffic: TrafficBatch::default(),
        }
    }

    /// `plan` is sorted by hop here. Frames too big for their hop's path
    /// are handed to `too_big` instead.
    fn send(
        &mut self,
        fd: RawFd,
        fwd: &Forwarding,
        plan: &mut [Planned],
        frames: &[Box<[u8]>],
        shared: &Shared,
        mut too_big: impl FnMut(&[u8], usize),
    ) {
        if plan.is_empty() {
            return;
        }
        plan.sort_by_key(|p| p.hop);
        // One clock read per batch: it only feeds time-based rekeying.
        let now = Instant::now();
        // At most one datagram per planned frame.
        while self.out.len() < plan.len() {
            self.out.push(vec![0u8; BUF_LEN].into_boxed_slice());
        }
        self.msgs.clear();
        let mut free = self.out.iter_mut().enumerate();
        let mut i = 0;
        while i < plan.len() {
            let hop = plan[i].hop;
            let group = plan[i..].iter().take_while(|p| p.hop == hop).count();
            let entries = &plan[i..i + group];
            i += group;
            let Some(nb) = fwd.neighbours.get(&hop) else {
                shared.metrics.drop(Drop::NoRoute, group as u64);
                continue;
            };
            let (front, back) = match nb.session {
                Some(_) => (sleeve::SEALED_HEADER_LEN, weft_proto::crypto::TAG_LEN),
                None => (0, 0),
            };
            let mut sealing = nb.session.as_ref().map(|s| s.sealing(&shared.metrics));
            let mut builder: Option<(usize, DatagramBuilder<'_>)> = None;
            for p in entries {
                let frame = &frames[p.buf][p.start..p.end];
                if frame.len() > nb.max_frame {
                    too_big(frame, nb.max_frame);
                    continue;
                }
                let fits = builder.as_mut().is_some_and(|(_, b)| b.push_frame(p.origin, p.dest, frame).is_ok());
                if !fits {
                    // Current datagram full (or none yet): send it, open the next.
                    if let Some((idx, full)) = builder.take() {
                        seal_and_queue(&mut self.msgs, self.local, nb, &mut sealing, (idx, full), now, shared);
                    }
                    let Some((idx, buf)) = free.next() else { break };
                    let cap = nb.max_datagram.min(buf.len());
                    let Ok(mut b) = DatagramBuilder::with_margins(&mut buf[..cap], self.local, front, back) else {
                        break;
                    };
                    // Fits: max_frame was derived from max_datagram.
                    let _ = b.push_frame(p.origin, p.dest, frame);
                    builder = Some((idx, b));
                }
                self.traffic.add(hop, Direction::Out, frame.len());
            }
            if let Some((idx, b)) = builder.take() {
                if !b.is_empty() {
                    seal_and_queue(&mut self.msgs, self.local, nb, &mut sealing, (idx, b), now, shared);
                }
            }
        }
        let (sent, err) = self.batch.send(fd, &self.out, &self.msgs);
        if let Some(err) = err {
            let lost = (self.msgs.len() - sent) as u64;
            shared.metrics.drop(Drop::SendFailed, lost);
            tracing::debug!("sendmmsg: {err} ({lost} datagrams lost)");
        }
        shared.metrics.flush(&mut self.traffic);
    }
}

/// Queues a finished datagram (buffer index, builder), sealing it first
/// for an encrypted link.
fn seal_and_queue(
    msgs: &mut Vec<(SocketAddr, usize, usize)>,
    local: PeerName,
    nb: &Neighbour,
    sealing: &mut Option<Sealing<'_>>,
    (idx, builder): (usize, DatagramBuilder<'_>),
    now: Instant,
    shared: &Shared,
) {
    let (buf, plain) = builder.into_parts();
    let len = match sealing {
        None => plain,
        Some(sealing) => match sealing.seal(buf, plain, local, now) {
            Ok(len) => len,
            Err(err) => {
                tracing::warn!("sealing a datagram for {}: {err}", nb.addr);
                shared.metrics.drop(Drop::SendFailed, 1);
                return;
            }
        },
    };
    msgs.push((nb.addr, idx, len));
}

/// Learns one MAC; a move between owners is counted and logged.
fn learn(shared: &Shared, macs: &mut MacTable, now: Instant, mac: weft_proto::ethernet::MacAddr, owner: Owner) {
    if let Learned::Moved { from } = macs.learn(now, mac, owner) {
        shared.metrics.mac_moves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!("MAC {mac} moved from {from} to {owner}");
    }
}

/// Learns MACs for a whole batch under one lock.
fn learn_all(shared: &Shared, now: Instant, learned: &mut Vec<(weft_proto::ethernet::MacAddr, Owner)>) {
    if learned.is_empty() {
        return;
    }
    let mut macs = shared.lock_macs();
    for (mac, owner) in learned.drain(..) {
        learn(shared, &mut macs, now, mac, owner);
    }
}

struct TapToUdp {
    shared: Arc<Shared>,
    local: PeerName,
    frames: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    plan: Vec<Planned>,
    encap: Encapsulator,
    icmp: Box<[u8]>,
}

impl TapToUdp {
    fn new(shared: Arc<Shared>, local: PeerName) -> Self {
        TapToUdp {
            shared,
            local,
            frames: (0..BATCH).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            lens: Vec::with_capacity(BATCH),
            plan: Vec::with_capacity(BATCH * 4),
            encap: Encapsulator::new(local),
            icmp: vec![0u8; weft_proto::icmp::MAX_REPLY_LEN].into_boxed_slice(),
        }
    }

    fn run(mut self, tap: &Tap, udp: &UdpSocket) {
        loop {
            if let Err(err) = self.read_batch(tap) {
                tracing::error!("reading the TAP device failed, data path stopped: {err}");
                return;
            }
            if self.lens.is_empty() {
                continue;
            }
            let fwd = self.shared.forwarding();
            self.plan_batch(&fwd);
            let (shared, tap_ref) = (&self.shared, tap);
            let icmp = &mut self.icmp;
            self.encap.send(udp.as_raw_fd(), &fwd, &mut self.plan, &self.frames, shared, |frame, max| {
                reply_too_big(shared, tap_ref, icmp, frame, max)
            });
        }
    }

    /// Blocks (bounded, so the thread stays responsive) until the TAP has a
    /// frame, then drains up to a batch without blocking.
    fn read_batch(&mut self, tap: &Tap) -> std::io::Result<()> {
        self.lens.clear();
        let mut pfd = libc::pollfd { fd: tap.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if r <= 0 {
            return Ok(());
        }
        while self.lens.len() < BATCH {
            let i = self.lens.len();
            match tap.read(&mut self.frames[i]) {
                Ok(n) => self.lens.push(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One pass and one MAC-table lock per batch: learn each frame's
    /// source, look up its destination, plan its next hop(s).
    fn plan_batch(&mut self, fwd: &Forwarding) {
        self.plan.clear();
        let now = Instant::now();
        let mut macs = self.shared.lock_macs();
        for (i, &len) in self.lens.iter().enumerate() {
            let Ok(eth) = EthernetFrame::new_checked(&self.frames[i][..len]) else {
                self.shared.metrics.drop(Drop::MalformedFrame, 1);
                continue;
            };
            learn(&self.shared, &mut macs, now, eth.src(), Owner::Local);
            let dst = eth.dst();
            let owner = if dst.is_unicast() { macs.lookup(now, dst) } else { None };
            let mut plan = |hop: PeerName, dest: PeerName| {
                self.plan.push(Planned { hop, origin: self.local, dest, buf: i, start: 0, end: len })
            };
            match owner {
                // The bridge flooded it (it sends a frame for a confirmed
                // fast-path MAC to the VXLAN port only), so the kernel
                // already carried a copy to that peer.
                Some(Owner::Peer(_)) if fwd.fastdp_macs.contains(&dst) => self.shared.metrics.drop(Drop::OnFastPath, 1),
                // A fast-path peer's MAC without a confirmed bridge entry
                // (just learned, or the switch in progress): the bridge
                // forwards it to us as it learned it, so the kernel did not
                // carry it and dropping here would lose it. Sleeve it.
                Some(Owner::Peer(dest)) => match fwd.next_hop.get(&dest) {
                    Some(&hop) => plan(hop, dest),
                    None => self.shared.metrics.drop(Drop::NoRoute, 1),
                },
                // The bridge floods to us what it doesn't know; a local
                // destination is the bridge's to deliver.
                Some(Owner::Local) => self.shared.metrics.drop(Drop::LocalDestination, 1),
                None => {
                    for &(hop, dest) in &fwd.local_flood {
                        plan(hop, dest);
                    }
                }
            }
        }
    }
}

/// A frame too big for its path: tell the sender (ICMP "fragmentation
/// needed" / "packet too big" into the TAP) rather than black-holing it.
fn reply_too_big(shared: &Shared, tap: &Tap, scratch: &mut [u8], frame: &[u8], max_frame: usize) {
    shared.metrics.drop(Drop::FrameTooBig, 1);
    if let Ok(n) = weft_proto::icmp::too_big_reply(frame, max_frame, scratch) {
        if tap.write(&scratch[..n]).is_err() {
            shared.metrics.drop(Drop::TapWriteFailed, 1);
        }
    }
}

/// The plain datagram in a received buffer, opening it first if it is
/// sealed; `None` (counted) when it must be dropped. Also returns the
/// buffer's start address, for frame offsets into it.
fn unseal<'a>(shared: &Shared, fwd: &Forwarding, buf: &'a mut [u8]) -> Option<(&'a [u8], usize)> {
    let base = buf.as_ptr() as usize;
    let header = match sleeve::sealed_header(buf) {
        Ok(header) => header,
        Err(_) => {
            shared.metrics.drop(Drop::MalformedDatagram, 1);
            return None;
        }
    };
    match header {
        None if fwd.encrypted => {
            shared.metrics.drop(Drop::Unencrypted, 1);
            None
        }
        None => Some((buf, base)),
        Some(header) => {
            let Some(session) = fwd.sessions.get(&header.sender) else {
                shared.metrics.drop(Drop::NoSession, 1);
                return None;
            };
            match session.open(buf, &shared.metrics) {
                Ok(plain) => Some((plain, base)),
                Err(err) => {
                    tracing::trace!("sealed datagram from {}: {err}", header.sender);
                    shared.metrics.unseal_failure(&err);
                    None
                }
            }
        }
    }
}

struct UdpToTap {
    shared: Arc<Shared>,
    local: PeerName,
    bufs: Vec<Box<[u8]>>,
    recvd: Vec<(usize, SocketAddr)>,
    batch: MsgBatch,
    plan: Vec<Planned>,
    learned: Vec<(weft_proto::ethernet::MacAddr, Owner)>,
    encap: Encapsulator,
    traffic: TrafficBatch,
}

impl UdpToTap {
    fn new(shared: Arc<Shared>, local: PeerName) -> Self {
        UdpToTap {
            shared,
            local,
            bufs: (0..BATCH).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            recvd: Vec::with_capacity(BATCH),
            batch: MsgBatch::new(BATCH),
            plan: Vec::with_capacity(BATCH * 4),
            learned: Vec::with_capacity(BATCH),
            encap: Encapsulator::new(local),
            traffic: TrafficBatch::default(),
        }
    }

    fn run(mut self, tap: &Tap, udp: &UdpSocket) {
        loop {
            match self.batch.recv(udp.as_raw_fd(), &mut self.bufs, &mut self.recvd) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // ICMP errors from earlier sends surface here
                    // (ECONNREFUSED etc.): not fatal for a UDP socket.
                    tracing::debug!("recvmmsg: {e}");
                    continue;
                }
            }
            let fwd = self.shared.forwarding();
            self.handle_batch(&fwd, tap);
            self.encap.send(
                udp.as_raw_fd(),
                &fwd,
                &mut self.plan,
                &self.bufs,
                &self.shared,
                // Relays are re-packed one frame per record: a frame that
                // fitted the previous hop may not fit the next one.
                |_, _| self.shared.metrics.drop(Drop::FrameTooBig, 1),
            );
            self.shared.metrics.flush(&mut self.traffic);
        }
    }

    fn handle_batch(&mut self, fwd: &Forwarding, tap: &Tap) {
        self.plan.clear();
        let now = Instant::now();
        for (bi, &(len, from)) in self.recvd.iter().enumerate() {
            let Some((data, base)) = unseal(&self.shared, fwd, &mut self.bufs[bi][..len]) else { continue };
            let (sender, frames) = match sleeve::parse(data) {
                Ok(Datagram::Heartbeat { sender, conn_id }) => {
                    let hb = Heartbeat::Sleeve(SleeveHeartbeat { sender, conn_id, from });
                    if self.shared.heartbeats.try_send(hb).is_err() {
                        self.shared.metrics.drop(Drop::HeartbeatQueueFull, 1);
                    }
                    continue;
                }
                Ok(Datagram::Frames { sender, frames }) => (sender, frames),
                Err(err) => {
                    tracing::trace!("malformed datagram from {from}: {err}");
                    self.shared.metrics.drop(Drop::MalformedDatagram, 1);
                    continue;
                }
            };
            // Only neighbours with a confirmed sleeve, from their address.
            if fwd.neighbours.get(&sender).is_none_or(|n| n.addr.ip() != from.ip()) {
                self.shared.metrics.drop(Drop::UnknownPeer, 1);
                continue;
            }
            for f in frames {
                let f = match f {
                    Ok(f) => f,
                    Err(_) => {
                        self.shared.metrics.drop(Drop::MalformedDatagram, 1);
                        break;
                    }
                };
                let Ok(eth) = EthernetFrame::new_checked(f.frame) else {
                    self.shared.metrics.drop(Drop::MalformedFrame, 1);
                    continue;
                };
                let start = f.frame.as_ptr() as usize - base;
                let end = start + f.frame.len();
                let broadcast = f.dest.is_broadcast();
                if f.origin == self.local {
                    // Our own frame came back: a routing disagreement during
                    // convergence. Never deliver it twice.
                    continue;
                }
                if broadcast || f.dest == self.local {
                    self.traffic.add(sender, Direction::In, f.frame.len());
                    self.learned.push((eth.src(), Owner::Peer(f.origin)));
                    if tap.write(f.frame).is_err() {
                        self.shared.metrics.drop(Drop::TapWriteFailed, 1);
                    }
                }
                if broadcast {
                    for &hop in fwd.broadcast_hops(f.origin) {
                        if hop != sender {
                            self.plan.push(Planned { hop, origin: f.origin, dest: f.dest, buf: bi, start, end });
                        }
                    }
                } else if f.dest != self.local {
                    match fwd.next_hop.get(&f.dest) {
                        Some(&hop) if hop != sender => {
                            self.plan.push(Planned { hop, origin: f.origin, dest: f.dest, buf: bi, start, end })
                        }
                        _ => self.shared.metrics.drop(Drop::NoRoute, 1),
                    }
                }
            }
        }
        learn_all(&self.shared, now, &mut self.learned);
    }
}
