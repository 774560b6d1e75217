//! TAP → UDP: what local pods send to other nodes.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use weft_proto::ethernet::EthernetFrame;
use weft_proto::mac_table::Owner;
use weft_proto::offload::{VnetHdr, VNET_HDR_LEN};
use weft_proto::PeerName;

use super::encap::{Encapsulator, Planned};
use super::tap::Tap;
use super::{learn, reply_too_big, Forwarding, BATCH, BUF_LEN};
use crate::metrics::Drop;
use crate::shared::Shared;

/// Bytes read from the TAP before a batch is sent: a few super-frames, so
/// a burst is on the wire while the next is read, and a batch's datagrams
/// fit the encapsulator's arena.
const READ_BUDGET: usize = 512 << 10;

pub(super) struct TapToUdp {
    shared: Arc<Shared>,
    local: PeerName,
    /// The TAP puts a virtio header before every frame.
    vnet: bool,
    frames: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    plan: Vec<Planned>,
    encap: Encapsulator,
    icmp: Box<[u8]>,
}

impl TapToUdp {
    pub fn new(shared: Arc<Shared>, local: PeerName, vnet: bool, gso: bool) -> Self {
        TapToUdp {
            shared,
            local,
            vnet,
            frames: (0..BATCH).map(|_| vec![0u8; BUF_LEN].into_boxed_slice()).collect(),
            lens: Vec::with_capacity(BATCH),
            plan: Vec::with_capacity(BATCH * 4),
            encap: Encapsulator::new(local, gso),
            icmp: vec![0u8; weft_proto::icmp::MAX_REPLY_LEN].into_boxed_slice(),
        }
    }

    /// Moves what the TAP has ready (up to a batch) to the peers; returns
    /// how many frames it read (0: nothing was waiting).
    pub fn step(&mut self, tap: &Tap, udp: &UdpSocket) -> std::io::Result<usize> {
        self.read_batch(tap)?;
        if self.lens.is_empty() {
            return Ok(0);
        }
        let fwd = self.shared.forwarding();
        self.plan_batch(&fwd);
        let (shared, vnet, icmp) = (&self.shared, self.vnet, &mut self.icmp);
        let mut too_big = |frame: &[u8], max: usize| reply_too_big(shared, tap, vnet, icmp, frame, max);
        self.encap.send(udp.as_raw_fd(), &fwd, &mut self.plan, &self.frames, shared, &mut too_big);
        Ok(self.lens.len())
    }

    /// Drains up to a batch without blocking (the TAP is non-blocking).
    fn read_batch(&mut self, tap: &Tap) -> std::io::Result<()> {
        self.lens.clear();
        let mut bytes = 0;
        while self.lens.len() < BATCH && bytes < READ_BUDGET {
            let i = self.lens.len();
            match tap.read(&mut self.frames[i]) {
                Ok(n) => {
                    self.lens.push(n);
                    bytes += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One pass and one MAC-table lock per batch: learn each frame's
    /// source, look up its destination, plan its next hop(s). A
    /// super-frame is planned once, whatever its segment count.
    fn plan_batch(&mut self, fwd: &Forwarding) {
        self.plan.clear();
        let now = Instant::now();
        let mut macs = self.shared.lock_macs();
        for (i, &len) in self.lens.iter().enumerate() {
            let (vnet, start) = match self.vnet {
                true => match self.frames[i].get(..len.min(VNET_HDR_LEN)).map(VnetHdr::parse) {
                    Some(Ok(hdr)) => (hdr, VNET_HDR_LEN),
                    _ => {
                        self.shared.metrics.drop(Drop::BadOffload, 1);
                        continue;
                    }
                },
                false => (VnetHdr::NONE, 0),
            };
            let Ok(eth) = EthernetFrame::new_checked(&self.frames[i][start..len]) else {
                self.shared.metrics.drop(Drop::MalformedFrame, 1);
                continue;
            };
            learn(&self.shared, &mut macs, now, eth.src(), Owner::Local);
            let dst = eth.dst();
            let owner = if dst.is_unicast() { macs.lookup(now, dst) } else { None };
            let mut plan = |hop: PeerName, dest: PeerName| {
                self.plan.push(Planned { hop, origin: self.local, dest, buf: i, start, end: len, vnet })
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
