//! Merging the received segments of a TCP (or UDP) flow back into one
//! super-frame for the TAP: userspace GRO, inside one receive batch.

use super::checksum::{finish, fold, sum};
use super::headers::{
    Headers, IpHeader, IpVersion, L4Header, IPV4_HEADER_LEN, IPV6_HEADER_LEN, MAX_L2_LEN, PROTO_TCP, PROTO_UDP,
    TCP_ACK, TCP_HEADER_LEN, TCP_MAX_HEADER_LEN, TCP_PSH,
};
use super::segment::{TCP_CSUM_OFFSET, UDP_CSUM_OFFSET};
use super::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use super::MAX_IP_LEN;

/// The most segments merged into one super-frame, as Linux GRO and
/// nebula allow.
pub const MAX_SEGMENTS: usize = 64;
/// The longest header of a merged super-frame: two VLAN tags, IPv6 (no
/// extension headers are merged; IPv4 without options is shorter) and
/// TCP with 40 bytes of options.
pub const MAX_HEADER_LEN: usize = MAX_L2_LEN + IPV6_HEADER_LEN + TCP_MAX_HEADER_LEN;
/// How many flows can have an open item at once. A batch rarely holds
/// more bulk flows than this; past it the oldest open item is closed,
/// which only costs a smaller merge. Bounds the lookup per frame.
const MAX_OPEN: usize = 64;

/// One segment of a merged super-frame: its payload is
/// `frame[start..end]` of the frame pushed with `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<H> {
    pub handle: H,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'c, H> {
    /// Write this frame as it is (behind [`VnetHdr::NONE`]).
    Single(H),
    /// Write `vnet`, then `header`, then `payload` of each segment in
    /// order (the router uses one writev).
    Merged { vnet: VnetHdr, header: &'c [u8], segments: &'c [Segment<H>] },
}

/// Coalesces the frames of one receive batch, in arrival order. Buffers
/// are reused across batches (no per-batch allocation once warm).
///
/// Frames are only looked at during [`push`](Self::push): an item keeps
/// its first segment's header (patched as segments are appended) and
/// payload ranges of the rest.
///
/// A segment joins its flow's open item only if everything the merged
/// header says holds for it too (wireguard-go's `tcpPacketsCanCoalesce`,
/// on L2 frames): identical L2 header; IPv4 without options or
/// fragmentation, same TOS, TTL and DF, or IPv6 without extension
/// headers, same traffic class, flow label and hop limit; TCP flags ACK
/// or ACK|PSH, same header length and options, ack and window, and the
/// next sequence number; a payload no longer than the first segment's;
/// at most [`MAX_SEGMENTS`] segments and a 65535-byte IP datagram. A
/// shorter segment or PSH closes the item. Checksums are verified before
/// any merge. UDP (when enabled) follows the same IP rules, with equal
/// payload sizes but a shorter last one.
#[derive(Debug)]
pub struct Coalescer<H: Copy> {
    udp: bool,
    /// This batch's items are the first `len`; the rest are kept for the
    /// capacity of their segment lists.
    items: Vec<Item<H>>,
    len: usize,
    /// Items that may still grow, oldest first: at most one per flow.
    open: Vec<Open>,
}

#[derive(Debug)]
struct Item<H> {
    /// At least one; exactly one for an item that was never a flow.
    segments: Vec<Segment<H>>,
    /// `None`: a frame that goes out as it is.
    flow: Option<Flow>,
    /// The merged header; its first `flow.hdr_len` bytes.
    header: [u8; MAX_HEADER_LEN],
}

#[derive(Debug, Clone, Copy)]
struct Open {
    hash: u64,
    item: usize,
}

/// What makes frames one flow: a frame of a flow with an open item either
/// grows that item or closes it, so a flow's frames leave in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    proto: u8,
    /// Source then destination; IPv4 uses the first 8 bytes.
    addrs: [u8; 32],
    ports: [u8; 4],
}

/// A merged item's state: offsets into its header and what the next
/// segment must look like.
#[derive(Debug, Clone, Copy)]
struct Flow {
    key: FlowKey,
    tcp: bool,
    l3: usize,
    l4: usize,
    hdr_len: usize,
    /// The first segment's payload length: no later one may be longer.
    gso_size: usize,
    /// Payload bytes merged so far.
    payload: usize,
    next_seq: u32,
    /// Pseudo-header sum without the length.
    pseudo: u64,
}

/// A frame that may be merged on its own terms (before looking at any
/// item): its payload range, and what TCP says about it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    start: usize,
    end: usize,
    seq: u32,
    psh: bool,
}

impl<H: Copy> Coalescer<H> {
    /// `udp`: also merge UDP flows (written as `GSO_UDP_L4`, which needs
    /// USO on the TAP); otherwise UDP frames are always `Single`.
    pub fn new(udp: bool) -> Self {
        Coalescer { udp, items: Vec::new(), len: 0, open: Vec::with_capacity(MAX_OPEN) }
    }

