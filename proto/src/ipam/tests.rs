//! `Ipam` behaviour of one or two peers driven by hand. Encodings and the
//! pure pieces are tested next to their code; whole clusters in
//! `sim_tests`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::ring::tests::name;
use super::*;

fn range(s: &str) -> Range {
    s.parse().unwrap()
}

fn solo(r: &str, now: Instant) -> Ipam {
    Ipam::new(name(1), range(r), 1, now)
}

fn gossip(from: &Ipam) -> Vec<u8> {
    let mut out = Vec::new();
    from.encode_gossip(&mut out);
    out
}

fn persisted(ipam: &Ipam) -> Vec<u8> {
    let mut out = Vec::new();
    ipam.persist(&mut out);
    out
}

/// Peers 1 and 2 of a two-peer cluster (consensus 2) that know of each other.
fn pair(now: Instant, r: Range) -> (Ipam, Ipam) {
    let mut a = Ipam::new(name(1), r, 2, now);
    let mut b = Ipam::new(name(2), r, 2, now);
    a.set_peers(now, &[name(2)], &[name(2)]);
    b.set_peers(now, &[name(1)], &[name(1)]);
    (a, b)
}

/// Gossips both ways until neither changes.
fn sync(now: Instant, a: &mut Ipam, b: &mut Ipam) {
    for _ in 0..20 {
        let ab = a.handle_gossip(now, &gossip(b)).unwrap();
        let ba = b.handle_gossip(now, &gossip(a)).unwrap();
        if !ab && !ba {
            return;
        }
    }
    panic!("no convergence");
}

#[test]
fn lone_peer_with_quorum_one_allocates_at_once() {
    let now = Instant::now();
    let mut ipam = solo("10.0.0.0/24", now);
    assert!(!ipam.is_ready());
    assert_eq!(ipam.allocate(now, "c1", "eth0"), Ok("10.0.0.1".parse().unwrap()));
    assert!(ipam.is_ready());
    assert_eq!(ipam.take_dirty(), (true, true));
    assert_eq!(ipam.take_dirty(), (false, false));
    assert_eq!(ipam.allocate(now, "c1", "eth0"), Ok("10.0.0.1".parse().unwrap()), "idempotent");
    assert_eq!(ipam.take_dirty(), (false, false));
    assert_eq!(ipam.allocate(now, "c1", "eth1"), Ok("10.0.0.2".parse().unwrap()));
    assert_eq!(ipam.lookup("c1", "eth1"), Some("10.0.0.2".parse().unwrap()));
    assert_eq!(ipam.lookup("c2", "eth0"), None);
    assert!(ipam.conflicts().is_empty());
}

#[test]
fn fifty_concurrent_pods_get_distinct_addresses_and_reuse_released_ones() {
    let now = Instant::now();
    let mut ipam = solo("10.32.0.0/12", now);
    let addrs: BTreeSet<Ipv4Addr> = (0..50).map(|i| ipam.allocate(now, &format!("pod{i}"), "eth0").unwrap()).collect();
    assert_eq!(addrs.len(), 50);
    assert_eq!(ipam.allocations().count(), 50);
    assert_eq!(ipam.release("pod7", None), 1);
    assert_eq!(ipam.release("pod7", None), 0);
    assert_eq!(ipam.release("pod8", Some("eth1")), 0);
    let again = ipam.allocate(now, "pod50", "eth0").unwrap();
    assert_eq!(again, "10.32.0.8".parse::<Ipv4Addr>().unwrap());
    let s = ipam.status();
    assert_eq!(s.local_allocations, 50);
    assert_eq!(s.total, (1 << 20) - 2);
    assert_eq!(s.used, 50);
    assert_eq!(s.free, s.total - 50);
}

