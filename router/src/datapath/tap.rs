//! A TAP device: the router's port on the weft bridge, through which it
//! sends and receives whole Ethernet frames.
//!
//! The device is not persistent: it disappears when the `Tap` is dropped
//! (or the router dies), and a restarted router makes a fresh one. The
//! bridge it is enslaved to outlives it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) the TAP device `name`. `name` may contain
    /// `%d` for the kernel to pick a free number; [`Tap::name`] tells the
    /// result. With `vnet_hdr`, every frame read or written is preceded by a
    /// `struct virtio_net_hdr`, which carries GSO/checksum offload state.
    pub fn open(name: &str, vnet_hdr: bool) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TAP name {name:?} must be 1 to {} bytes without NUL", libc::IFNAMSIZ - 1),
            ));
        }
        let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;

        // SAFETY: `ifreq` is plain old data (a char array and a union of
        // integers, sockaddrs and a pointer); all-zero is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        // The IFF_* values all fit in the `short` the kernel reads.
        request.ifr_ifru.ifru_flags = flags as libc::c_short;

        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
        // `request` is, and it lives across the call; the fd is open.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // A device left persistent (e.g. by `ip tuntap add`) would outlive
        // us; clearing the flag ties its life to this fd.
        // SAFETY: TUNSETPERSIST takes its argument by value, not a pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }

        // The kernel wrote back the actual name, NUL-terminated.
        let name: Vec<u8> = request.ifr_name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        Ok(Tap { file, name: String::from_utf8_lossy(&name).into_owned() })
    }

    /// The device's name in the kernel.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// In non-blocking mode, `read` with no frame waiting and `write` with a
    /// full queue fail with `WouldBlock` (for use with tokio's `AsyncFd`).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: F_GETFL takes no argument and only reads the fd's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if nonblocking { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        // SAFETY: F_SETFL takes an int of flags, by value.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame; a `buf` shorter than the frame gets it truncated.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one whole frame.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