    /// Forgets the batch, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.open.clear();
    }

    /// Items so far (each one output).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the next frame of the batch. `frame` is read only during the
    /// call; `handle` is how the outputs refer to it. A frame that belongs
    /// to a flow with an open item either extends that item or closes it
    /// (and then starts a new item or goes out as `Single`), so nothing of
    /// the flow that arrives later can overtake it.
    pub fn push(&mut self, handle: H, frame: &[u8]) {
        let Ok(h) = Headers::parse(frame) else {
            return self.single(handle, frame.len());
        };
        if h.proto() == PROTO_UDP && !self.udp {
            // No UDP item exists to close.
            return self.single(handle, frame.len());
        }
        let key = FlowKey::of(&h);
        let hash = key.hash();
        let open =
            self.open.iter().position(|o| o.hash == hash && self.items[o.item].flow.is_some_and(|f| f.key == key));
        let Some(c) = candidate(&h) else {
            if let Some(o) = open {
                self.open.remove(o);
            }
            return self.single(handle, frame.len());
        };
        if let Some(o) = open {
            let item = &mut self.items[self.open[o].item];
            match item.append(handle, &h, &c) {
                Some(false) => return,
                Some(true) => {
                    self.open.remove(o);
                    return;
                }
                None => {
                    self.open.remove(o);
                }
            }
        }
        self.start(handle, &h, &c, key, hash);
    }

    /// One output per item, in the order the items were started: each
    /// flow's frames stay in arrival order.
    pub fn outputs(&self) -> impl Iterator<Item = Output<'_, H>> {
        self.items[..self.len].iter().filter_map(Item::output)
    }

    fn next_item(&mut self) -> &mut Item<H> {
        if self.len == self.items.len() {
            self.items.push(Item { segments: Vec::new(), flow: None, header: [0; MAX_HEADER_LEN] });
        }
        let item = &mut self.items[self.len];
        self.len += 1;
        item.segments.clear();
        item.flow = None;
        item
    }

    fn single(&mut self, handle: H, len: usize) {
        self.next_item().segments.push(Segment { handle, start: 0, end: len });
    }

    /// A new item for a candidate that could not join an open one.
    fn start(&mut self, handle: H, h: &Headers<'_>, c: &Candidate, key: FlowKey, hash: u64) {
        let hdr_len = h.payload_offset();
        let payload = c.end - c.start;
        let item = self.next_item();
        item.header[..hdr_len].copy_from_slice(h.header_bytes());
        item.segments.push(Segment { handle, start: c.start, end: c.end });
        item.flow = Some(Flow {
            key,
            tcp: h.proto() == PROTO_TCP,
            l3: h.l3_offset(),
            l4: h.l4_offset(),
            hdr_len,
            gso_size: payload,
            payload,
            next_seq: c.seq.wrapping_add(payload as u32),
            pseudo: h.pseudo_header(0),
        });
        // PSH ends a burst (as in Linux GRO): nothing may follow it.
        if !c.psh {
            if self.open.len() == MAX_OPEN {
                self.open.remove(0);
            }
            self.open.push(Open { hash, item: self.len - 1 });
        }
    }
}

impl<H: Copy> Item<H> {
    fn output(&self) -> Option<Output<'_, H>> {
        let first = self.segments.first()?;
        match self.flow {
            Some(f) if self.segments.len() > 1 => {
                let (gso_type, csum_offset) = match (f.tcp, f.key.v6) {
                    (true, false) => (GSO_TCPV4, TCP_CSUM_OFFSET),
                    (true, true) => (GSO_TCPV6, TCP_CSUM_OFFSET),
                    (false, _) => (GSO_UDP_L4, UDP_CSUM_OFFSET),
                };
                // Header offsets are below MAX_HEADER_LEN, gso_size below
                // MAX_IP_LEN.
                let vnet = VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type,
                    hdr_len: f.hdr_len as u16,
                    gso_size: f.gso_size as u16,
                    csum_start: f.l4 as u16,
                    csum_offset,
                };
                Some(Output::Merged { vnet, header: &self.header[..f.hdr_len], segments: &self.segments })
            }
            _ => Some(Output::Single(first.handle)),
        }
    }

    /// Appends the segment if it continues this item: `Some(closed)`
    /// (closed: nothing more may follow it), or `None` if it does not.
    fn append(&mut self, handle: H, h: &Headers<'_>, c: &Candidate) -> Option<bool> {
        let f = self.flow.as_mut()?;
        let header = &mut self.header[..f.hdr_len];
        let len = c.end - c.start;
        let fits = self.segments.len() < MAX_SEGMENTS
            && len <= f.gso_size
            && f.hdr_len - f.l3 + f.payload + len <= MAX_IP_LEN
            && same_headers(header, f, h, c);
        if !fits {
            return None;
        }
        self.segments.push(Segment { handle, start: c.start, end: c.end });
        f.payload += len;
        f.next_seq = f.next_seq.wrapping_add(len as u32);
        let (before_l4, l4h) = header.split_at_mut(f.l4);
        let ip = &mut before_l4[f.l3..];
        let ip_len = ip.len() + l4h.len() + f.payload;
        let l4_len = l4h.len() + f.payload;
        if f.key.v6 {
            ip[4..6].copy_from_slice(&((ip_len - IPV6_HEADER_LEN) as u16).to_be_bytes());
        } else {
            ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            ip[10..12].fill(0);
            let csum = finish(sum(ip, 0));
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
        }
        // The pseudo-header sum, not complemented: the kernel's
        // CHECKSUM_PARTIAL convention that NEEDS_CSUM completes.
        let partial = fold(f.pseudo + l4_len as u64).to_be_bytes();
        if f.tcp {
            if c.psh {
                l4h[13] |= TCP_PSH;
            }
            l4h[16..18].copy_from_slice(&partial);
        } else {
            l4h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4h[6..8].copy_from_slice(&partial);
        }
        Some(c.psh || len < f.gso_size)
    }
}

