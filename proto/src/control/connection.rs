//! One control connection's state machine, sans I/O: the router feeds it
//! received bytes, UDP sleeve heartbeats and the time, and drains bytes to
//! write, events and its next deadline.
//!
//! Lifecycle: `Handshaking` (preamble + `Hello` each way) → `Connected`
//! (TCP up) ⇄ `Established` (sleeve confirmed in both directions) →
//! `Closed` after any error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec::DecodeError;
use crate::PeerName;

use super::framing::{write_frame, FrameDecoder, FrameError};
use super::handshake::{write_preamble, HandshakeError, Hello, PreambleReader, VersionRange};
use super::message::Message;

/// Who we are, as announced in our `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPeer {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub udp_port: u16,
    pub features: u32,
}

/// Every duration must be non-zero, or deadlines would never move forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    pub handshake_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Silence after which the remote is declared dead. Together with the
    /// router's reaction time this must stay under 10 s, the bound on how
    /// long a dead peer may stay in the routes.
    pub heartbeat_timeout: Duration,
    pub sleeve_heartbeat_interval: Duration,
    pub sleeve_timeout: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(6),
            sleeve_heartbeat_interval: Duration::from_secs(1),
            sleeve_timeout: Duration::from_secs(6),
        }
    }
}

/// The remote, as announced in its `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    /// The remote's id for this connection, not ours.
    pub conn_id: u64,
    pub udp_port: u16,
    pub features: u32,
    /// Negotiated protocol version.
    pub version: u8,
}

impl RemotePeer {
    /// Whether the remote advertised `feature` (a `FEATURE_*` bit).
    pub fn supports(&self, feature: u32) -> bool {
        self.features & feature == feature
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Handshaking,
    /// TCP up; the sleeve is not (or no longer) confirmed both ways.
    Connected,
    /// UDP sleeve heartbeats confirmed in both directions.
    Established,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    HandshakeComplete(RemotePeer),
    Established,
    /// The sleeve was lost; TCP is still up.
    Unestablished,
    /// A message for the layers above: `Gossip`, or `Other` from a newer
    /// peer. Heartbeats and sleeve signalling are handled here.
    Message(Message),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The remote has our name: we dialled one of our own addresses.
    #[error("connected to ourselves")]
    SelfConnection,
    #[error("no handshake within {after:?}")]
    HandshakeTimeout { after: Duration },
    #[error("nothing heard from the remote for {silent_for:?}")]
    HeartbeatTimeout { silent_for: Duration },
    #[error("input on a closed connection")]
    Closed,
}

#[derive(Debug)]
pub struct Connection {
    local_name: PeerName,
    timers: Timers,
    conn_id: u64,
    outbound: bool,
    state: State,
    started: Instant,
    last_input: Instant,
    preamble: PreambleReader,
    version: Option<u8>,
    decoder: FrameDecoder,
    /// Set when the handshake completes.
    live: Option<Live>,
    /// Bytes ready for the socket.
    transmit: Vec<u8>,
    /// Frames sent before the handshake completed, held back so nothing
    /// leaks to a peer we end up rejecting.
    held: Vec<u8>,
    events: VecDeque<Event>,
}

/// What only exists once the remote has introduced itself.
#[derive(Debug)]
struct Live {
    remote: RemotePeer,
    next_heartbeat: Instant,
    sleeve: Sleeve,
}

/// Sleeve (UDP) confirmation.
#[derive(Debug)]
struct Sleeve {
    /// When the latest UDP heartbeat from the remote arrived; `None` while
    /// remote→local UDP is considered down (and we've said so).
    last_received: Option<Instant>,
    /// The remote said local→remote UDP works.
    remote_ready: bool,
    next_send: Instant,
    send_due: bool,
}

impl Connection {
    /// A new connection, with our preamble and `Hello` already queued.
    /// `conn_id` should be random; `outbound` is whether we dialled.
    pub fn new(local: LocalPeer, timers: Timers, conn_id: u64, outbound: bool, now: Instant) -> Self {
        let mut transmit = Vec::new();
        write_preamble(&mut transmit, VersionRange::OURS);
        let hello = Hello {
            name: local.name,
            nickname: local.nickname,
            uid: local.uid,
            conn_id,
            udp_port: local.udp_port,
            features: local.features,
        };
        // A Hello is a few hundred bytes at most, far under the frame cap.
        let _ = write_frame(&mut transmit, |w| hello.encode(w));
        Connection {
            local_name: local.name,
            timers,
            conn_id,
            outbound,
            state: State::Handshaking,
            started: now,
            last_input: now,
            preamble: PreambleReader::new(),
            version: None,
            decoder: FrameDecoder::new(),
            live: None,
            transmit,
            held: Vec::new(),
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Known once the handshake is complete (and still after closing).
    pub fn remote(&self) -> Option<&RemotePeer> {
        self.live.as_ref().map(|live| &live.remote)
    }

    pub fn outbound(&self) -> bool {
        self.outbound
    }

    /// Our id for this connection, as sent in our `Hello`.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Bytes read from the socket. On error the connection is `Closed`.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), ConnectionError> {
        if self.state == State::Closed {
            return Err(ConnectionError::Closed);
        }
        // Any bytes count as liveness, not just whole frames, so a big
        // gossip frame trickling over a slow link doesn't look like silence.
        if !data.is_empty() {
            self.last_input = now;
        }
        let result = self.process_input(now, data);
        self.close_on_error(result)
    }

    /// Queues `msg`. Before the handshake completes it is held back and
    /// sent right after it; on a closed connection it is dropped.
    pub fn send(&mut self, msg: Message) -> Result<(), FrameError> {
        let out = match self.state {
            State::Closed => return Ok(()),
            State::Handshaking => &mut self.held,
            State::Connected | State::Established => &mut self.transmit,
        };
        write_frame(out, |w| msg.encode(w))
    }

    /// Appends every pending byte to `out`; false if there were none.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        if self.transmit.is_empty() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.transmit);
        } else {
            out.append(&mut self.transmit);
        }
        true
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Drives every deadline: handshake timeout, heartbeat sending and
    /// timeout, sleeve timeout. Calling it early or late is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnectionError> {
        let result = self.process_timeout(now);
        self.close_on_error(result)
    }

