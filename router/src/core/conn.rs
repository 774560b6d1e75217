//! One control connection as the core holds it: the protocol state machine,
//! its I/O tasks and sleeve, and how its failures are counted.

use crate::metrics::{ConnFailure, Metrics};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use weft_proto::control::{Connection, ConnectionError, RemotePeer};
use weft_proto::PeerName;

/// How a connection error counts: as a connection failure, and for
/// encryption problems also as a handshake failure.
pub(super) fn classify(err: &ConnectionError) -> (ConnFailure, Option<crate::metrics::HandshakeFailure>) {
    use crate::metrics::HandshakeFailure;
    use weft_proto::control::Refusal;
    let handshake = match err {
        ConnectionError::Refused(Refusal::PasswordDiffers) | ConnectionError::PeerRefused => {
            Some(HandshakeFailure::PasswordDiffers)
        }
        ConnectionError::Refused(Refusal::PeerHasNoPassword | Refusal::PeerRequiresPassword) => {
            Some(HandshakeFailure::EncryptionMismatch)
        }
        ConnectionError::Refused(Refusal::CipherMismatch { .. }) => Some(HandshakeFailure::CipherMismatch),
        ConnectionError::Noise(_) | ConnectionError::HandshakeFrame(_) => Some(HandshakeFailure::Malformed),
        _ => None,
    };
    let conn = match err {
        ConnectionError::HeartbeatTimeout { .. } => ConnFailure::HeartbeatTimeout,
        ConnectionError::SelfConnection => ConnFailure::SelfConnection,
        ConnectionError::Handshake(_) | ConnectionError::HandshakeTimeout { .. } => ConnFailure::Handshake,
        _ if handshake.is_some() => ConnFailure::Handshake,
        _ => ConnFailure::Protocol,
    };
    (conn, handshake)
}

/// One sleeve heartbeat to `addr`, sealed on an encrypted connection.
pub(super) fn send_sleeve_heartbeat(
    udp: &UdpSocket,
    addr: SocketAddr,
    local: PeerName,
    c: &Conn,
    now: Instant,
    metrics: &Metrics,
) {
    use weft_proto::sleeve::{write_heartbeat, SEALED_HEADER_LEN, SEAL_OVERHEAD};
    const PLAIN: usize = 64;
    let mut buf = [0u8; PLAIN + SEAL_OVERHEAD];
    let front = if c.session.is_some() { SEALED_HEADER_LEN } else { 0 };
    let plain = match write_heartbeat(&mut buf[front..], local, c.proto.conn_id(), PLAIN) {
        Ok(plain) => plain,
        Err(err) => return tracing::warn!("sleeve heartbeat to {addr}: {err}"),
    };
    let len = match &c.session {
        None => plain,
        Some(session) => match session.sealing(metrics).seal(&mut buf, plain, local, now) {
            Ok(len) => len,
            Err(err) => return tracing::warn!("sealing a sleeve heartbeat to {addr}: {err}"),
        },
    };
    if let Err(err) = udp.send_to(&buf[..len], addr) {
        tracing::debug!("sleeve heartbeat to {addr}: {err}");
    }
}

/// Where a connection came from: a target we dial (user-given or learned
/// through gossip) or an inbound accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Inbound,
    Target(String),
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) proto: Connection,
    pub(super) addr: SocketAddr,
    pub(super) origin: Origin,
    pub(super) writer: UnboundedSender<Vec<u8>>,
    pub(super) reader: AbortHandle,
    pub(super) udp_addr: Option<SocketAddr>,
    pub(super) path_mtu: u32,
    pub(super) since: Instant,
    /// The sleeve's keys, on an encrypted connection.
    pub(super) session: Option<Arc<crate::datapath::sleeve_session::SleeveSession>>,
    /// Control-stream key rotations already counted in the metrics.
    pub(super) rekeys_counted: (u64, u64),
}

impl Conn {
    pub(super) fn remote(&self) -> Option<&RemotePeer> {
        self.proto.remote()
    }
}

/// An inbound connection that failed its handshake.
#[derive(Debug)]
pub(super) struct Refused {
    pub(super) address: SocketAddr,
    pub(super) peer: Option<String>,
    pub(super) reason: String,
    pub(super) at: Instant,
}

/// How long a refused inbound connection stays in `weft status`.
pub(super) const REFUSED_SHOWN_FOR: Duration = Duration::from_secs(120);

impl super::Core {
    /// The data path says the kernel refused a datagram to `addr` as too
    /// big: read the route's MTU again for every connection to that host,
    /// so each neighbour's largest frame follows the path (frames beyond it
    /// get ICMP "fragmentation needed" instead of vanishing).
    pub(super) fn recheck_path_mtu(&mut self, addr: SocketAddr) {
        let Ok(mtu) = crate::path_mtu::path_mtu(addr.ip()) else { return };
        let mut changed = false;
        for c in self.conns.values_mut().filter(|c| c.udp_addr.is_some_and(|a| a.ip() == addr.ip())) {
            if c.path_mtu != mtu {
                tracing::info!("path MTU toward {}: {} -> {mtu}", addr.ip(), c.path_mtu);
                c.path_mtu = mtu;
                changed = true;
            }
        }
        if changed {
            self.refresh_forwarding();
            self.dirty = true;
        }
    }
}
