//! The router's side of IPAM: owns the `weft_proto::ipam` state machine,
//! persists it crash-safely under --data-dir, answers the CNI plugin's
//! requests (holding them while space is being agreed or obtained), and
//! gives the node bridge its gateway address from the range.

use crate::identity::write_atomic;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use weft_proto::ipam::{AllocError, Ipam, Range};
use weft_proto::PeerName;

pub(crate) const STATE_FILE: &str = "ipam.bin";
/// How long an allocation request waits for space before the plugin is
/// told to try again later.
const ALLOC_WAIT: Duration = Duration::from_secs(20);
/// The allocation that gives the node bridge its address.
const EXPOSE_ID: &str = "weft:expose";

#[derive(Debug, Clone, serde::Serialize)]
pub struct Lease {
    pub ip: String,
    pub gateway: String,
    pub mtu: u32,
    pub bridge: String,
}

/// What retiring a dead peer (`rmpeer`) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReclaimOutcome {
    /// Tombstoned now; this many of its addresses came to us at once (its
    /// other heirs take the rest as the tombstone reaches them).
    Removed {
        taken_over: u64,
    },
    AlreadyRemoved,
    /// IPAM never heard of it (it never took part).
    Unknown,
    /// It is reachable: only peers gone for good are removed.
    Reachable,
    Refused(String),
}

impl ReclaimOutcome {
    pub fn describe(&self, name: PeerName) -> String {
        match self {
            ReclaimOutcome::Removed { taken_over: 0 } => {
                format!("{name} removed; its space goes to the peers next to it in the ring")
            }
            ReclaimOutcome::Removed { taken_over } => {
                format!("{name} removed; {taken_over} of its addresses taken over by this peer")
            }
            ReclaimOutcome::AlreadyRemoved => format!("{name} was already removed"),
            ReclaimOutcome::Unknown => format!("peer {name} is unknown to IPAM"),
            ReclaimOutcome::Reachable => {
                format!("peer {name} is reachable: only remove peers that are gone for good")
            }
            ReclaimOutcome::Refused(why) => why.clone(),
        }
    }
}

#[derive(Debug)]
pub enum IpamReply {
    Ok(Lease),
    /// Not now: no space agreed or obtainable yet (CNI "try again later").
    Unavailable(String),
    /// This peer must not allocate (e.g. it was removed with rmpeer).
    Refused(String),
}

pub type Waiter = oneshot::Sender<IpamReply>;

#[derive(Debug)]
struct Pending {
    container_id: String,
    ifname: String,
    deadline: Instant,
    reply: Waiter,
}

/// What the core must do after IPAM changed.
#[derive(Debug, Default)]
pub struct Effects {
    /// Gossip this to every connection.
    pub gossip: Option<Vec<u8>>,
    /// Put this address on the bridge (idempotent).
    pub expose: Option<(Ipv4Addr, u8)>,
}

#[derive(Debug)]
pub struct IpamService {
    ipam: Ipam,
    path: PathBuf,
    pending: Vec<Pending>,
    gateway: Option<Ipv4Addr>,
    exposed: bool,
    /// Someone (a CNI STATUS, i.e. a runtime about to create pods) asked
    /// whether the network is ready: start agreeing on the range now.
    wanted: bool,
    mtu: u32,
    bridge: String,
    local: PeerName,
}

