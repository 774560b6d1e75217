//! Network namespaces as open files, and running netlink work inside one.
//!
//! `setns` changes the namespace of the calling *thread* only, so work for
//! another namespace runs on a fresh thread with its own current-thread tokio
//! runtime: sockets opened there (netlink, packet) belong to that namespace,
//! and the caller's thread never leaves its own.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use super::{Netlink, NetlinkError};

/// An open network namespace (`/proc/PID/ns/net`, `/run/netns/NAME`, ...).
/// Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct NetnsFile {
    file: File,
}

/// What makes two namespace files the same namespace: the nsfs device and
/// inode, whatever path they were opened by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsFile {
    /// Opens `path` and checks that it is a network namespace, so a wrong
    /// path fails here with a clear error rather than later in `setns`.
    pub fn open(path: &Path) -> io::Result<NetnsFile> {
        let file = File::open(path)?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind == -1 {
            let err = io::Error::last_os_error();
            // ENOTTY: an ordinary file or directory, not an nsfs file.
            return Err(if err.raw_os_error() == Some(libc::ENOTTY) {
                io::Error::new(io::ErrorKind::InvalidInput, "not a namespace file")
            } else {
                err
            });
        }
        if kind != libc::CLONE_NEWNET {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a namespace file, but not a network namespace"));
        }
        Ok(NetnsFile { file })
    }

    /// A new network namespace holding only a (down) loopback, alive while
    /// the returned file or anything inside it lives. The calling thread
    /// stays where it is. Needs CAP_SYS_ADMIN.
    pub fn create() -> io::Result<NetnsFile> {
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                // SAFETY: no pointers; CLONE_NEWNET moves only this thread,
                // which ends once it has opened the new namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                NetnsFile::current()
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The network namespace of the calling thread.
    pub fn current() -> io::Result<NetnsFile> {
        NetnsFile::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn id(&self) -> io::Result<NetnsId> {
        let meta = self.file.metadata()?;
        Ok(NetnsId { dev: std::os::unix::fs::MetadataExt::dev(&meta), ino: std::os::unix::fs::MetadataExt::ino(&meta) })
    }

    /// Runs `work` inside this namespace with a netlink connection opened
    /// there, on a dedicated thread, and returns its output. Blocks the
    /// caller; a panic in `work` is propagated.
    pub fn run<T, F, Fut>(&self, work: F) -> Result<T, NetlinkError>
    where
        T: Send,
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = T>,
    {
        let netns = self.file.as_fd();
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                enter(netns)?;
                block_on_netlink(work)
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for NetnsFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Moves the calling thread into `netns`; only for threads made for it.
fn enter(netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
    // SAFETY: a valid fd for the call's duration; CLONE_NEWNET only changes
    // this thread's network namespace.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetlinkError::Netns {
            op: "enter network namespace (setns)".to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `work` to completion on a current-thread runtime made for it, with
/// a netlink connection in the calling thread's namespace: how synchronous
/// programs use this crate.
pub fn block_on_netlink<T, F, Fut>(work: F) -> Result<T, NetlinkError>
where
    F: FnOnce(Netlink) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetlinkError::Runtime)?;
    runtime.block_on(async {
        let netlink = Netlink::connect().await?;
        Ok(work(netlink).await)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_is_itself() {
        let a = NetnsFile::current().unwrap();
        let b = NetnsFile::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(a.id().unwrap(), b.id().unwrap());
    }

    #[test]
    fn created_namespace_is_new_and_usable() {
        let fresh = NetnsFile::create().expect("creating a network namespace needs root (CAP_SYS_ADMIN)");
        assert_ne!(fresh.id().unwrap(), NetnsFile::current().unwrap().id().unwrap());
        let links = fresh.run(|nl| async move { nl.links().await }).unwrap().unwrap();
        let names: Vec<_> = links.iter().map(|link| link.name.as_str()).collect();
        assert_eq!(names, ["lo"]);
    }

    #[test]
    fn non_namespace_files_are_refused() {
        let err = NetnsFile::open(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = NetnsFile::open(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = NetnsFile::open(Path::new("/nonexistent/netns")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
