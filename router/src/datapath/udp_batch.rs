//! Batched UDP I/O: one `sendmmsg`/`recvmmsg` per batch instead of one
//! syscall per datagram. The message headers are allocated once per
//! thread and reused.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Reusable `mmsghdr`/`iovec`/address arrays for one thread.
pub struct MsgBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
}

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
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends datagrams `(destination, buffer index, length)` out of `bufs`
    /// with as few syscalls as the kernel allows. Returns how many were
    /// sent; on an error the rest were not.
    pub fn send(
        &mut self,
        fd: RawFd,
        bufs: &[Box<[u8]>],
        msgs: &[(SocketAddr, usize, usize)],
    ) -> (usize, Option<io::Error>) {
        let mut sent = 0;
        while sent < msgs.len() {
            let chunk = &msgs[sent..msgs.len().min(sent + self.capacity())];
            for (i, (addr, buf, len)) in chunk.iter().enumerate() {
                let data = &bufs[*buf][..*len];
                let namelen = write_sockaddr(&mut self.addrs[i], addr);
                self.iovs[i] = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
                let h = &mut self.hdrs[i].msg_hdr;
                h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
                h.msg_namelen = namelen;
                h.msg_iov = &mut self.iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
            }
            // SAFETY: hdrs[..chunk.len()] point at live iovecs/addresses and
            // at payload slices borrowed for the duration of this call.
            let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), chunk.len() as u32, 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return (sent, Some(err));
            }
            sent += n as usize;
        }
        (sent, None)
    }

    /// Receives up to `bufs.len()` datagrams, blocking until at least one
    /// arrives (or the socket's receive timeout passes). Fills `out` with
    /// (length, source) per received datagram.
    pub fn recv(&mut self, fd: RawFd, bufs: &mut [Box<[u8]>], out: &mut Vec<(usize, SocketAddr)>) -> io::Result<()> {
        out.clear();
        let n = bufs.len().min(self.capacity());
        for (i, buf) in bufs.iter_mut().take(n).enumerate() {
            self.iovs[i] = libc::iovec { iov_base: buf.as_mut_ptr() as *mut _, iov_len: buf.len() };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live, exclusively borrowed buffer.
        let got =
            unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), n as u32, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..got as usize {
            let len = self.hdrs[i].msg_len as usize;
            // A datagram larger than the buffer was truncated: flag it by
            // its length so the parser rejects it rather than trusting it.
            let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            if let Some(addr) = read_sockaddr(&self.addrs[i]) {
                out.push((if truncated { 0 } else { len }, addr));
            }
        }
        Ok(())
    }
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

    #[test]
    fn send_and_receive_a_batch_on_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let dst = b.local_addr().unwrap();
        let payloads: Vec<Box<[u8]>> = (0..10u8).map(|i| vec![i; 100 + i as usize].into_boxed_slice()).collect();
        let msgs: Vec<(SocketAddr, usize, usize)> =
            payloads.iter().enumerate().map(|(i, p)| (dst, i, p.len())).collect();
        let mut batch = MsgBatch::new(4);
        let (sent, err) = batch.send(a.as_raw_fd(), &payloads, &msgs);
        assert_eq!((sent, err.is_none()), (10, true));
        let mut bufs: Vec<Box<[u8]>> = (0..16).map(|_| vec![0u8; 2048].into_boxed_slice()).collect();
        let mut rbatch = MsgBatch::new(16);
        let mut got = Vec::new();
        let mut seen = 0;
        for _ in 0..10 {
            rbatch.recv(b.as_raw_fd(), &mut bufs, &mut got).unwrap();
            for (i, (len, from)) in got.iter().enumerate() {
                assert_eq!(*from, a.local_addr().unwrap());
                assert_eq!(&bufs[i][..*len], &payloads[seen][..]);
                seen += 1;
            }
            if seen == 10 {
                break;
            }
        }
        assert_eq!(seen, 10);
    }
}