    /// The earliest instant `handle_timeout` (or `poll_sleeve_heartbeat`)
    /// has work to do; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let Some(live) = &self.live else {
            return Some(self.started + self.timers.handshake_timeout);
        };
        let sleeve_lost = live.sleeve.last_received.map(|t| t + self.timers.sleeve_timeout);
        [
            Some(self.last_input + self.timers.heartbeat_timeout),
            Some(live.next_heartbeat),
            Some(live.sleeve.next_send),
            sleeve_lost,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The router received a UDP sleeve heartbeat from this remote.
    pub fn handle_sleeve_heartbeat(&mut self, now: Instant) {
        let Some(live) = self.live.as_mut().filter(|_| self.state != State::Closed) else {
            return;
        };
        if live.sleeve.last_received.replace(now).is_none() {
            queue_control(&mut self.transmit, &Message::SleeveReady);
            self.update_established();
        }
    }

    /// Whether the router should send a UDP sleeve heartbeat to the remote
    /// now: once at handshake completion, then every
    /// `sleeve_heartbeat_interval`.
    pub fn poll_sleeve_heartbeat(&mut self, now: Instant) -> bool {
        let Some(live) = self.live.as_mut().filter(|_| self.state != State::Closed) else {
            return false;
        };
        live.sleeve.schedule_send(now, self.timers.sleeve_heartbeat_interval);
        std::mem::take(&mut live.sleeve.send_due)
    }

    /// Shuts the connection down locally, e.g. after losing a tie-break.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.transmit.clear();
        self.held.clear();
    }

    fn close_on_error(&mut self, result: Result<(), ConnectionError>) -> Result<(), ConnectionError> {
        if result.is_err() {
            self.close();
        }
        result
    }

    fn process_input(&mut self, now: Instant, mut data: &[u8]) -> Result<(), ConnectionError> {
        let version = match self.version {
            Some(version) => version,
            None => {
                let Some(theirs) = self.preamble.read(&mut data)? else {
                    return Ok(());
                };
                let version = VersionRange::OURS.negotiate(theirs)?;
                self.version = Some(version);
                version
            }
        };
        self.decoder.push(data);
        loop {
            // Decode into owned values so the decoder's borrow ends before
            // the frame is acted on.
            let frame = match self.decoder.next_frame()? {
                None => return Ok(()),
                Some(body) if self.live.is_none() => Frame::Hello(Hello::decode(body)?),
                Some(body) => Frame::Message(Message::decode(body)?),
            };
            match frame {
                Frame::Hello(hello) => self.complete_handshake(now, hello, version)?,
                Frame::Message(msg) => self.on_message(msg),
            }
        }
    }

    fn complete_handshake(&mut self, now: Instant, hello: Hello, version: u8) -> Result<(), ConnectionError> {
        if hello.name == self.local_name {
            return Err(ConnectionError::SelfConnection);
        }
        if hello.name.is_broadcast() {
            return Err(HandshakeError::BroadcastName.into());
        }
        let remote = RemotePeer {
            name: hello.name,
            nickname: hello.nickname,
            uid: hello.uid,
            conn_id: hello.conn_id,
            udp_port: hello.udp_port,
            features: hello.features,
            version,
        };
        self.state = State::Connected;
        self.transmit.append(&mut self.held);
        self.events.push_back(Event::HandshakeComplete(remote.clone()));
        self.live = Some(Live {
            remote,
            next_heartbeat: now + self.timers.heartbeat_interval,
            sleeve: Sleeve { last_received: None, remote_ready: false, next_send: now, send_due: false },
        });
        Ok(())
    }

    fn on_message(&mut self, msg: Message) {
        match msg {
            // Liveness was already noted when the bytes arrived.
            Message::Heartbeat => {}
            Message::SleeveReady | Message::SleeveLost => {
                if let Some(live) = &mut self.live {
                    live.sleeve.remote_ready = msg == Message::SleeveReady;
                }
                self.update_established();
            }
            Message::Gossip(_) | Message::Ipam(_) | Message::LocalMacs(_) | Message::Other { .. } => {
                self.events.push_back(Event::Message(msg))
            }
        }
    }

    fn process_timeout(&mut self, now: Instant) -> Result<(), ConnectionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        let Some(live) = &mut self.live else {
            let after = self.timers.handshake_timeout;
            if now >= self.started + after {
                return Err(ConnectionError::HandshakeTimeout { after });
            }
            return Ok(());
        };

        let silent_for = now.saturating_duration_since(self.last_input);
        if silent_for >= self.timers.heartbeat_timeout {
            return Err(ConnectionError::HeartbeatTimeout { silent_for });
        }

        if now >= live.next_heartbeat {
            queue_control(&mut self.transmit, &Message::Heartbeat);
            live.next_heartbeat = now + self.timers.heartbeat_interval;
        }

        let sleeve = &mut live.sleeve;
        sleeve.schedule_send(now, self.timers.sleeve_heartbeat_interval);
        let lost = sleeve.last_received.is_some_and(|last| now >= last + self.timers.sleeve_timeout);
        if lost {
            sleeve.last_received = None;
            queue_control(&mut self.transmit, &Message::SleeveLost);
            self.update_established();
        }
        Ok(())
    }

    /// Moves between `Connected` and `Established` to match the sleeve.
    fn update_established(&mut self) {
        let Some(live) = &self.live else {
            return;
        };
        let up = live.sleeve.last_received.is_some() && live.sleeve.remote_ready;
        match (self.state, up) {
            (State::Connected, true) => {
                self.state = State::Established;
                self.events.push_back(Event::Established);
            }
            (State::Established, false) => {
                self.state = State::Connected;
                self.events.push_back(Event::Unestablished);
            }
            _ => {}
        }
    }
}