#[test]
fn rejects_bad_ids() {
    let now = Instant::now();
    let mut ipam = solo("10.0.0.0/24", now);
    assert!(matches!(ipam.allocate(now, "", "eth0"), Err(AllocError::InvalidId { what: "container id", .. })));
    let long = "x".repeat(MAX_ID_LEN + 1);
    assert!(matches!(ipam.allocate(now, "c", &long), Err(AllocError::InvalidId { what: "interface name", .. })));
    assert!(ipam.allocate(now, &"x".repeat(MAX_ID_LEN), "eth0").is_ok());
}

#[test]
fn lone_peer_exhausts_its_range() {
    let now = Instant::now();
    let mut ipam = solo("10.0.0.0/28", now);
    for i in 0..14 {
        ipam.allocate(now, &format!("c{i}"), "eth0").unwrap();
    }
    let err = ipam.allocate(now, "c14", "eth0").unwrap_err();
    assert_eq!(err, AllocError::Exhausted { range: range("10.0.0.0/28") });
    assert!(err.is_retryable());
    ipam.release("c3", None);
    assert_eq!(ipam.allocate(now, "c14", "eth0"), Ok("10.0.0.4".parse().unwrap()));
}

#[test]
fn restore_keeps_allocations_ring_and_promises() {
    let now = Instant::now();
    let mut ipam = solo("10.0.0.0/24", now);
    let a = ipam.allocate(now, "c1", "eth0").unwrap();
    let bytes = persisted(&ipam);
    let mut back = Ipam::restore(name(1), &bytes, now).unwrap();
    assert_eq!(back.range(), range("10.0.0.0/24"));
    assert_eq!(back.lookup("c1", "eth0"), Some(a));
    assert_eq!(back.shared, ipam.shared);
    assert_ne!(back.allocate(now, "c2", "eth0").unwrap(), a);
    assert_eq!(
        Ipam::restore(name(2), &bytes, now).err(),
        Some(PersistError::NameMismatch { persisted: name(1), local: name(2) })
    );

    // Before consensus: the acceptor state survives.
    let mut b = Ipam::new(name(2), range("10.0.0.0/24"), 3, now);
    assert_eq!(b.allocate(now, "c", "eth0"), Err(AllocError::NotReady));
    let promised = b.own().paxos.promised;
    assert!(!promised.is_none());
    let back = Ipam::restore(name(2), &persisted(&b), now).unwrap();
    assert_eq!(back.own().paxos.promised, promised);
    assert_eq!(back.consensus_count(), 3);
}

#[test]
fn gossip_for_another_range_is_rejected() {
    let now = Instant::now();
    let mut a = solo("10.0.0.0/24", now);
    let b = Ipam::new(name(2), range("10.1.0.0/24"), 1, now);
    assert_eq!(
        a.handle_gossip(now, &gossip(&b)),
        Err(IpamGossipError::RangeMismatch { ours: range("10.0.0.0/24"), theirs: range("10.1.0.0/24") })
    );
    assert!(matches!(a.handle_gossip(now, &[9]), Err(IpamGossipError::UnsupportedFormat(9))));
}

#[test]
fn two_peers_reach_consensus_and_a_latecomer_asks_for_space() {
    let now = Instant::now();
    let r = range("10.0.0.0/24");
    let (mut a, mut b) = pair(now, r);
    assert_eq!(a.allocate(now, "a1", "eth0"), Err(AllocError::NotReady));
    assert!(a.poll_timeout().is_some());
    sync(now, &mut a, &mut b);
    assert!(a.is_ready() && b.is_ready());
    assert_eq!(a.status().seeds, vec![name(1), name(2)]);
    assert_eq!(a.allocate(now, "a1", "eth0"), Ok("10.0.0.1".parse().unwrap()));
    assert_eq!(b.allocate(now, "b1", "eth0"), Ok("10.0.0.128".parse().unwrap()));

    // A third peer, not among the seeds, owns nothing and asks.
    let mut c = Ipam::new(name(3), r, 2, now);
    c.set_peers(now, &[name(1), name(2)], &[name(1), name(2)]);
    sync(now, &mut c, &mut a);
    assert!(c.is_ready());
    assert_eq!(c.allocate(now, "c1", "eth0"), Err(AllocError::Pending));
    assert_eq!(c.own().request.map(|r| r.donor), Some(name(2)), "b has one more free address than a");
    assert!(c.status().awaiting_space);
    sync(now, &mut c, &mut b);
    let got = c.allocate(now, "c1", "eth0").unwrap();
    assert!(got >= "10.0.0.128".parse::<Ipv4Addr>().unwrap());
    assert_ne!(Some(got), b.lookup("b1", "eth0"));
    assert_eq!(c.own().request, None, "request withdrawn once served");
    sync(now, &mut c, &mut a);
    sync(now, &mut b, &mut a);
    assert_eq!(a.shared.ring, c.shared.ring);
    assert!(a.conflicts().is_empty() && b.conflicts().is_empty() && c.conflicts().is_empty());
}

