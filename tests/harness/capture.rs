//! Looking at the underlay the way an eavesdropper would: an `AF_PACKET`
//! capture inside a test's namespace, parsed down to IPv4 UDP/TCP payloads;
//! a search of those payloads for stretches of known plaintext; and raw UDP
//! datagrams sent from a node's namespace (replays, forgeries).

use std::collections::HashMap;
use std::ffi::CString;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{spawn_in_netns, Netns};

/// Shortest stretch of a pattern that counts as found: long enough that a
/// pseudo-random pattern never matches ciphertext by chance (2^-128), short
/// enough to catch any leaked TCP segment.
pub const MIN_MATCH: usize = 16;

/// Largest frame read in one go: TSO/GRO super-packets on veths reach 64 KiB.
const RECV_BUF: usize = 256 * 1024;
/// How often the capture thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Kernel queue for the capture socket, so a bulk transfer is not dropped
/// while the thread copies payloads.
const SOCKET_BUF: libc::c_int = 64 * 1024 * 1024;
const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Transport protocol of a captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

/// One IPv4 UDP datagram or TCP segment seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub proto: Proto,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// Everything after the UDP/TCP header (up to the IP total length).
    pub payload: Vec<u8>,
}

impl Captured {
    /// `proto` from or to `port`.
    pub fn is_on(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && (self.src.port() == port || self.dst.port() == port)
    }

    /// UDP from or to `port`.
    pub fn is_udp_port(&self, port: u16) -> bool {
        self.is_on(Proto::Udp, port)
    }

    /// TCP from or to `port`.
    pub fn is_tcp_port(&self, port: u16) -> bool {
        self.is_on(Proto::Tcp, port)
    }

    /// Between the two addresses, either direction.
    pub fn between(&self, a: Ipv4Addr, b: Ipv4Addr) -> bool {
        let (s, d) = (*self.src.ip(), *self.dst.ip());
        (s == a && d == b) || (s == b && d == a)
    }
}

/// Parses one Ethernet frame down to its IPv4 UDP/TCP payload; `None` for
/// anything else (ARP, IPv6, ICMP, non-first fragments, truncated headers).
pub fn parse_frame(frame: &[u8]) -> Option<Captured> {
    let be16 = |b: &[u8], at: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])) };
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = ETH_HEADER;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3 += 4;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(l3..)?;
    let first = *ip.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    // Super-packets (BIG TCP) carry total length 0: take what was captured.
    let total = match usize::from(be16(ip, 2)?) {
        0 => ip.len(),
        t => t.min(ip.len()),
    };
    if total < ihl || be16(ip, 6)? & 0x1fff != 0 {
        return None;
    }
    let proto = match ip[9] {
        IPPROTO_UDP => Proto::Udp,
        IPPROTO_TCP => Proto::Tcp,
        _ => return None,
    };
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    let (src_ip, dst_ip) = (addr(12), addr(16));
    let l4 = &ip[ihl..total];
    let header = match proto {
        Proto::Udp => 8,
        Proto::Tcp => usize::from(*l4.get(12)? >> 4) * 4,
    };
    if header < 8 || l4.len() < header {
        return None;
    }
    Some(Captured {
        proto,
        src: SocketAddrV4::new(src_ip, be16(l4, 0)?),
        dst: SocketAddrV4::new(dst_ip, be16(l4, 2)?),
        payload: l4[header..].to_vec(),
    })
}

/// When a [`Capture`] stops on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLimits {
    pub max_packets: usize,
    /// Sum of stored payload bytes.
    pub max_bytes: usize,
    pub max_duration: Duration,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        CaptureLimits { max_packets: 200_000, max_bytes: 256 * 1024 * 1024, max_duration: Duration::from_secs(180) }
    }
}

/// What a finished [`Capture`] collected.
#[derive(Debug, Clone, Default)]
pub struct CaptureOutput {
    /// IPv4 UDP and TCP packets, in arrival order.
    pub packets: Vec<Captured>,
    /// Frames that were not IPv4 UDP/TCP (ARP, ICMP, IPv6, ...).
    pub other_frames: u64,
    /// Frames the kernel dropped because the socket's queue was full.
    pub kernel_drops: u64,
    /// Which limit ended the capture early, if one did.
    pub limit_hit: Option<&'static str>,
}

impl CaptureOutput {
    /// Packets of `proto` from or to `port`.
    pub fn on_port(&self, proto: Proto, port: u16) -> impl Iterator<Item = &Captured> {
        self.packets.iter().filter(move |p| p.is_on(proto, port))
    }

    /// Total payload bytes of `proto` from or to `port`.
    pub fn payload_bytes(&self, proto: Proto, port: u16) -> u64 {
        self.on_port(proto, port).map(|p| p.payload.len() as u64).sum()
    }