impl Sleeve {
    fn schedule_send(&mut self, now: Instant, interval: Duration) {
        if now >= self.next_send {
            self.send_due = true;
            self.next_send = now + interval;
        }
    }
}

/// Queues one of our own control messages: only ever sent after the
/// handshake, and tiny, so neither holding back nor the size cap apply.
fn queue_control(transmit: &mut Vec<u8>, msg: &Message) {
    let _ = write_frame(transmit, |w| msg.encode(w));
}

enum Frame {
    Hello(Hello),
    Message(Message),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::handshake::MAGIC;
    use crate::control::message::tests::arb_message;
    use crate::control::{FEATURE_FASTDP, MAX_MESSAGE_LEN, PROTOCOL_MAX_VERSION};
    use proptest::prelude::*;

    fn peer(last: u8) -> LocalPeer {
        LocalPeer {
            name: PeerName::from_bytes([0x02, 0, 0, 0, 0, last]),
            nickname: format!("host-{last}"),
            uid: 1000 + u64::from(last),
            udp_port: 6784,
            features: FEATURE_FASTDP,
        }
    }

    /// Everything `local` sends first: its preamble and Hello.
    fn opening(local: LocalPeer, conn_id: u64, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        Connection::new(local, Timers::default(), conn_id, true, now).poll_transmit(&mut out);
        out
    }

