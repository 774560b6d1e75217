//! Batched UDP I/O: one `sendmmsg`/`recvmmsg` per batch instead of one
//! syscall per datagram, and with UDP GSO/GRO one kernel trip per run of
//! equal-size datagrams to a neighbour instead of one per datagram. The
//! message headers are allocated once per thread and reused.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// The most datagrams one GSO send may carry (`UDP_MAX_SEGMENTS` before
/// Linux 6.9; 1.4 KB datagrams reach the byte limit first anyway).
pub const MAX_SEGMENTS: usize = 64;
/// The most bytes one GSO send may carry: an IPv4 packet's 65,535 less
/// headers, with room to spare for IP options the kernel may add.
pub const MAX_GSO_BYTES: usize = 64_000;

/// Turns on UDP GRO for `fd` (Linux 5.12+ for a reliable getsockopt):
/// runs of datagrams from one sender arrive in one buffer, cut at the
/// size the kernel reports. Returns whether it is on.
pub fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: UDP_GRO reads one int through the pointer, which outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Whether the kernel takes `UDP_SEGMENT` on `fd` (Linux 4.18+).
pub fn supports_gso(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        ) == 0
    }
}

/// One message of a send batch: `len` bytes at `offset` in the caller's
/// arena to `addr`. With `count` > 1 the bytes are `count` datagrams of
/// `segment` bytes (the last may be shorter), sent as one UDP GSO message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutMsg {
    pub addr: SocketAddr,
    pub offset: usize,
    pub len: usize,
    pub segment: usize,
    pub count: usize,
    /// A shorter datagram ended the run: nothing more may join it.
    pub closed: bool,
}

impl OutMsg {
    /// Adds the datagram of `len` bytes at `offset` to the run in `msgs`
    /// when it continues it (same destination, right after it in memory,
    /// not longer than its segments), else starts a new message.
    pub fn queue(msgs: &mut Vec<OutMsg>, gso: bool, addr: SocketAddr, offset: usize, len: usize) {
        if let Some(last) = msgs.last_mut() {
            let joins = gso
                && !last.closed
                && last.addr == addr
                && last.offset + last.len == offset
                && len <= last.segment
                && last.count < MAX_SEGMENTS
                && last.len + len <= MAX_GSO_BYTES;
            if joins {
                last.len += len;
                last.count += 1;
                last.closed = len < last.segment;
                return;
            }
        }
        msgs.push(OutMsg { addr, offset, len, segment: len, count: 1, closed: false });
    }
}

/// What a send achieved.
#[derive(Debug, Default)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub datagrams: usize,
    /// Datagrams it refused, and the last reason.
    pub lost: usize,
    pub error: Option<io::Error>,
    /// GSO messages the kernel refused whose datagrams were sent one by
    /// one instead (an oversize segment for the route: a path-MTU event).
    pub unbatched: usize,
    /// A destination the kernel refused a datagram to as too big for the
    /// route (EMSGSIZE, or EINVAL for a GSO segment).
    pub too_big: Option<SocketAddr>,
}

/// Reusable `mmsghdr`/`iovec`/address/control arrays for one thread.
pub struct MsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    /// One control buffer per message: a `UDP_SEGMENT` u16 on send, the
    /// `UDP_GRO` int on receive.
    cmsgs: Vec<[u64; CMSG_WORDS]>,
}

/// Room for one cmsg carrying an int, in u64s (so it is aligned).
const CMSG_WORDS: usize = 4;

// The raw pointers inside point only into the struct's own vectors, which
// are rebuilt before every syscall.
unsafe impl Send for MsgBatch {}

impl std::fmt::Debug for MsgBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgBatch").field("capacity", &self.hdrs.len()).finish()
    }
}

