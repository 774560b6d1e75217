//! What the router shows the world: a snapshot the control core publishes
//! after every change, rendered as Weave-style text (`/status*`) and JSON
//! with Weave's field names (`/report`).

use serde_json::{json, Value};
use std::fmt::Write;
use weft_proto::PeerName;

#[derive(Debug, Clone, Default)]
pub struct PeerConnView {
    pub name: PeerName,
    pub nickname: String,
    pub address: String,
    pub outbound: bool,
    pub established: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PeerView {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    pub connections: Vec<PeerConnView>,
}

#[derive(Debug, Clone, Default)]
pub struct ConnView {
    pub address: String,
    pub outbound: bool,
    /// Weave's states: "pending", "established" for connections;
    /// "connecting", "retrying", "failed" for targets without one.
    pub state: &'static str,
    /// Free text: the overlay and encryption, or why it failed.
    pub info: String,
    pub overlay: &'static str,
    /// Sealed with the cluster password's keys (known once the handshake is done).
    pub encrypted: Option<bool>,
    /// The cipher negotiated for this connection, when encrypted.
    pub cipher: Option<&'static str>,
    /// Why a connection is on the sleeve rather than the fast path.
    pub reason: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct MacView {
    pub mac: String,
    pub peer: PeerName,
    pub nickname: String,
    pub age_secs: u64,
}

/// `kubernetes (3 nodes, synced 3s ago)`, or what is wrong.
fn describe_discovery(st: &crate::kube::DiscoveryStatus) -> String {
    let ago = |t: std::time::Instant| secs(t.elapsed().as_secs());
    match (&st.error, st.synced_at()) {
        (None, Some(at)) => format!("kubernetes ({} nodes, synced {} ago)", st.nodes, ago(at)),
        (None, None) => "kubernetes (listing nodes)".to_string(),
        (Some((err, since)), Some(at)) => {
            format!("kubernetes (API failing for {}: {err}; {} nodes as of {} ago)", ago(*since), st.nodes, ago(at))
        }
        (Some((err, since)), None) => format!("kubernetes (API failing for {}: {err}; no node list yet)", ago(*since)),
    }
}

/// `42s`, `3m12s`, `2h5m`.
fn secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ready: bool,
    /// Why the router is not ready yet (empty: ready).
    pub not_ready: Vec<String>,
    /// None: the Kubernetes API is not used.
    pub kube: Option<crate::kube::DiscoveryStatus>,
    /// The NAT task's `weft status` lines.
    pub nat: Vec<(String, String)>,
    pub name: PeerName,
    pub nickname: String,
    pub port: u16,
    pub encryption: bool,
    /// How connections pick their cipher, when encryption is on: the
    /// cipher `--cipher` fixed, or what `auto` does on this node.
    pub cipher: Option<String>,
    /// The fast path's availability on this node, as `weft status` says it.
    pub fastdp: String,
    /// The sleeve's offloads (TAP, UDP GSO/GRO).
    pub sleeve: String,
    pub discovery: bool,
    pub mtu: u32,
    pub bridge: String,
    pub peers: Vec<PeerView>,
    pub unicast_routes: Vec<(PeerName, PeerName)>,
    pub broadcast_routes: Vec<(PeerName, Vec<PeerName>)>,
    pub connections: Vec<ConnView>,
    pub targets: Vec<String>,
    pub termination_count: u64,
    pub macs: Vec<MacView>,
    pub ipam_ready: bool,
    pub ipam_range: String,
    pub ipam_gateway: Option<String>,
    pub ipam_text: String,
    pub ipam_report: Value,
    /// Addresses used, free, owned by unreachable peers; conflicts.
    pub ipam_gauges: (u64, u64, u64, u64),
}

/// Point-in-time values the metrics page needs from the core.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub connections: Vec<(&'static str, &'static str, usize)>,
    pub peers: usize,
    pub termination_count: u64,
    pub ipam: (u64, u64, u64, u64),
}

fn peer_label(name: PeerName, nickname: &str) -> String {
    format!("{name}({nickname})")
}

impl Snapshot {
    pub fn gauges(&self) -> Gauges {
        let mut connections: Vec<(&'static str, &'static str, usize)> = Vec::new();
        for c in &self.connections {
            match connections.iter_mut().find(|(s, o, _)| *s == c.state && *o == c.overlay) {
                Some(e) => e.2 += 1,
                None => connections.push((c.state, c.overlay, 1)),
            }
        }
        Gauges {
            connections,
            peers: self.peers.len(),
            termination_count: self.termination_count,
            ipam: self.ipam_gauges,
        }
    }

    fn connection_counts(&self) -> String {
        let mut states: Vec<(&str, usize)> = Vec::new();
        for c in &self.connections {
            match states.iter_mut().find(|(s, _)| *s == c.state) {
                Some(e) => e.1 += 1,
                None => states.push((c.state, 1)),
            }
        }
        states.sort();
        let detail: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        if detail.is_empty() {
            "0".to_string()
        } else {
            format!("{} ({})", self.connections.len(), detail.join(", "))
        }
    }

