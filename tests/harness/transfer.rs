//! Byte-exact TCP transfers between two namespaces, and the deterministic
//! pseudo-random bytes they (and garbage injectors) use.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::{enter_netns, Netns};

const CHUNK: usize = 64 * 1024;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with bytes `offset..offset+buf.len()` of the stream named by
/// `seed`. Position-addressable, so sender and receiver need no shared state.
pub fn payload_fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let word = |k: u64| splitmix64(seed ^ splitmix64(k)).to_le_bytes();
    let mut pos = offset;
    let mut rest = buf;
    // Unaligned head, byte by byte.
    while pos & 7 != 0 && !rest.is_empty() {
        rest[0] = word(pos / 8)[(pos % 8) as usize];
        rest = &mut rest[1..];
        pos += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&word(pos / 8));
        pos += 8;
    }
    let tail = words.into_remainder();
    let last = word(pos / 8);
    let n = tail.len();
    tail.copy_from_slice(&last[..n]);
}

/// `len` deterministic pseudo-random bytes.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    payload_fill(seed, 0, &mut v);
    v
}

/// Seed of the bytes [`tcp_transfer`] sends when asked for `bytes` bytes,
/// so a test can tell them apart from anything else (e.g. on the wire).
pub fn transfer_seed(bytes: u64) -> u64 {
    bytes ^ 0x5EED_F00D_FEED
}

/// Result of a verified transfer.
#[derive(Debug, Clone, Copy)]
pub struct TransferStats {
    pub bytes: u64,
    /// From accept to end of stream at the receiver.
    pub elapsed: Duration,
}

impl TransferStats {
    pub fn mbit_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Sends `bytes` pseudo-random bytes over TCP from namespace `from` to a
/// listener on `to_ip` inside namespace `to`, verifying every byte at the
/// receiver. Everything is bounded by `timeout`.
pub fn tcp_transfer(from: &Netns, to: &Netns, to_ip: IpAddr, bytes: u64, timeout: Duration) -> Result<TransferStats> {
    let deadline = Instant::now() + timeout;
    let seed = transfer_seed(bytes);
    let sender_failed = AtomicBool::new(false);
    let (port_tx, port_rx) = mpsc::channel::<u16>();
    let (to_ns, from_ns) = (to.name(), from.name());
    let (recv, send) = thread::scope(|s| {
        let receiver = s.spawn(|| {
            enter_netns(to_ns)?;
            receive(to_ip, port_tx, bytes, seed, deadline, &sender_failed)
        });
        let sender = s.spawn(|| {
            let r = enter_netns(from_ns).and_then(|()| send(to_ip, port_rx, bytes, seed, deadline));
            if r.is_err() {
                sender_failed.store(true, Ordering::SeqCst);
            }
            r
        });
        (join(receiver), join(sender))
    });
    let what = format!("TCP transfer of {bytes} bytes {from_ns} -> {to_ip} ({to_ns})");
    match (recv, send) {
        (Ok(stats), Ok(())) => Ok(stats),
        (Err(r), Ok(())) => Err(r.context(what)),
        (Ok(_), Err(s)) => Err(s.context(format!("{what}: receiver ok but sender failed"))),
        (Err(r), Err(s)) => Err(r.context(format!("{what}; sender also failed: {s:#}"))),
    }
}

fn join<T>(h: thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join().unwrap_or_else(|_| Err(anyhow!("transfer thread panicked")))
}

fn remaining(deadline: Instant) -> Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("transfer timed out"))
}

fn receive(
    ip: IpAddr,
    port_tx: mpsc::Sender<u16>,
    bytes: u64,
    seed: u64,
    deadline: Instant,
    sender_failed: &AtomicBool,
) -> Result<TransferStats> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
    port_tx.send(listener.local_addr()?.port()).context("sender gone")?;
    listener.set_nonblocking(true)?;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if sender_failed.load(Ordering::SeqCst) {
                    bail!("sender failed before connecting");
                }
                remaining(deadline).context("no connection accepted")?;
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    let start = Instant::now();
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(remaining(deadline)?))?;
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        remaining(deadline).with_context(|| format!("received {received} of {bytes} bytes"))?;
        let n = stream.read(&mut got).with_context(|| format!("read after {received} of {bytes} bytes"))?;
        if n == 0 {
            break;
        }
        if received + n as u64 > bytes {
            bail!("received more than the {bytes} bytes sent");
        }
        payload_fill(seed, received, &mut want[..n]);
        if got[..n] != want[..n] {
            let i = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b).unwrap_or(0);
            bail!("payload corrupted at byte offset {}", received + i as u64);
        }
        received += n as u64;
    }
    if received != bytes {
        bail!("stream ended after {received} of {bytes} bytes");
    }
    Ok(TransferStats { bytes, elapsed: start.elapsed() })
}

fn send(ip: IpAddr, port_rx: mpsc::Receiver<u16>, bytes: u64, seed: u64, deadline: Instant) -> Result<()> {
    let port =
        port_rx.recv_timeout(remaining(deadline)?.min(Duration::from_secs(10))).context("receiver never listened")?;
    let addr = SocketAddr::new(ip, port);
    let mut stream = TcpStream::connect_timeout(&addr, remaining(deadline)?.min(Duration::from_secs(10)))
        .with_context(|| format!("connect {addr}"))?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        remaining(deadline).with_context(|| format!("sent {sent} of {bytes} bytes"))?;
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        payload_fill(seed, sent, &mut buf[..n]);
        stream.write_all(&buf[..n]).with_context(|| format!("write after {sent} of {bytes} bytes"))?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    Ok(())
}
