//! The sleeve data path: a worker thread (`worker`) serving both
//! directions in batches. TAP → UDP (`tap_to_udp`) reads what the bridge hands the TAP
//! port — with offloads on, whole 64 KB TCP/UDP super-frames behind a
//! virtio header — decides each one's next hop(s) from the published
//! forwarding table and the MAC table, and packs it per next hop into
//! datagrams (`encap`: cut into MTU-sized segments, sealed in place, runs
//! of equal-size datagrams sent as one UDP GSO message). UDP → TAP
//! (`udp_to_tap`) takes a `recvmmsg` batch (UDP GRO: runs arrive in one
//! buffer), merges consecutive segments of a flow back into super-frames
//! for the TAP, and re-packs frames for others (relay) the same way.
//! Buffers are allocated once per thread.

mod encap;
pub mod sleeve_session;
mod spin_budget;
pub mod tap;
mod tap_to_udp;
mod udp_batch;
mod udp_to_tap;
mod worker;

use crate::metrics::Drop;
use crate::shared::Shared;
use sleeve_session::SleeveSession;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;
use tap::{Offloads, Tap};
use weft_proto::mac_table::{Learned, MacTable, Owner};
use weft_proto::offload::VNET_HDR_LEN;
use weft_proto::sleeve;
use weft_proto::PeerName;

/// Frames or messages handled per batch.
const BATCH: usize = 64;
/// Large enough for any datagram or GRO message (64 KB of datagrams), and
/// for any TAP read: a 64 KB super-frame, its Ethernet header and VLAN
/// tags, behind the virtio header (a shorter buffer truncates silently).
const BUF_LEN: usize = 65536 + 256;

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
    /// Keys of a peer's duplicate connections closed a moment ago, tried
    /// when its live connection's fail (see `core::retired_sessions`).
    pub retired: HashMap<PeerName, Vec<Arc<SleeveSession>>>,
}

