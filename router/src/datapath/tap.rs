//! A TAP device: the router's port on the weft bridge, through which it
//! sends and receives whole Ethernet frames.
//!
//! The device is not persistent: it disappears when the `Tap` is dropped
//! (or the router dies), and a restarted router makes a fresh one. The
//! bridge it is enslaved to outlives it.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use weft_proto::offload::VNET_HDR_LEN;

/// What the kernel agreed to hand the TAP unsegmented and with the
/// checksum left for later (`TUNSETOFFLOAD`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// `TUN_F_CSUM`: frames may come with `NEEDS_CSUM` (checksum partial).
    pub csum: bool,
    /// `TUN_F_TSO4|TSO6`: TCP super-frames up to 64 KB.
    pub tso: bool,
    /// `TUN_F_USO4|USO6` (Linux 6.2+): UDP GSO super-frames.
    pub uso: bool,
}

impl Offloads {
    /// As `weft status` shows them.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [(self.csum, "csum"), (self.tso, "tso4,tso6"), (self.uso, "uso4,uso6")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}

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
    /// With `multi_queue`, each `open` of the same name adds a queue (an
    /// fd of its own) to the device; every queue must ask for the same
    /// flags.
    pub fn open(name: &str, vnet_hdr: bool, multi_queue: bool) -> io::Result<Tap> {
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
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
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

    /// Sets the virtio header's byte order (little-endian) and size (the
    /// 10-byte legacy header) explicitly, then asks for the widest offload
    /// set the kernel takes, falling back step by step (USO needs 6.2; an
    /// unknown bit is EINVAL). The mask is device-wide and outlives the fd,
    /// so it is always set, also to nothing.
    pub fn set_offloads(&self, wanted: bool) -> io::Result<Offloads> {
        let le: libc::c_int = 1;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: both ioctls read one int through the pointer, which
        // outlives the call; the fd is an open TAP with IFF_VNET_HDR.
        unsafe {
            if libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETLE, &le) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        let tries: &[(libc::c_uint, Offloads)] = if wanted {
            &[
                (tso | libc::TUN_F_USO4 | libc::TUN_F_USO6, Offloads { csum: true, tso: true, uso: true }),
                (tso, Offloads { csum: true, tso: true, uso: false }),
                (libc::TUN_F_CSUM, Offloads { csum: true, tso: false, uso: false }),
                (0, Offloads { csum: false, tso: false, uso: false }),
            ]
        } else {
            &[(0, Offloads { csum: false, tso: false, uso: false })]
        };
        let mut last = io::Error::from(io::ErrorKind::Unsupported);
        for &(mask, offloads) in tries {
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, mask as libc::c_ulong) } == 0 {
                return Ok(offloads);
            }
            last = io::Error::last_os_error();
        }
        Err(last)
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

    /// Writes one frame gathered from `parts` (with a virtio header, its
    /// first part) in one `writev`.
    pub fn write_parts(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(parts)
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