    /// One line for messages: counts per protocol, drops, limits.
    pub fn summary(&self) -> String {
        let count = |proto| self.packets.iter().filter(|p| p.proto == proto).count();
        let bytes = |proto| self.packets.iter().filter(|p| p.proto == proto).map(|p| p.payload.len()).sum::<usize>();
        format!(
            "{} UDP packets ({} payload bytes), {} TCP packets ({} payload bytes), {} other frames, \
             {} dropped by the kernel, limit hit: {}",
            count(Proto::Udp),
            bytes(Proto::Udp),
            count(Proto::Tcp),
            bytes(Proto::Tcp),
            self.other_frames,
            self.kernel_drops,
            self.limit_hit.unwrap_or("none")
        )
    }
}

/// A packet capture on one interface of a namespace, running on its own
/// thread until [`Capture::finish`], a limit, or drop (which stops the
/// thread and discards the packets).
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<CaptureOutput>>>,
    what: String,
}

impl Capture {
    /// Starts capturing every frame on `ifname` inside `ns` (in promiscuous
    /// mode, so a bridge also shows frames it forwards between its ports).
    /// Returns once the socket is bound: whatever is sent afterwards is seen.
    pub fn start(ns: &Netns, ifname: &str, limits: CaptureLimits) -> Result<Capture> {
        let what = format!("capture on {ifname} in {}", ns.name());
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ifname_c = CString::new(ifname).context("interface name with a NUL")?;
        let (stop_t, seen_t) = (stop.clone(), seen.clone());
        let thread = spawn_in_netns(ns.name(), move || {
            let fd = match open_packet_socket(&ifname_c) {
                Ok(fd) => fd,
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = ready_tx.send(Err(e));
                    bail!("{msg}");
                }
            };
            let _ = ready_tx.send(Ok(()));
            Ok(capture_loop(&fd, limits, &stop_t, &seen_t))
        });
        let mut capture = Capture { stop, seen, thread: Some(thread), what };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(capture),
            Ok(Err(e)) => Err(e.context(capture.what.clone())),
            Err(_) => {
                // The thread died before reporting (e.g. setns failed).
                let why = capture.join().err().map(|e| format!("{e:#}")).unwrap_or_default();
                Err(anyhow!("{} never became ready: {why}", capture.what))
            }
        }
    }

    /// IPv4 UDP/TCP packets stored so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Stops the capture and returns what it collected.
    pub fn finish(mut self) -> Result<CaptureOutput> {
        self.stop.store(true, Ordering::SeqCst);
        let what = self.what.clone();
        self.join().with_context(|| what)
    }

    fn join(&mut self) -> Result<CaptureOutput> {
        let handle = self.thread.take().context("capture already finished")?;
        handle.join().unwrap_or_else(|_| Err(anyhow!("capture thread panicked")))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

fn last_os_error(what: &str) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(what.to_owned())
}

fn set_opt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An `AF_PACKET` socket bound to `ifname` in the calling thread's
/// namespace, promiscuous, with a short receive timeout.
fn open_packet_socket(ifname: &CString) -> Result<OwnedFd> {
    // Protocol 0 until bound, so no frame of another interface gets queued.
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_os_error("socket(AF_PACKET)"));
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        return Err(last_os_error(&format!("no interface {ifname:?}")));
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_os_error(&format!("bind AF_PACKET to {ifname:?}")));
    }
    if set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &SOCKET_BUF).is_err() {
        set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &SOCKET_BUF).context("SO_RCVBUF")?;
    }
    let timeout = libc::timeval { tv_sec: 0, tv_usec: POLL.as_micros() as libc::suseconds_t };
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout).context("SO_RCVTIMEO")?;
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex as i32,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    set_opt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq).context("PACKET_MR_PROMISC")?;
    Ok(fd)
}

/// Frames the kernel dropped for lack of queue space since the last call.
fn kernel_drops(fd: &OwnedFd) -> u64 {
    let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `stats` and `len` are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut stats as *mut libc::tpacket_stats as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(stats.tp_drops)
    } else {
        0
    }
}

fn capture_loop(fd: &OwnedFd, limits: CaptureLimits, stop: &AtomicBool, seen: &AtomicU64) -> CaptureOutput {
    let start = Instant::now();
    let mut out = CaptureOutput::default();
    let mut buf = vec![0u8; RECV_BUF];
    let mut bytes = 0usize;
    // The time limit bounds the loop; each iteration waits at most POLL.
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if start.elapsed() >= limits.max_duration {
            out.limit_hit = Some("max_duration");
            break;
        }
        if out.packets.len() >= limits.max_packets {
            out.limit_hit = Some("max_packets");
            break;
        }
        if bytes >= limits.max_bytes {
            out.limit_hit = Some("max_bytes");
            break;
        }
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            // EAGAIN (the poll timeout), EINTR: look at the flags again.
            continue;
        }
        match parse_frame(&buf[..n as usize]) {
            Some(p) => {
                bytes += p.payload.len();
                out.packets.push(p);
                seen.fetch_add(1, Ordering::Relaxed);
            }
            None => out.other_frames += 1,
        }
    }
    out.kernel_drops = kernel_drops(fd);
    out
}

// ----- known plaintext ---------------------------------------------------

