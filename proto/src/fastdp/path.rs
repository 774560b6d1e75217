//! Per-connection choice between the VXLAN fast path and the UDP sleeve.
//!
//! The fast path is only trusted once heartbeats sent *through* VXLAN have
//! arrived, because a VXLAN device that exists is no proof that the
//! underlay (firewalls, MTU, NAT) actually carries its packets. The sleeve
//! is the safe default: a peer is on it until proven otherwise, and goes
//! back to it as soon as the proof goes stale.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Tuning for [`PathSelector`].
///
/// `timeout` should be several `heartbeat_interval`s: that gap is the
/// hysteresis which keeps one lost heartbeat from switching paths, and
/// `recover_after` is its counterpart on the way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathConfig {
    pub heartbeat_interval: Duration,
    pub timeout: Duration,
    /// Consecutive fast-path heartbeats (no gap of `timeout` or more
    /// between them) needed before traffic moves onto the fast path.
    /// 0 is treated as 1: a path never carries traffic unproven.
    pub recover_after: u32,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig { heartbeat_interval: Duration::from_secs(1), timeout: Duration::from_secs(4), recover_after: 2 }
    }
}

/// Why a connection's frames currently go over the sleeve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SleeveReason {
    /// This node's kernel cannot do VXLAN (or the device could not be made).
    NoKernelSupport,
    /// The operator turned the fast path off.
    Disabled,
    /// The connection is encrypted and the kernel path can't be.
    Encrypted,
    /// The remote peer did not offer the fast path.
    PeerUnsupported,
    /// The fast path worked once but its heartbeats stopped arriving.
    HeartbeatTimeout,
    /// The peer's traffic goes through another peer (the direct link has
    /// no confirmed sleeve); VXLAN only spans one hop. The router tells
    /// this from its routes, never the selector.
    Relay,
    /// No fast-path heartbeat has proven the path yet.
    Probing,
}

impl fmt::Display for SleeveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SleeveReason::NoKernelSupport => "no kernel support",
            SleeveReason::Disabled => "disabled",
            SleeveReason::Encrypted => "encrypted: no encrypted kernel path",
            SleeveReason::PeerUnsupported => "peer unsupported",
            SleeveReason::HeartbeatTimeout => "heartbeat timeout",
            SleeveReason::Relay => "relayed",
            SleeveReason::Probing => "probing",
        })
    }
}

/// The one path a connection's pod frames take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    FastDp,
    Sleeve(SleeveReason),
}

impl Path {
    pub fn is_fastdp(&self) -> bool {
        matches!(self, Path::FastDp)
    }
}

/// As `weft status connections` shows it: `fastdp`, `sleeve (probing)`.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::FastDp => f.write_str("fastdp"),
            Path::Sleeve(reason) => write!(f, "sleeve ({reason})"),
        }
    }
}

/// Raised only when frames must move between forwarding sets (fast path
/// <-> sleeve); a change of [`SleeveReason`] alone is visible through
/// [`PathSelector::path`] but raises nothing, since forwarding is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    Switched { from: Path, to: Path },
}

#[derive(Debug, Clone)]
struct Probe {
    next_send: Instant,
    /// Last heartbeat that counted; `None` before the first one, or after
    /// a timeout wiped the streak.
    last_heartbeat: Option<Instant>,
    /// Counting heartbeats since the last gap of `timeout` or more.
    streak: u32,
    /// Until then an unproven path reads as "probing" rather than
    /// "heartbeat timeout", so a fresh connection isn't reported as broken.
    probing_until: Instant,
    /// What the peer's latest heartbeat said about ours. Heartbeats
    /// arriving prove one direction only; a path that works one way (a
    /// one-sided firewall rule) must not carry traffic either way.
    peer_receiving: bool,
}

