//! The packet socket that carries fast-path heartbeats: whole Ethernet
//! frames of ethertype [`ETHERTYPE_WEFT_HEARTBEAT`] sent out of, and read
//! from, one device (the VXLAN device, which tunnels them to the peer
//! whose MAC they are addressed to).

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, SockFilter, Socket, Type};

/// Ethertype of fast-path heartbeats (IEEE 802 "local experimental 1").
pub const ETHERTYPE_WEFT_HEARTBEAT: u16 = 0x88B5;

/// An AF_PACKET socket bound to one device, reading only heartbeats.
///
/// It listens to all protocols with a kernel filter for the heartbeat
/// ethertype rather than binding to that ethertype: the device is a bridge
/// port, and the bridge takes every frame before protocol-specific packet
/// sockets would see it; only all-protocol taps run before the bridge.
#[derive(Debug)]
pub struct HeartbeatSocket {
    socket: Socket,
    ifindex: i32,
}

impl HeartbeatSocket {
    /// Opens a socket on the device with index `ifindex`; needs CAP_NET_RAW.
    pub fn open(ifindex: u32) -> io::Result<HeartbeatSocket> {
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("ifindex {ifindex} out of range")))?;
        // Protocol 0 receives nothing until `bind` names the protocol and
        // the device, so no frame slips in before the filter is in place.
        let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
        socket.attach_filter(&HEARTBEATS_IN)?;
        ignore_outgoing(&socket)?;
        let address = link_address(ifindex, libc::ETH_P_ALL as u16);
        // SAFETY: `address` is a live, initialised `sockaddr_ll`, and the
        // length passed is exactly its size.
        let bound = unsafe {
            libc::bind(socket.as_raw_fd(), std::ptr::from_ref(&address).cast(), size_of::<libc::sockaddr_ll>() as u32)
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(HeartbeatSocket { socket, ifindex })
    }

    /// Sends `frame` (Ethernet header included) out of the device.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let address = link_address(self.ifindex, ETHERTYPE_WEFT_HEARTBEAT);
        // SAFETY: `frame` is readable for `frame.len()` bytes; `address` is
        // a live `sockaddr_ll` of the length passed.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&address).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        match usize::try_from(sent) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(io::Error::other(format!("sent {n} of {} bytes", frame.len()))),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    /// Reads one frame into `buf` (cut short if `buf` is shorter) and
    /// returns its length, or `None` for a copy of a frame going out of the
    /// device (the filter drops those already; this is a safeguard). Waits at
    /// most the read timeout, then fails with `WouldBlock`, as std's
    /// sockets do.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let mut from = zeroed_link_address();
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` is writable for `buf.len()` bytes; `from` and
            // `from_len` are live and `from_len` holds `from`'s size.
            let received = unsafe {
                libc::recvfrom(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::from_mut(&mut from).cast(),
                    &mut from_len,
                )
            };
            let Ok(len) = usize::try_from(received) else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            };
            return Ok((from.sll_pkttype != libc::PACKET_OUTGOING).then_some(len));
        }
    }

    /// How long [`HeartbeatSocket::recv`] waits; `None` is for ever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// Another handle on the same socket (e.g. one to send, one to read).
    pub fn try_clone(&self) -> io::Result<HeartbeatSocket> {
        Ok(HeartbeatSocket { socket: self.socket.try_clone()?, ifindex: self.ifindex })
    }
}

/// Classic BPF, run by the kernel on every frame the device receives:
/// keeps incoming frames of the heartbeat ethertype and drops the rest, so
/// pod traffic through the device costs the socket only the filter run.
const HEARTBEATS_IN: [SockFilter; 6] = {
    const LOAD_HALF: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JUMP_IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const ETHERTYPE_OFFSET: u32 = 12;
    // Linux's ancillary load of skb->pkt_type.
    const PKTTYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
    [
        SockFilter::new(LOAD_HALF, 0, 0, ETHERTYPE_OFFSET),
        SockFilter::new(JUMP_IF_EQUAL, 0, 3, ETHERTYPE_WEFT_HEARTBEAT as u32),
        SockFilter::new(LOAD_WORD, 0, 0, PKTTYPE),
        SockFilter::new(JUMP_IF_EQUAL, 1, 0, libc::PACKET_OUTGOING as u32),
        // Keep up to this many bytes: the whole frame.
        SockFilter::new(RETURN, 0, 0, u32::MAX),
        SockFilter::new(RETURN, 0, 0, 0),
    ]
};

/// Spares the kernel a copy of every frame the device sends, which the
/// filter would drop anyway. Kernels before 4.20 lack the option; the
/// filter alone does then.
fn ignore_outgoing(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option takes a C int, passed by a pointer valid for the
    // call along with its exact size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            std::ptr::from_ref(&on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOPROTOOPT) {
            return Err(err);
        }
    }
    Ok(())
}

fn zeroed_link_address() -> libc::sockaddr_ll {
    // SAFETY: `sockaddr_ll` is plain integers and a byte array; all-zero is
    // a valid value.
    unsafe { std::mem::zeroed() }
}

/// The device and protocol as `bind` and `sendto` take them (for a raw
/// socket the destination MAC comes from the frame itself).
fn link_address(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    let mut address = zeroed_link_address();
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol.to_be();
    address.sll_ifindex = ifindex;
    address
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weft_netlink::{BridgeFdbEntry, BridgeFdbKind, BridgePortOptions, Netlink, NetnsFile};

    const WAIT: Duration = Duration::from_secs(2);
    /// How long a frame that should not arrive is waited for.
    const ABSENT: Duration = Duration::from_millis(300);

    fn fresh_netns() -> NetnsFile {
        NetnsFile::create().expect("creating a network namespace (these tests must run as root)")
    }

    fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut frame = [dst, src].concat();
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.resize(64, 0xa5);
        frame
    }

    /// Source MAC of the frames [`veth`] sends to see the link work.
    const WARM_UP: [u8; 6] = [2, 0, 0, 0, 0, 0xff];

    /// A veth pair, both ends up and passing frames; returns their indexes.
    async fn veth(nl: &Netlink, name: &str, peer: &str) -> (u32, u32) {
        let index = nl.create_veth(name, peer).await.unwrap();
        let peer_index = nl.link_index(peer).await.unwrap().unwrap();
        nl.set_up(index).await.unwrap();
        nl.set_up(peer_index).await.unwrap();
        // Until the kernel's link watcher has seen the carrier (it runs
        // asynchronously, and at most once a second), the devices silently
        // drop what is sent.
        let (near, far) = (HeartbeatSocket::open(index).unwrap(), HeartbeatSocket::open(peer_index).unwrap());
        far.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0; 2048];
        for _ in 0..100 {
            near.send(&frame([0xff; 6], WARM_UP, ETHERTYPE_WEFT_HEARTBEAT)).unwrap();
            if matches!(far.recv(&mut buf), Ok(Some(_))) {
                return (index, peer_index);
            }
        }
        panic!("veth {name}/{peer} passes no frames");
    }

    /// The next frame that is neither an outgoing copy nor a warm-up.
    fn next_incoming(socket: &HeartbeatSocket) -> io::Result<Vec<u8>> {
        let mut buf = [0; 2048];
        loop {
            if let Some(len) = socket.recv(&mut buf)? {
                if buf.get(6..12) != Some(&WARM_UP[..]) {
                    return Ok(buf[..len].to_vec());
                }
            }
        }
    }

    fn timed_out(result: io::Result<Vec<u8>>) -> bool {
        matches!(result, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }

    #[test]
    fn heartbeats_cross_a_link_and_outgoing_frames_are_skipped() {
        fresh_netns()
            .run(|nl| async move {
                let (a, b) = veth(&nl, "a", "b").await;
                let (sa, sb) = (HeartbeatSocket::open(a).unwrap(), HeartbeatSocket::open(b).unwrap());
                let watcher = HeartbeatSocket::open(a).unwrap();
                sa.set_read_timeout(Some(ABSENT)).unwrap();
                sb.set_read_timeout(Some(WAIT)).unwrap();
                watcher.set_read_timeout(Some(WAIT)).unwrap();
                let heartbeat = frame(nl.link_mac(b).await.unwrap(), [2, 0, 0, 0, 0, 1], ETHERTYPE_WEFT_HEARTBEAT);
                // Another ethertype goes out but is not read at the far end.
                sa.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0800)).unwrap();
                sa.send(&heartbeat).unwrap();
                assert_eq!(next_incoming(&sb).unwrap(), heartbeat);

                // Neither the sender nor another socket on its device reads
                // the frame back as if it had arrived.
                watcher.set_read_timeout(Some(ABSENT)).unwrap();
                assert!(timed_out(next_incoming(&watcher)));
                assert!(timed_out(next_incoming(&sa)));

                // A clone shares the socket; a short buffer cuts the frame.
                sb.try_clone().unwrap().send(&heartbeat).unwrap();
                let mut short = [0; 20];
                let len = sa.try_clone().unwrap().recv(&mut short).unwrap();
                assert_eq!(len, Some(20));
                assert_eq!(short[..], heartbeat[..20]);
            })
            .unwrap();
    }

    /// How the VXLAN device is used: a bridge port whose heartbeats are
    /// addressed to the bridge's MAC. The bridge takes every frame arriving
    /// on a port for itself, so only a socket served before it sees them.
    #[test]
    fn heartbeats_to_a_bridge_port_are_read_and_forwarded_ones_are_not() {
        fresh_netns()
            .run(|nl| async move {
                let bridge = nl.ensure_bridge("br0").await.unwrap().index;
                let bridge_mac = [2, 0, 0, 0, 0, 0x42];
                nl.set_mac(bridge, bridge_mac).await.unwrap();
                nl.set_up(bridge).await.unwrap();
                let (a, b) = veth(&nl, "a", "b").await;
                let (c0, c1) = veth(&nl, "c0", "c1").await;
                nl.set_master(b, bridge).await.unwrap();
                nl.set_master(c0, bridge).await.unwrap();
                let (sa, sb, sc) = (
                    HeartbeatSocket::open(a).unwrap(),
                    HeartbeatSocket::open(b).unwrap(),
                    HeartbeatSocket::open(c1).unwrap(),
                );
                sa.set_read_timeout(Some(WAIT)).unwrap();
                sb.set_read_timeout(Some(WAIT)).unwrap();

                let heartbeat = frame(bridge_mac, [2, 0, 0, 0, 0, 1], ETHERTYPE_WEFT_HEARTBEAT);
                sa.send(&heartbeat).unwrap();
                assert_eq!(next_incoming(&sb).unwrap(), heartbeat);

                // Flooded out of port b by the bridge: outgoing there.
                let flooded = frame([0xff; 6], [2, 0, 0, 0, 0, 3], ETHERTYPE_WEFT_HEARTBEAT);
                sc.send(&flooded).unwrap();
                assert_eq!(next_incoming(&sa).unwrap(), flooded);
                sb.set_read_timeout(Some(ABSENT)).unwrap();
                assert!(timed_out(next_incoming(&sb)));
                let _ = c0;
            })
            .unwrap();
    }

    #[test]
    fn opening_on_a_missing_device_fails() {
        fresh_netns().run(|_| async { assert!(HeartbeatSocket::open(99_999).is_err()) }).unwrap();
    }

    /// The bridge behaviours the fast path relies on, shown with heartbeat
    /// frames: isolated ports (the TAP and the VXLAN port) never forward to
    /// each other, and a sticky static entry does not roam when the MAC
    /// shows up on another port, while a plain static one does.
    #[test]
    fn isolated_ports_and_sticky_entries_hold() {
        fresh_netns()
            .run(|nl| async move {
                let bridge = nl.ensure_bridge("br0").await.unwrap().index;
                nl.set_up(bridge).await.unwrap();
                let mut ports = Vec::new();
                let mut sockets = Vec::new();
                for (inside, outside) in [("p0", "p1"), ("q0", "q1"), ("r0", "r1")] {
                    let (port, end) = veth(&nl, inside, outside).await;
                    nl.set_master(port, bridge).await.unwrap();
                    let socket = HeartbeatSocket::open(end).unwrap();
                    socket.set_read_timeout(Some(WAIT)).unwrap();
                    ports.push(port);
                    sockets.push(socket);
                }
                let (p, q, r) = (ports[0], ports[1], ports[2]);
                let isolated = BridgePortOptions { isolated: Some(true), ..BridgePortOptions::default() };
                nl.set_bridge_port(p, &isolated).await.unwrap();
                nl.set_bridge_port(q, &isolated).await.unwrap();

                let (sticky_mac, plain_mac) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
                nl.bridge_fdb_add(q, sticky_mac, true).await.unwrap();
                nl.bridge_fdb_add(r, plain_mac, false).await.unwrap();

                // Broadcasts from isolated p reach r but not isolated q.
                sockets[0].send(&frame([0xff; 6], sticky_mac, ETHERTYPE_WEFT_HEARTBEAT)).unwrap();
                sockets[0].send(&frame([0xff; 6], plain_mac, ETHERTYPE_WEFT_HEARTBEAT)).unwrap();
                assert_eq!(next_incoming(&sockets[2]).unwrap()[6..12], sticky_mac);
                assert_eq!(next_incoming(&sockets[2]).unwrap()[6..12], plain_mac);
                sockets[1].set_read_timeout(Some(ABSENT)).unwrap();
                assert!(timed_out(next_incoming(&sockets[1])));

                // Both MACs were just seen arriving on p.
                let entries = nl.bridge_fdb_list(bridge).await.unwrap();
                let find = |mac| entries.iter().find(|e: &&BridgeFdbEntry| e.mac == mac).copied().unwrap();
                assert_eq!((find(sticky_mac).port, find(sticky_mac).kind), (q, BridgeFdbKind::Static));
                assert_eq!((find(plain_mac).port, find(plain_mac).kind), (p, BridgeFdbKind::Static));
            })
            .unwrap();
    }
}