    fn frames(msgs: &[Message]) -> Vec<u8> {
        let mut out = Vec::new();
        for msg in msgs {
            write_frame(&mut out, |w| msg.encode(w)).expect("small");
        }
        out
    }

    fn events(conn: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| conn.poll_event()).collect()
    }

    #[derive(Debug)]
    struct Side {
        conn: Connection,
        events: Vec<Event>,
        error: Option<(Instant, ConnectionError)>,
    }

    impl Side {
        fn record(&mut self, now: Instant, result: Result<(), ConnectionError>) {
            if let Err(e) = result {
                self.error.get_or_insert((now, e));
            }
        }

        fn take_events(&mut self) -> Vec<Event> {
            std::mem::take(&mut self.events)
        }
    }

    /// Two connections wired back to back in simulated time, with zero
    /// latency and switchable links. `a` dialled `b`.
    #[derive(Debug)]
    struct Pair {
        start: Instant,
        now: Instant,
        a: Side,
        b: Side,
        /// Largest piece the bytes are delivered in.
        chunk: usize,
        tcp_a_to_b: bool,
        tcp_b_to_a: bool,
        udp_a_to_b: bool,
        udp_b_to_a: bool,
    }

    impl Pair {
        fn new(a: LocalPeer, b: LocalPeer) -> Self {
            let now = Instant::now();
            let side = |local, conn_id, outbound| Side {
                conn: Connection::new(local, Timers::default(), conn_id, outbound, now),
                events: Vec::new(),
                error: None,
            };
            Pair {
                start: now,
                now,
                a: side(a, 1, true),
                b: side(b, 2, false),
                chunk: usize::MAX,
                tcp_a_to_b: true,
                tcp_b_to_a: true,
                udp_a_to_b: false,
                udp_b_to_a: false,
            }
        }

        fn connected() -> Self {
            let mut pair = Pair::new(peer(1), peer(2));
            pair.drive();
            assert_eq!(pair.a.conn.state(), State::Connected);
            assert_eq!(pair.b.conn.state(), State::Connected);
            pair.a.events.clear();
            pair.b.events.clear();
            pair
        }

        fn elapsed(&self) -> Duration {
            self.now - self.start
        }

        /// Exchanges everything pending at the current instant.
        fn drive(&mut self) {
            let now = self.now;
            loop {
                // Both sides write before either reads, as two peers
                // sending their openings at once do.
                let a_out = transmitted(&mut self.a, self.tcp_a_to_b);
                let b_out = transmitted(&mut self.b, self.tcp_b_to_a);
                let mut progress = !a_out.is_empty() || !b_out.is_empty();
                deliver(now, self.chunk, &a_out, &mut self.b);
                deliver(now, self.chunk, &b_out, &mut self.a);
                if self.a.conn.poll_sleeve_heartbeat(now) && self.udp_a_to_b {
                    self.b.conn.handle_sleeve_heartbeat(now);
                    progress = true;
                }
                if self.b.conn.poll_sleeve_heartbeat(now) && self.udp_b_to_a {
                    self.a.conn.handle_sleeve_heartbeat(now);
                    progress = true;
                }
                for side in [&mut self.a, &mut self.b] {
                    let new = events(&mut side.conn);
                    side.events.extend(new);
                }
                if !progress {
                    return;
                }
            }
        }

        /// Runs both connections' timers for `d` of simulated time.
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            for _ in 0..1_000_000 {
                let next = [self.a.conn.poll_timeout(), self.b.conn.poll_timeout()].into_iter().flatten().min();
                let Some(next) = next.filter(|&t| t <= end) else {
                    self.now = end;
                    self.drive();
                    return;
                };
                self.now = self.now.max(next);
                for side in [&mut self.a, &mut self.b] {
                    let result = side.conn.handle_timeout(self.now);
                    side.record(self.now, result);
                }
                self.drive();
            }
            panic!("timers never settled: poll_timeout keeps returning past instants");
        }
    }

    /// `side`'s pending bytes, or none if its link is down.
    fn transmitted(side: &mut Side, up: bool) -> Vec<u8> {
        let mut out = Vec::new();
        side.conn.poll_transmit(&mut out);
        if !up {
            out.clear();
        }
        out
    }

    fn deliver(now: Instant, chunk: usize, bytes: &[u8], to: &mut Side) {
        for piece in bytes.chunks(chunk) {
            let result = to.conn.handle_input(now, piece);
            if result.is_err() {
                to.record(now, result);
                return;
            }
        }
    }

    fn assert_handshake_complete(side: &Side, remote: &LocalPeer, remote_conn_id: u64) {
        let expected = RemotePeer {
            name: remote.name,
            nickname: remote.nickname.clone(),
            uid: remote.uid,
            conn_id: remote_conn_id,
            udp_port: remote.udp_port,
            features: remote.features,
            version: PROTOCOL_MAX_VERSION,
        };
        assert_eq!(side.error, None);
        assert_eq!(side.events.first(), Some(&Event::HandshakeComplete(expected.clone())));
        assert_eq!(side.conn.remote(), Some(&expected));
        assert_eq!(side.conn.state(), State::Connected);
    }

    #[test]
    fn handshake_completes_both_ways() {
        let mut pair = Pair::new(peer(1), peer(2));
        pair.drive();
        assert_handshake_complete(&pair.a, &peer(2), 2);
        assert_handshake_complete(&pair.b, &peer(1), 1);
        assert!(pair.a.conn.outbound() && !pair.b.conn.outbound());
        assert_eq!((pair.a.conn.conn_id(), pair.b.conn.conn_id()), (1, 2));
        assert!(pair.a.conn.remote().is_some_and(|r| r.supports(FEATURE_FASTDP)));
    }

    #[test]
    fn byte_by_byte_delivery_works() {
        let mut pair = Pair::new(peer(1), peer(2));
        pair.chunk = 1;
        pair.a.conn.send(Message::Gossip(vec![1, 2, 3])).expect("small");
        pair.drive();
        assert_handshake_complete(&pair.a, &peer(2), 2);
        assert_handshake_complete(&pair.b, &peer(1), 1);
        pair.udp_a_to_b = true;
        pair.udp_b_to_a = true;
        pair.advance(Duration::from_secs(30));
        assert_eq!(pair.b.events[1], Event::Message(Message::Gossip(vec![1, 2, 3])));
        assert_eq!(pair.a.conn.state(), State::Established);
        assert_eq!(pair.b.conn.state(), State::Established);
    }

    #[test]
    fn messages_sent_before_handshake_follow_it_in_order() {
        let mut pair = Pair::new(peer(1), peer(2));
        let sent = [Message::Gossip(vec![1]), Message::Other { tag: 250, body: vec![9, 9] }, Message::Gossip(vec![])];
        for msg in &sent {
            pair.a.conn.send(msg.clone()).expect("small");
        }
        // Held back: only the preamble and Hello go out before the
        // remote's Hello arrived.
        let mut first = Vec::new();
        pair.a.conn.poll_transmit(&mut first);
        assert_eq!(first, opening(peer(1), 1, pair.now));
        pair.b.conn.handle_input(pair.now, &first).expect("valid");
        pair.drive();
        let got: Vec<Event> = pair.b.events[1..].to_vec();
        assert_eq!(got, sent.map(Event::Message));
    }

    #[test]
    fn heartbeats_keep_an_idle_connection_alive() {
        let mut pair = Pair::connected();
        pair.advance(Duration::from_secs(3600));
        assert_eq!((pair.a.error.as_ref(), pair.b.error.as_ref()), (None, None));
        assert_eq!(pair.a.conn.state(), State::Connected);
        assert_eq!(pair.b.conn.state(), State::Connected);
        // Heartbeats are not surfaced.
        assert!(pair.a.events.is_empty() && pair.b.events.is_empty());
    }

    #[test]
    fn silence_times_out_within_heartbeat_timeout() {
        let timeout = Timers::default().heartbeat_timeout;
        let mut pair = Pair::connected();
        pair.advance(Duration::from_millis(2500));
        let silence_from = pair.now;
        pair.tcp_b_to_a = false;
        pair.advance(timeout * 2);
        let (at, err) = pair.a.error.clone().expect("a timed out");
        assert!(matches!(err, ConnectionError::HeartbeatTimeout { silent_for } if silent_for == timeout));
        assert!(at - silence_from <= timeout, "took {:?}", at - silence_from);
        assert_eq!(pair.a.conn.state(), State::Closed);
        assert_eq!(pair.a.conn.poll_timeout(), None);
        assert_eq!(pair.a.conn.handle_input(pair.now, b"x"), Err(ConnectionError::Closed));
    }

    #[test]
    fn handshake_times_out() {
        let mut pair = Pair::new(peer(1), peer(2));
        pair.tcp_a_to_b = false;
        pair.tcp_b_to_a = false;
        pair.advance(Duration::from_secs(60));
        let after = Timers::default().handshake_timeout;
        for side in [&pair.a, &pair.b] {
            assert_eq!(side.error, Some((pair.start + after, ConnectionError::HandshakeTimeout { after })));
        }
    }

    #[test]
    fn sleeve_confirmation_and_loss_are_seen_on_both_sides() {
        let timers = Timers::default();
        let mut pair = Pair::connected();
        pair.udp_a_to_b = true;
        pair.advance(Duration::from_secs(5));
        // One direction is not enough.
        assert_eq!(pair.a.conn.state(), State::Connected);
        assert_eq!(pair.b.conn.state(), State::Connected);

        pair.udp_b_to_a = true;
        pair.advance(timers.sleeve_heartbeat_interval);
        for side in [&mut pair.a, &mut pair.b] {
            assert_eq!(side.conn.state(), State::Established);
            assert_eq!(side.take_events(), [Event::Established]);
        }

        pair.advance(Duration::from_secs(60));
        assert!(pair.a.events.is_empty() && pair.b.events.is_empty(), "stable while heartbeats flow");

        pair.udp_b_to_a = false;
        let lost_at = pair.now;
        pair.advance(timers.sleeve_timeout + timers.sleeve_heartbeat_interval);
        for side in [&mut pair.a, &mut pair.b] {
            assert_eq!(side.conn.state(), State::Connected);
            assert_eq!(side.take_events(), [Event::Unestablished]);
            assert_eq!(side.error, None, "TCP stays up");
        }
        assert!(pair.now - lost_at <= timers.sleeve_timeout + timers.sleeve_heartbeat_interval);

        pair.udp_b_to_a = true;
        pair.advance(timers.sleeve_heartbeat_interval);
        for side in [&mut pair.a, &mut pair.b] {
            assert_eq!(side.conn.state(), State::Established);
            assert_eq!(side.take_events(), [Event::Established]);
        }
        assert!(pair.elapsed() > Duration::from_secs(70));
    }

    #[test]
    fn first_sleeve_heartbeat_is_due_at_handshake_completion() {
        let now = Instant::now();
        let interval = Timers::default().sleeve_heartbeat_interval;
        let mut conn = Connection::new(peer(1), Timers::default(), 1, true, now);
        assert!(!conn.poll_sleeve_heartbeat(now), "nothing before the handshake");
        conn.handle_input(now, &opening(peer(2), 77, now)).expect("valid");
        assert!(conn.poll_sleeve_heartbeat(now));
        assert!(!conn.poll_sleeve_heartbeat(now));
        assert_eq!(conn.poll_timeout(), Some(now + interval));
        conn.handle_timeout(now + interval).expect("alive");
        assert!(conn.poll_sleeve_heartbeat(now + interval));
    }

    #[test]
    fn a_closed_connection_stays_silent() {
        let now = Instant::now();
        let mut conn = Connection::new(peer(1), Timers::default(), 1, true, now);
        conn.handle_input(now, &opening(peer(2), 77, now)).expect("valid");
        conn.close();
        conn.handle_sleeve_heartbeat(now);
        assert!(!conn.poll_sleeve_heartbeat(now));
        conn.send(Message::Gossip(vec![1])).expect("dropped, not an error");
        conn.handle_timeout(now + Duration::from_secs(3600)).expect("no-op");
        assert!(!conn.poll_transmit(&mut Vec::new()));
        assert_eq!(conn.poll_timeout(), None);
        assert_eq!(conn.state(), State::Closed);
        assert_eq!(conn.remote().map(|r| r.name), Some(peer(2).name), "kept for logging");
    }

    #[test]
    fn version_mismatch_is_rejected() {
        let now = Instant::now();
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
        let mut input = MAGIC.to_vec();
        input.extend_from_slice(&[PROTOCOL_MAX_VERSION + 1, PROTOCOL_MAX_VERSION + 3]);
        assert_eq!(
            conn.handle_input(now, &input),
            Err(ConnectionError::Handshake(HandshakeError::VersionMismatch {
                ours: VersionRange::OURS,
                theirs: VersionRange { min: PROTOCOL_MAX_VERSION + 1, max: PROTOCOL_MAX_VERSION + 3 },
            }))
        );
        assert_eq!(conn.state(), State::Closed);
        assert!(!conn.poll_transmit(&mut Vec::new()), "nothing more is sent");
    }

    #[test]
    fn bad_magic_is_rejected_on_the_first_byte() {
        let now = Instant::now();
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
        assert_eq!(
            conn.handle_input(now, b"G"),
            Err(ConnectionError::Handshake(HandshakeError::BadMagic { received: b"G".to_vec() }))
        );
        assert_eq!(conn.state(), State::Closed);
    }

    #[test]
    fn self_connection_is_rejected_and_held_messages_never_leave() {
        let mut pair = Pair::new(peer(1), peer(1));
        pair.a.conn.send(Message::Gossip(vec![1])).expect("small");
        pair.drive();
        for side in [&pair.a, &pair.b] {
            assert_eq!(side.error, Some((pair.start, ConnectionError::SelfConnection)));
            assert_eq!(side.conn.state(), State::Closed);
            assert!(side.events.is_empty());
        }
    }

    #[test]
    fn broadcast_name_is_rejected() {
        let now = Instant::now();
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
        let impostor = LocalPeer { name: PeerName::BROADCAST, ..peer(2) };
        assert_eq!(
            conn.handle_input(now, &opening(impostor, 77, now)),
            Err(ConnectionError::Handshake(HandshakeError::BroadcastName))
        );
    }

    #[test]
    fn malformed_and_oversized_frames_close_the_connection() {
        let now = Instant::now();
        let established = || {
            let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
            conn.handle_input(now, &opening(peer(2), 77, now)).expect("valid");
            conn
        };
        let mut conn = established();
        conn.handle_input(now, &[0, 0]).expect("a partial length prefix just waits");
        assert!(matches!(conn.handle_input(now, &[0, 0]), Err(ConnectionError::Decode(DecodeError::Truncated { .. }))));
        assert_eq!(conn.state(), State::Closed);

        let mut conn = established();
        assert!(matches!(
            conn.handle_input(now, &u32::MAX.to_be_bytes()),
            Err(ConnectionError::Frame(FrameError::Oversized { .. }))
        ));
        assert_eq!(conn.state(), State::Closed);
    }

    #[test]
    fn oversized_send_is_refused_and_nothing_queued() {
        let now = Instant::now();
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
        conn.handle_input(now, &opening(peer(2), 77, now)).expect("valid");
        let mut out = Vec::new();
        conn.poll_transmit(&mut out);
        let huge = Message::Gossip(vec![0; MAX_MESSAGE_LEN]);
        assert!(matches!(conn.send(huge), Err(FrameError::Oversized { .. })));
        assert!(!conn.poll_transmit(&mut out));
    }

    /// A remote's whole side of a conversation: opening, then `msgs`.
    fn remote_stream(msgs: &[Message], now: Instant) -> Vec<u8> {
        let mut stream = opening(peer(2), 77, now);
        stream.extend(frames(msgs));
        stream
    }

    /// Feeds `stream` to a fresh connection in pieces cut at `cuts`.
    fn feed(stream: &[u8], cuts: &[usize], now: Instant) -> (Vec<Event>, Result<(), ConnectionError>) {
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut from = 0;
        let mut result = Ok(());
        for to in cuts {
            result = conn.handle_input(now, &stream[from..to]);
            if result.is_err() {
                break;
            }
            from = to;
        }
        (events(&mut conn), result)
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_stream_gives_the_same_events(
            msgs in proptest::collection::vec(arb_message(), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let now = Instant::now();
            let stream = remote_stream(&msgs, now);
            let whole = feed(&stream, &[], now);
            prop_assert_eq!(&whole.1, &Ok(()));
            let split = feed(&stream, &cuts, now);
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn arbitrary_input_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), 0..6),
        ) {
            let now = Instant::now();
            let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
            for chunk in &chunks {
                if conn.handle_input(now, chunk).is_err() {
                    prop_assert_eq!(conn.state(), State::Closed);
                    break;
                }
            }
        }

        #[test]
        fn arbitrary_frames_after_a_valid_handshake_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), 0..6),
            tick in 0u64..20_000,
        ) {
            let now = Instant::now();
            let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now);
            conn.handle_input(now, &opening(peer(2), 77, now)).expect("valid");
            let mut t = now;
            for chunk in &chunks {
                t += Duration::from_millis(tick);
                conn.handle_sleeve_heartbeat(t);
                let _ = conn.handle_timeout(t);
                if conn.handle_input(t, chunk).is_err() {
                    prop_assert_eq!(conn.state(), State::Closed);
                    break;
                }
                let _ = events(&mut conn);
            }
        }
    }
}
