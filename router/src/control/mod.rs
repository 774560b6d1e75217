//! TCP I/O for control connections: accepting, dialing, and one reader and
//! one writer task per connection. These tasks only move bytes; every
//! protocol decision is made by the core driving `weft_proto`'s state
//! machines.

use crate::command::Command;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::AbortHandle;

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("empty peer address")]
    Empty,
    #[error("port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
}

/// Splits `host[:port]` (or `[v6]:port`) into host and port, defaulting the
/// port to weft's.
pub fn parse_target(s: &str) -> Result<(String, u16), TargetError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(TargetError::Empty);
    }
    let port_of = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(TargetError::BadPort(p.to_string())),
    };
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, "")) => Ok((host.to_string(), crate::config::DEFAULT_PORT)),
            Some((host, port)) => match port.strip_prefix(':') {
                Some(p) => Ok((host.to_string(), port_of(p)?)),
                None => Err(TargetError::BadPort(port.to_string())),
            },
            None => Err(TargetError::BadPort(s.to_string())),
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, _)) if host.contains(':') => Ok((s.to_string(), crate::config::DEFAULT_PORT)),
        Some((host, port)) if !host.is_empty() => Ok((host.to_string(), port_of(port)?)),
        Some(_) => Err(TargetError::Empty),
        None => Ok((s.to_string(), crate::config::DEFAULT_PORT)),
    }
}

/// Canonical text of a target, so `a` and `a:6783` are the same target.
pub fn canonical_target(s: &str) -> Result<String, TargetError> {
    let (host, port) = parse_target(s)?;
    Ok(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

/// Whether `s` names an address of this host (e.g. a node list that
/// includes ourselves): binding to it succeeds only if it is local.
pub fn is_local_target(s: &str) -> bool {
    let Ok((host, _)) = parse_target(s) else { return false };
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| std::net::UdpSocket::bind((ip, 0)).is_ok())
}

pub async fn accept_loop(listener: TcpListener, tx: UnboundedSender<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if tx.send(Command::Accepted { stream, addr }).is_err() {
                    return;
                }
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub fn spawn_dial(target: String, tx: UnboundedSender<Command>) {
    tokio::spawn(async move {
        let result = dial(&target).await;
        let _ = tx.send(Command::Dialed { target, result });
    });
}

async fn dial(target: &str) -> Result<(TcpStream, SocketAddr), String> {
    let (host, port) = parse_target(target).map_err(|e| e.to_string())?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolved to no address");
    for addr in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(err)) => last = format!("connect to {addr}: {err}"),
            Err(_) => last = format!("connect to {addr}: timed out"),
        }
    }
    Err(last)
}

/// Starts the reader and writer tasks of one connection. Returns the
/// writer's queue (dropping it closes the connection after flushing) and
/// the reader's abort handle.
pub fn spawn_io(id: u64, stream: TcpStream, tx: UnboundedSender<Command>) -> (UnboundedSender<Vec<u8>>, AbortHandle) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
    let reader_tx = tx.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let reason = loop {
            match rd.read(&mut buf).await {
                Ok(0) => break "connection closed by peer".to_string(),
                Ok(n) => {
                    if reader_tx.send(Command::Input { id, data: buf[..n].to_vec() }).is_err() {
                        return;
                    }
                }
                Err(err) => break format!("read: {err}"),
            }
        };
        let _ = reader_tx.send(Command::Closed { id, reason });
    });
    tokio::spawn(async move {
        while let Some(data) = wrx.recv().await {
            if let Err(err) = wr.write_all(&data).await {
                let _ = tx.send(Command::Closed { id, reason: format!("write: {err}") });
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    (wtx, reader.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("10.0.0.1"), Ok(("10.0.0.1".into(), 6783)));
        assert_eq!(parse_target("10.0.0.1:7000"), Ok(("10.0.0.1".into(), 7000)));
        assert_eq!(parse_target("node-a"), Ok(("node-a".into(), 6783)));
        assert_eq!(parse_target("[fd00::1]:7000"), Ok(("fd00::1".into(), 7000)));
        assert_eq!(parse_target("fd00::1"), Ok(("fd00::1".into(), 6783)));
        assert!(parse_target("").is_err());
        assert!(parse_target("a:0").is_err());
        assert!(parse_target("a:x").is_err());
        assert!(parse_target(":80").is_err());
        assert_eq!(canonical_target("a").as_deref(), Ok("a:6783"));
        assert_eq!(canonical_target("[fd00::1]").as_deref(), Ok("[fd00::1]:6783"));
    }
}