/// Decides, per connection, whether pod frames go over VXLAN or the sleeve.
///
/// Drive it like the other state machines here: feed heartbeats that
/// arrived through VXLAN to [`handle_fastdp_heartbeat`], send one whenever
/// [`poll_send_heartbeat`] says so, call [`handle_timeout`] at
/// [`poll_timeout`], and move the peer between forwarding sets on each
/// [`PathEvent`]. [`path`] is always exactly one of the two, so a peer is
/// never in both sets nor in neither.
///
/// [`handle_fastdp_heartbeat`]: PathSelector::handle_fastdp_heartbeat
/// [`poll_send_heartbeat`]: PathSelector::poll_send_heartbeat
/// [`handle_timeout`]: PathSelector::handle_timeout
/// [`poll_timeout`]: PathSelector::poll_timeout
/// [`path`]: PathSelector::path
#[derive(Debug, Clone)]
pub struct PathSelector {
    cfg: PathConfig,
    path: Path,
    /// `None` when the fast path can never be used on this connection.
    probe: Option<Probe>,
    required_probe_size: usize,
    events: VecDeque<PathEvent>,
    switches: u64,
    undersized_heartbeats: u64,
}

impl PathSelector {
    /// `local_unavailable` says why this node can't use the fast path
    /// (`None`: it can).
    pub fn new(local_unavailable: Option<SleeveReason>, remote_supports: bool, now: Instant, cfg: PathConfig) -> Self {
        let fixed = if let Some(reason) = local_unavailable {
            Some(reason)
        } else if !remote_supports {
            Some(SleeveReason::PeerUnsupported)
        } else {
            None
        };
        let (path, probe) = match fixed {
            Some(reason) => (Path::Sleeve(reason), None),
            None => (
                Path::Sleeve(SleeveReason::Probing),
                Some(Probe {
                    next_send: now,
                    last_heartbeat: None,
                    streak: 0,
                    probing_until: now + cfg.timeout,
                    peer_receiving: false,
                }),
            ),
        };
        PathSelector {
            cfg,
            path,
            probe,
            required_probe_size: 0,
            events: VecDeque::new(),
            switches: 0,
            undersized_heartbeats: 0,
        }
    }

    pub fn path(&self) -> Path {
        self.path
    }

    /// Both ends can do the fast path, so heartbeats must flow (whichever
    /// path the frames take right now).
    pub fn capable(&self) -> bool {
        self.probe.is_some()
    }

    /// Times the connection moved between fast path and sleeve.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Fast-path heartbeats ignored for being smaller than the probe size.
    pub fn undersized_heartbeats(&self) -> u64 {
        self.undersized_heartbeats
    }

    pub fn required_probe_size(&self) -> usize {
        self.required_probe_size
    }

    /// Heartbeats must be at least `size` bytes to count, so that they
    /// prove the path carries full-MTU frames, not just small ones. Raising
    /// it does not demote the path at once; heartbeats that are now too
    /// small simply stop counting and the timeout does the rest.
    pub fn set_probe_size(&mut self, size: usize) {
        self.required_probe_size = size;
    }

    /// Turns the fast path off for good on this connection (operator
    /// request, or the VXLAN device went away).
    pub fn disable(&mut self) {
        self.probe = None;
        self.set_path(Path::Sleeve(SleeveReason::Disabled));
    }

    /// Whether this end currently receives the peer's fast-path heartbeats:
    /// what our own heartbeats tell the peer.
    pub fn receiving(&self, now: Instant) -> bool {
        self.probe.as_ref().and_then(|p| p.last_heartbeat).is_some_and(|last| now < last + self.cfg.timeout)
    }

    /// Takes the fast path as proven right away, for a connection that
    /// replaces one which was on it (a quick router restart on either
    /// end): the kernel still forwards over VXLAN, so starting on the
    /// sleeve would only move traffic off a working path and back. The
    /// usual timeout demotes it if heartbeats don't follow.
    pub fn resume(&mut self, now: Instant) {
        let recover_after = self.cfg.recover_after.max(1);
        let Some(probe) = &mut self.probe else { return };
        probe.last_heartbeat = Some(now);
        probe.streak = recover_after;
        probe.peer_receiving = true;
        self.set_path(Path::FastDp);
    }

