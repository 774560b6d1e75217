//! One control connection's state machine, sans I/O: the router feeds it
//! received bytes, UDP sleeve heartbeats and the time, and drains bytes to
//! write, events and its next deadline.
//!
//! Lifecycle: `Handshaking` (preamble + `Hello` each way, then with a
//! password the Noise handshake) → `Connected` (TCP up) ⇄ `Established`
//! (sleeve confirmed in both directions) → `Closed` after any error.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{DecodeError, Writer};
use crate::crypto::noise::{NoiseError, NoiseHandshake};
use crate::crypto::{Cipher, OpenError, Opener, Sealer};
use crate::PeerName;

use super::framing::{write_frame, FrameDecoder, FrameError};
use super::handshake::{write_preamble, HandshakeError, Hello, PreambleReader, VersionRange};
use super::message::Message;
use super::secure::{
    self, open_sealed_frame, write_sealed_frame, Encryption, HandshakeFrame, HandshakeFrameError, Refusal,
    SealFrameError, SleeveKeys,
};

/// Who we are, as announced in our `Hello`.
#[derive(Debug, Clone)]
pub struct LocalPeer {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub udp_port: u16,
    /// `FEATURE_*` bits; the encryption bits are added from `encryption`.
    pub features: u32,
    /// The cluster password's key and cipher; `None`: unencrypted.
    pub encryption: Option<Arc<Encryption>>,
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
    /// A password problem; the text is what operators see.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the peer refused the encrypted handshake")]
    PeerRefused,
    #[error("encrypted handshake failed: {0}")]
    Noise(NoiseError),
    #[error("malformed handshake frame: {0}")]
    HandshakeFrame(#[from] HandshakeFrameError),
    /// A sealed control frame did not verify: the TCP stream was tampered
    /// with, and nothing after it can be trusted.
    #[error("sealed control frame rejected: {0}")]
    ControlAuth(OpenError),
    #[error(transparent)]
    Seal(#[from] SealFrameError),
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
    /// The preamble bytes each side sent, and our `Hello` body: with the
    /// remote's `Hello` they make the Noise prologue.
    our_preamble: [u8; 2],
    their_preamble: [u8; 2],
    our_hello: Vec<u8>,
    encryption: Option<Arc<Encryption>>,
    /// The cipher negotiated from both `Hello`s (with encryption).
    cipher: Option<Cipher>,
    entropy: [u8; 32],
    /// The remote as its `Hello` announced it, from the moment it arrives
    /// (so a refused peer can still be named).
    announced: Option<RemotePeer>,
    noise: Option<NoiseHandshake>,
    /// Opens the remote's sealed frames once the Noise handshake is done.
    opener: Option<Opener>,
    sleeve_keys: Option<SleeveKeys>,
    /// The remote can open what we seal: always without encryption; as
    /// the initiator once its reply arrived; as the responder once a
    /// sealed frame from it opened.
    remote_has_keys: bool,
    /// A refusal we detected, sent to the remote as we close.
    farewell: Option<Refusal>,
    decoder: FrameDecoder,
    /// Set when the handshake completes.
    live: Option<Live>,
    /// Bytes ready for the socket.
    out: Outbox,
    /// Messages sent before the handshake completed, held back so nothing
    /// leaks to a peer we end up rejecting (and sealed once keys exist).
    held: Vec<Message>,
    /// The latest time we were told, for rekeying when sealing a message
    /// sent without one.
    now: Instant,
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

/// Our side of the byte stream: plain frames until the Noise handshake
/// ends, sealed ones after it.
#[derive(Debug, Default)]
struct Outbox {
    transmit: Vec<u8>,
    sealer: Option<Sealer>,
}

impl Outbox {
    fn queue(&mut self, now: Instant, msg: &Message) -> Result<(), SealFrameError> {
        match &mut self.sealer {
            Some(sealer) => write_sealed_frame(&mut self.transmit, sealer, now, |w| msg.encode(w)),
            None => Ok(write_frame(&mut self.transmit, |w| msg.encode(w))?),
        }
    }

    fn queue_handshake(&mut self, frame: &HandshakeFrame<'_>) {
        // Handshake frames are a few dozen bytes.
        let _ = write_frame(&mut self.transmit, |w| frame.encode(w));
    }
}

impl Connection {
    /// A new connection, with our preamble and `Hello` already queued.
    /// `conn_id` should be random; `outbound` is whether we dialled;
    /// `entropy` (secret, random) makes the Noise ephemeral key.
    pub fn new(
        local: LocalPeer,
        timers: Timers,
        conn_id: u64,
        outbound: bool,
        now: Instant,
        entropy: [u8; 32],
    ) -> Self {
        let mut transmit = Vec::new();
        write_preamble(&mut transmit, VersionRange::OURS);
        let hello = Hello {
            name: local.name,
            nickname: local.nickname,
            uid: local.uid,
            conn_id,
            udp_port: local.udp_port,
            features: local.features | local.encryption.as_ref().map_or(0, |e| e.features()),
        };
        let mut our_hello = Vec::new();
        hello.encode(&mut Writer::new(&mut our_hello));
        // A Hello is a few hundred bytes at most, far under the frame cap.
        let _ = write_frame(&mut transmit, |w| {
            w.bytes(&our_hello);
        });
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
            our_preamble: [VersionRange::OURS.min, VersionRange::OURS.max],
            their_preamble: [0; 2],
            our_hello,
            encryption: local.encryption,
            cipher: None,
            entropy,
            announced: None,
            noise: None,
            opener: None,
            sleeve_keys: None,
            remote_has_keys: true,
            farewell: None,
            decoder: FrameDecoder::new(),
            live: None,
            out: Outbox { transmit, sealer: None },
            held: Vec::new(),
            now,
            events: VecDeque::new(),
        }
    }

    /// The remote as its `Hello` announced it, also before (or without)
    /// the handshake completing: names a peer that was refused.
    pub fn announced(&self) -> Option<&RemotePeer> {
        self.announced.as_ref()
    }

    /// Whether control frames are sealed (the Noise handshake completed).
    pub fn encrypted(&self) -> bool {
        self.out.sealer.is_some()
    }

    /// The cipher this connection's control frames and sleeve datagrams
    /// are sealed with, as negotiated from both `Hello`s (see
    /// `secure::negotiate`): known once the remote's `Hello` is in, before
    /// the Noise handshake (so see `encrypted` for whether keys exist);
    /// `None` without encryption.
    pub fn cipher(&self) -> Option<Cipher> {
        self.cipher
    }

    /// The sleeve's keys for this connection, once: the data path takes
    /// them when the handshake completes.
    pub fn take_sleeve_keys(&mut self) -> Option<SleeveKeys> {
        self.sleeve_keys.take()
    }

    /// Key rotations on the control stream so far: (ours, the remote's).
    pub fn rekeys(&self) -> (u64, u64) {
        (self.out.sealer.as_ref().map_or(0, Sealer::rekeys), self.opener.as_ref().map_or(0, Opener::rekeys))
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
        self.now = self.now.max(now);
        let result = self.process_input(now, data);
        self.close_on_error(result)
    }

    /// Queues `msg`. Before the handshake completes it is held back and
    /// sent right after it; on a closed connection it is dropped.
    pub fn send(&mut self, msg: Message) -> Result<(), SealFrameError> {
        match self.state {
            State::Closed => Ok(()),
            State::Handshaking => {
                self.held.push(msg);
                Ok(())
            }
            State::Connected | State::Established => self.out.queue(self.now, &msg),
        }
    }

    /// Appends every pending byte to `out`; false if there were none.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        let transmit = &mut self.out.transmit;
        if transmit.is_empty() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, transmit);
        } else {
            out.append(transmit);
        }
        true
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Drives every deadline: handshake timeout, heartbeat sending and
    /// timeout, sleeve timeout. Calling it early or late is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnectionError> {
        self.now = self.now.max(now);
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
            queue_control(&mut self.out, now, &Message::SleeveReady);
            self.update_established();
        }
    }

    /// Whether the router should send a UDP sleeve heartbeat to the remote
    /// now: once at handshake completion, then every
    /// `sleeve_heartbeat_interval`. On an encrypted connection we accepted,
    /// not before the remote's first sealed frame: until then it may not
    /// hold the keys to open a sealed heartbeat.
    pub fn poll_sleeve_heartbeat(&mut self, now: Instant) -> bool {
        let Some(live) = self.live.as_mut().filter(|_| self.state != State::Closed && self.remote_has_keys) else {
            return false;
        };
        live.sleeve.schedule_send(now, self.timers.sleeve_heartbeat_interval);
        std::mem::take(&mut live.sleeve.send_due)
    }

    /// Shuts the connection down locally, e.g. after losing a tie-break.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.out.transmit.clear();
        self.held.clear();
    }

    fn close_on_error(&mut self, result: Result<(), ConnectionError>) -> Result<(), ConnectionError> {
        if result.is_err() {
            self.close();
            if let Some(why) = self.farewell.take() {
                self.out.queue_handshake(&HandshakeFrame::Refuse(Some(why)));
            }
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
                self.their_preamble = [theirs.min, theirs.max];
                version
            }
        };
        self.decoder.push(data);
        loop {
            // Decode into owned values so the decoder's borrow ends before
            // the frame is acted on.
            let frame = match self.decoder.next_frame_mut()? {
                None => return Ok(()),
                Some(body) if self.announced.is_none() => Frame::Hello(Hello::decode(body)?, body.to_vec()),
                Some(body) if self.live.is_none() => match HandshakeFrame::decode(body)? {
                    HandshakeFrame::Noise(msg) => Frame::Noise(msg.to_vec()),
                    HandshakeFrame::Refuse(Some(why)) => return Err(why.into()),
                    HandshakeFrame::Refuse(None) => return Err(ConnectionError::PeerRefused),
                },
                Some(body) => {
                    let plain = match &mut self.opener {
                        Some(opener) => {
                            let plain = open_sealed_frame(opener, body).map_err(ConnectionError::ControlAuth)?;
                            self.remote_has_keys = true;
                            plain
                        }
                        None => body,
                    };
                    Frame::Message(Message::decode(plain)?)
                }
            };
            match frame {
                Frame::Hello(hello, raw) => self.on_hello(now, hello, &raw, version)?,
                Frame::Noise(msg) => self.on_noise(now, &msg)?,
                Frame::Message(msg) => self.on_message(msg),
            }
        }
    }

    fn on_hello(&mut self, now: Instant, hello: Hello, raw: &[u8], version: u8) -> Result<(), ConnectionError> {
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
        self.announced = Some(remote.clone());
        let Some(enc) = self.encryption.clone() else {
            secure::negotiate(None, remote.features)?;
            self.complete_handshake(now, remote);
            return Ok(());
        };
        self.cipher = secure::negotiate(Some(&enc), remote.features)?;
        let ours = (self.our_preamble.as_slice(), self.our_hello.as_slice());
        let theirs = (self.their_preamble.as_slice(), raw);
        let prologue = if self.outbound { secure::prologue(ours, theirs) } else { secure::prologue(theirs, ours) };
        let mut noise =
            NoiseHandshake::new(&enc.psk, &prologue, self.outbound, self.entropy).map_err(ConnectionError::Noise)?;
        // The entropy made the one ephemeral key it is for.
        self.entropy = [0; 32];
        if noise.is_my_turn() {
            let mut msg = Vec::new();
            noise.write_message(&mut msg).map_err(ConnectionError::Noise)?;
            self.out.queue_handshake(&HandshakeFrame::Noise(&msg));
        }
        self.noise = Some(noise);
        Ok(())
    }

    fn on_noise(&mut self, now: Instant, msg: &[u8]) -> Result<(), ConnectionError> {
        let (Some(noise), Some(enc), Some(cipher)) = (self.noise.as_mut(), self.encryption.clone(), self.cipher) else {
            return Err(ConnectionError::Noise(NoiseError::OutOfTurn));
        };
        if let Err(e) = noise.read_message(msg) {
            return Err(match e {
                NoiseError::AuthFailed => {
                    // Tell the remote why before hanging up, so both sides
                    // report the same cause, not one "connection closed".
                    self.farewell = Some(Refusal::PasswordDiffers);
                    ConnectionError::Refused(Refusal::PasswordDiffers)
                }
                other => ConnectionError::Noise(other),
            });
        }
        if noise.is_my_turn() {
            let mut reply = Vec::new();
            noise.write_message(&mut reply).map_err(ConnectionError::Noise)?;
            self.out.queue_handshake(&HandshakeFrame::Noise(&reply));
        }
        if !noise.is_finished() {
            return Ok(());
        }
        let Some(noise) = self.noise.take() else { return Ok(()) };
        let secrets = noise.finish().map_err(ConnectionError::Noise)?;
        self.out.sealer = Some(Sealer::new(cipher, secrets.control_tx, enc.rekey, now));
        self.opener = Some(Opener::new(cipher, secrets.control_rx));
        // The initiator finishes on the responder's last message, so the
        // responder already has its keys; the responder waits for proof.
        self.remote_has_keys = self.outbound;
        self.sleeve_keys = Some(SleeveKeys {
            sealer: Sealer::new(cipher, secrets.sleeve_tx, enc.rekey, now),
            opener: Opener::new(cipher, secrets.sleeve_rx),
        });
        if let Some(remote) = self.announced.clone() {
            self.complete_handshake(now, remote);
        }
        Ok(())
    }

    fn complete_handshake(&mut self, now: Instant, remote: RemotePeer) {
        self.state = State::Connected;
        for msg in std::mem::take(&mut self.held) {
            if let Err(err) = self.out.queue(now, &msg) {
                // Only an oversized message can fail here, and the caller
                // was told its size was fine when it sent it unsealed.
                debug_assert!(false, "held message failed to queue: {err}");
            }
        }
        self.events.push_back(Event::HandshakeComplete(remote.clone()));
        self.live = Some(Live {
            remote,
            next_heartbeat: now + self.timers.heartbeat_interval,
            sleeve: Sleeve { last_received: None, remote_ready: false, next_send: now, send_due: false },
        });
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
            queue_control(&mut self.out, now, &Message::Heartbeat);
            live.next_heartbeat = now + self.timers.heartbeat_interval;
        }

        let sleeve = &mut live.sleeve;
        sleeve.schedule_send(now, self.timers.sleeve_heartbeat_interval);
        let lost = sleeve.last_received.is_some_and(|last| now >= last + self.timers.sleeve_timeout);
        if lost {
            sleeve.last_received = None;
            queue_control(&mut self.out, now, &Message::SleeveLost);
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
fn queue_control(out: &mut Outbox, now: Instant, msg: &Message) {
    let _ = out.queue(now, msg);
}

enum Frame {
    Hello(Hello, Vec<u8>),
    Noise(Vec<u8>),
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
            encryption: None,
        }
    }

    /// Everything `local` sends first: its preamble and Hello.
    fn opening(local: LocalPeer, conn_id: u64, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        Connection::new(local, Timers::default(), conn_id, true, now, [9; 32]).poll_transmit(&mut out);
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
                conn: Connection::new(local, Timers::default(), conn_id, outbound, now, [9; 32]),
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
        let mut conn = Connection::new(peer(1), Timers::default(), 1, true, now, [9; 32]);
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
        let mut conn = Connection::new(peer(1), Timers::default(), 1, true, now, [9; 32]);
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
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
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
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
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
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
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
            let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
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
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
        conn.handle_input(now, &opening(peer(2), 77, now)).expect("valid");
        let mut out = Vec::new();
        conn.poll_transmit(&mut out);
        let huge = Message::Gossip(vec![0; MAX_MESSAGE_LEN]);
        assert!(matches!(conn.send(huge), Err(SealFrameError::Frame(FrameError::Oversized { .. }))));
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
        let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
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
            let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
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
            let mut conn = Connection::new(peer(1), Timers::default(), 1, false, now, [9; 32]);
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

    /// The encrypted handshake, on the same simulated pair.
    mod encrypted {
        use super::*;
        use crate::control::{CipherChoice, Encryption, Refusal, FEATURE_ENCRYPTION};
        use crate::crypto::{Cipher, Psk, RekeyPolicy};

        fn with_password(last: u8, password: u8, cipher: Cipher) -> LocalPeer {
            with_choice(last, password, CipherChoice::Fixed(cipher))
        }

        fn with_choice(last: u8, password: u8, cipher: CipherChoice) -> LocalPeer {
            let encryption = Encryption { psk: Psk::from_bytes([password; 32]), cipher, rekey: RekeyPolicy::default() };
            LocalPeer { encryption: Some(Arc::new(encryption)), ..peer(last) }
        }

        fn errors(pair: &Pair) -> (Option<ConnectionError>, Option<ConnectionError>) {
            (pair.a.error.clone().map(|e| e.1), pair.b.error.clone().map(|e| e.1))
        }

        fn never_completed(side: &Side) -> bool {
            !side.events.iter().any(|e| matches!(e, Event::HandshakeComplete(_)))
        }

        #[test]
        fn same_password_completes_and_seals_everything_after_hello() {
            let chacha = Cipher::ChaCha20Poly1305;
            let mut pair = Pair::new(with_password(1, 7, chacha), with_password(2, 7, chacha));
            pair.chunk = 5;
            pair.drive();
            assert_eq!(errors(&pair), (None, None));
            assert_eq!(pair.a.conn.state(), State::Connected);
            assert_eq!(pair.b.conn.state(), State::Connected);
            assert!(pair.a.conn.encrypted() && pair.b.conn.encrypted());
            assert!(pair.a.conn.remote().is_some_and(|r| r.supports(FEATURE_ENCRYPTION)));

            let secret = b"a very recognisable gossip payload".to_vec();
            pair.a.conn.send(Message::Gossip(secret.clone())).expect("send");
            let mut wire = Vec::new();
            pair.a.conn.poll_transmit(&mut wire);
            assert!(!wire.windows(16).any(|w| secret.windows(16).any(|p| p == w)), "plaintext on the wire");
            deliver(pair.now, 7, &wire, &mut pair.b);
            pair.b.events.extend(events(&mut pair.b.conn));
            assert!(pair.b.events.contains(&Event::Message(Message::Gossip(secret))));

            // Each side's sleeve sealer matches the other's opener.
            let (mut ka, mut kb) =
                (pair.a.conn.take_sleeve_keys().expect("a"), pair.b.conn.take_sleeve_keys().expect("b"));
            assert!(pair.a.conn.take_sleeve_keys().is_none(), "handed out once");
            let nonce = ka.sealer.next_nonce(pair.now).expect("nonce");
            let mut msg = b"frame".to_vec();
            let tag = ka.sealer.seal_in_place(nonce, b"hdr", &mut msg);
            msg.extend_from_slice(&tag);
            assert_eq!(kb.opener.open_in_place(nonce, b"hdr", &mut msg), Ok(5));
        }

        #[test]
        fn wrong_password_is_refused_on_both_sides() {
            let chacha = Cipher::ChaCha20Poly1305;
            let mut pair = Pair::new(with_password(1, 7, chacha), with_password(2, 8, chacha));
            pair.drive();
            let differs = Some(ConnectionError::Refused(Refusal::PasswordDiffers));
            assert_eq!(errors(&pair), (differs.clone(), differs));
            assert!(never_completed(&pair.a) && never_completed(&pair.b));
            assert_eq!(pair.a.conn.state(), State::Closed);
            // The refused peer was still named by its Hello.
            assert_eq!(pair.b.conn.announced().map(|r| r.name), Some(peer(1).name));
        }

        #[test]
        fn password_on_one_side_only_is_a_mismatch_both_ways() {
            let mut pair = Pair::new(with_password(1, 7, Cipher::ChaCha20Poly1305), peer(2));
            pair.drive();
            assert_eq!(
                errors(&pair),
                (
                    Some(ConnectionError::Refused(Refusal::PeerHasNoPassword)),
                    Some(ConnectionError::Refused(Refusal::PeerRequiresPassword))
                )
            );
            assert!(never_completed(&pair.a) && never_completed(&pair.b));
            assert_eq!(
                ConnectionError::Refused(Refusal::PeerHasNoPassword).to_string(),
                "encryption mismatch: peer has no password"
            );
        }

        #[test]
        fn different_ciphers_are_refused() {
            let (chacha, aes) = (Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm);
            let mut pair = Pair::new(with_password(1, 7, chacha), with_password(2, 7, aes));
            pair.drive();
            assert_eq!(
                errors(&pair),
                (
                    Some(ConnectionError::Refused(Refusal::CipherMismatch { ours: chacha, theirs: aes })),
                    Some(ConnectionError::Refused(Refusal::CipherMismatch { ours: aes, theirs: chacha }))
                )
            );
            assert!(never_completed(&pair.a) && never_completed(&pair.b));
            assert_eq!(pair.a.conn.state(), State::Closed);
            assert_eq!(pair.b.conn.state(), State::Closed);
        }

        /// Drives `a` (dialling) and `b` to a completed encrypted handshake
        /// and checks that both ends use `want` for everything: the control
        /// stream (a sealed gossip frame each way) and the sleeve (each
        /// side's sleeve sealer against the other's opener).
        fn check_negotiated(a: CipherChoice, b: CipherChoice, want: Cipher) {
            let mut pair = Pair::new(with_choice(1, 7, a), with_choice(2, 7, b));
            pair.chunk = 7;
            pair.drive();
            let case = format!("{a:?} dialling {b:?}");
            assert_eq!(errors(&pair), (None, None), "{case}");
            assert!(pair.a.conn.encrypted() && pair.b.conn.encrypted(), "{case}");
            assert_eq!((pair.a.conn.cipher(), pair.b.conn.cipher()), (Some(want), Some(want)), "{case}");

            let now = pair.now;
            let sealed_message = |from: &mut Side, to: &mut Side, text: &[u8]| {
                from.conn.send(Message::Gossip(text.to_vec())).expect("send");
                let mut wire = Vec::new();
                from.conn.poll_transmit(&mut wire);
                deliver(now, 3, &wire, to);
                assert_eq!(to.error, None, "{case}");
                to.events.extend(events(&mut to.conn));
                assert!(to.events.contains(&Event::Message(Message::Gossip(text.to_vec()))), "{case}");
            };
            sealed_message(&mut pair.a, &mut pair.b, b"a to b");
            sealed_message(&mut pair.b, &mut pair.a, b"b to a");

            let (mut ka, mut kb) =
                (pair.a.conn.take_sleeve_keys().expect("a"), pair.b.conn.take_sleeve_keys().expect("b"));
            assert_eq!((ka.sealer.cipher(), kb.sealer.cipher()), (want, want), "{case}");
            for (sealer, opener) in [(&mut ka.sealer, &mut kb.opener), (&mut kb.sealer, &mut ka.opener)] {
                let nonce = sealer.next_nonce(pair.now).expect("nonce");
                let mut msg = b"sleeve frame".to_vec();
                let tag = sealer.seal_in_place(nonce, b"hdr", &mut msg);
                msg.extend_from_slice(&tag);
                assert_eq!(opener.open_in_place(nonce, b"hdr", &mut msg), Ok(12), "{case}");
                assert_eq!(&msg[..12], b"sleeve frame");
            }
        }

        #[test]
        fn auto_on_both_ends_negotiates_the_same_cipher() {
            let capable = CipherChoice::Auto { aes_capable: true };
            let incapable = CipherChoice::Auto { aes_capable: false };
            check_negotiated(capable, capable, Cipher::Aes256Gcm);
            check_negotiated(capable, incapable, Cipher::ChaCha20Poly1305);
            check_negotiated(incapable, capable, Cipher::ChaCha20Poly1305);
            check_negotiated(incapable, incapable, Cipher::ChaCha20Poly1305);
        }

        #[test]
        fn auto_against_a_fixed_cipher_takes_the_fixed_one() {
            for auto in [CipherChoice::Auto { aes_capable: true }, CipherChoice::Auto { aes_capable: false }] {
                for cipher in Cipher::ALL {
                    check_negotiated(auto, CipherChoice::Fixed(cipher), cipher);
                    check_negotiated(CipherChoice::Fixed(cipher), auto, cipher);
                }
            }
        }

        #[test]
        fn fixed_ciphers_keep_their_cipher_and_unencrypted_has_none() {
            for cipher in Cipher::ALL {
                check_negotiated(CipherChoice::Fixed(cipher), CipherChoice::Fixed(cipher), cipher);
            }
            let mut pair = Pair::new(peer(1), peer(2));
            pair.drive();
            assert_eq!(pair.a.conn.state(), State::Connected);
            assert_eq!((pair.a.conn.cipher(), pair.b.conn.cipher()), (None, None));
        }

        /// A Hello whose cipher bits were altered in transit (here: an auto
        /// peer made to look fixed to ChaCha, which the other auto end would
        /// go along with) fails the handshake: the Hellos are the prologue.
        #[test]
        fn altered_cipher_bits_fail_the_handshake() {
            use crate::control::{FEATURE_AES_CAPABLE, FEATURE_CIPHER_AUTO};
            let now = Instant::now();
            let auto = CipherChoice::Auto { aes_capable: true };
            let mut a = Connection::new(with_choice(1, 7, auto), Timers::default(), 1, true, now, [3; 32]);
            let mut b = Connection::new(with_choice(2, 7, auto), Timers::default(), 2, false, now, [4; 32]);
            let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
            a.poll_transmit(&mut from_a);
            b.poll_transmit(&mut from_b);
            // The features are the Hello's last four bytes.
            let features = u32::from_be_bytes(from_a[from_a.len() - 4..].try_into().expect("4 bytes"));
            assert_ne!(features & FEATURE_CIPHER_AUTO, 0);
            let altered = features & !(FEATURE_CIPHER_AUTO | FEATURE_AES_CAPABLE);
            let at = from_a.len() - 4;
            from_a[at..].copy_from_slice(&altered.to_be_bytes());
            a.handle_input(now, &from_b).expect("hello");
            b.handle_input(now, &from_a).expect("hello (altered but well-formed)");
            assert_eq!(b.cipher(), Some(Cipher::ChaCha20Poly1305), "b was fooled into ChaCha");
            assert_eq!(a.cipher(), Some(Cipher::Aes256Gcm));
            let mut m1 = Vec::new();
            a.poll_transmit(&mut m1);
            assert_eq!(b.handle_input(now, &m1), Err(ConnectionError::Refused(Refusal::PasswordDiffers)));
            assert!(!b.encrypted() && b.take_sleeve_keys().is_none());
        }

        /// Runs the plaintext opening by hand: returns the responder after
        /// it has read the initiator's preamble and Hello, and the
        /// initiator with the responder's opening delivered.
        fn opened(password_a: u8, password_b: u8) -> (Connection, Connection, Instant) {
            let now = Instant::now();
            let chacha = Cipher::ChaCha20Poly1305;
            let mut a = Connection::new(with_password(1, password_a, chacha), Timers::default(), 1, true, now, [3; 32]);
            let mut b =
                Connection::new(with_password(2, password_b, chacha), Timers::default(), 2, false, now, [4; 32]);
            let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
            a.poll_transmit(&mut from_a);
            b.poll_transmit(&mut from_b);
            b.handle_input(now, &from_a).expect("hello");
            a.handle_input(now, &from_b).expect("hello");
            (a, b, now)
        }

        fn noise_frame(msg: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            write_frame(&mut out, |w| HandshakeFrame::Noise(msg).encode(w)).expect("small");
            out
        }

        #[test]
        fn truncated_noise_message_is_malformed_not_a_wrong_password() {
            let (mut a, mut b, now) = opened(7, 7);
            let mut m1 = Vec::new();
            a.poll_transmit(&mut m1);
            // Frame: 4-byte length, tag, 48-byte message; cut the message.
            let body = &m1[5..m1.len() - 8];
            let err = b.handle_input(now, &noise_frame(body)).expect_err("truncated");
            assert!(matches!(err, ConnectionError::Noise(NoiseError::BadLength { len: 40 })), "{err}");
        }

        #[test]
        fn reordered_and_replayed_handshake_messages_fail() {
            // A message frame before the Noise message: not a handshake frame.
            let (_, mut b, now) = opened(7, 7);
            let mut early = Vec::new();
            write_frame(&mut early, |w| Message::Gossip(vec![1, 2, 3]).encode(w)).expect("small");
            assert!(b.handle_input(now, &early).is_err());

            // The initiator's first message again after the handshake: it is
            // not a valid sealed frame.
            let (mut a, mut b, now) = opened(7, 7);
            let mut m1 = Vec::new();
            a.poll_transmit(&mut m1);
            b.handle_input(now, &m1).expect("first message");
            assert_eq!(b.state(), State::Connected);
            assert!(matches!(b.handle_input(now, &m1), Err(ConnectionError::ControlAuth(_))));

            // The initiator's own message reflected back to it.
            let (mut a, _, now) = opened(7, 7);
            let mut m1 = Vec::new();
            a.poll_transmit(&mut m1);
            assert!(a.handle_input(now, &m1).is_err(), "initiator reading its own message");
        }

        #[test]
        fn tampered_hello_fails_the_handshake() {
            let now = Instant::now();
            let chacha = Cipher::ChaCha20Poly1305;
            let mut a = Connection::new(with_password(1, 7, chacha), Timers::default(), 1, true, now, [3; 32]);
            let mut b = Connection::new(with_password(2, 7, chacha), Timers::default(), 2, false, now, [4; 32]);
            let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
            a.poll_transmit(&mut from_a);
            b.poll_transmit(&mut from_b);
            // Flip a bit of the responder's nickname in transit ("host-2" → "host-3").
            let pos = from_b.windows(6).position(|w| w == b"host-2").expect("nickname") + 5;
            from_b[pos] ^= 1;
            b.handle_input(now, &from_a).expect("hello");
            a.handle_input(now, &from_b).expect("hello (altered but well-formed)");
            let mut m1 = Vec::new();
            a.poll_transmit(&mut m1);
            assert_eq!(b.handle_input(now, &m1), Err(ConnectionError::Refused(Refusal::PasswordDiffers)));
            // b says why before hanging up; a reports the same cause.
            let mut farewell = Vec::new();
            b.poll_transmit(&mut farewell);
            assert_eq!(a.handle_input(now, &farewell), Err(ConnectionError::Refused(Refusal::PasswordDiffers)));
            // and, having been told, does not answer with a refusal of its own.
            assert!(!a.poll_transmit(&mut Vec::new()));
        }

        #[test]
        fn responder_holds_sleeve_heartbeats_until_the_initiator_has_keys() {
            let (mut a, mut b, now) = opened(7, 7);
            let mut m1 = Vec::new();
            a.poll_transmit(&mut m1);
            b.handle_input(now, &m1).expect("first message");
            assert_eq!(b.state(), State::Connected);
            assert!(!b.poll_sleeve_heartbeat(now), "initiator can't open it yet");
            let mut m2 = Vec::new();
            b.poll_transmit(&mut m2);
            a.handle_input(now, &m2).expect("second message");
            assert!(a.poll_sleeve_heartbeat(now), "the responder had its keys before replying");
            a.send(Message::Gossip(vec![1])).expect("send");
            let mut sealed = Vec::new();
            a.poll_transmit(&mut sealed);
            b.handle_input(now, &sealed).expect("sealed frame");
            assert!(b.poll_sleeve_heartbeat(now));
        }

        #[test]
        fn held_messages_are_sealed_after_the_handshake() {
            let chacha = Cipher::ChaCha20Poly1305;
            let mut pair = Pair::new(with_password(1, 7, chacha), with_password(2, 7, chacha));
            let early = Message::Gossip(b"sent before the handshake finished".to_vec());
            pair.a.conn.send(early.clone()).expect("held");
            pair.drive();
            assert!(pair.b.events.contains(&Event::Message(early)));
        }
    }
}