impl MsgBatch {
    pub fn new(capacity: usize) -> Self {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        let zero_addr: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        MsgBatch {
            hdrs: vec![zero_hdr; capacity],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; capacity],
            addrs: vec![zero_addr; capacity],
            cmsgs: vec![[0; CMSG_WORDS]; capacity],
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends `msgs` out of `arena` with as few syscalls as the kernel
    /// allows. A message the kernel refuses is counted lost and the rest
    /// still go; a refused GSO message is retried datagram by datagram
    /// (the kernel says EINVAL or EMSGSIZE when a segment exceeds the
    /// route's MTU, EIO when the device can't checksum) so one oversize run
    /// costs only its own datagrams, and GSO stays on for the next batch.
    pub fn send(&mut self, fd: RawFd, arena: &[u8], msgs: &[OutMsg]) -> Sent {
        let mut report = Sent::default();
        let mut next = 0;
        while next < msgs.len() {
            let chunk = &msgs[next..msgs.len().min(next + self.capacity())];
            for (i, m) in chunk.iter().enumerate() {
                self.fill(i, arena, m.addr, m.offset, m.len, if m.count > 1 { m.segment } else { 0 });
            }
            // SAFETY: hdrs[..chunk.len()] point at live iovecs, addresses,
            // control buffers and arena slices for the duration of this call.
            let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), chunk.len() as u32, 0) };
            if n > 0 {
                report.datagrams += chunk[..n as usize].iter().map(|m| m.count).sum::<usize>();
                next += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first message of the chunk was refused.
            let m = chunk[0];
            next += 1;
            if matches!(err.raw_os_error(), Some(libc::EMSGSIZE | libc::EINVAL)) {
                report.too_big = Some(m.addr);
            }
            if m.count > 1 {
                report.unbatched += 1;
                self.send_one_by_one(fd, arena, &m, &mut report);
            } else {
                report.lost += 1;
                report.error = Some(err);
            }
        }
        report
    }

    fn send_one_by_one(&mut self, fd: RawFd, arena: &[u8], m: &OutMsg, report: &mut Sent) {
        let mut offset = m.offset;
        let end = m.offset + m.len;
        while offset < end {
            let len = m.segment.min(end - offset);
            self.fill(0, arena, m.addr, offset, len, 0);
            // SAFETY: as in `send`, for one message.
            let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), 1, 0) };
            if n == 1 {
                report.datagrams += 1;
            } else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if err.raw_os_error() == Some(libc::EMSGSIZE) {
                    report.too_big = Some(m.addr);
                }
                report.lost += 1;
                report.error = Some(err);
            }
            offset += len;
        }
    }

    /// Sets up message `i` to send `arena[offset..offset + len]` to `addr`,
    /// cut into `segment`-byte datagrams by the kernel unless it is 0.
    fn fill(&mut self, i: usize, arena: &[u8], addr: SocketAddr, offset: usize, len: usize, segment: usize) {
        let data = &arena[offset..offset + len];
        let namelen = write_sockaddr(&mut self.addrs[i], &addr);
        self.iovs[i] = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
        h.msg_namelen = namelen;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_flags = 0;
        if segment == 0 {
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            return;
        }
        let control = &mut self.cmsgs[i];
        h.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE is a pure size computation.
        h.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        // SAFETY: the control buffer is CMSG_WORDS u64s, more than
        // CMSG_SPACE(2), aligned, and msg_controllen says how much is used.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(h);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment as u16);
        }
    }

    /// Receives up to `bufs.len()` messages without blocking (WouldBlock
    /// when none is waiting). Fills `out` with
    /// one entry per message: with GRO a message holds several datagrams
    /// of `segment` bytes back to back (the last may be shorter).
    pub fn recv(&mut self, fd: RawFd, bufs: &mut [Box<[u8]>], out: &mut Vec<Received>) -> io::Result<()> {
        out.clear();
        let n = bufs.len().min(self.capacity());
        for (i, buf) in bufs.iter_mut().take(n).enumerate() {
            self.iovs[i] = libc::iovec { iov_base: buf.as_mut_ptr() as *mut _, iov_len: buf.len() };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = CMSG_WORDS * 8;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live, exclusively borrowed buffer.
        let got =
            unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..got as usize {
            let len = self.hdrs[i].msg_len as usize;
            // A datagram larger than the buffer was truncated: flag it by
            // its length so the parser rejects it rather than trusting it.
            let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let segment = gro_segment(&self.hdrs[i].msg_hdr).unwrap_or(len);
            if let Some(from) = read_sockaddr(&self.addrs[i]) {
                out.push(Received { len: if truncated { 0 } else { len }, from, segment });
            }
        }
        Ok(())
    }
}

/// One received message.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The size of each datagram in it (the last may be shorter); `len`
    /// without GRO.
    pub segment: usize,
}

impl Received {
    /// The datagrams' byte ranges in the message's buffer.
    pub fn datagrams(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (len, step) = (self.len, self.segment.max(1));
        (0..len).step_by(step).map(move |start| start..(start + step).min(len))
    }
}

/// The `UDP_GRO` cmsg's segment size, if the kernel attached one.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: the kernel filled msg_control up to msg_controllen; the
    // CMSG_* macros stay within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(h);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                return usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(h, cmsg);
        }
    }
    None
}