    pub fn render_status(&self) -> String {
        let established: usize =
            self.peers.iter().map(|p| p.connections.iter().filter(|c| c.established).count()).sum();
        let enabled = |b: bool| if b { "enabled" } else { "disabled" };
        let mut out = String::new();
        let _ = writeln!(out, "        Version: weft {}", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out);
        let _ = writeln!(out, "        Service: router");
        let _ = writeln!(
            out,
            "       Protocol: weft {}..{}",
            weft_proto::control::PROTOCOL_MIN_VERSION,
            weft_proto::control::PROTOCOL_MAX_VERSION
        );
        let _ = writeln!(out, "           Name: {}", peer_label(self.name, &self.nickname));
        match &self.cipher {
            Some(cipher) if self.encryption => {
                let _ = writeln!(out, "     Encryption: enabled ({cipher})");
            }
            _ => {
                let _ = writeln!(out, "     Encryption: {}", enabled(self.encryption));
            }
        }
        let _ = writeln!(out, "         FastDP: {}", self.fastdp);
        let _ = writeln!(out, "         Sleeve: {}", self.sleeve);
        match &self.kube {
            Some(k) => {
                let _ = writeln!(out, "  PeerDiscovery: {}; gossip {}", describe_discovery(k), enabled(self.discovery));
            }
            None => {
                let _ = writeln!(out, "  PeerDiscovery: {}", enabled(self.discovery));
            }
        }
        let _ = writeln!(out, "        Targets: {}", self.targets.len());
        let _ = writeln!(out, "    Connections: {}", self.connection_counts());
        let _ = writeln!(out, "          Peers: {} (with {} established connections)", self.peers.len(), established);
        let _ = writeln!(out, "         Bridge: {} (mtu {})", self.bridge, self.mtu);
        for (label, text) in &self.nat {
            let _ = writeln!(out, "{label:>15}: {text}");
        }
        if self.not_ready.is_empty() {
            let _ = writeln!(out, "          Ready: yes");
        } else {
            let _ = writeln!(out, "          Ready: no ({})", self.not_ready.join("; "));
        }
        out
    }

    pub fn render_peers(&self) -> String {
        let mut out = String::new();
        for p in &self.peers {
            let _ = writeln!(out, "{}", peer_label(p.name, &p.nickname));
            for c in &p.connections {
                let _ = writeln!(
                    out,
                    "   {} {:<21}  {:<28} {}",
                    if c.outbound { "->" } else { "<-" },
                    c.address,
                    peer_label(c.name, &c.nickname),
                    if c.established { "established" } else { "pending" }
                );
            }
        }
        out
    }

    pub fn render_connections(&self) -> String {
        let mut out = String::new();
        for c in &self.connections {
            let _ =
                writeln!(out, "{} {:<21}  {:<11} {}", if c.outbound { "->" } else { "<-" }, c.address, c.state, c.info);
        }
        out
    }

    pub fn render_targets(&self) -> String {
        self.targets.iter().map(|t| format!("{t}\n")).collect()
    }

    pub fn report(&self) -> Value {
        let nick =
            |name: PeerName| self.peers.iter().find(|p| p.name == name).map(|p| p.nickname.clone()).unwrap_or_default();
        let peers: Vec<Value> = self
            .peers
            .iter()
            .map(|p| {
                json!({
                    "Name": p.name.to_string(),
                    "NickName": p.nickname,
                    "UID": p.uid,
                    "Version": p.version,
                    "Connections": p.connections.iter().map(|c| json!({
                        "Name": c.name.to_string(),
                        "NickName": c.nickname,
                        "Address": c.address,
                        "Outbound": c.outbound,
                        "Established": c.established,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let connections: Vec<Value> = self
            .connections
            .iter()
            .map(|c| {
                let mut attrs = serde_json::Map::new();
                if c.state == "established" || c.state == "pending" {
                    attrs.insert("name".into(), json!(c.overlay));
                }
                if let Some(mtu) = c.mtu {
                    attrs.insert("mtu".into(), json!(mtu));
                }
                if let Some(reason) = &c.reason {
                    attrs.insert("reason".into(), json!(reason));
                }
                if let Some(encrypted) = c.encrypted {
                    attrs.insert("encrypted".into(), json!(encrypted));
                }
                if let Some(cipher) = c.cipher {
                    attrs.insert("cipher".into(), json!(cipher));
                }
                json!({
                    "Address": c.address,
                    "Outbound": c.outbound,
                    "State": c.state,
                    "Info": c.info,
                    "Attrs": attrs,
                })
            })
            .collect();
        json!({
            "Version": env!("CARGO_PKG_VERSION"),
            "Router": {
                "Protocol": "weft",
                "ProtocolMinVersion": weft_proto::control::PROTOCOL_MIN_VERSION,
                "ProtocolMaxVersion": weft_proto::control::PROTOCOL_MAX_VERSION,
                "Encryption": self.encryption,
                "PeerDiscovery": self.discovery,
                "Name": self.name.to_string(),
                "NickName": self.nickname,
                "Port": self.port,
                "Peers": peers,
                "UnicastRoutes": self.unicast_routes.iter().map(|(d, v)| json!({
                    "Dest": d.to_string(), "Via": v.to_string(),
                })).collect::<Vec<_>>(),
                "BroadcastRoutes": self.broadcast_routes.iter().map(|(s, via)| json!({
                    "Source": s.to_string(),
                    "Via": via.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "Connections": connections,
                "Targets": self.targets,
                "TerminationCount": self.termination_count,
                "OverlayDiagnostics": { "sleeve": { "MTU": self.mtu } },
                "MACs": self.macs.iter().map(|m| json!({
                    "Mac": m.mac,
                    "Name": m.peer.to_string(),
                    "NickName": if m.nickname.is_empty() { nick(m.peer) } else { m.nickname.clone() },
                    "LastSeenSecsAgo": m.age_secs,
                })).collect::<Vec<_>>(),
                "TrustedSubnets": [],
            },
            "IPAM": self.ipam_report,
        })
    }
}
