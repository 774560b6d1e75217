//! The MTU of the route toward a peer, which bounds the overlay's MTU.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

/// Any port will do: connecting a UDP socket only picks a route, it sends
/// nothing.
const ANY_PORT: u16 = 9;

/// The MTU the kernel would use toward `dest` now: the route's MTU, or a
/// smaller path MTU learnt from ICMP "fragmentation needed".
pub fn path_mtu(dest: IpAddr) -> io::Result<u32> {
    let (unspecified, level, option) = match dest {
        IpAddr::V4(_) => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), libc::IPPROTO_IP, libc::IP_MTU),
        IpAddr::V6(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let socket = UdpSocket::bind(SocketAddr::new(unspecified, 0))?;
    socket.connect(SocketAddr::new(dest, ANY_PORT))?;

    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: IP_MTU / IPV6_MTU write one int; `mtu` is an int and `len`
    // says so. Both outlive the call, and the fd is open.
    let rc =
        unsafe { libc::getsockopt(socket.as_raw_fd(), level, option, (&mut mtu as *mut libc::c_int).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(mtu).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("kernel reported MTU {mtu}")))
}

/// The MTU of the interface holding the IPv4 default route, for a router
/// started without peers (nothing to ask the route toward yet).
pub fn default_route_mtu() -> Option<u32> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    // Columns: Iface Destination Gateway Flags ...; destination 0 = default.
    let iface = routes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() > 2 && cols[1] == "00000000")
        .map(|cols| cols[0].to_string())?;
    std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu")).ok()?.trim().parse().ok()
}

/// The largest frame payload the overlay can carry when every packet pays
/// `overhead` bytes of encapsulation on an underlay of `underlay_mtu`.
pub fn overlay_mtu(underlay_mtu: u32, overhead: u32) -> u32 {
    underlay_mtu.saturating_sub(overhead)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_path_mtu_is_lo_mtu() {
        let (Ok(mtu), Ok(flags)) =
            (std::fs::read_to_string("/sys/class/net/lo/mtu"), std::fs::read_to_string("/sys/class/net/lo/flags"))
        else {
            return; // no sysfs: nothing to compare against
        };
        let lo_up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap() & 1 == 1;
        if !lo_up {
            return; // a fresh namespace: no route to 127.0.0.1 at all
        }
        let lo_mtu: u32 = mtu.trim().parse().unwrap();
        // IPv4 caps a route's MTU at 65535, below lo's usual 65536.
        assert_eq!(path_mtu(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(), lo_mtu.min(65535));
    }

    #[test]
    fn overlay_mtu_subtracts_and_never_underflows() {
        assert_eq!(overlay_mtu(1500, 50), 1450);
        assert_eq!(overlay_mtu(40, 50), 0);
    }
}