/// Three peers that know of each other, none yet knowing how many peers
/// the cluster has (a Kubernetes node list not read yet).
fn trio_unknown(now: Instant, r: Range) -> [Ipam; 3] {
    let mut peers = [1, 2, 3].map(|i| Ipam::new(name(i), r, CONSENSUS_UNKNOWN, now));
    for p in peers.iter_mut() {
        let others: Vec<PeerName> = [1, 2, 3].iter().map(|&i| name(i)).filter(|n| *n != p.local_name()).collect();
        p.set_peers(now, &others, &others);
    }
    peers
}

fn sync_all(now: Instant, peers: &mut [Ipam]) {
    for _ in 0..20 {
        let mut changed = false;
        for i in 0..peers.len() {
            for j in 0..peers.len() {
                if i != j {
                    let msg = gossip(&peers[j]);
                    changed |= peers[i].handle_gossip(now, &msg).unwrap();
                }
            }
        }
        if !changed {
            return;
        }
    }
    panic!("no convergence");
}

#[test]
fn unknown_consensus_count_never_claims_the_range() {
    let now = Instant::now();
    let mut peers = trio_unknown(now, range("10.0.0.0/24"));
    for (i, p) in peers.iter_mut().enumerate() {
        assert_eq!(p.allocate(now, &format!("c{i}"), "eth0"), Err(AllocError::NotReady));
        assert_eq!(p.poll_timeout(), None, "nothing to retry until the count is known");
        p.handle_timeout(now + 10 * PAXOS_RETRY);
    }
    sync_all(now, &mut peers);
    assert!(peers.iter().all(|p| !p.is_ready()), "no peer divided the range alone");
    assert!(peers.iter().all(|p| p.own().paxos.promised.is_none()), "nobody proposed");
}

#[test]
fn a_count_learned_later_divides_the_range_among_all() {
    let now = Instant::now();
    let mut peers = trio_unknown(now, range("10.0.0.0/24"));
    assert_eq!(peers[0].allocate(now, "c0", "eth0"), Err(AllocError::NotReady));
    // One peer learns the count: it proposes; the others, still without a
    // count, answer as acceptors but decide nothing on their own.
    peers[0].set_consensus_count(now, 3);
    sync_all(now, &mut peers);
    assert!(peers[0].is_ready(), "a quorum of acceptors answered");
    assert!(peers[1].is_ready() && peers[2].is_ready(), "the others adopt the decided ring");
    assert_eq!(peers[0].status().seeds, vec![name(1), name(2), name(3)]);
    assert_eq!(peers[0].shared.ring, peers[1].shared.ring);
    // Once divided, a changed count is moot.
    peers[1].set_consensus_count(now, 7);
    assert_eq!(peers[1].consensus_count(), CONSENSUS_UNKNOWN);
    let a = peers[0].allocate(now, "c0", "eth0").unwrap();
    assert!(peers[0].owned_ranges().iter().any(|(lo, hi)| *lo <= a && a <= *hi));
    let all: Vec<(Ipv4Addr, Ipv4Addr)> = peers.iter().flat_map(|p| p.owned_ranges()).collect();
    assert_eq!(all.len(), 3, "three seeds, one range each: {all:?}");
    let covered: u64 = all.iter().map(|(lo, hi)| u64::from(u32::from(*hi)) - u64::from(u32::from(*lo)) + 1).sum();
    assert_eq!(covered, 256);
}