    /// A heartbeat of `size` bytes arrived through the VXLAN path; in it
    /// the peer said whether it receives ours.
    pub fn handle_fastdp_heartbeat(&mut self, now: Instant, size: usize, peer_receiving: bool) {
        // Expire first, so a heartbeat after a long silence starts a new
        // streak even if the router never got round to `handle_timeout`.
        self.handle_timeout(now);
        if self.probe.is_none() {
            return;
        }
        if size < self.required_probe_size {
            self.undersized_heartbeats = self.undersized_heartbeats.saturating_add(1);
            return;
        }
        let recover_after = self.cfg.recover_after.max(1);
        let Some(probe) = &mut self.probe else { return };
        probe.last_heartbeat = Some(now);
        probe.streak = probe.streak.saturating_add(1);
        probe.peer_receiving = peer_receiving;
        if !peer_receiving {
            if self.path.is_fastdp() {
                self.set_path(Path::Sleeve(SleeveReason::HeartbeatTimeout));
            }
        } else if probe.streak >= recover_after {
            self.set_path(Path::FastDp);
        }
    }

    /// `Some(probe_size)` when a heartbeat padded to that many bytes should
    /// go out through VXLAN. Keeps asking while on the sleeve too: that is
    /// how a repaired path is noticed.
    pub fn poll_send_heartbeat(&mut self, now: Instant) -> Option<usize> {
        let probe = self.probe.as_mut()?;
        if now < probe.next_send {
            return None;
        }
        // From `now`, not from the missed deadline: a stalled router sends
        // one heartbeat, not a burst of catch-up ones.
        probe.next_send = now + self.cfg.heartbeat_interval;
        Some(self.required_probe_size)
    }

