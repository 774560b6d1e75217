//! Who a server sees: a TCP listener inside a namespace that answers each
//! connection with the address it came from, and a client that connects
//! (through whatever NAT lies between) and reads that answer. The answer
//! travels back on the connection, so getting it also proves the reply
//! path (e.g. that a DNAT was undone for the client).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{in_netns, spawn_in_netns, Netns};

/// What the listener writes before the address.
const GREETING: &str = "weft-peer ";
/// Longest wait for one connection attempt or its answer.
const ATTEMPT: Duration = Duration::from_secs(2);

/// A listener on `0.0.0.0:port` in a namespace, answering until dropped.
#[derive(Debug)]
pub struct PeerEcho {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl PeerEcho {
    /// Starts listening in `ns` (returns once the socket is bound).
    pub fn start(ns: &Netns, port: u16) -> Result<PeerEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel::<Result<(), String>>();
        let stop_flag = stop.clone();
        let thread = spawn_in_netns(ns.name(), move || {
            let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound_tx.send(Err(format!("bind 0.0.0.0:{port}: {e}")));
                    return Ok(());
                }
            };
            listener.set_nonblocking(true)?;
            let _ = bound_tx.send(Ok(()));
            while !stop_flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        // A reply lost to a broken return path is the
                        // client's failure to report, not ours.
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(ATTEMPT));
                        let _ = writeln!(stream, "{GREETING}{}", peer.ip());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => return Err(e).context("accept"),
                }
            }
            Ok(())
        });
        let bound = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("listener thread in {} never started", ns.name()))?;
        let echo = PeerEcho { port, stop, thread: Some(thread) };
        bound.map_err(|e| anyhow!("in {}: {e}", ns.name()))?;
        Ok(echo)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection from `client` to `target`: the address the listener saw.
pub fn peer_seen_once(client: &Netns, target: SocketAddr) -> Result<Ipv4Addr> {
    in_netns(client.name(), || -> Result<Ipv4Addr> {
        let mut stream = TcpStream::connect_timeout(&target, ATTEMPT).with_context(|| format!("connect {target}"))?;
        stream.set_read_timeout(Some(ATTEMPT))?;
        let mut text = String::new();
        stream.read_to_string(&mut text).with_context(|| format!("reading the answer of {target}"))?;
        let addr = text
            .trim()
            .strip_prefix(GREETING)
            .with_context(|| format!("{target} answered {text:?}, not a peer address"))?;
        match addr.parse::<IpAddr>()? {
            IpAddr::V4(v4) => Ok(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().with_context(|| format!("{target} saw IPv6 peer {v6}")),
        }
    })?
}

/// Connects from `client` to `target` until one connection gets its answer
/// (within `timeout`); the address the listener saw.
pub fn peer_seen(client: &Netns, target: SocketAddr, timeout: Duration) -> Result<Ipv4Addr> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match peer_seen_once(client, target) {
            Ok(addr) => return Ok(addr),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match last {
        Some(e) => Err(e.context(format!("{} never got an answer from {target} within {timeout:?}", client.name()))),
        None => bail!("no attempt within {timeout:?}"),
    }
}