#[test]
fn unknown_count_survives_a_restart() {
    let now = Instant::now();
    let a = Ipam::new(name(1), range("10.0.0.0/24"), CONSENSUS_UNKNOWN, now);
    let back = Ipam::restore(name(1), &persisted(&a), now).unwrap();
    assert_eq!(back.consensus_count(), CONSENSUS_UNKNOWN);
}

#[test]
fn proposer_retries_with_a_higher_round_after_timeout() {
    let now = Instant::now();
    let mut a = Ipam::new(name(1), range("10.0.0.0/24"), 3, now);
    assert_eq!(a.allocate(now, "c", "eth0"), Err(AllocError::NotReady));
    let first = a.own().paxos.promised;
    let deadline = a.poll_timeout().unwrap();
    assert!(deadline >= now + PAXOS_RETRY && deadline < now + 2 * PAXOS_RETRY);
    a.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(a.own().paxos.promised, first);
    a.handle_timeout(deadline);
    assert!(a.own().paxos.promised > first);
    assert!(a.poll_timeout().unwrap() > deadline);
}

#[test]
fn rmpeer_refuses_self_unknown_and_reachable_peers() {
    let now = Instant::now();
    let mut a = solo("10.0.0.0/24", now);
    assert_eq!(a.rmpeer(now, name(1)), Err(RmpeerError::IsSelf));
    assert_eq!(a.rmpeer(now, name(7)), Err(RmpeerError::UnknownPeer(name(7))));
    a.set_peers(now, &[name(7)], &[name(7)]);
    assert_eq!(a.rmpeer(now, name(7)), Err(RmpeerError::Reachable(name(7))));
    a.set_peers(now, &[name(7)], &[]);
    let first = a.rmpeer(now, name(7)).unwrap();
    assert!(first.newly_tombstoned);
    assert!(!a.rmpeer(now, name(7)).unwrap().newly_tombstoned);
    assert!(a.status().peers.iter().any(|p| p.name == name(7) && p.tombstoned && !p.reachable));
}

#[test]
fn rmpeer_hands_a_dead_peers_space_to_its_heir() {
    let now = Instant::now();
    let r = range("10.0.0.0/24");
    let (mut a, mut b) = pair(now, r);
    assert_eq!(a.allocate(now, "a", "eth0"), Err(AllocError::NotReady));
    sync(now, &mut a, &mut b);
    assert!(a.is_ready());
    a.set_peers(now, &[name(2)], &[]);
    let out = a.rmpeer(now, name(2)).unwrap();
    assert_eq!(out, RmpeerOutcome { newly_tombstoned: true, addresses_taken_over: 127 });
    assert_eq!(a.status().free, 254);
    for i in 0..200 {
        a.allocate(now, &format!("c{i}"), "eth0").unwrap();
    }

    // The removed peer comes back: it learns it was removed, stops
    // allocating, and both sides report it.
    b.set_peers(now, &[name(1)], &[name(1)]);
    b.handle_gossip(now, &gossip(&a)).unwrap();
    assert_eq!(b.allocate(now, "b", "eth0"), Err(AllocError::SelfTombstoned));
    assert!(!b.is_ready());
    assert!(b.conflicts().contains(&Conflict::SelfTombstoned));
    a.set_peers(now, &[name(2)], &[name(2)]);
    assert!(a.conflicts().contains(&Conflict::TombstonedPeerAlive { peer: name(2) }));
}