/// Whether `h` is the next segment of the item whose header is `header`:
/// everything the merged header says about each segment must be true of
/// this one too. Addresses, ports and IP version are the flow key's.
fn same_headers(header: &[u8], f: &Flow, h: &Headers<'_>, c: &Candidate) -> bool {
    let frame = h.frame();
    if h.l3_offset() != f.l3
        || h.l4_offset() != f.l4
        || h.payload_offset() != f.hdr_len
        || header[..f.l3] != frame[..f.l3]
    {
        return false;
    }
    let ip = &header[f.l3..f.l4];
    let same_ip = match h.ip() {
        // TOS, DF and TTL.
        IpHeader::V4(b) => ip[1] == b[1] && (ip[6] & 0x40) == (b[6] & 0x40) && ip[8] == b[8],
        // Traffic class and flow label; hop limit.
        IpHeader::V6(b) => ip[..4] == b[..4] && ip[7] == b[7],
    };
    if !same_ip {
        return false;
    }
    match h.l4() {
        L4Header::Tcp(b) => {
            let t = &header[f.l4..];
            // Data offset (equal header lengths) and the reserved/AE bits,
            // ack, window, options.
            c.seq == f.next_seq
                && t[12] == b[12]
                && t[8..12] == b[8..12]
                && t[14..16] == b[14..16]
                && t[TCP_HEADER_LEN..] == frame[f.l4 + TCP_HEADER_LEN..f.hdr_len]
        }
        L4Header::Udp(_) => true,
    }
}

/// Checks a frame on its own: no IP options or fragments, a consistent
/// IP length, payload, ACK or ACK|PSH only for TCP, and valid checksums.
/// Anything else goes out as it came, for the pod's stack to judge.
fn candidate(h: &Headers<'_>) -> Option<Candidate> {
    if h.has_ip_options() || h.more_fragments() || h.payload_offset() > MAX_HEADER_LEN {
        return None;
    }
    let end = h.ip_end()?;
    let start = h.payload_offset();
    if end == start {
        return None;
    }
    let frame = h.frame();
    let (seq, psh, zero_udp_csum) = match h.l4() {
        L4Header::Tcp(t) => {
            let flags = t[13];
            if flags & !TCP_PSH != TCP_ACK {
                return None;
            }
            (u32::from_be_bytes([t[4], t[5], t[6], t[7]]), flags & TCP_PSH != 0, false)
        }
        L4Header::Udp(u) => {
            if usize::from(u16::from_be_bytes([u[4], u[5]])) != end - h.l4_offset() {
                return None;
            }
            (0, false, u[6..8] == [0, 0])
        }
    };
    // A merged super-frame gets a new checksum that the pod trusts
    // (CHECKSUM_PARTIAL): verify first, so that a corrupt segment is not
    // laundered into a valid one.
    if let IpHeader::V4(ip) = h.ip() {
        if fold(sum(ip, 0)) != 0xffff {
            return None;
        }
    }
    // IPv4 UDP may carry no checksum (0); IPv6 UDP must (RFC 8200 §8.1).
    let l4_ok = match (zero_udp_csum, h.version()) {
        (true, IpVersion::V4) => true,
        (true, IpVersion::V6) => false,
        (false, _) => {
            let l4 = h.l4_offset();
            fold(sum(&frame[l4..end], h.pseudo_header(end - l4))) == 0xffff
        }
    };
    l4_ok.then_some(Candidate { start, end, seq, psh })
}

impl FlowKey {
    fn of(h: &Headers<'_>) -> FlowKey {
        let mut addrs = [0u8; 32];
        let v6 = match h.ip() {
            IpHeader::V4(b) => {
                addrs[..8].copy_from_slice(&b[12..IPV4_HEADER_LEN]);
                false
            }
            IpHeader::V6(b) => {
                addrs.copy_from_slice(&b[8..IPV6_HEADER_LEN]);
                true
            }
        };
        FlowKey { v6, proto: h.proto(), addrs, ports: h.ports() }
    }

    /// Cheap and good enough to make a full key comparison rare.
    fn hash(&self) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut x =
            u64::from(u32::from_ne_bytes(self.ports)) ^ (u64::from(self.proto) << 32) ^ (u64::from(self.v6) << 40);
        for word in self.addrs.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            x = (x ^ u64::from_ne_bytes(w)).wrapping_mul(K).rotate_left(29);
        }
        x
    }
}
