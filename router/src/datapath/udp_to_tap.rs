//! UDP → TAP: frames from other nodes, for local pods or to relay.

use std::io::IoSlice;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use weft_proto::ethernet::{EthernetFrame, MacAddr};
use weft_proto::mac_table::Owner;
use weft_proto::offload::{Coalescer, Output, VnetHdr, MAX_SEGMENTS};
use weft_proto::sleeve::{self, Datagram};
use weft_proto::PeerName;

use super::encap::{Encapsulator, Planned};
use super::tap::Tap;
use super::udp_batch::{MsgBatch, Received};
use super::{learn_all, unseal, write_frame, Forwarding, BATCH, BUF_LEN};
use crate::command::{Heartbeat, SleeveHeartbeat};
use crate::metrics::{Direction, Drop, OffloadBatch, TrafficBatch};
use crate::shared::Shared;

/// Where a frame for this node lies: `bufs[buf][start..end]`.
#[derive(Debug, Clone, Copy)]
struct FrameAt {
    buf: u32,
    start: u32,
    end: u32,
}

/// How the batch's frames for this node get into the TAP.
enum Delivery {
    /// Merged into super-frames behind a virtio header.
    Merge(Coalescer<FrameAt>),
    /// One plain write per frame (a TAP without a virtio header).
    Plain(Vec<FrameAt>),
}

pub(super) struct UdpToTap {
    shared: Arc<Shared>,
    local: PeerName,
    bufs: Vec<Box<[u8]>>,
    recvd: Vec<Received>,
    batch: MsgBatch,
    plan: Vec<Planned>,
    learned: Vec<(MacAddr, Owner)>,
    encap: Encapsulator,
    delivery: Delivery,
    traffic: TrafficBatch,
    offload: OffloadBatch,
    /// A sealed datagram's copy while its sender has retired keys.
    scratch: Vec<u8>,
}

impl UdpToTap {
    /// `merge`: None when the TAP has no virtio header; else whether UDP
    /// runs may be merged too (the TAP takes UDP GSO writes).
    pub fn new(shared: Arc<Shared>, local: PeerName, merge: Option<bool>, gso: bool) -> Self {
        let delivery = match merge {
            Some(udp) => Delivery::Merge(Coalescer::new(udp)),
            None => Delivery::Plain(Vec::with_capacity(BATCH)),
        };
        UdpToTap {
            shared,
            local,
            bufs: (0..BATCH).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            recvd: Vec::with_capacity(BATCH),
            batch: MsgBatch::new(BATCH),
            plan: Vec::with_capacity(BATCH * 4),
            learned: Vec::with_capacity(BATCH),
            encap: Encapsulator::new(local, gso),
            delivery,
            traffic: TrafficBatch::default(),
            offload: OffloadBatch::default(),
            scratch: Vec::new(),
        }
    }

