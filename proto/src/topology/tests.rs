//! `Topology` merge, local-record and timeout behaviour. Route and encoding
//! properties live next to their code; multi-peer behaviour in `sim_tests`.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::gossip::{self, tests::arb_record};
use super::*;

fn name(n: u8) -> PeerName {
    PeerName::from_bytes([2, 0, 0, 0, 0, n])
}

/// Outside `arb_record`'s name pool unless a test puts it there.
const LOCAL: PeerName = PeerName::from_bytes([2, 0, 0, 0, 1, 0]);

fn topology(now: Instant) -> Topology {
    Topology::new(LOCAL, "local".into(), 77, now)
}

fn update(records: &[PeerRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    gossip::encode(records, &mut out);
    out
}

fn apply(t: &mut Topology, now: Instant, records: &[PeerRecord]) -> Vec<PeerName> {
    t.apply_update(now, &update(records)).expect("valid update")
}

fn conn(remote: PeerName, established: bool) -> ConnectionInfo {
    ConnectionInfo { remote, address: "192.0.2.1:6783".into(), outbound: true, established }
}

fn record(peer: PeerName, uid: u64, version: u64, connections: Vec<ConnectionInfo>) -> PeerRecord {
    PeerRecord { name: peer, nickname: format!("{peer}"), uid, version, connections }
}

fn snapshot(t: &Topology) -> Vec<PeerRecord> {
    t.peers().cloned().collect()
}

#[test]
fn starts_with_only_itself() {
    let t = topology(Instant::now());
    assert_eq!(t.local_name(), LOCAL);
    let expected = PeerRecord { name: LOCAL, nickname: "local".into(), uid: 77, version: 1, connections: vec![] };
    assert_eq!(snapshot(&t), vec![expected]);
    assert!(t.routes().reachable(LOCAL));
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn local_connections_bump_version_only_on_change() {
    let now = Instant::now();
    let mut t = topology(now);
    let conns = vec![conn(name(2), true), conn(name(1), false)];
    assert!(t.set_local_connections(conns.clone(), now));
    assert_eq!(t.local_record().version, 2);
    assert_eq!(t.local_record().connections, vec![conn(name(1), false), conn(name(2), true)]);
    assert!(!t.set_local_connections(conns, now));
    assert_eq!(t.local_record().version, 2);
    assert!(t.set_local_connections(vec![], now));
    assert_eq!(t.local_record().version, 3);
}

#[test]
fn local_record_survives_the_wire_unchanged() {
    let now = Instant::now();
    let mut t = Topology::new(LOCAL, "n".repeat(300), 1, now);
    let mut long = conn(name(1), true);
    long.address = "a".repeat(300);
    t.set_local_connections(vec![long], now);
    let mut out = Vec::new();
    t.encode_all(&mut out);
    assert_eq!(gossip::decode(&out).as_deref(), Ok(std::slice::from_ref(t.local_record())));
}

#[test]
fn routes_follow_symmetric_established_connections() {
    let now = Instant::now();
    let mut t = topology(now);
    t.set_local_connections(vec![conn(name(1), true)], now);
    let changed = apply(&mut t, now, &[record(name(1), 5, 1, vec![conn(name(2), true), conn(LOCAL, true)])]);
    assert_eq!(changed, vec![name(1)]);
    assert_eq!(t.routes().next_hop(name(1)), Some(name(1)));
    assert!(!t.routes().reachable(name(2)), "2 isn't known yet");
    apply(&mut t, now, &[record(name(2), 5, 1, vec![conn(name(1), true)])]);
    assert_eq!(t.routes().next_hop(name(2)), Some(name(1)));
    assert_eq!(t.routes().broadcast_next_hops(LOCAL), &[name(1)]);
}

#[test]
fn malformed_update_applies_nothing() {
    let now = Instant::now();
    let mut t = topology(now);
    let mut bad = update(&[record(name(1), 1, 1, vec![]), record(name(2), 1, 1, vec![])]);
    bad.pop();
    assert!(t.apply_update(now, &bad).is_err());
    assert_eq!(snapshot(&t).len(), 1);
}

#[test]
fn newer_versions_and_higher_uids_win() {
    let now = Instant::now();
    let mut t = topology(now);
    apply(&mut t, now, &[record(name(1), 5, 3, vec![])]);
    let older = apply(&mut t, now, &[record(name(1), 9, 2, vec![])]);
    assert!(older.is_empty());
    let again = apply(&mut t, now, &[record(name(1), 5, 3, vec![])]);
    assert!(again.is_empty(), "idempotent");
    let tie = apply(&mut t, now, &[record(name(1), 6, 3, vec![])]);
    assert_eq!(tie, vec![name(1)]);
    assert_eq!(t.peer(&name(1)).map(|r| (r.version, r.uid)), Some((3, 6)));
}

#[test]
fn restarted_self_outbids_its_previous_incarnation() {
    let now = Instant::now();
    let mut t = topology(now);
    // Our previous life (different uid) got to version 40.
    let old_self = record(LOCAL, 3, 40, vec![conn(name(1), true)]);
    assert_eq!(apply(&mut t, now, std::slice::from_ref(&old_self)), vec![LOCAL]);
    let ours = t.local_record().clone();
    assert_eq!((ours.uid, ours.version), (77, 41));
    assert!(ours.connections.is_empty(), "the old record's contents are not adopted");
    assert!(ours.supersedes(&old_self));

    // Echoes of our own or older records change nothing.
    assert!(apply(&mut t, now, &[ours.clone(), old_self]).is_empty());
    assert_eq!(apply(&mut t, now, &[record(LOCAL, 999, 41, vec![])]), vec![LOCAL]);
    assert_eq!(t.local_record().version, 42);
}

#[test]
fn version_bump_saturates_instead_of_overflowing() {
    let now = Instant::now();
    let mut t = topology(now);
    apply(&mut t, now, &[record(LOCAL, 1, u64::MAX, vec![])]);
    assert_eq!(t.local_record().version, u64::MAX);
    t.set_local_connections(vec![conn(name(1), true)], now);
    assert_eq!(t.local_record().version, u64::MAX);
}

#[test]
fn unreachable_peers_are_dropped_after_the_ttl() {
    let t0 = Instant::now();
    let ttl = Duration::from_secs(5);
    let mut t = Topology::with_config(LOCAL, "local".into(), 1, t0, TopologyConfig { unreachable_ttl: ttl });
    t.set_local_connections(vec![conn(name(1), true)], t0);
    let peer1 = record(name(1), 1, 1, vec![conn(LOCAL, true)]);
    let peer2 = record(name(2), 1, 1, vec![]);
    apply(&mut t, t0, &[peer1, peer2.clone()]);
    assert_eq!(t.poll_timeout(), Some(t0 + ttl), "only peer 2 is unreachable");

    let t1 = t0 + Duration::from_secs(2);
    // Peer 1 drops its side of the connection.
    apply(&mut t, t1, &[record(name(1), 1, 2, vec![])]);
    assert!(!t.routes().reachable(name(1)));
    assert_eq!(t.poll_timeout(), Some(t0 + ttl));

    assert!(t.handle_timeout(t0 + ttl - Duration::from_millis(1)).is_empty());
    assert_eq!(t.handle_timeout(t0 + ttl), vec![name(2)]);
    assert_eq!(t.poll_timeout(), Some(t1 + ttl));
    assert_eq!(t.handle_timeout(t1 + ttl), vec![name(1)]);
    assert_eq!(snapshot(&t).iter().map(|r| r.name).collect::<Vec<_>>(), vec![LOCAL], "never drops itself");
    assert_eq!(t.poll_timeout(), None);

    // A dropped peer that gossip mentions again is simply re-added.
    let t2 = t1 + ttl;
    assert_eq!(apply(&mut t, t2, &[peer2]), vec![name(2)]);
    assert_eq!(t.poll_timeout(), Some(t2 + ttl));
}

#[test]
fn becoming_reachable_cancels_the_timer() {
    let t0 = Instant::now();
    let mut t = topology(t0);
    apply(&mut t, t0, &[record(name(1), 1, 1, vec![conn(LOCAL, true)])]);
    assert!(t.poll_timeout().is_some());
    t.set_local_connections(vec![conn(name(1), true)], t0);
    assert_eq!(t.poll_timeout(), None);
    assert!(t.handle_timeout(t0 + Duration::from_secs(3600)).is_empty());
}

#[test]
fn enormous_ttl_never_expires_and_never_panics() {
    let t0 = Instant::now();
    let config = TopologyConfig { unreachable_ttl: Duration::MAX };
    let mut t = Topology::with_config(LOCAL, "local".into(), 1, t0, config);
    apply(&mut t, t0, &[record(name(1), 1, 1, vec![])]);
    assert_eq!(t.poll_timeout(), None);
    assert!(t.handle_timeout(t0 + Duration::from_secs(1 << 40)).is_empty());
}

#[test]
fn encode_peers_skips_unknown_names() {
    let now = Instant::now();
    let mut t = topology(now);
    let peer1 = record(name(1), 1, 1, vec![]);
    apply(&mut t, now, std::slice::from_ref(&peer1));
    let mut out = Vec::new();
    t.encode_peers(&[name(9), name(1)], &mut out);
    assert_eq!(gossip::decode(&out), Ok(vec![peer1]));
}

fn arb_updates_and_order() -> impl Strategy<Value = (Vec<PeerRecord>, Vec<usize>)> {
    proptest::collection::vec(arb_record(), 1..24).prop_flat_map(|records| {
        let order: Vec<usize> = (0..records.len()).collect();
        (Just(records), Just(order).prop_shuffle())
    })
}

proptest! {
    #[test]
    fn merge_is_order_independent((records, order) in arb_updates_and_order()) {
        let now = Instant::now();
        let mut in_order = topology(now);
        let mut shuffled = topology(now);
        let mut batched = topology(now);
        for r in &records {
            apply(&mut in_order, now, std::slice::from_ref(r));
        }
        for &i in &order {
            apply(&mut shuffled, now, std::slice::from_ref(&records[i]));
        }
        apply(&mut batched, now, &records);
        prop_assert_eq!(snapshot(&in_order), snapshot(&shuffled));
        prop_assert_eq!(snapshot(&in_order), snapshot(&batched));
        prop_assert_eq!(in_order.routes(), shuffled.routes());
        // Every record we keep is the greatest of those offered for its name.
        for r in &records {
            let kept = in_order.peer(&r.name).expect("offered records are kept");
            prop_assert!(!r.supersedes(kept));
        }
        // Re-applying everything is a no-op.
        prop_assert!(apply(&mut in_order, now, &records).is_empty());
    }

    #[test]
    fn our_own_record_beats_every_record_about_us(
        (mut records, order) in arb_updates_and_order(),
        about_us in proptest::collection::vec(any::<bool>(), 24),
    ) {
        for (r, &us) in records.iter_mut().zip(&about_us) {
            if us {
                r.name = LOCAL;
            }
        }
        let now = Instant::now();
        let mut t = topology(now);
        for &i in &order {
            apply(&mut t, now, std::slice::from_ref(&records[i]));
        }
        let ours = t.local_record();
        prop_assert_eq!((ours.uid, &ours.nickname), (77, &"local".to_string()));
        for r in records.iter().filter(|r| r.name == LOCAL) {
            prop_assert!(ours.supersedes(r));
        }
    }

    #[test]
    fn apply_update_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..128)) {
        let now = Instant::now();
        let mut t = topology(now);
        let before = snapshot(&t);
        if t.apply_update(now, &buf).is_err() {
            prop_assert_eq!(snapshot(&t), before);
        }
    }
}