impl IpamService {
    /// Restores persisted state, or starts fresh (also when the persisted
    /// range differs from the configured one: said loudly, old data dropped).
    pub fn load(
        local: PeerName,
        data_dir: &std::path::Path,
        range: Range,
        consensus_count: usize,
        mtu: u32,
        bridge: &str,
        now: Instant,
    ) -> Result<Self> {
        let path = data_dir.join(STATE_FILE);
        let ipam = match std::fs::read(&path) {
            Ok(bytes) => match Ipam::restore(local, &bytes, now) {
                Ok(ipam) if ipam.range() == range => {
                    tracing::info!("IPAM: restored {} allocations in {range}", ipam.allocations().count());
                    ipam
                }
                Ok(ipam) => {
                    tracing::warn!(
                        "IPAM: --ipalloc-range is now {range} but the saved state is for {}: discarding the old allocations",
                        ipam.range()
                    );
                    Ipam::new(local, range, consensus_count, now)
                }
                Err(err) => {
                    // Refusing to start would take the node's network down;
                    // starting fresh is what `weave reset` would do anyway.
                    tracing::error!("IPAM: {} is unreadable ({err}); starting with empty IPAM state", path.display());
                    Ipam::new(local, range, consensus_count, now)
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ipam::new(local, range, consensus_count, now),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let gateway = ipam.lookup(EXPOSE_ID, bridge);
        Ok(IpamService {
            ipam,
            path,
            pending: Vec::new(),
            gateway,
            exposed: false,
            wanted: false,
            mtu,
            bridge: bridge.to_string(),
            local,
        })
    }

    /// A runtime checks readiness before its first pod (CNI STATUS): the
    /// answer must become "ready" without waiting for an ADD that will
    /// never come while it says "not ready".
    pub fn want(&mut self) {
        self.wanted = true;
    }

    pub fn range(&self) -> Range {
        self.ipam.range()
    }

    /// The range has been divided and this peer may allocate.
    pub fn is_ready(&self) -> bool {
        self.ipam.is_ready()
    }

    /// This node's share of the range, `(first, last)` inclusive.
    pub fn owned_ranges(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        self.ipam.owned_ranges()
    }

    /// How many peers the initial division waits for (a majority agrees).
    pub fn set_consensus_count(&mut self, now: Instant, count: usize) {
        if !self.ipam.is_ready() && count != self.ipam.consensus_count() {
            tracing::info!("IPAM: the initial division of {} waits for a majority of {count} nodes", self.range());
        }
        self.ipam.set_consensus_count(now, count);
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    fn lease(&self, ip: Ipv4Addr, gateway: Ipv4Addr) -> Lease {
        Lease {
            ip: format!("{ip}/{}", self.range().prefix()),
            gateway: gateway.to_string(),
            mtu: self.mtu,
            bridge: self.bridge.clone(),
        }
    }

    /// Tries to allocate now; `Err(())` means "not yet", keep waiting.
    fn try_allocate(&mut self, now: Instant, container_id: &str, ifname: &str) -> Result<IpamReply, ()> {
        let gateway = match self.gateway {
            Some(g) => g,
            None => match self.ipam.allocate(now, EXPOSE_ID, &self.bridge) {
                Ok(g) => {
                    self.gateway = Some(g);
                    g
                }
                Err(e) => return Self::not_yet(e),
            },
        };
        match self.ipam.allocate(now, container_id, ifname) {
            Ok(ip) => Ok(IpamReply::Ok(self.lease(ip, gateway))),
            Err(e) => Self::not_yet(e),
        }
    }

    fn not_yet(e: AllocError) -> Result<IpamReply, ()> {
        match e {
            AllocError::Pending | AllocError::NotReady => Err(()),
            other => Ok(IpamReply::Refused(other.to_string())),
        }
    }

    pub fn allocate(&mut self, now: Instant, container_id: String, ifname: String, reply: Waiter) {
        match self.try_allocate(now, &container_id, &ifname) {
            Ok(answer) => {
                let _ = reply.send(answer);
            }
            Err(()) => self.pending.push(Pending { container_id, ifname, deadline: now + ALLOC_WAIT, reply }),
        }
    }

    pub fn lookup(&self, container_id: &str, ifname: &str) -> Option<Lease> {
        let ip = self.ipam.lookup(container_id, ifname)?;
        Some(self.lease(ip, self.gateway?))
    }

    pub fn release(&mut self, container_id: &str, ifname: Option<&str>) -> usize {
        if container_id == EXPOSE_ID {
            return 0;
        }
        self.ipam.release(container_id, ifname)
    }

    /// Releases every allocation not in `valid` (CNI GC). The bridge's own
    /// address is never collected.
    pub fn gc(&mut self, valid: &[(String, String)]) -> usize {
        let stale: Vec<(String, String)> = self
            .ipam
            .allocations()
            .filter(|(id, ifname, _)| *id != EXPOSE_ID && !valid.iter().any(|(v, i)| v == id && i == ifname))
            .map(|(id, ifname, _)| (id.to_string(), ifname.to_string()))
            .collect();
        stale.iter().map(|(id, ifname)| self.ipam.release(id, Some(ifname))).sum()
    }

    /// Tombstones a dead peer so its space goes to its heirs (`rmpeer`).
    pub fn retire(&mut self, now: Instant, name: PeerName) -> ReclaimOutcome {
        use weft_proto::ipam::RmpeerError;
        match self.ipam.rmpeer(now, name) {
            Ok(o) if o.newly_tombstoned => ReclaimOutcome::Removed { taken_over: o.addresses_taken_over },
            Ok(_) => ReclaimOutcome::AlreadyRemoved,
            Err(RmpeerError::UnknownPeer(_)) => ReclaimOutcome::Unknown,
            Err(RmpeerError::Reachable(_)) => ReclaimOutcome::Reachable,
            Err(err) => ReclaimOutcome::Refused(err.to_string()),
        }
    }

    pub fn handle_gossip(&mut self, now: Instant, bytes: &[u8]) -> Result<bool> {
        Ok(self.ipam.handle_gossip(now, bytes)?)
    }

    pub fn encode_gossip(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.ipam.encode_gossip(&mut out);
        out
    }

    pub fn set_peers(&mut self, now: Instant, known: &[PeerName], reachable: &[PeerName]) {
        self.ipam.set_peers(now, known, reachable);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.pending.iter().map(|p| p.deadline).min();
        match (self.ipam.poll_timeout(), pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ipam.poll_timeout().is_some_and(|t| t <= now) {
            self.ipam.handle_timeout(now);
        }
    }

    /// Retries waiting requests, persists and says what to gossip and
    /// expose. Called after anything that may have changed IPAM.
    pub fn settle(&mut self, now: Instant) -> Effects {
        let mut still = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if p.reply.is_closed() {
                continue;
            }
            match self.try_allocate(now, &p.container_id, &p.ifname) {
                Ok(answer) => {
                    let _ = p.reply.send(answer);
                }
                Err(()) if p.deadline <= now => {
                    let why = if self.ipam.is_ready() {
                        "no free address could be obtained from the cluster in time"
                    } else {
                        "the cluster has not agreed on the IP range division yet (are enough peers connected?)"
                    };
                    let _ = p.reply.send(IpamReply::Unavailable(why.to_string()));
                }
                Err(()) => still.push(p),
            }
        }
        self.pending = still;
        // The bridge gets its address as soon as space exists (or a runtime
        // asks), not only with the first pod, so the node can reach pods
        // from the start. Clusters that never use weft's IPAM get none.
        if self.gateway.is_none() && (self.ipam.is_ready() || self.wanted) {
            if let Ok(g) = self.ipam.allocate(now, EXPOSE_ID, &self.bridge) {
                self.gateway = Some(g);
            }
        }
        let mut effects = Effects::default();
        let (gossip, persist) = self.ipam.take_dirty();
        if persist {
            let mut bytes = Vec::new();
            self.ipam.persist(&mut bytes);
            if let Err(err) = write_atomic(&self.path, &bytes) {
                tracing::error!("IPAM: cannot persist state to {}: {err:#}", self.path.display());
            }
        }
        if gossip {
            effects.gossip = Some(self.encode_gossip());
        }
        if let (Some(g), false) = (self.gateway, self.exposed) {
            self.exposed = true;
            effects.expose = Some((g, self.range().prefix()));
        }
        effects
    }

    pub fn conflicts(&self) -> usize {
        self.ipam.conflicts().len()
    }

    pub fn render_status(&self, nickname: impl Fn(PeerName) -> String) -> String {
        let st = self.ipam.status();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Range: {}  ready: {}  gateway: {}",
            self.range(),
            self.ipam.is_ready(),
            self.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
        );
        let total = self.range().size() as f64;
        // A removed peer whose space has been taken over is gone for good.
        for p in st.peers.iter().filter(|p| !(p.tombstoned && p.owned == 0)) {
            let _ = writeln!(
                out,
                "{}({})  {} IPs ({:.1}% of total) - used: {}, free: {}{}",
                p.name,
                nickname(p.name),
                p.owned,
                100.0 * p.owned as f64 / total,
                p.owned.saturating_sub(p.free),
                p.free,
                match (p.tombstoned, p.reachable || p.name == self.local) {
                    (true, _) => " - removed, awaiting takeover",
                    (false, true) => "",
                    (false, false) => " - unreachable!",
                }
            );
        }
        for c in self.ipam.conflicts() {
            let _ = writeln!(out, "CONFLICT: {c}");
        }
        out
    }

    pub fn report(&self, nickname: impl Fn(PeerName) -> String) -> Value {
        let st = self.ipam.status();
        json!({
            "Range": self.range().to_string(),
            "Ready": self.ipam.is_ready(),
            "Gateway": self.gateway.map(|g| g.to_string()),
            "DefaultSubnet": self.range().to_string(),
            "Entries": st.peers.iter().filter(|p| !(p.tombstoned && p.owned == 0)).map(|p| json!({
                "Peer": p.name.to_string(),
                "Nickname": nickname(p.name),
                "Size": p.owned,
                "Free": p.free,
                "IsKnownPeer": p.reachable || p.name == self.local,
            })).collect::<Vec<_>>(),
            "Allocations": self.ipam.allocations().map(|(id, ifname, ip)| json!({
                "ContainerID": id, "Ifname": ifname, "Address": ip.to_string(),
            })).collect::<Vec<_>>(),
            "Conflicts": self.ipam.conflicts().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        })
    }

    /// (used, free, unreachable) address counts for the metrics page.
    pub fn gauges(&self) -> (u64, u64, u64) {
        let st = self.ipam.status();
        (st.used, st.free, st.unreachable)
    }
}
