//! What the server tasks and the test's `KubeApi` share.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use super::faults::Faults;
use super::log::RequestLog;
use super::rbac::Rbac;
use super::store::Store;

#[derive(Debug)]
pub struct State {
    store: Mutex<Store>,
    /// The store's revision after each write: wakes open watches.
    pub revs: watch::Sender<u64>,
    pub faults: watch::Sender<Faults>,
    /// The one bearer token the server accepts.
    pub token: Mutex<String>,
    pub rbac: Mutex<Option<Rbac>>,
    pub log: RequestLog,
    pub open_watches: AtomicUsize,
    /// The address clients use, for `/api`'s serverAddressByClientCIDRs.
    pub listen: SocketAddrV4,
    /// The user the token authenticates as.
    pub user: String,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub fn new(listen: SocketAddrV4, token: String, user: String) -> State {
        let store = Store::new();
        let (revs, _) = watch::channel(store.rev());
        let (faults, _) = watch::channel(Faults::default());
        State {
            store: Mutex::new(store),
            revs,
            faults,
            token: Mutex::new(token),
            rbac: Mutex::new(None),
            log: RequestLog::default(),
            open_watches: AtomicUsize::new(0),
            listen,
            user,
        }
    }

    pub fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    /// Runs a write and then, if it changed anything, wakes the watches.
    pub fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = lock(&self.store);
        let out = f(&mut store);
        let rev = store.rev();
        drop(store);
        self.revs.send_if_modified(|r| std::mem::replace(r, rev) != rev);
        out
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    pub fn set_faults(&self, f: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(f);
    }
}

/// Counts an open watch for as long as it lives.
#[derive(Debug)]
pub struct OpenWatch<'a>(&'a State);

impl<'a> OpenWatch<'a> {
    pub fn new(state: &'a State) -> OpenWatch<'a> {
        state.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(state)
    }
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until the fault switches satisfy `pred` (at once if they do).
/// Keeps watch's non-`Send` borrow out of the callers' futures.
pub async fn until(rx: &mut watch::Receiver<Faults>, pred: impl FnMut(&Faults) -> bool) {
    let _ = rx.wait_for(pred).await.is_ok();
}
