//! The fast path as the control core sees it: one [`PathSelector`] per
//! connected peer, the heartbeats that drive them, and from their verdicts
//! the kernel forwarding state ([`Desired`]) and the set of peers the sleeve
//! must leave alone. The kernel side lives in `fastdp_kernel`.
//!
//! A peer's frames go over exactly one path. The kernel floods to the peers
//! in its FDB, the sleeve to every other reachable peer; the switch is
//! ordered so that a frame can be lost at the instant of switching but
//! never delivered twice: a peer joins the fast-path set for the data path
//! before the kernel learns of it, and leaves it only once the kernel has
//! confirmed it forgot the peer.

pub mod kernel;
mod socket;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use weft_proto::ethernet::MacAddr;
use weft_proto::fastdp::{fdb, FastDpHeartbeat, FdbEntry, Path, PathConfig, PathEvent, PathSelector, SleeveReason};
use weft_proto::PeerName;

use crate::metrics::Metrics;
use socket::HeartbeatSocket;

/// How long a peer whose connection ended keeps its kernel entries: longer
/// than a DaemonSet rolling restart, so traffic to it never stops, short
/// enough that a peer that is really gone doesn't keep receiving floods.
const ORPHAN_GRACE: Duration = Duration::from_secs(15);
/// How long kernel entries found at startup are kept for peers to
/// reconnect and claim them.
const INHERIT_GRACE: Duration = Duration::from_secs(20);

/// Whether this node can use the fast path at all.
#[derive(Debug, Clone)]
pub enum Availability {
    Enabled {
        vxlan: String,
        port: u16,
    },
    /// `--no-fastdp`.
    Disabled,
    /// A password is set: VXLAN would carry pods' traffic in clear. Says
    /// what the kernel lacks for an encrypted kernel path.
    Encrypted(String),
    /// The kernel refused the VXLAN device (or the heartbeat socket).
    Unavailable(String),
}

impl Availability {
    /// Why connections can't use the fast path because of this node.
    pub fn local_reason(&self) -> Option<SleeveReason> {
        match self {
            Availability::Enabled { .. } => None,
            Availability::Disabled => Some(SleeveReason::Disabled),
            Availability::Encrypted(_) => Some(SleeveReason::Encrypted),
            Availability::Unavailable(_) => Some(SleeveReason::NoKernelSupport),
        }
    }

    /// The `FastDP:` line of `weft status`.
    pub fn describe(&self) -> String {
        match self {
            Availability::Enabled { vxlan, port } => format!("enabled ({vxlan}, UDP {port})"),
            Availability::Disabled => "disabled (--no-fastdp)".to_string(),
            Availability::Encrypted(why) => format!("disabled (encrypted: {why})"),
            Availability::Unavailable(why) => format!("unavailable ({why})"),
        }
    }
}

/// The kernel forwarding state the fast path needs, in full: the kernel
/// task diffs it against what the kernel holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub generation: u64,
    /// The VXLAN device's own table: pod MACs, flood and heartbeat entries.
    pub vxlan: Vec<FdbEntry>,
    /// MACs the bridge must send to the VXLAN port.
    pub bridge: Vec<MacAddr>,
}

#[derive(Debug)]
struct PeerPath {
    /// The peer's id for the connection, which its heartbeats carry.
    remote_conn_id: u64,
    /// Ours, which ours carry.
    local_conn_id: u64,
    ip: IpAddr,
    selector: PathSelector,
    macs: Vec<MacAddr>,
}

/// What a connection that went away leaves in the kernel for a while.
#[derive(Debug)]
struct Orphan {
    ip: IpAddr,
    macs: Vec<MacAddr>,
    until: Instant,
}

#[derive(Debug)]
pub struct FastDp {
    availability: Availability,
    local: PeerName,
    cfg: PathConfig,
    /// Heartbeat frames are padded to this: 14 + pod MTU.
    probe_size: usize,
    socket: Option<HeartbeatSocket>,
    peers: HashMap<PeerName, PeerPath>,
    orphans: HashMap<PeerName, Orphan>,
    /// Kernel entries found at startup, by destination IP, until claimed.
    inherited: HashMap<IpAddr, Vec<MacAddr>>,
    inherited_until: Instant,
    /// Peers the kernel may still flood to: those of the last desired
    /// state not yet confirmed applied, and those of the applied one.
    in_kernel: HashSet<PeerName>,
    /// Pod MACs the bridge sends to the VXLAN port, as last confirmed.
    bridge_macs: HashSet<MacAddr>,
    /// The last desired state not yet confirmed: generation, peers, MACs.
    pending: Option<(u64, HashSet<PeerName>, HashSet<MacAddr>)>,
    generation: u64,
    /// `None` until the kernel task first read the bridge: sending an
    /// empty list then would make peers drop entries they still need.
    local_macs: Option<Vec<MacAddr>>,
    frame: Vec<u8>,
}

