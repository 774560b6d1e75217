//! The one error type of the netlink wrapper.

use std::io;

use super::LinkKind;

/// A failed netlink operation. Each variant names the operation and the link
/// it was aimed at, so a log line is enough to know what the node refused.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening rtnetlink socket: {0}")]
    Connect(io::Error),

    #[error("starting a tokio runtime for netlink: {0}")]
    Runtime(io::Error),

    /// Entering or inspecting a network namespace failed.
    #[error("{op}: {source}")]
    Netns { op: String, source: io::Error },

    /// The kernel answered with an error code.
    #[error("{op}: {}", io::Error::from_raw_os_error(*.errno))]
    Kernel { op: String, errno: i32 },

    /// Anything else that went wrong on the socket: the connection task is
    /// gone, the reply could not be decoded, an unexpected message came back.
    #[error("{op}: {detail}")]
    Protocol { op: String, detail: String },

    #[error("link {name:?} already exists as a {found}, not a {wanted}")]
    WrongKind { name: String, wanted: LinkKind, found: LinkKind },

    /// A request we refused to send because its parts do not fit together
    /// (e.g. an IPv6 gateway for an IPv4 prefix longer than 32 bits).
    #[error("{op}: {problem}")]
    Invalid { op: String, problem: String },

    /// The kernel's reply lacked, or had a malformed, attribute we rely on.
    #[error("{op}: {problem}")]
    BadReply { op: String, problem: String },
}

impl NetlinkError {
    /// Lifts an rtnetlink failure into our error, keeping the kernel's errno
    /// as a number so callers can tell "already there" from real failures.
    pub(super) fn request(op: String, err: rtnetlink::Error) -> Self {
        match errno_of(&err) {
            Some(errno) => NetlinkError::Kernel { op, errno },
            None => NetlinkError::Protocol { op, detail: err.to_string() },
        }
    }

    /// The kernel errno (positive, e.g. `libc::EEXIST`) if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The positive errno carried by an rtnetlink error, if it is a kernel NACK.
pub(super) fn errno_of(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| code.get().abs()),
        _ => None,
    }
}
