//! Frames after the `Hello`: a tag byte, then a tag-specific body.
//!
//! To add a message: give it a tag below, a variant, and an arm in each of
//! `encode` and `decode`. Peers running older versions surface it as
//! `Message::Other`, so new messages need no version bump as long as
//! older peers may ignore them.

use crate::codec::{DecodeError, Reader, Writer};
use crate::ethernet::MacAddr;

mod tag {
    pub const HEARTBEAT: u8 = 1;
    pub const GOSSIP: u8 = 2;
    pub const SLEEVE_READY: u8 = 3;
    pub const SLEEVE_LOST: u8 = 4;
    pub const IPAM: u8 = 5;
    pub const LOCAL_MACS: u8 = 6;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// TCP liveness; sent every `Timers::heartbeat_interval`.
    Heartbeat,
    /// Opaque topology gossip; the topology module owns the encoding.
    Gossip(Vec<u8>),
    /// "Your UDP heartbeats reach me": the sender's half of sleeve
    /// confirmation. Sent once each time the sleeve comes up.
    SleeveReady,
    /// "Your UDP heartbeats stopped reaching me": retracts `SleeveReady`
    /// so both ends leave `Established` together.
    SleeveLost,
    /// Opaque IPAM gossip; the ipam module owns the encoding.
    Ipam(Vec<u8>),
    /// The pod MACs on the sender's bridge, complete each time: what the
    /// receiver programs into its kernel forwarding tables while the
    /// connection is on the fast path.
    LocalMacs(Vec<MacAddr>),
    /// A tag this version doesn't know, from a newer peer. Never construct
    /// one with a known tag: it would decode as that message instead.
    Other { tag: u8, body: Vec<u8> },
}

impl Message {
    pub fn tag(&self) -> u8 {
        match self {
            Message::Heartbeat => tag::HEARTBEAT,
            Message::Gossip(_) => tag::GOSSIP,
            Message::SleeveReady => tag::SLEEVE_READY,
            Message::SleeveLost => tag::SLEEVE_LOST,
            Message::Ipam(_) => tag::IPAM,
            Message::LocalMacs(_) => tag::LOCAL_MACS,
            Message::Other { tag, .. } => *tag,
        }
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u8(self.tag());
        match self {
            Message::Heartbeat | Message::SleeveReady | Message::SleeveLost => {}
            Message::Gossip(body) | Message::Ipam(body) | Message::Other { body, .. } => {
                w.bytes(body);
            }
            Message::LocalMacs(macs) => {
                for mac in macs {
                    w.bytes(&mac.0);
                }
            }
        }
    }

    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        let msg = match r.u8("message tag")? {
            tag::HEARTBEAT => Message::Heartbeat,
            tag::GOSSIP => Message::Gossip(rest(&mut r, "gossip")?),
            tag::SLEEVE_READY => Message::SleeveReady,
            tag::SLEEVE_LOST => Message::SleeveLost,
            tag::IPAM => Message::Ipam(rest(&mut r, "ipam")?),
            tag::LOCAL_MACS => {
                let mut macs = Vec::with_capacity(r.remaining() / 6);
                while r.remaining() > 0 {
                    macs.push(MacAddr(r.array::<6>("local MAC")?));
                }
                Message::LocalMacs(macs)
            }
            tag => Message::Other { tag, body: rest(&mut r, "unknown message")? },
        };
        r.finish("message")?;
        Ok(msg)
    }
}

fn rest(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u8>, DecodeError> {
    Ok(r.bytes(what, r.remaining())?.to_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(msg: &Message) -> Vec<u8> {
        let mut buf = Vec::new();
        msg.encode(&mut Writer::new(&mut buf));
        buf
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        let body = || proptest::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            Just(Message::Heartbeat),
            Just(Message::SleeveReady),
            Just(Message::SleeveLost),
            body().prop_map(Message::Gossip),
            body().prop_map(Message::Ipam),
            proptest::collection::vec(any::<[u8; 6]>().prop_map(MacAddr), 0..8).prop_map(Message::LocalMacs),
            (any::<u8>(), body())
                .prop_filter("unknown tags only", |(tag, _)| {
                    matches!(Message::decode(&[*tag]), Ok(Message::Other { .. }))
                })
                .prop_map(|(tag, body)| Message::Other { tag, body }),
        ]
    }

    #[test]
    fn unit_messages_reject_trailing_bytes() {
        for msg in [Message::Heartbeat, Message::SleeveReady, Message::SleeveLost] {
            let mut buf = encoded(&msg);
            assert_eq!(Message::decode(&buf), Ok(msg));
            buf.push(0);
            assert!(matches!(Message::decode(&buf), Err(DecodeError::Trailing { .. })));
        }
    }

    #[test]
    fn local_macs_must_be_whole_addresses() {
        let msg = Message::LocalMacs(vec![MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2])]);
        let mut buf = encoded(&msg);
        assert_eq!(buf.len(), 1 + 12);
        assert_eq!(Message::decode(&buf), Ok(msg));
        buf.pop();
        assert!(matches!(Message::decode(&buf), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn empty_frame_is_truncated_not_a_panic() {
        assert!(matches!(Message::decode(&[]), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn unknown_tags_surface_with_their_body() {
        assert_eq!(Message::decode(&[200, 1, 2]), Ok(Message::Other { tag: 200, body: vec![1, 2] }));
    }

    proptest! {
        #[test]
        fn roundtrips(msg in arb_message()) {
            prop_assert_eq!(Message::decode(&encoded(&msg)), Ok(msg));
        }

        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(&buf);
        }
    }
}