impl FastDp {
    pub fn new(
        availability: Availability,
        socket: Option<HeartbeatSocket>,
        inherited: Vec<FdbEntry>,
        local: PeerName,
        pod_mtu: u32,
        now: Instant,
    ) -> Self {
        // Only a flood entry says the peer at that IP was on the fast
        // path; heartbeat entries exist for sleeve connections too.
        let mut by_ip: HashMap<IpAddr, Vec<MacAddr>> =
            inherited.iter().filter(|e| e.mac == MacAddr::ZERO).map(|e| (e.dst, Vec::new())).collect();
        for e in &inherited {
            if let Some(macs) = by_ip.get_mut(&e.dst).filter(|_| e.mac != MacAddr::ZERO) {
                macs.push(e.mac);
            }
        }
        let probe_size = weft_proto::ethernet::HEADER_LEN + pod_mtu as usize;
        FastDp {
            availability,
            local,
            cfg: PathConfig::default(),
            probe_size,
            socket,
            peers: HashMap::new(),
            orphans: HashMap::new(),
            inherited: by_ip,
            inherited_until: now + INHERIT_GRACE,
            in_kernel: HashSet::new(),
            bridge_macs: HashSet::new(),
            pending: None,
            generation: 0,
            local_macs: None,
            frame: vec![0; probe_size.max(weft_proto::fastdp::heartbeat::MIN_LEN)],
        }
    }

    pub fn availability(&self) -> &Availability {
        &self.availability
    }

    pub fn enabled(&self) -> bool {
        matches!(self.availability, Availability::Enabled { .. })
    }

    /// A connection to `peer` completed its handshake. Returns true when
    /// the peer should be sent our MACs.
    pub fn connected(
        &mut self,
        now: Instant,
        peer: PeerName,
        remote_conn_id: u64,
        local_conn_id: u64,
        ip: IpAddr,
        remote_supports: bool,
    ) -> bool {
        let mut selector = PathSelector::new(self.availability.local_reason(), remote_supports, now, self.cfg);
        selector.set_probe_size(self.probe_size);
        // The connection replaces one whose fast path the kernel still
        // carries: keep it rather than switch off a working path.
        let previous = self.peers.remove(&peer).filter(|p| p.ip == ip && p.selector.path().is_fastdp()).map(|p| p.macs);
        let orphan = self.orphans.remove(&peer).filter(|o| o.ip == ip).map(|o| o.macs);
        let inherited = self.inherited.remove(&ip);
        let resumed = previous.or(orphan).or(inherited);
        let macs = match resumed {
            Some(macs) => {
                selector.resume(now);
                tracing::info!("fast path to {peer} at {ip} resumed from the kernel's state");
                macs
            }
            None => Vec::new(),
        };
        while selector.poll_event().is_some() {}
        self.peers.insert(peer, PeerPath { remote_conn_id, local_conn_id, ip, selector, macs });
        self.enabled() && remote_supports
    }

    /// The (last) connection to `peer` ended.
    pub fn disconnected(&mut self, now: Instant, peer: PeerName) {
        let Some(p) = self.peers.remove(&peer) else { return };
        if p.selector.path().is_fastdp() {
            self.orphans.insert(peer, Orphan { ip: p.ip, macs: p.macs, until: now + ORPHAN_GRACE });
        }
    }

    pub fn set_peer_macs(&mut self, peer: PeerName, mut macs: Vec<MacAddr>) -> bool {
        macs.retain(|m| m.is_unicast() && *m != MacAddr::ZERO);
        macs.sort();
        macs.dedup();
        match self.peers.get_mut(&peer) {
            Some(p) if p.macs != macs => {
                p.macs = macs;
                p.selector.path().is_fastdp()
            }
            _ => false,
        }
    }

    /// Our bridge's pod MACs as the kernel task last saw them; true when
    /// they changed (and must be sent to the peers).
    pub fn set_local_macs(&mut self, mut macs: Vec<MacAddr>) -> bool {
        macs.sort();
        macs.dedup();
        if self.local_macs.as_ref() == Some(&macs) {
            return false;
        }
        self.local_macs = Some(macs);
        true
    }

    pub fn local_macs(&self) -> Option<&[MacAddr]> {
        self.local_macs.as_deref()
    }

    pub fn handle_heartbeat(&mut self, now: Instant, hb: &FastDpHeartbeat, metrics: &Metrics) {
        match self.peers.get_mut(&hb.sender) {
            Some(p) if p.remote_conn_id == hb.conn_id && hb.receiver == self.local => {
                p.selector.handle_fastdp_heartbeat(now, hb.size, hb.receiving);
            }
            _ => {
                tracing::debug!("fast-path heartbeat from unknown connection {} of {}", hb.conn_id, hb.sender);
                metrics.drop(crate::metrics::Drop::UnknownPeer, 1);
            }
        }
    }