/// Where a [`PatternIndex`] found a stretch of its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternMatch {
    /// Index of the payload (in the order searched).
    pub payload: usize,
    /// Offset of the stretch in that payload.
    pub offset: usize,
    /// Offset of the stretch in the pattern.
    pub pattern_offset: usize,
    /// Length of the common stretch (at least [`MIN_MATCH`]).
    pub len: usize,
}

/// Hashes 8-byte words that are already (pseudo-)random: one multiply.
#[derive(Debug, Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const NO_SLOT: u32 = u32::MAX;
/// Positions of one word tried per lookup: only a repetitive pattern has
/// more, and any of them proves a leak just as well.
const MAX_CHAIN: usize = 16;

/// Finds any stretch of at least [`MIN_MATCH`] bytes of a pattern in other
/// bytes, in time linear in what is searched. Every 8-byte-aligned word of
/// the pattern is indexed; any common stretch of 16 bytes or more contains
/// one such word whole, and is then extended both ways. Meant for
/// high-entropy patterns such as [`crate::transfer::payload`] (a repetitive
/// one works, but its repeated words are only partly indexed).
#[derive(Debug)]
pub struct PatternIndex<'p> {
    pattern: &'p [u8],
    heads: HashMap<u64, u32, BuildHasherDefault<WordHasher>>,
    /// Next aligned slot holding the same word, or [`NO_SLOT`].
    next: Vec<u32>,
}

fn word_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl<'p> PatternIndex<'p> {
    pub fn new(pattern: &'p [u8]) -> PatternIndex<'p> {
        assert!(pattern.len() / 8 < NO_SLOT as usize, "pattern too long to index");
        let slots = pattern.len() / 8;
        let mut heads = HashMap::with_capacity_and_hasher(slots, BuildHasherDefault::default());
        let mut next = vec![NO_SLOT; slots];
        for (slot, link) in next.iter_mut().enumerate() {
            if let Some(prev) = heads.insert(word_at(pattern, slot * 8), slot as u32) {
                *link = prev;
            }
        }
        PatternIndex { pattern, heads, next }
    }

    /// The first stretch of the pattern in `data`: `(offset in data, offset
    /// in pattern, length)`.
    pub fn find(&self, data: &[u8]) -> Option<(usize, usize, usize)> {
        if data.len() < MIN_MATCH || self.pattern.len() < MIN_MATCH {
            return None;
        }
        for j in 0..=data.len() - 8 {
            let Some(&head) = self.heads.get(&word_at(data, j)) else { continue };
            let mut slot = head;
            for _ in 0..MAX_CHAIN {
                if slot == NO_SLOT {
                    break;
                }
                let p = slot as usize * 8;
                let back =
                    data[..j].iter().rev().zip(self.pattern[..p].iter().rev()).take_while(|(a, b)| a == b).count();
                let fwd = data[j..].iter().zip(&self.pattern[p..]).take_while(|(a, b)| a == b).count();
                if back + fwd >= MIN_MATCH {
                    return Some((j - back, p - back, back + fwd));
                }
                slot = self.next[slot as usize];
            }
        }
        None
    }

    /// The first payload holding a stretch of the pattern.
    pub fn find_in<'a>(&self, payloads: impl IntoIterator<Item = &'a [u8]>) -> Option<PatternMatch> {
        payloads.into_iter().enumerate().find_map(|(i, data)| {
            self.find(data).map(|(offset, pattern_offset, len)| PatternMatch {
                payload: i,
                offset,
                pattern_offset,
                len,
            })
        })
    }
}

/// Whether any of `payloads` holds a stretch of at least [`MIN_MATCH`]
/// bytes of `pattern`.
pub fn contains_pattern<'a>(payloads: impl IntoIterator<Item = &'a [u8]>, pattern: &[u8]) -> bool {
    PatternIndex::new(pattern).find_in(payloads).is_some()
}

// ----- injection ---------------------------------------------------------

/// Sends each of `payloads` as one UDP datagram to `to`, from one socket
/// opened inside `ns` (so the source address is that namespace's own, e.g.
/// a node's underlay IP; the source port is ephemeral).
pub fn send_udp_all_from(ns: &Netns, to: SocketAddrV4, payloads: &[Vec<u8>]) -> Result<()> {
    ns.enter(|| -> Result<()> {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("bind UDP")?;
        for (i, p) in payloads.iter().enumerate() {
            let n = sock.send_to(p, to).with_context(|| format!("sending datagram {i} to {to}"))?;
            if n != p.len() {
                bail!("datagram {i} to {to}: sent {n} of {} bytes", p.len());
            }
        }
        Ok(())
    })?
    .with_context(|| format!("sending {} datagrams from {} to {to}", payloads.len(), ns.name()))
}

/// Sends `payload` as one UDP datagram to `to` from inside `ns`.
pub fn send_udp_from(ns: &Netns, to: SocketAddrV4, payload: &[u8]) -> Result<()> {
    send_udp_all_from(ns, to, &[payload.to_vec()])
}
