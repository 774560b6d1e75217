//! The topology gossip encoding: a versioned, count-prefixed list of peer
//! records.
//!
//! ```text
//! u8  format version (1)
//! u16 record count                      (<= MAX_RECORDS)
//! per record:
//!   [6] name   short_str nickname   u64 uid   u64 version
//!   u16 connection count                (<= MAX_CONNECTIONS)
//!   per connection (strictly ascending by remote):
//!     [6] remote   short_str address   bool outbound   bool established
//! ```
//!
//! Decoding is all-or-nothing and allocates only as it consumes input, so
//! a hostile update costs at most memory proportional to its own size.

use crate::codec::{DecodeError, Reader, Writer};
use crate::PeerName;

use super::peer::{ConnectionInfo, PeerRecord};

pub const FORMAT_VERSION: u8 = 1;
/// Per update; also the most peers a `Topology` will hold, so that a full
/// state dump always fits in one update.
pub const MAX_RECORDS: usize = 10_000;
pub const MAX_CONNECTIONS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    #[error("malformed topology gossip: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported topology gossip format version {0}")]
    UnsupportedFormat(u8),
    #[error("topology gossip carries {count} records, more than the limit of {max}")]
    TooManyRecords { count: usize, max: usize },
    #[error("peer {peer} reports {count} connections, more than the limit of {max}")]
    TooManyConnections { peer: PeerName, count: usize, max: usize },
    #[error("peer {peer} reports connections not in strictly ascending order of remote name")]
    UnsortedConnections { peer: PeerName },
    #[error("topology gossip uses the reserved broadcast name (in the record of {peer})")]
    ReservedName { peer: PeerName },
}

/// Appends an update carrying `records`. At most `MAX_RECORDS` are written:
/// `Topology` never holds more.
pub fn encode<'a>(records: impl IntoIterator<Item = &'a PeerRecord>, out: &mut Vec<u8>) {
    Writer::new(out).u8(FORMAT_VERSION);
    // The count goes in front, but callers hand us an iterator: reserve the
    // slot and fill it in afterwards rather than collecting first.
    let count_at = out.len();
    Writer::new(out).u16(0);
    let mut count: u16 = 0;
    for record in records.into_iter().take(MAX_RECORDS) {
        encode_record(record, &mut Writer::new(out));
        count += 1;
    }
    out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
}

fn encode_record(record: &PeerRecord, w: &mut Writer<'_>) {
    let conns = &record.connections[..record.connections.len().min(MAX_CONNECTIONS)];
    w.peer_name(record.name).short_str(&record.nickname).u64(record.uid).u64(record.version).u16(conns.len() as u16);
    for c in conns {
        w.peer_name(c.remote).short_str(&c.address).bool(c.outbound).bool(c.established);
    }
}

/// Decodes a whole update, or nothing.
pub fn decode(buf: &[u8]) -> Result<Vec<PeerRecord>, GossipError> {
    let mut r = Reader::new(buf);
    let format = r.u8("gossip format version")?;
    if format != FORMAT_VERSION {
        return Err(GossipError::UnsupportedFormat(format));
    }
    let count = r.u16("gossip record count")? as usize;
    if count > MAX_RECORDS {
        return Err(GossipError::TooManyRecords { count, max: MAX_RECORDS });
    }
    let mut records = Vec::new();
    for _ in 0..count {
        records.push(decode_record(&mut r)?);
    }
    r.finish("topology gossip")?;
    Ok(records)
}