impl Forwarding {
    fn broadcast_hops(&self, source: PeerName) -> &[PeerName] {
        self.broadcast.get(&source).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// One worker's devices: a queue of the TAP, the socket it receives on
/// (one of a `SO_REUSEPORT` group on the sleeve port) and the one it sends
/// from.
#[derive(Debug)]
pub struct Queue {
    pub tap: Tap,
    pub recv: UdpSocket,
    /// Worker 0 sends from the sleeve port itself; the others from a port
    /// of their own, so that a peer's kernel spreads what they send over
    /// its own workers (it picks the socket by the datagram's addresses
    /// and ports), while each flow stays with one worker on both ends.
    pub send: UdpSocket,
}

/// The sleeve's devices and what the kernel lets them offload.
#[derive(Debug)]
pub struct SleeveIo {
    pub queues: Vec<Queue>,
    /// The TAP reads and writes a virtio header before every frame.
    pub vnet: bool,
    pub offloads: Offloads,
    /// UDP GSO on send, GRO on receive.
    pub gso: bool,
    pub gro: bool,
}

impl SleeveIo {
    /// Opens the TAP `name` with one queue per socket of `sockets` (the
    /// sleeve port's `SO_REUSEPORT` group, the core's own first), with
    /// offloads unless `offload` is false (or the kernel has none), and
    /// sets up the sockets for GSO/GRO likewise.
    pub fn open(name: &str, offload: bool, sockets: Vec<UdpSocket>) -> std::io::Result<SleeveIo> {
        let multi_queue = sockets.len() > 1;
        let first = Tap::open(name, offload, multi_queue)?;
        let offloads = match offload {
            false => None,
            true => match first.set_offloads(true) {
                Ok(offloads) => Some(offloads),
                Err(err) => {
                    tracing::warn!("TAP offloads unavailable ({err}): frames one by one");
                    None
                }
            },
        };
        let vnet = offloads.is_some();
        let mut taps = vec![if vnet || !offload {
            first
        } else {
            drop(first);
            Tap::open(name, false, multi_queue)?
        }];
        while taps.len() < sockets.len() {
            let tap = Tap::open(name, vnet, true)?;
            if vnet {
                // The mask is the device's, but header size and byte order
                // are set per queue.
                tap.set_offloads(true)?;
            }
            taps.push(tap);
        }
        let fd = sockets[0].as_raw_fd();
        let gso = offload && udp_batch::supports_gso(fd);
        let mut gro = offload;
        let mut queues = Vec::with_capacity(taps.len());
        for (k, (tap, recv)) in taps.into_iter().zip(sockets).enumerate() {
            tap.set_nonblocking(true)?;
            if offload {
                gro &= udp_batch::enable_gro(recv.as_raw_fd());
            }
            let send = match k {
                0 => recv.try_clone()?,
                _ => UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?,
            };
            queues.push(Queue { tap, recv, send });
        }
        Ok(SleeveIo { queues, vnet, offloads: offloads.unwrap_or_default(), gso, gro })
    }

    /// The TAP (its first queue), to configure the device.
    pub fn tap(&self) -> &Tap {
        &self.queues[0].tap
    }

    /// `weft status`'s Sleeve line.
    pub fn describe(&self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        let tap = match self.vnet {
            true => format!("TAP offloads {}", self.offloads.describe()),
            false => "TAP offloads off".to_string(),
        };
        let workers = match self.queues.len() {
            1 => "1 worker".to_string(),
            n => format!("{n} workers"),
        };
        format!("{tap}; UDP GSO {}, GRO {}; {workers}", on(self.gso), on(self.gro))
    }
}

/// Starts the data path: one worker thread per queue.
pub fn start(shared: Arc<Shared>, io: SleeveIo, local: PeerName, spin: std::time::Duration) -> anyhow::Result<()> {
    let SleeveIo { queues, vnet, offloads, gso, .. } = io;
    // UDP coalescing needs the TAP to take UDP GSO writes (USO).
    let merge = vnet.then_some(offloads.uso);
    for (k, queue) in queues.into_iter().enumerate() {
        let worker = worker::Worker {
            to_udp: tap_to_udp::TapToUdp::new(shared.clone(), local, vnet, gso),
            to_tap: udp_to_tap::UdpToTap::new(shared.clone(), local, merge, gso),
            spin,
        };
        std::thread::Builder::new().name(format!("weft-sleeve-{k}")).spawn(move || worker.run(queue))?;
    }
    Ok(())
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

/// A frame too big for its path: tell the sender (ICMP "fragmentation
/// needed" / "packet too big" into the TAP) rather than black-holing it.
fn reply_too_big(shared: &Shared, tap: &Tap, vnet: bool, scratch: &mut [u8], frame: &[u8], max_frame: usize) {
    shared.metrics.drop(Drop::FrameTooBig, 1);
    if let Ok(n) = weft_proto::icmp::too_big_reply(frame, max_frame, scratch) {
        if write_frame(tap, vnet, &scratch[..n]).is_err() {
            shared.metrics.drop(Drop::TapWriteFailed, 1);
        }
    }
}

/// Writes one plain frame into the TAP (behind an empty virtio header
/// when the TAP has one: the kernel checks the checksums itself).
fn write_frame(tap: &Tap, vnet: bool, frame: &[u8]) -> std::io::Result<usize> {
    const NONE: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
    match vnet {
        true => tap.write_parts(&[std::io::IoSlice::new(&NONE), std::io::IoSlice::new(frame)]),
        false => tap.write(frame),
    }
}

/// The plain datagram in a received buffer, opening it first if it is
/// sealed; `None` (counted) when it must be dropped. Returned as its range
/// in `buf`. `scratch` keeps a copy of the sealed datagram while a peer
/// has retired keys: a failed open leaves `buf` scrambled.
fn unseal(shared: &Shared, fwd: &Forwarding, buf: &mut [u8], scratch: &mut Vec<u8>) -> Option<std::ops::Range<usize>> {
    let header = match sleeve::sealed_header(buf) {
        Ok(header) => header,
        Err(_) => {
            shared.metrics.drop(Drop::MalformedDatagram, 1);
            return None;
        }
    };
    let Some(header) = header else {
        if fwd.encrypted {
            shared.metrics.drop(Drop::Unencrypted, 1);
            return None;
        }
        return Some(0..buf.len());
    };
    let Some(session) = fwd.sessions.get(&header.sender) else {
        shared.metrics.drop(Drop::NoSession, 1);
        return None;
    };
    let base = buf.as_ptr() as usize;
    let range = |plain: &[u8]| {
        let start = plain.as_ptr() as usize - base;
        start..start + plain.len()
    };
    let retired = fwd.retired.get(&header.sender).filter(|r| !r.is_empty());
    if retired.is_some() {
        scratch.clear();
        scratch.extend_from_slice(buf);
    }
    let err = match session.open(buf, &shared.metrics) {
        Ok(plain) => return Some(range(plain)),
        Err(err) => err,
    };
    for old in retired.into_iter().flatten() {
        buf.copy_from_slice(scratch);
        if let Ok(plain) = old.open(buf, &shared.metrics) {
            return Some(range(plain));
        }
    }
    tracing::trace!("sealed datagram from {}: {err}", header.sender);
    shared.metrics.unseal_failure(&err);
    None
}
