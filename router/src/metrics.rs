//! Counters shared by the data-path threads, the control core and the
//! HTTP API. Drop reasons are a fixed enum of atomics; per-peer traffic
//! counters are accumulated per batch by each thread and folded in under
//! one lock per batch, never per frame.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use weft_proto::PeerName;

macro_rules! reasons {
    ($name:ident { $($variant:ident => $label:literal,)* }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant,)* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

reasons!(Drop {
    MalformedDatagram => "malformed_datagram",
    MalformedFrame => "malformed_frame",
    UnknownPeer => "unknown_peer",
    NoRoute => "no_route",
    FrameTooBig => "frame_too_big",
    SendFailed => "send_failed",
    TapWriteFailed => "tap_write_failed",
    LocalDestination => "local_destination",
    HeartbeatQueueFull => "heartbeat_queue_full",
    OnFastPath => "on_fast_path",
    AuthFailed => "auth_failed",
    Replay => "replay",
    Unencrypted => "unencrypted",
    UnknownEpoch => "unknown_epoch",
    NoSession => "no_session",
    BadOffload => "bad_offload",
});

reasons!(HandshakeFailure {
    PasswordDiffers => "password_differs",
    EncryptionMismatch => "encryption_mismatch",
    CipherMismatch => "cipher_mismatch",
    Malformed => "malformed",
});

reasons!(ConnFailure {
    Handshake => "handshake",
    Protocol => "protocol",
    HeartbeatTimeout => "heartbeat_timeout",
    SelfConnection => "self_connection",
    Duplicate => "duplicate",
    Limit => "conn_limit",
    Closed => "closed",
    Dial => "dial",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub frames: u64,
    pub bytes: u64,
}

/// Per-thread accumulator: one lock on the shared map per batch.
#[derive(Debug, Default)]
pub struct TrafficBatch {
    entries: Vec<(PeerName, Direction, Traffic)>,
}

impl TrafficBatch {
    pub fn add(&mut self, peer: PeerName, dir: Direction, bytes: usize) {
        self.add_n(peer, dir, 1, bytes);
    }

    pub fn add_n(&mut self, peer: PeerName, dir: Direction, frames: u64, bytes: usize) {
        // Batches touch few peers: a linear scan beats hashing here.
        match self.entries.iter_mut().find(|(p, d, _)| *p == peer && *d == dir) {
            Some((_, _, t)) => {
                t.frames += frames;
                t.bytes += bytes as u64;
            }
            None => self.entries.push((peer, dir, Traffic { frames, bytes: bytes as u64 })),
        }
    }
}

/// The sleeve's offload work, added once per batch by the data path.
#[derive(Debug, Default)]
pub struct OffloadCounters {
    /// Super-frames from the TAP cut into segments, and the segments.
    pub split: AtomicU64,
    pub split_segments: AtomicU64,
    /// Super-frames written into the TAP, and the segments merged into them.
    pub merged: AtomicU64,
    pub merged_segments: AtomicU64,
    /// UDP GSO messages sent, and those the kernel refused (their
    /// datagrams then went one by one).
    pub gso_sends: AtomicU64,
    pub gso_refused: AtomicU64,
}

/// A data-path thread's offload counts for one batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct OffloadBatch {
    pub split: u64,
    pub split_segments: u64,
    pub merged: u64,
    pub merged_segments: u64,
    pub gso_sends: u64,
    pub gso_refused: u64,
}

impl OffloadCounters {
    pub fn add(&self, b: &mut OffloadBatch) {
        let pairs = [
            (&self.split, b.split),
            (&self.split_segments, b.split_segments),
            (&self.merged, b.merged),
            (&self.merged_segments, b.merged_segments),
            (&self.gso_sends, b.gso_sends),
            (&self.gso_refused, b.gso_refused),
        ];
        for (counter, n) in pairs {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        *b = OffloadBatch::default();
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub offload: OffloadCounters,
    drops: Vec<AtomicU64>,
    conn_failures: Vec<AtomicU64>,
    pub mac_moves: AtomicU64,
    traffic: Mutex<HashMap<(PeerName, Direction), Traffic>>,
    /// Moves of a connection to the fast path, and to the sleeve.
    switches_to: [AtomicU64; 2],
    /// The VXLAN device's counters: rx frames, tx frames, rx bytes, tx bytes.
    fastdp: [AtomicU64; 4],
    handshake_failures: Vec<AtomicU64>,
    /// Sealed datagrams and control frames whose tag did not verify.
    pub auth_failures: AtomicU64,
    /// Sealed datagrams the replay window rejected.
    pub replays: AtomicU64,
    /// Key rotations: ours (sealing), the peers' we followed (opening).
    pub rekeys_tx: AtomicU64,
    pub rekeys_rx: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            offload: OffloadCounters::default(),
            drops: Drop::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            conn_failures: ConnFailure::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            mac_moves: AtomicU64::new(0),
            traffic: Mutex::new(HashMap::new()),
            switches_to: Default::default(),
            fastdp: Default::default(),
            handshake_failures: HandshakeFailure::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            auth_failures: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            rekeys_tx: AtomicU64::new(0),
            rekeys_rx: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn drop(&self, reason: Drop, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: Drop) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    pub fn conn_failure(&self, reason: ConnFailure) {
        self.conn_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake_failure(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A sealed datagram that could not be opened, counted by why.
    pub fn unseal_failure(&self, err: &weft_proto::sleeve::UnsealError) {
        use weft_proto::crypto::OpenError;
        use weft_proto::sleeve::UnsealError;
        match err {
            UnsealError::Open(OpenError::Replay(_)) => {
                self.replays.fetch_add(1, Ordering::Relaxed);
                self.drop(Drop::Replay, 1);
            }
            UnsealError::Open(OpenError::UnknownEpoch) => self.drop(Drop::UnknownEpoch, 1),
            UnsealError::Open(OpenError::AuthFailed) => {
                self.auth_failures.fetch_add(1, Ordering::Relaxed);
                self.drop(Drop::AuthFailed, 1);
            }
            UnsealError::Malformed(_) | UnsealError::SenderMismatch { .. } => self.drop(Drop::MalformedDatagram, 1),
        }
    }

    pub fn path_switch(&self, to_fastdp: bool) {
        self.switches_to[usize::from(!to_fastdp)].fetch_add(1, Ordering::Relaxed);
    }

    /// The kernel counts fast-path frames, not us: a copy of its counters.
    pub fn set_fastdp_counters(&self, rx_frames: u64, tx_frames: u64, rx_bytes: u64, tx_bytes: u64) {
        for (slot, v) in self.fastdp.iter().zip([rx_frames, tx_frames, rx_bytes, tx_bytes]) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    pub fn flush(&self, batch: &mut TrafficBatch) {
        if batch.entries.is_empty() {
            return;
        }
        let mut map = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        for (peer, dir, t) in batch.entries.drain(..) {
            let e = map.entry((peer, dir)).or_default();
            e.frames += t.frames;
            e.bytes += t.bytes;
        }
    }

    /// Prometheus text exposition. `gauges` are the control core's
    /// point-in-time values (connections by state, termination count).
    pub fn render(&self, gauges: &crate::api::status::Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP weft_connections Peer connections by state and overlay path.");
        let _ = writeln!(out, "# TYPE weft_connections gauge");
        for (state, overlay, n) in &gauges.connections {
            let _ = writeln!(out, "weft_connections{{state=\"{state}\",overlay=\"{overlay}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP weft_peers Peers known in the topology.");
        let _ = writeln!(out, "# TYPE weft_peers gauge");
        let _ = writeln!(out, "weft_peers {}", gauges.peers);
        let (used, free, unreachable, conflicts) = gauges.ipam;
        let _ =
            writeln!(out, "# HELP weft_ipam_addresses Addresses of the range by state, as this peer sees the cluster.");
        let _ = writeln!(out, "# TYPE weft_ipam_addresses gauge");
        let _ = writeln!(out, "weft_ipam_addresses{{state=\"used\"}} {used}");
        let _ = writeln!(out, "weft_ipam_addresses{{state=\"free\"}} {free}");
        let _ = writeln!(out, "weft_ipam_addresses{{state=\"unreachable\"}} {unreachable}");
        let _ = writeln!(out, "# HELP weft_ipam_conflicts IPAM disagreements between peers (should be 0).");
        let _ = writeln!(out, "# TYPE weft_ipam_conflicts gauge");
        let _ = writeln!(out, "weft_ipam_conflicts {conflicts}");
        let _ = writeln!(out, "# HELP weft_connection_terminations_total Connections that ended.");
        let _ = writeln!(out, "# TYPE weft_connection_terminations_total counter");
        let _ = writeln!(out, "weft_connection_terminations_total {}", gauges.termination_count);
        let _ = writeln!(out, "# HELP weft_connection_failures_total Failed or refused connections by reason.");
        let _ = writeln!(out, "# TYPE weft_connection_failures_total counter");
        for r in ConnFailure::ALL {
            let n = self.conn_failures[*r as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "weft_connection_failures_total{{reason=\"{}\"}} {n}", r.label());
        }
        let _ = writeln!(out, "# HELP weft_handshake_failures_total Encrypted handshakes refused, by reason.");
        let _ = writeln!(out, "# TYPE weft_handshake_failures_total counter");
        for r in HandshakeFailure::ALL {
            let n = self.handshake_failures[*r as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "weft_handshake_failures_total{{reason=\"{}\"}} {n}", r.label());
        }
        let _ = writeln!(
            out,
            "# HELP weft_auth_failures_total Sealed datagrams and control frames that failed authentication."
        );
        let _ = writeln!(out, "# TYPE weft_auth_failures_total counter");
        let _ = writeln!(out, "weft_auth_failures_total {}", self.auth_failures.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP weft_replays_total Sealed datagrams rejected as replays.");
        let _ = writeln!(out, "# TYPE weft_replays_total counter");
        let _ = writeln!(out, "weft_replays_total {}", self.replays.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP weft_rekeys_total Key rotations: ours (tx) and the peers' we followed (rx).");
        let _ = writeln!(out, "# TYPE weft_rekeys_total counter");
        let _ = writeln!(out, "weft_rekeys_total{{direction=\"tx\"}} {}", self.rekeys_tx.load(Ordering::Relaxed));
        let _ = writeln!(out, "weft_rekeys_total{{direction=\"rx\"}} {}", self.rekeys_rx.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP weft_drops_total Frames or datagrams dropped, by reason.");
        let _ = writeln!(out, "# TYPE weft_drops_total counter");
        for r in Drop::ALL {
            let _ = writeln!(out, "weft_drops_total{{reason=\"{}\"}} {}", r.label(), self.drops(*r));
        }
        let _ = writeln!(out, "# HELP weft_mac_moves_total MACs seen moving between peers.");
        let _ = writeln!(out, "# TYPE weft_mac_moves_total counter");
        let _ = writeln!(out, "weft_mac_moves_total {}", self.mac_moves.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP weft_path_switches_total Connections moving between fast path and sleeve.");
        let _ = writeln!(out, "# TYPE weft_path_switches_total counter");
        for (to, n) in ["fastdp", "sleeve"].iter().zip(&self.switches_to) {
            let _ = writeln!(out, "weft_path_switches_total{{to=\"{to}\"}} {}", n.load(Ordering::Relaxed));
        }
        let o = &self.offload;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP weft_sleeve_superframes_total Offload super-frames: cut into segments (tx), merged from segments (rx)."
        );
        let _ = writeln!(out, "# TYPE weft_sleeve_superframes_total counter");
        let _ = writeln!(out, "weft_sleeve_superframes_total{{direction=\"tx\"}} {}", load(&o.split));
        let _ = writeln!(out, "weft_sleeve_superframes_total{{direction=\"rx\"}} {}", load(&o.merged));
        let _ = writeln!(
            out,
            "# HELP weft_sleeve_segments_total Segments those super-frames were cut into or merged from."
        );
        let _ = writeln!(out, "# TYPE weft_sleeve_segments_total counter");
        let _ = writeln!(out, "weft_sleeve_segments_total{{direction=\"tx\"}} {}", load(&o.split_segments));
        let _ = writeln!(out, "weft_sleeve_segments_total{{direction=\"rx\"}} {}", load(&o.merged_segments));
        let _ = writeln!(out, "# HELP weft_sleeve_gso_sends_total UDP GSO messages (runs of datagrams) sent.");
        let _ = writeln!(out, "# TYPE weft_sleeve_gso_sends_total counter");
        let _ = writeln!(out, "weft_sleeve_gso_sends_total {}", load(&o.gso_sends));
        let _ = writeln!(
            out,
            "# HELP weft_sleeve_gso_refused_total UDP GSO messages the kernel refused, sent datagram by datagram instead."
        );
        let _ = writeln!(out, "# TYPE weft_sleeve_gso_refused_total counter");
        let _ = writeln!(out, "weft_sleeve_gso_refused_total {}", load(&o.gso_refused));
        let traffic = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = traffic.iter().collect();
        rows.sort_by_key(|((p, d), _)| (*p, *d == Direction::Out));
        for (family, help, pick) in [
            ("weft_frames_total", "Frames carried, per peer, direction and path.", 0),
            ("weft_bytes_total", "Frame bytes carried, per peer, direction and path.", 1),
        ] {
            let _ = writeln!(out, "# HELP {family} {help}");
            let _ = writeln!(out, "# TYPE {family} counter");
            for ((peer, dir), t) in &rows {
                let dir = match dir {
                    Direction::In => "in",
                    Direction::Out => "out",
                };
                let v = if pick == 0 { t.frames } else { t.bytes };
                let _ = writeln!(out, "{family}{{peer=\"{peer}\",direction=\"{dir}\",path=\"sleeve\"}} {v}");
            }
            // The VXLAN device counts all peers together.
            let [rx_frames, tx_frames, rx_bytes, tx_bytes] = self.fastdp.each_ref().map(|a| a.load(Ordering::Relaxed));
            let (rx, tx) = if pick == 0 { (rx_frames, tx_frames) } else { (rx_bytes, tx_bytes) };
            let _ = writeln!(out, "{family}{{peer=\"\",direction=\"in\",path=\"fastdp\"}} {rx}");
            let _ = writeln!(out, "{family}{{peer=\"\",direction=\"out\",path=\"fastdp\"}} {tx}");
        }
        out
    }
}