fn decode_record(r: &mut Reader<'_>) -> Result<PeerRecord, GossipError> {
    let name = r.peer_name("peer name")?;
    if name.is_broadcast() {
        return Err(GossipError::ReservedName { peer: name });
    }
    let nickname = r.short_str("peer nickname")?.to_owned();
    let uid = r.u64("peer uid")?;
    let version = r.u64("peer version")?;
    let count = r.u16("connection count")? as usize;
    if count > MAX_CONNECTIONS {
        return Err(GossipError::TooManyConnections { peer: name, count, max: MAX_CONNECTIONS });
    }
    let mut connections: Vec<ConnectionInfo> = Vec::new();
    for _ in 0..count {
        let remote = r.peer_name("connection remote")?;
        if remote.is_broadcast() {
            return Err(GossipError::ReservedName { peer: name });
        }
        if connections.last().is_some_and(|prev| prev.remote >= remote) {
            return Err(GossipError::UnsortedConnections { peer: name });
        }
        let address = r.short_str("connection address")?.to_owned();
        let outbound = r.bool("connection outbound flag")?;
        let established = r.bool("connection established flag")?;
        connections.push(ConnectionInfo { remote, address, outbound, established });
    }
    Ok(PeerRecord { name, nickname, uid, version, connections })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn arb_name() -> impl Strategy<Value = PeerName> {
        // A small pool, so that generated records collide and connect.
        (0u8..16).prop_map(|n| PeerName::from_bytes([2, 0, 0, 0, 0, n]))
    }

    fn arb_connections() -> impl Strategy<Value = Vec<ConnectionInfo>> {
        proptest::collection::btree_map(arb_name(), ("[0-9.:]{0,12}", any::<bool>(), any::<bool>()), 0..6).prop_map(
            |m| {
                m.into_iter()
                    .map(|(remote, (address, outbound, established))| ConnectionInfo {
                        remote,
                        address,
                        outbound,
                        established,
                    })
                    .collect()
            },
        )
    }

    pub fn arb_record() -> impl Strategy<Value = PeerRecord> {
        (arb_name(), "\\PC{0,6}", 0u64..4, 0u64..6, arb_connections()).prop_map(
            |(name, nickname, uid, version, connections)| PeerRecord { name, nickname, uid, version, connections },
        )
    }

    fn encoded(records: &[PeerRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(records, &mut out);
        out
    }

    proptest! {
        #[test]
        fn roundtrips(records in proptest::collection::vec(arb_record(), 0..8)) {
            prop_assert_eq!(decode(&encoded(&records)), Ok(records));
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&buf);
        }

        /// Arbitrary bytes rarely get past the header; mutating valid
        /// updates exercises the per-record checks too.
        #[test]
        fn never_panics_on_mutated_updates(
            records in proptest::collection::vec(arb_record(), 1..4),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            crate::codec::decode_mutated(encoded(&records), &flips, cut, decode);
        }

        #[test]
        fn truncation_is_an_error(records in proptest::collection::vec(arb_record(), 1..4), cut in any::<prop::sample::Index>()) {
            let buf = encoded(&records);
            prop_assert!(decode(&buf[..cut.index(buf.len())]).is_err());
        }
    }

    fn header(count: u16) -> Vec<u8> {
        let mut buf = Vec::new();
        Writer::new(&mut buf).u8(FORMAT_VERSION).u16(count);
        buf
    }

    fn record_prefix(buf: &mut Vec<u8>, name: PeerName, conns: u16) {
        Writer::new(buf).peer_name(name).short_str("n").u64(1).u64(1).u16(conns);
    }

    fn name(n: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn rejects_unknown_format() {
        let mut buf = encoded(&[]);
        buf[0] = 2;
        assert_eq!(decode(&buf), Err(GossipError::UnsupportedFormat(2)));
    }

    #[test]
    fn rejects_count_over_cap_before_reading_records() {
        assert_eq!(
            decode(&header(u16::MAX)),
            Err(GossipError::TooManyRecords { count: u16::MAX as usize, max: MAX_RECORDS })
        );
        let mut buf = header(1);
        record_prefix(&mut buf, name(1), 1001);
        assert_eq!(
            decode(&buf),
            Err(GossipError::TooManyConnections { peer: name(1), count: 1001, max: MAX_CONNECTIONS })
        );
    }

    #[test]
    fn rejects_unsorted_or_duplicate_connections() {
        for remotes in [[3, 2], [2, 2]] {
            let mut buf = header(1);
            record_prefix(&mut buf, name(1), 2);
            for r in remotes {
                Writer::new(&mut buf).peer_name(name(r)).short_str("").bool(true).bool(true);
            }
            assert_eq!(decode(&buf), Err(GossipError::UnsortedConnections { peer: name(1) }));
        }
    }

    #[test]
    fn rejects_broadcast_names() {
        let mut buf = header(1);
        record_prefix(&mut buf, PeerName::BROADCAST, 0);
        assert_eq!(decode(&buf), Err(GossipError::ReservedName { peer: PeerName::BROADCAST }));

        let mut buf = header(1);
        record_prefix(&mut buf, name(1), 1);
        Writer::new(&mut buf).peer_name(PeerName::BROADCAST).short_str("").bool(true).bool(true);
        assert_eq!(decode(&buf), Err(GossipError::ReservedName { peer: name(1) }));
    }

    #[test]
    fn rejects_trailing_bytes_and_bad_flags() {
        let mut buf = encoded(&[]);
        buf.push(0);
        assert!(matches!(decode(&buf), Err(GossipError::Decode(DecodeError::Trailing { .. }))));

        let mut buf = header(1);
        record_prefix(&mut buf, name(1), 1);
        Writer::new(&mut buf).peer_name(name(2)).short_str("").bool(true).u8(7);
        assert!(matches!(decode(&buf), Err(GossipError::Decode(DecodeError::Invalid { .. }))));
    }
}
