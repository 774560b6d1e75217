//! The TCP control connection between two peers (port 6783).
//!
//! Wire format, in each direction:
//!
//! 1. A raw preamble: `b"weft"`, then the lowest and highest protocol
//!    versions the sender speaks (one byte each). Both sides use the
//!    highest version they have in common.
//! 2. Frames: a u32 big-endian body length (at most `MAX_MESSAGE_LEN`),
//!    then the body. The first frame is a `Hello`; every later one is a
//!    `Message` (a tag byte, then a tag-specific body).
//!
//! Both sides send their preamble and `Hello` straight away, without
//! waiting for the other's, so the handshake costs one round trip.
//! `Connection` is the per-connection state machine; `keep_new_connection`
//! picks the survivor when two peers dial each other simultaneously.

pub mod connection;
pub mod framing;
pub mod handshake;
pub mod message;
pub mod secure;
pub mod tie_break;

pub use connection::{Connection, ConnectionError, Event, LocalPeer, RemotePeer, State, Timers};
pub use framing::{FrameDecoder, FrameError, MAX_MESSAGE_LEN};
pub use handshake::{
    HandshakeError, Hello, VersionRange, FEATURE_AES256GCM, FEATURE_AES_CAPABLE, FEATURE_CIPHER_AUTO,
    FEATURE_ENCRYPTION, FEATURE_FASTDP, MAGIC, PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION,
};
pub use message::Message;
pub use secure::{CipherChoice, Encryption, Refusal};
pub use tie_break::{keep_new_connection, Candidate};

/// The TCP port peers listen on for control connections.
pub const CONTROL_PORT: u16 = 6783;
