//! What every task tells the control core: the core is the only owner of
//! protocol state, and everything else reaches it through these messages.

use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use weft_proto::fastdp::FastDpHeartbeat;
use weft_proto::PeerName;

/// Everything the I/O tasks, the data path and the API tell the core.
#[derive(Debug)]
pub enum Command {
    Connect {
        peers: Vec<String>,
        replace: bool,
    },
    Forget {
        peers: Vec<String>,
    },
    Accepted {
        stream: TcpStream,
        addr: SocketAddr,
    },
    Dialed {
        target: String,
        result: Result<(TcpStream, SocketAddr), String>,
    },
    Input {
        id: u64,
        data: Vec<u8>,
    },
    Closed {
        id: u64,
        reason: String,
    },
    IpamAllocate {
        container_id: String,
        ifname: String,
        reply: crate::ipam::Waiter,
    },
    IpamRelease {
        container_id: String,
        ifname: Option<String>,
        reply: oneshot::Sender<usize>,
    },
    IpamLookup {
        container_id: String,
        ifname: String,
        reply: oneshot::Sender<Option<crate::ipam::Lease>>,
    },
    IpamGc {
        valid: Vec<(String, String)>,
        reply: oneshot::Sender<usize>,
    },
    Rmpeer {
        peer: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A runtime asked whether IPAM is ready.
    IpamWanted,
    /// The pod MACs on our bridge, as the kernel task last read them.
    LocalMacs(Vec<weft_proto::ethernet::MacAddr>),
    /// The kernel task applied this generation of the fast-path state.
    FastDpApplied(u64),
    /// `weft reset` asks the router to exit.
    Shutdown,
    /// From the Kubernetes task: the node list or the API's health changed.
    Kube(crate::kube::KubeEvent),
    /// From the NAT task: the state of weft's nftables rules.
    Nat(crate::nat::NatState),
    /// The liveness probe: answered as soon as the core's loop turns.
    Ping(oneshot::Sender<()>),
    /// The peers the topology reaches now (for the reclaimer).
    Reachable(oneshot::Sender<std::collections::BTreeSet<PeerName>>),
    /// The kernel refused a datagram to this peer address as too big for
    /// the route: its path MTU may have shrunk.
    PathMtu(SocketAddr),
    /// Retire a dead peer's IPAM space (the reclaimer holds its claim).
    Reclaim {
        peer: PeerName,
        reply: oneshot::Sender<crate::ipam::ReclaimOutcome>,
    },
}

/// A UDP heartbeat seen by the data path, for the connection it belongs to.
#[derive(Debug)]
pub struct SleeveHeartbeat {
    pub sender: PeerName,
    pub conn_id: u64,
    pub from: SocketAddr,
}

/// Heartbeats from the data path threads, through one bounded queue so
/// that a flood of them can cost drops but never unbounded memory.
#[derive(Debug)]
pub enum Heartbeat {
    Sleeve(SleeveHeartbeat),
    FastDp(FastDpHeartbeat),
}