#[test]
fn stolen_space_with_allocations_is_reported() {
    let now = Instant::now();
    let r = range("10.0.0.0/24");
    let mut a = Ipam::new(name(1), r, 1, now);
    a.allocate(now, "c", "eth0").unwrap();
    // A forged view where name(2) took a's first entry.
    let mut forged = a.shared.clone();
    if let Some(ring) = &mut forged.ring {
        assert!(ring.take_over(r.first(), name(2), 0));
    }
    let mut bytes = Vec::new();
    gossip::encode(&forged, &mut bytes);
    assert_eq!(a.handle_gossip(now, &bytes), Ok(true));
    assert!(a.conflicts().contains(&Conflict::SpaceTaken { token: r.start(), by: name(2) }));
    assert!(a.conflicts().contains(&Conflict::AllocationOutsideOwnedSpace {
        address: "10.0.0.1".parse().unwrap(),
        owner: Some(name(2))
    }));
}

#[test]
fn restart_without_persisted_state_is_reported() {
    let now = Instant::now();
    let r = range("10.0.0.0/24");
    let mut a = Ipam::new(name(1), r, 2, now);
    let mut b = Ipam::new(name(2), r, 2, now);
    a.set_peers(now, &[name(2)], &[name(2)]);
    assert_eq!(a.allocate(now, "a", "eth0"), Err(AllocError::NotReady));
    sync(now, &mut a, &mut b);
    a.allocate(now, "a", "eth0").unwrap();
    sync(now, &mut a, &mut b);
    assert!(a.conflicts().is_empty() && b.conflicts().is_empty());

    let mut amnesiac = Ipam::new(name(1), r, 2, now);
    amnesiac.handle_gossip(now, &gossip(&b)).unwrap();
    assert_eq!(amnesiac.conflicts(), &[Conflict::LostState { in_use: 1 }]);
    // A peer that never allocated adopts the same ring without complaint.
    let mut c = Ipam::new(name(3), r, 2, now);
    c.handle_gossip(now, &gossip(&b)).unwrap();
    assert!(c.conflicts().is_empty());
}

#[test]
fn independently_seeded_rings_conflict() {
    let now = Instant::now();
    let r = range("10.0.0.0/24");
    let mut a = Ipam::new(name(1), r, 1, now);
    let mut b = Ipam::new(name(2), r, 1, now);
    a.allocate(now, "a", "eth0").unwrap();
    b.allocate(now, "b", "eth0").unwrap();
    let before = a.shared.clone();
    assert_eq!(a.handle_gossip(now, &gossip(&b)), Ok(false));
    assert_eq!(a.shared, before);
    assert_eq!(a.conflicts(), &[Conflict::DifferentSeeds { ours: vec![name(1)], theirs: vec![name(2)] }]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn handle_gossip_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
        let now = Instant::now();
        let mut a = solo("10.0.0.0/24", now);
        let _ = a.handle_gossip(now, &buf);
        let _ = Ipam::restore(name(1), &buf, now);
    }

    /// Random allocate/release sequences on one peer never hand out an
    /// address twice and keep the ring's free counts exact.
    #[test]
    fn local_allocations_never_duplicate(ops in proptest::collection::vec((any::<bool>(), 0u8..40), 1..200)) {
        let now = Instant::now();
        let mut ipam = solo("10.0.0.0/26", now);
        ipam.allocate(now, "first", "eth0").unwrap();
        for (alloc, id) in ops {
            let id = format!("c{id}");
            if alloc {
                match ipam.allocate(now, &id, "eth0") {
                    Ok(a) => prop_assert!(range("10.0.0.0/26").contains(a)),
                    Err(e) => prop_assert_eq!(e, AllocError::Exhausted { range: range("10.0.0.0/26") }),
                }
            } else {
                ipam.release(&id, None);
            }
            let addrs: BTreeSet<Ipv4Addr> = ipam.allocations().map(|(_, _, a)| a).collect();
            prop_assert_eq!(addrs.len(), ipam.allocations().count());
            let s = ipam.status();
            prop_assert_eq!(s.used, addrs.len() as u64);
            let ring = ipam.shared.ring.as_ref().unwrap();
            prop_assert_eq!(ring.owned_and_free(name(1)).1, s.free);
        }
    }
}