    /// Moves what the socket has ready (up to a batch of messages) to
    /// local pods and relays; returns how many messages it read (0:
    /// nothing was waiting).
    pub fn step(&mut self, tap: &Tap, recv: &UdpSocket, send: &UdpSocket) -> usize {
        match self.batch.recv(recv.as_raw_fd(), &mut self.bufs, &mut self.recvd) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => return 0,
            Err(e) => {
                // ICMP errors from earlier sends surface here
                // (ECONNREFUSED etc.): not fatal for a UDP socket.
                tracing::debug!("recvmmsg: {e}");
                return 0;
            }
        }
        let fwd = self.shared.forwarding();
        self.handle_batch(&fwd);
        self.deliver(tap);
        // Relays are re-packed one frame per record: a frame that
        // fitted the previous hop may not fit the next one.
        let shared = &self.shared;
        let mut too_big = |_: &[u8], _: usize| shared.metrics.drop(Drop::FrameTooBig, 1);
        self.encap.send(send.as_raw_fd(), &fwd, &mut self.plan, &self.bufs, shared, &mut too_big);
        self.shared.metrics.flush(&mut self.traffic);
        self.shared.metrics.offload.add(&mut self.offload);
        self.recvd.len()
    }

    /// Opens and parses every datagram of the batch: frames for this node
    /// go to `delivery`, frames for others to `plan`, heartbeats to the core.
    fn handle_batch(&mut self, fwd: &Forwarding) {
        self.plan.clear();
        let now = Instant::now();
        for (bi, r) in self.recvd.iter().enumerate() {
            for range in r.datagrams() {
                // Frames are found by their offsets in the message buffer.
                let base = self.bufs[bi].as_ptr() as usize;
                let datagram = &mut self.bufs[bi][range];
                let Some(plain) = unseal(&self.shared, fwd, datagram, &mut self.scratch) else { continue };
                let data = &datagram[plain];
                let (sender, frames) = match sleeve::parse(data) {
                    Ok(Datagram::Heartbeat { sender, conn_id }) => {
                        let hb = Heartbeat::Sleeve(SleeveHeartbeat { sender, conn_id, from: r.from });
                        if self.shared.heartbeats.try_send(hb).is_err() {
                            self.shared.metrics.drop(Drop::HeartbeatQueueFull, 1);
                        }
                        continue;
                    }
                    Ok(Datagram::Frames { sender, frames }) => (sender, frames),
                    Err(err) => {
                        tracing::trace!("malformed datagram from {}: {err}", r.from);
                        self.shared.metrics.drop(Drop::MalformedDatagram, 1);
                        continue;
                    }
                };
                // Only neighbours with a confirmed sleeve, from their address.
                if fwd.neighbours.get(&sender).is_none_or(|n| n.addr.ip() != r.from.ip()) {
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
                        let at = FrameAt { buf: bi as u32, start: start as u32, end: end as u32 };
                        match &mut self.delivery {
                            Delivery::Merge(c) => c.push(at, f.frame),
                            Delivery::Plain(list) => list.push(at),
                        }
                    }
                    let relay =
                        |hop| Planned { hop, origin: f.origin, dest: f.dest, buf: bi, start, end, vnet: VnetHdr::NONE };
                    if broadcast {
                        for &hop in fwd.broadcast_hops(f.origin) {
                            if hop != sender {
                                self.plan.push(relay(hop));
                            }
                        }
                    } else if f.dest != self.local {
                        match fwd.next_hop.get(&f.dest) {
                            Some(&hop) if hop != sender => self.plan.push(relay(hop)),
                            _ => self.shared.metrics.drop(Drop::NoRoute, 1),
                        }
                    }
                }
            }
        }
        learn_all(&self.shared, now, &mut self.learned);
    }

    /// Writes the batch's frames for this node into the TAP: a run of one
    /// flow's segments as one super-frame, everything else as it came.
    fn deliver(&mut self, tap: &Tap) {
        let bufs = &self.bufs;
        let frame = |at: FrameAt| &bufs[at.buf as usize][at.start as usize..at.end as usize];
        let mut failed = 0;
        match &mut self.delivery {
            Delivery::Plain(list) => {
                for &at in list.iter() {
                    if write_frame(tap, false, frame(at)).is_err() {
                        failed += 1;
                    }
                }
                list.clear();
            }
            Delivery::Merge(coalescer) => {
                for out in coalescer.outputs() {
                    match out {
                        Output::Single(at) => {
                            if write_frame(tap, true, frame(at)).is_err() {
                                failed += 1;
                            }
                        }
                        Output::Merged { vnet, header, segments } => {
                            let vnet = vnet.to_bytes();
                            let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS + 2];
                            parts[0] = IoSlice::new(&vnet);
                            parts[1] = IoSlice::new(header);
                            let n = segments.len().min(MAX_SEGMENTS);
                            for (part, s) in parts[2..].iter_mut().zip(&segments[..n]) {
                                *part = IoSlice::new(&frame(s.handle)[s.start..s.end]);
                            }
                            self.offload.merged += 1;
                            self.offload.merged_segments += n as u64;
                            if tap.write_parts(&parts[..n + 2]).is_err() {
                                failed += n as u64;
                            }
                        }
                    }
                }
                coalescer.clear();
            }
        }
        if failed > 0 {
            self.shared.metrics.drop(Drop::TapWriteFailed, failed);
        }
    }
}