    /// Expires paths, orphans and inherited entries, sends due heartbeats.
    /// True when some peer changed path or kernel entries must change.
    pub fn poll(&mut self, now: Instant, metrics: &Metrics) -> bool {
        let mut changed = false;
        let before = self.orphans.len() + self.inherited.len();
        self.orphans.retain(|_, o| o.until > now);
        if now >= self.inherited_until {
            self.inherited.clear();
        }
        changed |= before != self.orphans.len() + self.inherited.len();
        for (name, p) in self.peers.iter_mut() {
            p.selector.handle_timeout(now);
            while let Some(PathEvent::Switched { from, to }) = p.selector.poll_event() {
                tracing::info!("connection to {name}: {from} -> {to}");
                metrics.path_switch(to.is_fastdp());
                changed = true;
            }
            if let Some(size) = p.selector.poll_send_heartbeat(now) {
                let hb = FastDpHeartbeat {
                    sender: self.local,
                    receiver: *name,
                    conn_id: p.local_conn_id,
                    receiving: p.selector.receiving(now),
                    size,
                };
                if let (Some(sock), Ok(len)) = (&self.socket, hb.write(&mut self.frame, size)) {
                    if let Err(err) = sock.send(&self.frame[..len]) {
                        tracing::debug!("fast-path heartbeat to {name}: {err}");
                    }
                }
            }
        }
        changed
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let selectors = self.peers.values().filter_map(|p| p.selector.poll_timeout());
        let orphans = self.orphans.values().map(|o| o.until);
        let inherited = (!self.inherited.is_empty()).then_some(self.inherited_until);
        selectors.chain(orphans).chain(inherited).min()
    }

    pub fn path(&self, peer: PeerName) -> Option<Path> {
        self.peers.get(&peer).map(|p| p.selector.path())
    }

    fn kernel_peers(&self) -> impl Iterator<Item = (PeerName, IpAddr, &[MacAddr])> + '_ {
        let live =
            self.peers.iter().filter(|(_, p)| p.selector.path().is_fastdp()).map(|(n, p)| (*n, p.ip, &p.macs[..]));
        let orphans = self.orphans.iter().map(|(n, o)| (*n, o.ip, &o.macs[..]));
        live.chain(orphans)
    }

    /// Peers the sleeve must not send pod frames to: the kernel carries
    /// (or may still carry) them.
    pub fn fastdp_set(&self) -> HashSet<PeerName> {
        let mut set: HashSet<PeerName> = self.kernel_peers().map(|(n, _, _)| n).collect();
        set.extend(self.in_kernel.iter().copied());
        if let Some((_, pending, _)) = &self.pending {
            set.extend(pending.iter().copied());
        }
        set
    }

    /// Pod MACs whose bridge entries the kernel confirmed: the bridge
    /// sends their unicast frames to the VXLAN port, never to the TAP.
    pub fn confirmed_macs(&self) -> HashSet<MacAddr> {
        self.bridge_macs.clone()
    }

    /// The kernel state for the current paths; a new generation each call.
    pub fn desired(&mut self) -> Desired {
        self.generation += 1;
        // Order matters: a MAC listed twice goes to the later node, so
        // what live connections say beats what was inherited.
        let inherited = self.inherited.iter().flat_map(|(ip, macs)| macs.iter().map(move |m| (*m, *ip)));
        let pods = self.kernel_peers().flat_map(|(_, ip, macs)| macs.iter().map(move |m| (*m, ip)));
        let pod_macs: Vec<(MacAddr, IpAddr)> = inherited.chain(pods).collect();
        // Heartbeats must get through on every capable connection, also
        // (above all) while it is on the sleeve.
        let heartbeats =
            self.peers.iter().filter(|(_, p)| p.selector.capable()).map(|(name, p)| (MacAddr(*name.as_bytes()), p.ip));
        let flood = self.kernel_peers().map(|(_, ip, _)| ip).chain(self.inherited.keys().copied());
        let vxlan = fdb::desired_entries(pod_macs.iter().copied().chain(heartbeats), flood);
        let bridge: BTreeSet<MacAddr> = pod_macs.iter().map(|(mac, _)| *mac).filter(|m| m.is_unicast()).collect();
        let peers: HashSet<PeerName> = self.kernel_peers().map(|(n, _, _)| n).collect();
        self.pending = Some((self.generation, peers, bridge.iter().copied().collect()));
        Desired { generation: self.generation, vxlan, bridge: bridge.into_iter().collect() }
    }

    /// The kernel task applied `generation`: peers it no longer floods to
    /// may now be given to the sleeve. True when that set changed.
    pub fn applied(&mut self, generation: u64) -> bool {
        match self.pending.take() {
            Some((g, peers, macs)) if g == generation => {
                let changed = peers != self.in_kernel || macs != self.bridge_macs;
                self.in_kernel = peers;
                self.bridge_macs = macs;
                changed
            }
            other => {
                self.pending = other;
                false
            }
        }
    }
}