fn write_sockaddr(storage: &mut libc::sockaddr_storage, addr: &SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn read_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the kernel wrote a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        (a, b)
    }

    /// Receives until `expected` datagrams came, checking each against
    /// `payloads` in order.
    fn receive_all(b: &std::net::UdpSocket, from: SocketAddr, payloads: &[Vec<u8>]) -> usize {
        let mut bufs: Vec<Box<[u8]>> = (0..16).map(|_| vec![0u8; 65536].into_boxed_slice()).collect();
        let mut rbatch = MsgBatch::new(16);
        let mut got = Vec::new();
        let mut seen = 0;
        let mut messages = 0;
        for _ in 0..payloads.len() {
            let mut pfd = libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 2000) }, 1, "nothing arrived");
            rbatch.recv(b.as_raw_fd(), &mut bufs, &mut got).unwrap();
            for (i, r) in got.iter().enumerate() {
                assert_eq!(r.from, from);
                messages += 1;
                for range in r.datagrams() {
                    assert_eq!(&bufs[i][range], &payloads[seen][..], "datagram {seen}");
                    seen += 1;
                }
            }
            if seen == payloads.len() {
                break;
            }
        }
        assert_eq!(seen, payloads.len());
        messages
    }

    /// The payloads back to back in one arena, queued for `dst` with GSO.
    fn queue_all(payloads: &[Vec<u8>], dst: SocketAddr) -> (Vec<u8>, Vec<OutMsg>) {
        let mut msgs = Vec::new();
        let mut offset = 0;
        for p in payloads {
            OutMsg::queue(&mut msgs, true, dst, offset, p.len());
            offset += p.len();
        }
        (payloads.concat(), msgs)
    }

    #[test]
    fn send_and_receive_a_batch_on_loopback() {
        let (a, b) = pair();
        let dst = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        let (arena, msgs) = queue_all(&payloads, dst);
        // Growing sizes never join a run.
        assert_eq!(msgs.len(), 10);
        let mut batch = MsgBatch::new(4);
        let sent = batch.send(a.as_raw_fd(), &arena, &msgs);
        assert_eq!((sent.datagrams, sent.lost, sent.error.is_none()), (10, 0, true));
        receive_all(&b, a.local_addr().unwrap(), &payloads);
    }

    #[test]
    fn runs_go_out_as_one_gso_message_and_come_back_cut_at_their_size() {
        let (a, b) = pair();
        assert!(supports_gso(a.as_raw_fd()), "this kernel has UDP GSO");
        assert!(enable_gro(b.as_raw_fd()), "this kernel has UDP GRO");
        let dst = b.local_addr().unwrap();
        // Two runs of 1400-byte datagrams, the first ended by a short one,
        // then a lone datagram to another address.
        let mut payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1400]).collect();
        payloads[9].truncate(700);
        let (arena, msgs) = queue_all(&payloads, dst);
        assert_eq!(msgs.iter().map(|m| m.count).collect::<Vec<_>>(), [10, 10]);
        assert!(msgs[0].closed && !msgs[1].closed);
        let mut batch = MsgBatch::new(4);
        let sent = batch.send(a.as_raw_fd(), &arena, &msgs);
        assert_eq!((sent.datagrams, sent.lost, sent.unbatched), (20, 0, 0));
        let messages = receive_all(&b, a.local_addr().unwrap(), &payloads);
        assert!(messages < 20, "GRO delivered {messages} messages for 20 datagrams");
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:9".parse().unwrap();
        let mut msgs = Vec::new();
        for i in 0..(MAX_SEGMENTS + 3) {
            OutMsg::queue(&mut msgs, true, dst, i * 100, 100);
        }
        assert_eq!(msgs.iter().map(|m| m.count).collect::<Vec<_>>(), [MAX_SEGMENTS, 3]);
        msgs.clear();
        let big = 1500;
        for i in 0..50 {
            OutMsg::queue(&mut msgs, true, dst, i * big, big);
        }
        assert!(msgs.iter().all(|m| m.len <= MAX_GSO_BYTES));
        assert_eq!(msgs[0].count, MAX_GSO_BYTES / big);
        msgs.clear();
        OutMsg::queue(&mut msgs, true, dst, 0, 100);
        OutMsg::queue(&mut msgs, true, other, 100, 100);
        OutMsg::queue(&mut msgs, true, other, 300, 100); // not contiguous
        OutMsg::queue(&mut msgs, false, other, 400, 100); // GSO off
        assert_eq!(msgs.len(), 4);
    }

    #[test]
    fn an_oversize_gso_run_is_sent_one_by_one() {
        let (a, b) = pair();
        let dst = b.local_addr().unwrap();
        // 3 × 40000-byte "segments" in one message: the kernel refuses a
        // GSO segment beyond the route MTU (65535 on lo) only when the
        // whole exceeds 64 KB; force a refusal with a bogus count instead.
        let payloads: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 40_000]).collect();
        let arena: Vec<u8> = payloads.concat();
        let msgs = [OutMsg { addr: dst, offset: 0, len: arena.len(), segment: 40_000, count: 3, closed: false }];
        let mut batch = MsgBatch::new(4);
        let sent = batch.send(a.as_raw_fd(), &arena, &msgs);
        assert_eq!((sent.unbatched, sent.datagrams, sent.lost), (1, 3, 0), "{:?}", sent.error);
        receive_all(&b, a.local_addr().unwrap(), &payloads);
    }
}
