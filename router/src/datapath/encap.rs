//! Packing frames into sleeve datagrams per next hop, and sending them.
//!
//! Datagrams are written back to back into one arena per thread, so that
//! a neighbour's consecutive datagrams of one size are contiguous and go
//! out as one UDP GSO message (`udp_batch`). A super-frame read from the
//! TAP is cut into MTU-sized segments straight into the datagrams that
//! carry them (`weft_proto::offload::Segmenter`): each segment gets a
//! datagram of its own, so a burst's datagrams have one size; small frames
//! still share datagrams. Sealing happens in place in the arena.

use std::os::fd::RawFd;
use std::time::Instant;

use weft_proto::offload::{Segmenter, VnetHdr};
use weft_proto::sleeve::{self, DatagramBuilder, PushError};
use weft_proto::PeerName;

use super::udp_batch::{MsgBatch, OutMsg};
use super::{Forwarding, Neighbour};
use crate::metrics::{Direction, Drop, OffloadBatch, TrafficBatch};
use crate::shared::Shared;

/// Datagram bytes a thread can hold before it must send: a batch of
/// super-frames' worth. A larger batch is sent in several parts.
const ARENA_LEN: usize = 2 << 20;
/// `sendmmsg` entries per call.
const MSGS_PER_CALL: usize = 128;

/// One frame (or super-frame) to carry to `hop`: `frames[buf][start..end]`,
/// with the virtio header the TAP gave it (`VnetHdr::NONE` for a frame
/// received from a peer, which is already a plain frame).
#[derive(Debug, Clone, Copy)]
pub(super) struct Planned {
    pub hop: PeerName,
    pub origin: PeerName,
    pub dest: PeerName,
    pub buf: usize,
    pub start: usize,
    pub end: usize,
    pub vnet: VnetHdr,
}

/// Packs planned frames into datagrams per next hop and sends them.
pub(super) struct Encapsulator {
    local: PeerName,
    arena: Box<[u8]>,
    used: usize,
    msgs: Vec<OutMsg>,
    batch: MsgBatch,
    gso: bool,
    pub traffic: TrafficBatch,
    pub offload: OffloadBatch,
    /// When the core was last told of a datagram too big for its route.
    mtu_noted: Option<Instant>,
}

/// How often a thread may ask the core to re-read a route's MTU.
const MTU_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Where packing stands within one hop's planned frames.
struct Cursor<'f> {
    entries: &'f [Planned],
    frames: &'f [Box<[u8]>],
    next: usize,
    /// The entry being cut, and its next segment.
    current: Option<(Planned, Segmenter<'f>, usize)>,
}

impl Encapsulator {
    pub fn new(local: PeerName, gso: bool) -> Self {
        Encapsulator {
            local,
            arena: vec![0u8; ARENA_LEN].into_boxed_slice(),
            used: 0,
            msgs: Vec::with_capacity(MSGS_PER_CALL),
            batch: MsgBatch::new(MSGS_PER_CALL),
            gso,
            traffic: TrafficBatch::default(),
            offload: OffloadBatch::default(),
            mtu_noted: None,
        }
    }

    /// Carries `plan` (sorted by hop here, keeping each hop's order).
    /// Frames whose segments are too big for their hop's path are handed
    /// to `too_big` with the hop's largest frame instead.
    pub fn send(
        &mut self,
        fd: RawFd,
        fwd: &Forwarding,
        plan: &mut [Planned],
        frames: &[Box<[u8]>],
        shared: &Shared,
        too_big: &mut dyn FnMut(&[u8], usize),
    ) {
        if plan.is_empty() {
            return;
        }
        plan.sort_by_key(|p| p.hop);
        // One clock read per batch: it only feeds time-based rekeying.
        let now = Instant::now();
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
            self.send_to(fd, nb, hop, entries, frames, shared, now, too_big);
        }
        self.flush(fd, shared);
        shared.metrics.flush(&mut self.traffic);
        shared.metrics.offload.add(&mut self.offload);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_to(
        &mut self,
        fd: RawFd,
        nb: &Neighbour,
        hop: PeerName,
        entries: &[Planned],
        frames: &[Box<[u8]>],
        shared: &Shared,
        now: Instant,
        too_big: &mut dyn FnMut(&[u8], usize),
    ) {
        let (front, back) = match nb.session {
            Some(_) => (sleeve::SEALED_HEADER_LEN, weft_proto::crypto::TAG_LEN),
            None => (0, 0),
        };
        // Never wider than a buffer could be, whatever the path says.
        let cap = nb.max_datagram.min(u16::MAX as usize);
        let mut cursor = Cursor { entries, frames, next: 0, current: None };
        let mut sealing = nb.session.as_ref().map(|s| s.sealing(&shared.metrics));
        loop {
            if self.used + cap > self.arena.len() {
                // Never hold the sealer across a syscall.
                let resume = sealing.take().is_some();
                self.flush(fd, shared);
                if resume {
                    sealing = nb.session.as_ref().map(|s| s.sealing(&shared.metrics));
                }
            }
            let buf = &mut self.arena[self.used..self.used + cap];
            let Ok(mut builder) = DatagramBuilder::with_margins(buf, self.local, front, back) else { return };
            let carried =
                fill(&mut builder, &mut cursor, nb, hop, shared, too_big, &mut self.traffic, &mut self.offload);
            if builder.is_empty() {
                debug_assert!(!carried);
                return;
            }
            let (buf, plain) = builder.into_parts();
            let len = match &mut sealing {
                None => plain,
                Some(sealing) => match sealing.seal(buf, plain, self.local, now) {
                    Ok(len) => len,
                    Err(err) => {
                        tracing::warn!("sealing a datagram for {}: {err}", nb.addr);
                        shared.metrics.drop(Drop::SendFailed, 1);
                        continue;
                    }
                },
            };
            OutMsg::queue(&mut self.msgs, self.gso, nb.addr, self.used, len);
            self.used += len;
        }
    }

