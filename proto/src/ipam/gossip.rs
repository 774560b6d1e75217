//! The IPAM gossip encoding: a peer's whole replicated state, every time
//! (a ring must travel whole, see `ring`). Persistence embeds the same
//! state encoding.
//!
//! ```text
//! u8  format version (1)
//! state:
//!   u32 range start   u8 range prefix
//!   u16 peer count (<= MAX_PEERS), strictly ascending by name:
//!     [6] name   u64 version
//!     u32 promised number   [6] promised proposer
//!     bool accepted: u32 number   [6] proposer   u16 value count (1..=MAX_SEEDS)   [6]* names, ascending
//!     bool request: u64 seq   [6] donor
//!     u16 ack count (<= MAX_ACKS), strictly ascending: [6] removed peer   u64 digest
//!   u16 tombstone count (<= MAX_TOMBSTONES): [6]* names, strictly ascending
//!   bool ring: u16 seed count (1..=MAX_SEEDS)   [6]* seeds, ascending
//!              u32 entry count (1..=MAX_ENTRIES), strictly ascending token:
//!                u32 token   [6] owner   u32 version   u32 free
//! ```
//!
//! Decoding is all-or-nothing and allocates only as it consumes input.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::codec::{DecodeError, Reader, Writer};
use crate::PeerName;

use super::paxos::{Accepted, AcceptorState, Round};
use super::peer_state::{Ack, PeerState, SpaceRequest, MAX_ACKS};
use super::range::{Range, RangeError};
use super::ring::{Entry, Ring, RingError, MAX_ENTRIES, MAX_SEEDS};
use super::shared::{Shared, MAX_PEERS, MAX_TOMBSTONES};

pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamGossipError {
    #[error("malformed IPAM gossip: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported IPAM gossip format version {0}")]
    UnsupportedFormat(u8),
    #[error("IPAM gossip carries an invalid range: {0}")]
    Range(#[from] RangeError),
    #[error("IPAM gossip is for range {theirs}, ours is {ours}")]
    RangeMismatch { ours: Range, theirs: Range },
    #[error("IPAM gossip carries {count} {what}, more than the limit of {max}")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("IPAM gossip {what} are not in strictly ascending order")]
    Unsorted { what: &'static str },
    #[error("IPAM gossip uses the reserved broadcast name as {what}")]
    ReservedName { what: &'static str },
    #[error("IPAM gossip carries an empty consensus value")]
    EmptyValue,
    #[error("IPAM gossip carries an invalid ring: {0}")]
    Ring(#[from] RingError),
}

pub(crate) fn encode(shared: &Shared, out: &mut Vec<u8>) {
    let mut w = Writer::new(out);
    w.u8(FORMAT_VERSION);
    write_state(&mut w, shared);
}

/// Decodes a whole message, or nothing.
pub(crate) fn decode(buf: &[u8]) -> Result<Shared, IpamGossipError> {
    let mut r = Reader::new(buf);
    let format = r.u8("IPAM gossip format version")?;
    if format != FORMAT_VERSION {
        return Err(IpamGossipError::UnsupportedFormat(format));
    }
    let shared = read_state(&mut r)?;
    r.finish("IPAM gossip")?;
    Ok(shared)
}

pub(crate) fn write_state(w: &mut Writer<'_>, s: &Shared) {
    w.u32(s.range.first()).u8(s.range.prefix());
    let peers = s.peers.len().min(MAX_PEERS);
    w.u16(peers as u16);
    for (name, state) in s.peers.iter().take(peers) {
        w.peer_name(*name).u64(state.version);
        write_round(w, state.paxos.promised);
        match &state.paxos.accepted {
            Some(acc) => {
                w.bool(true);
                write_round(w, acc.round);
                write_names(w, &acc.value);
            }
            None => {
                w.bool(false);
            }
        }
        match state.request {
            Some(req) => {
                w.bool(true).u64(req.seq).peer_name(req.donor);
            }
            None => {
                w.bool(false);
            }
        }
        let acks = state.acks.len().min(MAX_ACKS);
        w.u16(acks as u16);
        for ack in state.acks.iter().take(acks) {
            w.peer_name(ack.peer).u64(ack.digest);
        }
    }
    let tombstones = s.tombstones.len().min(MAX_TOMBSTONES);
    w.u16(tombstones as u16);
    for name in s.tombstones.iter().take(tombstones) {
        w.peer_name(*name);
    }
    match &s.ring {
        Some(ring) => {
            w.bool(true);
            write_names(w, ring.seeds());
            // Rings never exceed MAX_ENTRIES (u32 range).
            w.u32(ring.len() as u32);
            for (token, e) in ring.entries() {
                w.u32(token).peer_name(e.owner).u32(e.version).u32(e.free);
            }
        }
        None => {
            w.bool(false);
        }
    }
}

pub(crate) fn read_state(r: &mut Reader<'_>) -> Result<Shared, IpamGossipError> {
    let start = Ipv4Addr::from(r.u32("range start")?);
    let range = Range::new(start, r.u8("range prefix")?)?;
    let count = bounded(r.u16("peer count")?.into(), "peer entries", MAX_PEERS)?;
    let mut peers = BTreeMap::new();
    for _ in 0..count {
        let name = real_name(r, "peer name")?;
        if peers.last_key_value().is_some_and(|(last, _)| *last >= name) {
            return Err(IpamGossipError::Unsorted { what: "peer entries" });
        }
        let version = r.u64("peer entry version")?;
        let promised = read_round(r)?;
        let accepted = if r.bool("accepted flag")? {
            let round = read_round(r)?;
            let value = read_names(r, "consensus value")?;
            Some(Accepted { round, value })
        } else {
            None
        };
        let request = if r.bool("space request flag")? {
            let seq = r.u64("space request sequence")?;
            Some(SpaceRequest { seq, donor: real_name(r, "space request donor")? })
        } else {
            None
        };
        let count = bounded(r.u16("ack count")?.into(), "acks", MAX_ACKS)?;
        let mut acks: Vec<Ack> = Vec::new();
        for _ in 0..count {
            let peer = real_name(r, "acked peer")?;
            if acks.last().is_some_and(|last| last.peer >= peer) {
                return Err(IpamGossipError::Unsorted { what: "acks" });
            }
            acks.push(Ack { peer, digest: r.u64("ack digest")? });
        }
        peers.insert(name, PeerState { version, paxos: AcceptorState { promised, accepted }, request, acks });
    }
    let count = bounded(r.u16("tombstone count")?.into(), "tombstones", MAX_TOMBSTONES)?;
    let mut tombstones = BTreeSet::new();
    for _ in 0..count {
        let name = real_name(r, "tombstone")?;
        if tombstones.last().is_some_and(|last| *last >= name) {
            return Err(IpamGossipError::Unsorted { what: "tombstones" });
        }
        tombstones.insert(name);
    }
    let ring = if r.bool("ring flag")? { Some(read_ring(r, range)?) } else { None };
    Ok(Shared { range, peers, tombstones, ring })
}

fn read_ring(r: &mut Reader<'_>, range: Range) -> Result<Ring, IpamGossipError> {
    let seeds = read_names(r, "ring seeds")?;
    let count = bounded(r.u32("ring entry count")? as usize, "ring entries", MAX_ENTRIES)?;
    let mut entries = BTreeMap::new();
    for _ in 0..count {
        let token = r.u32("ring token")?;
        if entries.last_key_value().is_some_and(|(last, _)| *last >= token) {
            return Err(IpamGossipError::Unsorted { what: "ring tokens" });
        }
        let owner = real_name(r, "ring entry owner")?;
        let version = r.u32("ring entry version")?;
        let free = r.u32("ring entry free count")?;
        entries.insert(token, Entry { owner, version, free });
    }
    Ok(Ring::from_parts(range, seeds, entries)?)
}

fn write_round(w: &mut Writer<'_>, round: Round) {
    w.u32(round.number).peer_name(round.proposer);
}

fn read_round(r: &mut Reader<'_>) -> Result<Round, IpamGossipError> {
    let number = r.u32("round number")?;
    Ok(Round { number, proposer: real_name(r, "round proposer")? })
}

/// A name list; the in-memory lists never exceed `MAX_SEEDS`.
fn write_names(w: &mut Writer<'_>, names: &[PeerName]) {
    let names = &names[..names.len().min(MAX_SEEDS)];
    w.u16(names.len() as u16);
    for name in names {
        w.peer_name(*name);
    }
}

fn read_names(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<PeerName>, IpamGossipError> {
    let count = bounded(r.u16(what)?.into(), what, MAX_SEEDS)?;
    if count == 0 {
        return Err(IpamGossipError::EmptyValue);
    }
    let mut names: Vec<PeerName> = Vec::new();
    for _ in 0..count {
        let name = real_name(r, what)?;
        if names.last().is_some_and(|last| *last >= name) {
            return Err(IpamGossipError::Unsorted { what });
        }
        names.push(name);
    }
    Ok(names)
}

fn real_name(r: &mut Reader<'_>, what: &'static str) -> Result<PeerName, IpamGossipError> {
    let name = r.peer_name(what)?;
    if name.is_broadcast() {
        return Err(IpamGossipError::ReservedName { what });
    }
    Ok(name)
}

fn bounded(count: usize, what: &'static str, max: usize) -> Result<usize, IpamGossipError> {
    if count > max {
        return Err(IpamGossipError::TooMany { what, count, max });
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::ring::tests::{name, small_range};
    use crate::ipam::shared::tests::arb_shared;
    use proptest::prelude::*;

    fn encoded(s: &Shared) -> Vec<u8> {
        let mut out = Vec::new();
        encode(s, &mut out);
        out
    }

    /// `arb_shared` with an accepted value on some entries.
    fn arb_full() -> impl Strategy<Value = Shared> {
        (arb_shared(), proptest::collection::btree_set((1u8..9).prop_map(name), 1..4)).prop_map(|(mut s, value)| {
            if let Some(state) = s.peers.values_mut().next() {
                state.paxos.accepted =
                    Some(Accepted { round: state.paxos.promised, value: value.into_iter().collect() });
            }
            s
        })
    }

    proptest! {
        #[test]
        fn roundtrips(s in arb_full()) {
            prop_assert_eq!(decode(&encoded(&s)), Ok(s));
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&buf);
        }

        #[test]
        fn never_panics_on_mutated_messages(
            s in arb_full(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            crate::codec::decode_mutated(encoded(&s), &flips, cut, decode);
        }

        #[test]
        fn truncation_is_an_error(s in arb_full(), cut in any::<prop::sample::Index>()) {
            let buf = encoded(&s);
            prop_assert!(decode(&buf[..cut.index(buf.len())]).is_err());
        }
    }

    fn header() -> Vec<u8> {
        let mut buf = Vec::new();
        Writer::new(&mut buf).u8(FORMAT_VERSION).u32(small_range().first()).u8(24);
        buf
    }

    #[test]
    fn rejects_bad_headers() {
        let mut buf = encoded(&Shared::new(small_range()));
        buf[0] = 9;
        assert_eq!(decode(&buf), Err(IpamGossipError::UnsupportedFormat(9)));
        let mut buf = encoded(&Shared::new(small_range()));
        buf[5] = 31;
        assert!(matches!(decode(&buf), Err(IpamGossipError::Range(RangeError::Prefix { .. }))));
        let mut buf = encoded(&Shared::new(small_range()));
        buf.push(0);
        assert!(matches!(decode(&buf), Err(IpamGossipError::Decode(DecodeError::Trailing { .. }))));
    }

    #[test]
    fn rejects_counts_over_caps_before_reading_items() {
        let mut buf = header();
        Writer::new(&mut buf).u16(u16::MAX);
        assert_eq!(
            decode(&buf),
            Err(IpamGossipError::TooMany { what: "peer entries", count: u16::MAX as usize, max: MAX_PEERS })
        );
        let mut buf = header();
        Writer::new(&mut buf).u16(0).u16(0).bool(true).u16(1).peer_name(name(1)).u32(u32::MAX);
        assert!(matches!(decode(&buf), Err(IpamGossipError::TooMany { what: "ring entries", .. })));
    }

    #[test]
    fn rejects_unsorted_lists_and_reserved_names() {
        let mut buf = header();
        Writer::new(&mut buf).u16(0).u16(2).peer_name(name(2)).peer_name(name(1));
        assert_eq!(decode(&buf), Err(IpamGossipError::Unsorted { what: "tombstones" }));
        let mut buf = header();
        Writer::new(&mut buf).u16(0).u16(1).peer_name(PeerName::BROADCAST);
        assert_eq!(decode(&buf), Err(IpamGossipError::ReservedName { what: "tombstone" }));
        let mut buf = header();
        Writer::new(&mut buf).u16(0).u16(0).bool(true).u16(0);
        assert_eq!(decode(&buf), Err(IpamGossipError::EmptyValue));
        let mut buf = header();
        let first = small_range().first();
        Writer::new(&mut buf).u16(0).u16(0).bool(true).u16(1).peer_name(name(1)).u32(2);
        for token in [first + 5, first] {
            Writer::new(&mut buf).u32(token).peer_name(name(1)).u32(1).u32(0);
        }
        assert_eq!(decode(&buf), Err(IpamGossipError::Unsorted { what: "ring tokens" }));
    }

    #[test]
    fn rejects_invalid_ring() {
        let mut buf = header();
        let first = small_range().first();
        Writer::new(&mut buf).u16(0).u16(0).bool(true).u16(1).peer_name(name(1)).u32(1);
        Writer::new(&mut buf).u32(first + 1).peer_name(name(1)).u32(1).u32(0);
        assert!(matches!(decode(&buf), Err(IpamGossipError::Ring(RingError::FirstToken { .. }))));
    }
}
