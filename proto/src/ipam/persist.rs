//! What must survive a restart, as bytes the router stores crash-safely:
//! the replicated state (ring, tombstones, our entry with its Paxos
//! promises), our allocations and which space requests we have served.
//!
//! ```text
//! u8  format version (1)
//! [6] local peer name   u32 consensus count
//! state (as in gossip, see `gossip`)
//! u32 allocation count: short_str container id   short_str ifname   u32 address
//! u16 served count (<= MAX_PEERS), strictly ascending: [6] requester   u64 seq
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::codec::{DecodeError, Reader, Writer};
use crate::PeerName;

use super::allocator::Allocations;
use super::gossip::{self, IpamGossipError};
use super::shared::{Shared, MAX_PEERS};

pub const PERSIST_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    #[error("malformed persisted IPAM state: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported persisted IPAM format version {0}")]
    UnsupportedFormat(u8),
    #[error("invalid persisted IPAM state: {0}")]
    State(#[from] IpamGossipError),
    #[error("persisted IPAM state belongs to peer {persisted}, not {local}")]
    NameMismatch { persisted: PeerName, local: PeerName },
    #[error("persisted allocation {container_id}/{ifname} -> {address} is invalid: {reason}")]
    BadAllocation { container_id: String, ifname: String, address: Ipv4Addr, reason: &'static str },
    #[error("persisted IPAM state lists {count} served requests, more than the limit of {max}")]
    TooManyServed { count: usize, max: usize },
    #[error("persisted served requests are not in strictly ascending order")]
    UnsortedServed,
}

#[derive(Debug)]
pub(crate) struct Persisted {
    pub local: PeerName,
    pub consensus_count: usize,
    pub shared: Shared,
    pub allocations: Allocations,
    pub served: BTreeMap<PeerName, u64>,
}

pub(crate) fn encode(
    local: PeerName,
    consensus_count: usize,
    shared: &Shared,
    allocations: &Allocations,
    served: &BTreeMap<PeerName, u64>,
    out: &mut Vec<u8>,
) {
    let mut w = Writer::new(out);
    let count = u32::try_from(consensus_count).unwrap_or(u32::MAX);
    w.u8(PERSIST_FORMAT).peer_name(local).u32(count);
    gossip::write_state(&mut w, shared);
    // One allocation per address: far below u32::MAX.
    w.u32(allocations.len() as u32);
    for (container_id, ifname, addr) in allocations.iter() {
        w.short_str(container_id).short_str(ifname).u32(addr);
    }
    let served_count = served.len().min(MAX_PEERS);
    w.u16(served_count as u16);
    for (name, seq) in served.iter().take(served_count) {
        w.peer_name(*name).u64(*seq);
    }
}

pub(crate) fn decode(buf: &[u8]) -> Result<Persisted, PersistError> {
    let mut r = Reader::new(buf);
    let format = r.u8("persisted IPAM format version")?;
    if format != PERSIST_FORMAT {
        return Err(PersistError::UnsupportedFormat(format));
    }
    let local = r.peer_name("persisted peer name")?;
    let consensus_count = r.u32("persisted consensus count")? as usize;
    let shared = gossip::read_state(&mut r)?;
    let range = shared.range;
    let count = r.u32("allocation count")?;
    let mut allocations = Allocations::default();
    for _ in 0..count {
        let container_id = r.short_str("allocation container id")?;
        let ifname = r.short_str("allocation interface name")?;
        let address = r.u32("allocation address")?;
        let bad = |reason| PersistError::BadAllocation {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            address: Ipv4Addr::from(address),
            reason,
        };
        if container_id.is_empty() || ifname.is_empty() {
            return Err(bad("empty id"));
        }
        if !range.is_usable(address) {
            return Err(bad("address not usable in the range"));
        }
        if !allocations.insert(container_id, ifname, address) {
            return Err(bad("duplicate address or key"));
        }
    }
    let count = r.u16("served count")? as usize;
    if count > MAX_PEERS {
        return Err(PersistError::TooManyServed { count, max: MAX_PEERS });
    }
    let mut served = BTreeMap::new();
    for _ in 0..count {
        let name = r.peer_name("served requester")?;
        if served.last_key_value().is_some_and(|(last, _)| *last >= name) {
            return Err(PersistError::UnsortedServed);
        }
        served.insert(name, r.u64("served sequence")?);
    }
    r.finish("persisted IPAM state")?;
    Ok(Persisted { local, consensus_count, shared, allocations, served })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::ring::tests::{name, small_range};
    use crate::ipam::shared::tests::arb_shared;
    use proptest::prelude::*;

    fn encoded(p: &Persisted) -> Vec<u8> {
        let mut out = Vec::new();
        encode(p.local, p.consensus_count, &p.shared, &p.allocations, &p.served, &mut out);
        out
    }

    fn arb_persisted() -> impl Strategy<Value = Persisted> {
        (
            arb_shared(),
            proptest::collection::btree_map(1u32..255, ("[a-f0-9]{1,12}", "eth[0-2]"), 0..6),
            proptest::collection::btree_map((1u8..9).prop_map(name), any::<u64>(), 0..3),
            0usize..9,
        )
            .prop_map(|(shared, allocs, served, consensus_count)| {
                let mut allocations = Allocations::default();
                for (offset, (c, i)) in allocs {
                    allocations.insert(&c, &i, small_range().first() + offset);
                }
                Persisted { local: name(1), consensus_count, shared, allocations, served }
            })
    }

    proptest! {
        #[test]
        fn roundtrips(p in arb_persisted()) {
            let got = decode(&encoded(&p)).unwrap();
            prop_assert_eq!(got.local, p.local);
            prop_assert_eq!(got.consensus_count, p.consensus_count);
            prop_assert_eq!(got.shared, p.shared);
            prop_assert_eq!(got.allocations, p.allocations);
            prop_assert_eq!(got.served, p.served);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&buf);
        }

        #[test]
        fn never_panics_on_mutated_state(
            p in arb_persisted(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            crate::codec::decode_mutated(encoded(&p), &flips, cut, decode);
        }

        #[test]
        fn truncation_is_an_error(p in arb_persisted(), cut in any::<prop::sample::Index>()) {
            let buf = encoded(&p);
            prop_assert!(decode(&buf[..cut.index(buf.len())]).is_err());
        }
    }

    fn with_allocation(container_id: &str, address: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.u8(PERSIST_FORMAT).peer_name(name(1)).u32(3);
        gossip::write_state(&mut w, &Shared::new(small_range()));
        w.u32(2).short_str(container_id).short_str("eth0").u32(address);
        w.short_str("other").short_str("eth0").u32(address).u16(0);
        out
    }

    #[test]
    fn rejects_invalid_allocations() {
        let first = small_range().first();
        let reason = |buf: &[u8]| match decode(buf) {
            Err(PersistError::BadAllocation { reason, .. }) => reason,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(reason(&with_allocation("", first + 1)), "empty id");
        assert_eq!(reason(&with_allocation("c", first)), "address not usable in the range");
        assert_eq!(reason(&with_allocation("c", first + 1)), "duplicate address or key");
    }

    #[test]
    fn rejects_unknown_format() {
        assert_eq!(decode(&[7]).err(), Some(PersistError::UnsupportedFormat(7)));
    }
}
