//! The status snapshot the core publishes for the API.

use super::Core;
use crate::api::status::{ConnView, MacView, PeerConnView, PeerView, Snapshot};
use std::collections::HashMap;
use std::time::Instant;
use weft_proto::control::State;
use weft_proto::fastdp::Path;
use weft_proto::PeerName;

impl Core {
    fn nickname_of(&self, name: PeerName) -> String {
        self.topology.peer(&name).map(|p| p.nickname.clone()).unwrap_or_default()
    }

    pub(super) fn snapshot(&self, now: Instant) -> Snapshot {
        let routes = self.topology.routes();
        let peers = self
            .topology
            .peers()
            .map(|p| PeerView {
                name: p.name,
                nickname: p.nickname.clone(),
                uid: p.uid,
                version: p.version,
                connections: p
                    .connections
                    .iter()
                    .map(|c| PeerConnView {
                        name: c.remote,
                        nickname: self.nickname_of(c.remote),
                        address: c.address.clone(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let via: HashMap<PeerName, PeerName> = routes.unicast().collect();
        let mut connections: Vec<ConnView> = self
            .conns
            .values()
            .map(|c| {
                let established = c.proto.state() == State::Established;
                let path = c.remote().and_then(|r| self.fastdp.path(r.name));
                // Without a confirmed sleeve our frames to the peer take a
                // detour through another one: say so rather than a reason
                // about a direct link that carries nothing.
                let relayed =
                    !established && c.remote().is_some_and(|r| via.get(&r.name).is_some_and(|hop| *hop != r.name));
                let (overlay, reason) = match path {
                    Some(Path::FastDp) => ("fastdp", None),
                    _ if relayed => ("sleeve", Some(weft_proto::fastdp::SleeveReason::Relay.to_string())),
                    Some(Path::Sleeve(why)) => ("sleeve", Some(why.to_string())),
                    None => ("sleeve", None),
                };
                // The negotiated cipher, once control frames are sealed.
                let cipher = c.proto.cipher().filter(|_| c.proto.encrypted());
                let (state, info) = match c.remote() {
                    Some(r) => (
                        if established { "established" } else { "pending" },
                        format!(
                            "{overlay} {} {}({}) mtu={}{}{}",
                            match cipher {
                                Some(cipher) => format!("encrypted ({cipher})"),
                                None => "unencrypted".to_string(),
                            },
                            r.name,
                            r.nickname,
                            self.pod_mtu,
                            reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
                            if established { "" } else { " (confirming UDP path)" }
                        ),
                    ),
                    None => ("pending", "handshaking".to_string()),
                };
                ConnView {
                    address: c.addr.to_string(),
                    outbound: c.proto.outbound(),
                    state,
                    info,
                    overlay,
                    encrypted: c.remote().map(|_| c.proto.encrypted()),
                    cipher: c.remote().and(cipher).map(|cipher| cipher.name()),
                    reason,
                    mtu: Some(self.pod_mtu),
                }
            })
            .collect();
        for (key, t) in &self.targets {
            if t.conn.is_some()
                || t.peer.is_some_and(|p| self.conns.values().any(|c| c.remote().is_some_and(|r| r.name == p)))
            {
                continue;
            }
            let (state, info) = if t.is_self {
                ("failed", "cannot connect to ourself".to_string())
            } else if t.dialing {
                ("connecting", String::new())
            } else {
                let retry = t
                    .next_attempt
                    .map(|at| format!(", retry in {}s", at.saturating_duration_since(now).as_secs()))
                    .unwrap_or_default();
                ("retrying", format!("{}{retry}", t.last_error.clone().unwrap_or_default()))
            };
            connections.push(ConnView {
                address: key.clone(),
                outbound: true,
                state,
                info,
                overlay: "",
                encrypted: None,
                cipher: None,
                reason: None,
                mtu: None,
            });
        }
        for r in self.refused.values() {
            connections.push(ConnView {
                address: r.address.to_string(),
                outbound: false,
                state: "failed",
                info: format!(
                    "{}{}, {}s ago",
                    r.peer.as_ref().map(|p| format!("{p}: ")).unwrap_or_default(),
                    r.reason,
                    now.saturating_duration_since(r.at).as_secs()
                ),
                overlay: "",
                encrypted: None,
                cipher: None,
                reason: None,
                mtu: None,
            });
        }
        let macs = self
            .shared
            .lock_macs()
            .iter()
            .map(|(mac, owner, last_seen)| {
                let peer = match owner {
                    weft_proto::mac_table::Owner::Peer(p) => p,
                    weft_proto::mac_table::Owner::Local => self.local.name,
                };
                MacView {
                    mac: mac.to_string(),
                    peer,
                    nickname: self.nickname_of(peer),
                    age_secs: now.saturating_duration_since(last_seen).as_secs(),
                }
            })
            .collect();
        let nick = |p: PeerName| self.nickname_of(p);
        let (used, free, unreachable) = self.ipam.gauges();
        Snapshot {
            ipam_ready: self.ipam.gateway().is_some(),
            ipam_range: self.ipam.range().to_string(),
            ipam_gateway: self.ipam.gateway().map(|g| g.to_string()),
            ipam_text: self.ipam.render_status(nick),
            ipam_report: self.ipam.report(nick),
            ipam_gauges: (used, free, unreachable, self.ipam.conflicts() as u64),
            ready: true,
            not_ready: self.not_ready(now),
            kube: self.kube.clone(),
            nat: self.nat.lines.clone(),
            name: self.local.name,
            nickname: self.local.nickname.clone(),
            port: self.cfg.port,
            encryption: self.local.encryption.is_some(),
            cipher: self.local.encryption.as_ref().map(|e| e.cipher.to_string()),
            fastdp: self.fastdp.availability().describe(),
            sleeve: self.sleeve.clone(),
            discovery: self.cfg.discovery,
            mtu: self.pod_mtu,
            bridge: self.bridge.clone(),
            peers,
            unicast_routes: routes.unicast().collect(),
            broadcast_routes: self
                .topology
                .peers()
                .map(|p| (p.name, routes.broadcast_next_hops(p.name).to_vec()))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
            connections,
            targets: self
                .targets
                .iter()
                .filter(|(_, t)| t.user || t.kube_node.is_some())
                .map(|(k, _)| k.clone())
                .collect(),
            termination_count: self.terminations,
            macs,
        }
    }
}