    /// Sends everything queued and starts the arena over.
    fn flush(&mut self, fd: RawFd, shared: &Shared) {
        if self.msgs.is_empty() {
            self.used = 0;
            return;
        }
        let sent = self.batch.send(fd, &self.arena[..self.used], &self.msgs);
        self.offload.gso_sends += self.msgs.iter().filter(|m| m.count > 1).count() as u64;
        self.offload.gso_refused += sent.unbatched as u64;
        if sent.lost > 0 {
            shared.metrics.drop(Drop::SendFailed, sent.lost as u64);
        }
        if let Some(err) = sent.error {
            tracing::debug!("sendmmsg: {err} ({} datagrams lost)", sent.lost);
        }
        if sent.unbatched > 0 {
            tracing::debug!("{} GSO sends refused by the kernel, sent one by one", sent.unbatched);
        }
        if let Some(addr) = sent.too_big {
            // At most once a second: the core re-reads the route's MTU.
            let now = Instant::now();
            if self.mtu_noted.is_none_or(|t| now.duration_since(t) >= MTU_RECHECK) {
                self.mtu_noted = Some(now);
                shared.command(crate::command::Command::PathMtu(addr));
            }
        }
        self.msgs.clear();
        self.used = 0;
    }
}

/// Puts as many of the cursor's frames (or segments) into `builder` as
/// fit; a segment of a super-frame always travels alone. Returns whether
/// anything was added.
#[allow(clippy::too_many_arguments)]
fn fill<'f>(
    builder: &mut DatagramBuilder<'_>,
    cursor: &mut Cursor<'f>,
    nb: &Neighbour,
    hop: PeerName,
    shared: &Shared,
    too_big: &mut dyn FnMut(&[u8], usize),
    traffic: &mut TrafficBatch,
    offload: &mut OffloadBatch,
) -> bool {
    let mut added = false;
    loop {
        if cursor.current.is_none() && !next_entry(cursor, nb, shared, too_big, offload) {
            return added;
        }
        let Some((p, seg, i)) = &mut cursor.current else { return added };
        let alone = seg.count() > 1;
        if alone && !builder.is_empty() {
            return added;
        }
        let len = seg.len(*i);
        match builder.push_frame_with(p.origin, p.dest, len, |out| seg.write(*i, out).map(|_| ())) {
            Ok(()) => {
                added = true;
                traffic.add(hop, Direction::Out, len);
                *i += 1;
                if *i == seg.count() {
                    cursor.current = None;
                }
                if alone {
                    return added;
                }
            }
            Err(PushError::Full(_)) if !builder.is_empty() => return added,
            Err(err) => {
                // Full in an empty datagram can't happen (max_len was
                // checked against the hop); a segment that can't be
                // written means the headers lied.
                tracing::debug!("dropping a frame for {hop}: {err}");
                shared.metrics.drop(Drop::BadOffload, 1);
                cursor.current = None;
            }
        }
    }
}

/// Moves the cursor to the next entry that can be carried: its headers
/// make sense and its segments fit the hop's path (else `too_big`).
fn next_entry<'f>(
    cursor: &mut Cursor<'f>,
    nb: &Neighbour,
    shared: &Shared,
    too_big: &mut dyn FnMut(&[u8], usize),
    offload: &mut OffloadBatch,
) -> bool {
    while let Some(&p) = cursor.entries.get(cursor.next) {
        cursor.next += 1;
        let frame = &cursor.frames[p.buf][p.start..p.end];
        let seg = match Segmenter::new(&p.vnet, frame) {
            Ok(seg) => seg,
            Err(err) => {
                tracing::debug!("dropping a frame from the TAP: {err}");
                shared.metrics.drop(Drop::BadOffload, 1);
                continue;
            }
        };
        // The path is checked against each segment, never the super-frame.
        if seg.max_len() > nb.max_frame {
            too_big(frame, nb.max_frame);
            continue;
        }
        if seg.count() > 1 {
            offload.split += 1;
            offload.split_segments += seg.count() as u64;
        }
        cursor.current = Some((p, seg, 0));
        return true;
    }
    false
}