    /// Expires a stale fast path. Calling it early or late is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.cfg.timeout;
        let Some(probe) = &mut self.probe else { return };
        if probe.last_heartbeat.is_some_and(|last| now >= last + timeout) {
            probe.last_heartbeat = None;
            probe.streak = 0;
            self.set_path(Path::Sleeve(SleeveReason::HeartbeatTimeout));
        } else if self.path == Path::Sleeve(SleeveReason::Probing)
            && probe.last_heartbeat.is_none()
            && now >= probe.probing_until
        {
            self.path = Path::Sleeve(SleeveReason::HeartbeatTimeout);
        }
    }

    /// The earliest instant `handle_timeout` or `poll_send_heartbeat` has
    /// work to do; `None` when the fast path is out of the question.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.probe.as_ref()?;
        let expiry = probe.last_heartbeat.map(|last| last + self.cfg.timeout);
        let probing = (self.path == Path::Sleeve(SleeveReason::Probing) && probe.last_heartbeat.is_none())
            .then_some(probe.probing_until);
        [Some(probe.next_send), expiry, probing].into_iter().flatten().min()
    }

    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn set_path(&mut self, to: Path) {
        let from = self.path;
        self.path = to;
        if from.is_fastdp() != to.is_fastdp() {
            self.switches = self.switches.saturating_add(1);
            self.events.push_back(PathEvent::Switched { from, to });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn capable(now: Instant) -> PathSelector {
        PathSelector::new(None, true, now, PathConfig::default())
    }

    fn drain(sel: &mut PathSelector) -> Vec<PathEvent> {
        std::iter::from_fn(|| sel.poll_event()).collect()
    }

    #[test]
    fn unsupported_connections_stay_on_the_sleeve_with_their_reason() {
        let t0 = Instant::now();
        let cases = [
            ((Some(SleeveReason::NoKernelSupport), true), SleeveReason::NoKernelSupport),
            ((Some(SleeveReason::Disabled), true), SleeveReason::Disabled),
            ((None, false), SleeveReason::PeerUnsupported),
            ((Some(SleeveReason::NoKernelSupport), false), SleeveReason::NoKernelSupport),
        ];
        for ((local, remote), reason) in cases {
            let mut sel = PathSelector::new(local, remote, t0, PathConfig::default());
            assert_eq!(sel.path(), Path::Sleeve(reason));
            assert_eq!(sel.poll_send_heartbeat(t0), None);
            assert_eq!(sel.poll_timeout(), None);
            for i in 0..5 {
                sel.handle_fastdp_heartbeat(t0 + SEC * i, 1500, true);
            }
            assert_eq!(sel.path(), Path::Sleeve(reason));
            assert_eq!(sel.poll_event(), None);
        }
    }

    #[test]
    fn starts_probing_and_needs_two_heartbeats() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::Probing));
        assert_eq!(sel.poll_send_heartbeat(t0), Some(0));
        assert_eq!(sel.poll_send_heartbeat(t0), None);
        assert_eq!(sel.poll_timeout(), Some(t0 + SEC));
        sel.handle_fastdp_heartbeat(t0, 100, true);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::Probing));
        sel.handle_fastdp_heartbeat(t0 + SEC, 100, true);
        assert_eq!(sel.path(), Path::FastDp);
        let to = Path::FastDp;
        assert_eq!(drain(&mut sel), [PathEvent::Switched { from: Path::Sleeve(SleeveReason::Probing), to }]);
        assert_eq!(sel.switches(), 1);
    }

    #[test]
    fn one_lost_heartbeat_does_not_switch_but_a_timeout_does() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        sel.handle_fastdp_heartbeat(t0, 0, true);
        sel.handle_fastdp_heartbeat(t0 + SEC, 0, true);
        drain(&mut sel);
        // Heartbeat at 2 s lost; the 3 s one arrives.
        sel.handle_timeout(t0 + SEC * 3);
        sel.handle_fastdp_heartbeat(t0 + SEC * 3, 0, true);
        assert_eq!(sel.path(), Path::FastDp);
        sel.poll_send_heartbeat(t0 + SEC * 3);
        assert_eq!(sel.poll_timeout(), Some(t0 + SEC * 4));
        sel.handle_timeout(t0 + SEC * 6);
        assert_eq!(sel.path(), Path::FastDp);
        sel.handle_timeout(t0 + SEC * 7);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::HeartbeatTimeout));
        assert_eq!(
            drain(&mut sel),
            [PathEvent::Switched { from: Path::FastDp, to: Path::Sleeve(SleeveReason::HeartbeatTimeout) }]
        );
        assert_eq!(sel.poll_send_heartbeat(t0 + SEC * 7), Some(0), "keeps probing on the sleeve");
        sel.handle_fastdp_heartbeat(t0 + SEC * 8, 0, true);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::HeartbeatTimeout));
        sel.handle_fastdp_heartbeat(t0 + SEC * 9, 0, true);
        assert_eq!(sel.path(), Path::FastDp);
        assert_eq!(sel.switches(), 3);
    }

    #[test]
    fn a_heartbeat_after_a_long_silence_starts_a_new_streak() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        sel.handle_fastdp_heartbeat(t0, 0, true);
        sel.handle_fastdp_heartbeat(t0 + SEC, 0, true);
        // The router never called handle_timeout during the silence.
        sel.handle_fastdp_heartbeat(t0 + SEC * 10, 0, true);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::HeartbeatTimeout));
        let events = drain(&mut sel);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn probing_turns_into_heartbeat_timeout_when_nothing_arrives() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        sel.poll_send_heartbeat(t0);
        assert_eq!(sel.poll_timeout(), Some(t0 + SEC));
        sel.handle_timeout(t0 + SEC * 4);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::HeartbeatTimeout));
        assert_eq!(sel.poll_event(), None, "still on the sleeve: nothing to move");
        assert_eq!(sel.switches(), 0);
    }

    #[test]
    fn undersized_heartbeats_do_not_prove_the_path() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        sel.set_probe_size(1400);
        assert_eq!(sel.poll_send_heartbeat(t0), Some(1400));
        for i in 0..5 {
            sel.handle_fastdp_heartbeat(t0 + SEC * i, 1399, true);
        }
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::HeartbeatTimeout));
        assert_eq!(sel.undersized_heartbeats(), 5);
        sel.handle_fastdp_heartbeat(t0 + SEC * 5, 1400, true);
        sel.handle_fastdp_heartbeat(t0 + SEC * 6, 1500, true);
        assert_eq!(sel.path(), Path::FastDp);
    }

    #[test]
    fn disable_moves_a_fastdp_peer_back_to_the_sleeve_for_good() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        sel.handle_fastdp_heartbeat(t0, 0, true);
        sel.handle_fastdp_heartbeat(t0, 0, true);
        drain(&mut sel);
        sel.disable();
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::Disabled));
        assert_eq!(drain(&mut sel).len(), 1);
        sel.handle_fastdp_heartbeat(t0 + SEC, 0, true);
        sel.handle_fastdp_heartbeat(t0 + SEC, 0, true);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::Disabled));
        assert_eq!(sel.poll_send_heartbeat(t0 + SEC * 5), None);
        assert_eq!(sel.poll_timeout(), None);
    }

    #[test]
    fn a_path_the_peer_does_not_receive_is_never_used() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        for i in 0..5 {
            sel.handle_fastdp_heartbeat(t0 + SEC * i, 0, false);
            assert!(sel.receiving(t0 + SEC * i));
        }
        assert!(!sel.path().is_fastdp(), "theirs arrive, ours don't: one-way path");
        sel.handle_fastdp_heartbeat(t0 + SEC * 5, 0, true);
        assert_eq!(sel.path(), Path::FastDp);
        sel.handle_fastdp_heartbeat(t0 + SEC * 6, 0, false);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::HeartbeatTimeout));
        assert!(!sel.receiving(t0 + SEC * 11));
    }

    #[test]
    fn resume_is_fastdp_at_once_and_expires_without_heartbeats() {
        let t0 = Instant::now();
        let mut sel = capable(t0);
        sel.resume(t0);
        assert_eq!(sel.path(), Path::FastDp);
        assert!(sel.receiving(t0), "tells the peer at once, so its resumed side stays up too");
        assert_eq!(drain(&mut sel).len(), 1);
        sel.handle_fastdp_heartbeat(t0 + SEC, 0, true);
        sel.handle_timeout(t0 + SEC * 4);
        assert_eq!(sel.path(), Path::FastDp);
        sel.handle_timeout(t0 + SEC * 5);
        assert_eq!(sel.path(), Path::Sleeve(SleeveReason::HeartbeatTimeout));

        let mut off = PathSelector::new(Some(SleeveReason::Disabled), true, t0, PathConfig::default());
        off.resume(t0);
        assert_eq!(off.path(), Path::Sleeve(SleeveReason::Disabled), "resume cannot override the operator");
    }

    #[test]
    fn status_strings() {
        assert_eq!(Path::FastDp.to_string(), "fastdp");
        assert_eq!(Path::Sleeve(SleeveReason::HeartbeatTimeout).to_string(), "sleeve (heartbeat timeout)");
        assert_eq!(Path::Sleeve(SleeveReason::Probing).to_string(), "sleeve (probing)");
        assert_eq!(Path::Sleeve(SleeveReason::Relay).to_string(), "sleeve (relayed)");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        /// Size, and whether the peer says it receives ours.
        Heartbeat(usize, bool),
        Timeout,
        Send,
        SetProbe(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..6_000).prop_map(Op::Advance),
            4 => (0usize..2_000, prop::bool::weighted(0.9)).prop_map(|(size, rx)| Op::Heartbeat(size, rx)),
            2 => Just(Op::Timeout),
            1 => Just(Op::Send),
            1 => prop_oneof![Just(0usize), Just(1_000), Just(1_500)].prop_map(Op::SetProbe),
        ]
    }

    proptest! {
        #[test]
        fn always_in_exactly_one_forwarding_set_and_switches_only_when_documented(
            ops in proptest::collection::vec(op(), 0..80),
        ) {
            let t0 = Instant::now();
            let cfg = PathConfig::default();
            let mut sel = capable(t0);
            let mut now = t0;
            // The router's view, maintained only from events.
            let mut in_fastdp_set = sel.path().is_fastdp();
            let mut last_counted: Option<Instant> = None;
            let mut switches = 0;
            for op in ops {
                let before = sel.path();
                let mut counted = false;
                let mut peer_deaf = false;
                match op {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Heartbeat(size, rx) => {
                        counted = size >= sel.required_probe_size();
                        peer_deaf = counted && !rx;
                        sel.handle_fastdp_heartbeat(now, size, rx);
                    }
                    Op::Timeout => sel.handle_timeout(now),
                    Op::Send => { sel.poll_send_heartbeat(now); }
                    Op::SetProbe(n) => sel.set_probe_size(n),
                }
                let after = sel.path();
                while let Some(PathEvent::Switched { from, to }) = sel.poll_event() {
                    prop_assert_eq!(from.is_fastdp(), in_fastdp_set);
                    prop_assert_ne!(from.is_fastdp(), to.is_fastdp());
                    in_fastdp_set = to.is_fastdp();
                    switches += 1;
                }
                prop_assert_eq!(in_fastdp_set, after.is_fastdp());
                prop_assert_eq!(sel.switches(), switches);
                let stale = last_counted.is_none_or(|t| now >= t + cfg.timeout);
                if after.is_fastdp() && !before.is_fastdp() {
                    prop_assert!(counted && !peer_deaf, "promoted without a counting heartbeat");
                }
                if before.is_fastdp() && !after.is_fastdp() {
                    prop_assert!(stale || peer_deaf, "demoted while heartbeats were fresh both ways");
                    prop_assert_eq!(after, Path::Sleeve(SleeveReason::HeartbeatTimeout));
                }
                if peer_deaf {
                    prop_assert!(!after.is_fastdp(), "stayed on a path the peer does not receive");
                }
                if before.is_fastdp() && !stale && !peer_deaf {
                    prop_assert!(after.is_fastdp(), "a loss shorter than the timeout demoted");
                }
                if counted {
                    last_counted = Some(now);
                }
                if let Some(deadline) = sel.poll_timeout() {
                    prop_assert!(sel.probe.is_some());
                    // Deadlines never lie in the past after handling them.
                    let mut probe = sel.clone();
                    probe.handle_timeout(now);
                    probe.poll_send_heartbeat(now);
                    prop_assert!(probe.poll_timeout().is_some_and(|d| d > now), "deadline {:?} not rearmed", deadline);
                }
            }
        }

        #[test]
        fn recovers_within_recover_after_heartbeats(
            ops in proptest::collection::vec(op(), 0..40),
            recover_after in 1u32..5,
        ) {
            let t0 = Instant::now();
            let cfg = PathConfig { recover_after, ..PathConfig::default() };
            let mut sel = PathSelector::new(None, true, t0, cfg);
            let mut now = t0;
            for op in ops {
                match op {
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Heartbeat(size, rx) => sel.handle_fastdp_heartbeat(now, size, rx),
                    Op::Timeout => sel.handle_timeout(now),
                    Op::Send => { sel.poll_send_heartbeat(now); }
                    Op::SetProbe(n) => sel.set_probe_size(n),
                }
            }
            let size = sel.required_probe_size();
            for _ in 0..recover_after {
                now += cfg.heartbeat_interval;
                sel.handle_timeout(now);
                sel.handle_fastdp_heartbeat(now, size, true);
            }
            prop_assert_eq!(sel.path(), Path::FastDp);
        }
    }
}
