//! Whole clusters in simulated time: one `Ipam` per peer and a message
//! queue between them, delivered in a seeded random order (so with random
//! delays). The harness plays the router: it persists before it
//! broadcasts, gossips full state when a connection comes up, reports
//! reachability, fires timeouts, and retries pending allocations after
//! every state change. After every step it checks the cluster-wide
//! invariants: no address allocated twice, no address owned by two peers
//! (each judged by its own view), every allocation inside its allocator's
//! own space, and no conflicts unless the scenario provokes them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ring::tests::name;
use super::*;

/// Simulated time per step.
const TICK: Duration = Duration::from_millis(1);
/// Steps allowed in one run before it counts as stuck.
const MAX_STEPS: usize = 30_000;
const SEEDS: u64 = 4;

fn range() -> Range {
    "10.0.0.0/24".parse().unwrap()
}

fn ip(base: u64, offset: usize) -> Ipv4Addr {
    Ipv4Addr::from((base + offset as u64) as u32)
}

struct Msg {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

struct Node {
    ipam: Option<Ipam>,
    persisted: Vec<u8>,
    /// Container ids waiting for an address (the router's pending ADDs).
    pending: Vec<String>,
    /// A retry failed and nothing changed since: the router would wait.
    blocked: bool,
    /// Peers ever connected to: what topology knows of.
    met: BTreeSet<usize>,
}

struct Sim {
    now: Instant,
    nodes: Vec<Node>,
    /// Peers are connected iff both are alive and in the same group.
    group: Vec<u32>,
    queue: Vec<Msg>,
    rng: StdRng,
    steps: usize,
    next_container: usize,
    /// Scenario (g) meets independently seeded rings on purpose.
    expect_conflicts: bool,
    consensus_count: usize,
}

impl Sim {
    fn new(seed: u64, consensus_count: usize, groups: &[u32]) -> Sim {
        let now = Instant::now();
        let nodes = (0..groups.len())
            .map(|i| Node {
                ipam: Some(Ipam::new(name(i as u8), range(), consensus_count, now)),
                persisted: Vec::new(),
                pending: Vec::new(),
                blocked: false,
                met: BTreeSet::new(),
            })
            .collect();
        let mut sim = Sim {
            now,
            nodes,
            group: groups.to_vec(),
            queue: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            steps: 0,
            next_container: 0,
            expect_conflicts: false,
            consensus_count,
        };
        sim.refresh_topology(&BTreeSet::new());
        sim
    }

    fn ipam(&self, i: usize) -> &Ipam {
        self.nodes[i].ipam.as_ref().expect("peer is alive")
    }

    fn alive(&self) -> impl Iterator<Item = (usize, &Ipam)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.ipam.as_ref().map(|p| (i, p)))
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        a != b && self.group[a] == self.group[b] && self.nodes[a].ipam.is_some() && self.nodes[b].ipam.is_some()
    }

    fn links(&self) -> BTreeSet<(usize, usize)> {
        let n = self.nodes.len();
        (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).filter(|&(a, b)| self.connected(a, b)).collect()
    }

    /// Does what the router does after any IPAM call: persist, then
    /// broadcast.
    fn flush(&mut self, i: usize) {
        let Some(ipam) = self.nodes[i].ipam.as_mut() else { return };
        let (broadcast, persist) = ipam.take_dirty();
        // Whatever others may learn must survive our crash.
        assert!(persist || !broadcast, "peer {i} gossips state it doesn't ask to persist");
        if persist {
            let mut bytes = Vec::new();
            ipam.persist(&mut bytes);
            self.nodes[i].persisted = bytes;
        }
        if broadcast {
            let mut bytes = Vec::new();
            self.ipam(i).encode_gossip(&mut bytes);
            for to in 0..self.nodes.len() {
                if self.connected(i, to) {
                    self.queue.push(Msg { from: i, to, bytes: bytes.clone() });
                }
            }
        }
    }

    fn send_full(&mut self, from: usize, to: usize) {
        let mut bytes = Vec::new();
        self.ipam(from).encode_gossip(&mut bytes);
        self.queue.push(Msg { from, to, bytes });
    }

    /// Re-partitions; connections that come up exchange full state.
    fn set_groups(&mut self, groups: &[u32]) {
        let before = self.links();
        self.group = groups.to_vec();
        self.refresh_topology(&before);
    }

    fn refresh_topology(&mut self, before: &BTreeSet<(usize, usize)>) {
        let after = self.links();
        for &(a, b) in &after {
            self.nodes[a].met.insert(b);
            self.nodes[b].met.insert(a);
        }
        let now = self.now;
        for i in 0..self.nodes.len() {
            let known: Vec<PeerName> = self.nodes[i].met.iter().map(|&j| name(j as u8)).collect();
            let reachable: Vec<PeerName> =
                (0..self.nodes.len()).filter(|&j| self.connected(i, j)).map(|j| name(j as u8)).collect();
            if let Some(ipam) = self.nodes[i].ipam.as_mut() {
                ipam.set_peers(now, &known, &reachable);
                self.nodes[i].blocked = false;
            }
            self.flush(i);
        }
        for &(a, b) in after.difference(before) {
            self.send_full(a, b);
            self.send_full(b, a);
        }
    }

    fn kill(&mut self, i: usize) {
        let before = self.links();
        self.nodes[i].ipam = None;
        self.refresh_topology(&before);
    }

    fn restart(&mut self, i: usize) {
        let before = self.links();
        let ipam = if self.nodes[i].persisted.is_empty() {
            Ipam::new(name(i as u8), range(), self.consensus_count, self.now)
        } else {
            Ipam::restore(name(i as u8), &self.nodes[i].persisted, self.now).expect("persisted state restores")
        };
        self.nodes[i].ipam = Some(ipam);
        self.refresh_topology(&before);
    }

    fn request(&mut self, i: usize, count: usize) {
        for _ in 0..count {
            self.next_container += 1;
            let id = format!("pod{}", self.next_container);
            self.nodes[i].pending.push(id);
        }
        self.nodes[i].blocked = false;
    }

    fn pending(&self) -> usize {
        self.alive().map(|(i, _)| self.nodes[i].pending.len()).sum()
    }

    /// One event: a delivery, an allocation attempt, or (when nothing else
    /// can happen) time jumping to the next timeout. False when quiet.
    fn step(&mut self) -> bool {
        self.steps += 1;
        assert!(self.steps <= MAX_STEPS, "stuck after {MAX_STEPS} steps");
        self.now += TICK;
        let allocators: Vec<usize> = self
            .alive()
            .map(|(i, _)| i)
            .filter(|&i| !self.nodes[i].pending.is_empty() && !self.nodes[i].blocked)
            .collect();
        let deliver = !self.queue.is_empty() && (allocators.is_empty() || self.rng.gen_bool(0.8));
        let acted = if deliver {
            self.deliver();
            true
        } else if !allocators.is_empty() {
            let i = allocators[self.rng.gen_range(0..allocators.len())];
            self.try_allocate(i);
            true
        } else {
            self.advance()
        };
        self.check_invariants();
        acted
    }

    fn deliver(&mut self) {
        let pick = self.rng.gen_range(0..self.queue.len());
        let Msg { from, to, bytes } = self.queue.swap_remove(pick);
        if !self.connected(from, to) {
            return;
        }
        let now = self.now;
        let Some(ipam) = self.nodes[to].ipam.as_mut() else { return };
        if ipam.handle_gossip(now, &bytes).expect("peers send valid gossip") {
            self.nodes[to].blocked = false;
        }
        self.flush(to);
    }

    fn try_allocate(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let (Some(ipam), Some(id)) = (node.ipam.as_mut(), node.pending.last()) else { return };
        match ipam.allocate(now, id, "eth0") {
            Ok(_) => {
                node.pending.pop();
            }
            Err(e) if e.is_retryable() => node.blocked = true,
            Err(e) => panic!("peer {i}: {e}"),
        }
        self.flush(i);
    }

    fn advance(&mut self) -> bool {
        let Some(next) = self.alive().filter_map(|(_, p)| p.poll_timeout()).min() else { return false };
        self.now = self.now.max(next);
        let now = self.now;
        for i in 0..self.nodes.len() {
            let Some(ipam) = self.nodes[i].ipam.as_mut() else { continue };
            if ipam.poll_timeout().is_some_and(|t| t <= now) {
                ipam.handle_timeout(now);
                assert!(ipam.poll_timeout().is_none_or(|t| t > now), "peer {i}: timeout not rearmed");
                self.nodes[i].blocked = false;
                self.flush(i);
            }
        }
        true
    }

    /// Runs until nothing is left to do.
    fn settle(&mut self) {
        self.steps = 0;
        while self.step() {}
    }

    /// Runs for `duration` of simulated time (or until quiet).
    fn run_for(&mut self, duration: Duration) {
        self.steps = 0;
        let end = self.now + duration;
        while self.now < end && self.step() {}
    }

    fn check_invariants(&self) {
        // Peers whose rings were seeded alike form one allocation domain.
        let mut domains: BTreeMap<Vec<PeerName>, Vec<usize>> = BTreeMap::new();
        for (i, ipam) in self.alive() {
            match &ipam.shared.ring {
                Some(ring) => domains.entry(ring.seeds().to_vec()).or_default().push(i),
                None => assert_eq!(ipam.allocations().count(), 0, "peer {i} allocated without a ring"),
            }
            if !self.expect_conflicts {
                assert!(ipam.conflicts().is_empty(), "peer {i} reports {:?}", ipam.conflicts());
            }
        }
        let base = u64::from(range().first());
        for members in domains.values() {
            // Per-address tables over the (small) range: this runs after
            // every step.
            let size = range().size() as usize;
            let mut owner = vec![usize::MAX; size];
            let mut allocated = vec![usize::MAX; size];
            for &i in members {
                let ipam = self.ipam(i);
                let ring = ipam.shared.ring.as_ref().expect("in a domain");
                for span in ring.owned_spans(name(i as u8)) {
                    let (start, end) = ((u64::from(span.start) - base) as usize, (span.end - base) as usize);
                    for (at, slot) in owner.iter_mut().enumerate().take(end).skip(start) {
                        let other = std::mem::replace(slot, i);
                        assert!(other == usize::MAX, "peers {other} and {i} both own {}", ip(base, at));
                    }
                }
                for (_, _, addr) in ipam.allocations() {
                    let at = (u64::from(u32::from(addr)) - base) as usize;
                    let other = std::mem::replace(&mut allocated[at], i);
                    assert!(other == usize::MAX, "{addr} allocated by both peer {other} and peer {i}");
                    assert_eq!(owner[at], i, "peer {i} allocated {addr} outside its space");
                }
            }
        }
    }

    fn total_allocated(&self) -> usize {
        self.alive().map(|(_, p)| p.allocations().count()).sum()
    }

    /// All alive peers hold the same ring.
    fn assert_converged(&self) {
        let mut rings = self.alive().map(|(i, p)| (i, p.shared.ring.clone()));
        let (first, reference) = rings.next().expect("someone alive");
        for (i, ring) in rings {
            assert_eq!(ring, reference, "peer {i} disagrees with peer {first}");
        }
    }
}

/// (a) Five peers start at once and all allocate concurrently: they agree
/// on one ring and every address is distinct.
#[test]
fn simultaneous_start_reaches_consensus() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5, &[0; 5]);
        for i in 0..5 {
            sim.request(i, 20);
        }
        sim.settle();
        assert_eq!(sim.pending(), 0, "seed {seed}");
        assert_eq!(sim.total_allocated(), 100);
        sim.assert_converged();
        let seeds = sim.ipam(0).status().seeds;
        assert_eq!(seeds, (0..5).map(name).collect::<Vec<_>>(), "seed {seed}: every peer got a share");
    }
}

/// (b) One peer allocates far more than its share and gets space donated.
#[test]
fn greedy_peer_gets_space_donated() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 4, &[0; 4]);
        sim.request(0, 150);
        for i in 1..4 {
            sim.request(i, 10);
        }
        sim.settle();
        assert_eq!(sim.pending(), 0, "seed {seed}");
        assert_eq!(sim.ipam(0).allocations().count(), 150);
        sim.assert_converged();
    }
}

/// (c) After the ring exists the cluster splits, both sides allocate
/// (donating within their side), and the partition heals cleanly.
#[test]
fn partition_after_consensus_heals_without_duplicates() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5, &[0; 5]);
        for i in 0..5 {
            sim.request(i, 5);
        }
        sim.settle();
        sim.set_groups(&[0, 0, 1, 1, 1]);
        sim.request(0, 70);
        sim.request(2, 70);
        sim.request(4, 10);
        sim.settle();
        assert_eq!(sim.pending(), 0, "seed {seed}: each side had space to share");
        sim.set_groups(&[0; 5]);
        sim.request(1, 10);
        sim.settle();
        assert_eq!(sim.pending(), 0);
        assert_eq!(sim.total_allocated(), 25 + 150 + 10);
        sim.assert_converged();
    }
}

/// (d) A partition before consensus: only the majority side (quorum 3 of
/// 5) gets a ring; the minority waits until the partition heals.
#[test]
fn partition_before_consensus_only_majority_decides() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5, &[0; 5]);
        sim.settle();
        sim.set_groups(&[0, 0, 1, 1, 1]);
        for i in 0..5 {
            sim.request(i, 5);
        }
        sim.run_for(Duration::from_secs(120));
        for i in 0..2 {
            assert!(sim.ipam(i).shared.ring.is_none(), "seed {seed}: minority peer {i} got a ring");
            assert_eq!(sim.nodes[i].pending.len(), 5);
            assert!(sim.ipam(i).status().awaiting_consensus);
        }
        for i in 2..5 {
            assert!(sim.ipam(i).is_ready(), "seed {seed}: majority peer {i} has no ring");
            assert!(sim.nodes[i].pending.is_empty());
        }
        sim.set_groups(&[0; 5]);
        sim.settle();
        assert_eq!(sim.pending(), 0);
        assert_eq!(sim.total_allocated(), 25);
        sim.assert_converged();
    }
}

/// (e) A restarted peer keeps its allocations and its space.
#[test]
fn restart_keeps_allocations_and_ownership() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 3, &[0; 3]);
        for i in 0..3 {
            sim.request(i, 10);
        }
        sim.settle();
        let before = sim.ipam(1);
        let allocations: Vec<(String, Ipv4Addr)> = before.allocations().map(|(c, _, a)| (c.to_string(), a)).collect();
        let ring = before.shared.ring.clone().expect("ring");
        let owned: Vec<_> = ring.owned_spans(name(1)).map(|s| (s.start, s.end)).collect();
        sim.kill(1);
        sim.request(0, 20);
        sim.request(2, 20);
        sim.settle();
        sim.restart(1);
        let after = sim.ipam(1);
        assert_eq!(after.allocations().map(|(c, _, a)| (c.to_string(), a)).collect::<Vec<_>>(), allocations);
        let after_ring = after.shared.ring.as_ref().expect("ring survives");
        assert_eq!(after_ring.owned_spans(name(1)).map(|s| (s.start, s.end)).collect::<Vec<_>>(), owned);
        let (id, addr) = &allocations[0];
        assert_eq!(sim.nodes[1].ipam.as_mut().unwrap().allocate(sim.now, id, "eth0"), Ok(*addr), "idempotent");
        sim.request(1, 40);
        sim.settle();
        assert_eq!(sim.pending(), 0);
        assert_eq!(sim.total_allocated(), 30 + 40 + 40);
        sim.assert_converged();
    }
}

/// (f) `rmpeer` of a dead peer, run on two peers at once: every address
/// ends up with one owner, the dead peer's space is reused, no duplicates.
#[test]
fn concurrent_rmpeer_yields_single_owners() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5, &[0; 5]);
        for i in 0..5 {
            sim.request(i, 5);
        }
        // Peer 3 gathers donated space from several peers.
        sim.request(3, 90);
        sim.settle();
        sim.kill(3);
        let now = sim.now;
        for i in [0, 4] {
            let out = sim.nodes[i].ipam.as_mut().unwrap().rmpeer(now, name(3)).expect("rmpeer");
            assert!(out.newly_tombstoned);
        }
        sim.flush(0);
        sim.flush(4);
        sim.settle();
        for (i, p) in sim.alive() {
            let ring = p.shared.ring.as_ref().unwrap();
            assert_eq!(ring.owned_and_free(name(3)).0, 0, "seed {seed}: peer {i} still sees space owned by 3");
        }
        let out = sim.nodes[1].ipam.as_mut().unwrap().rmpeer(now, name(3)).unwrap();
        assert!(!out.newly_tombstoned);
        // The space is reusable: peer 3 owned at least 95 addresses, so
        // the survivors had at most 254 - 95 - 20 = 139 left without it.
        sim.request(2, 145);
        sim.settle();
        assert_eq!(sim.pending(), 0, "seed {seed}");
        sim.assert_converged();
    }
}

/// A peer that joins after consensus is not among the seeds: it gets all
/// its space by asking.
#[test]
fn latecomer_gets_space_by_asking() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 5, &[0, 0, 0, 0, 0, 1]);
        for i in 0..5 {
            sim.request(i, 5);
        }
        sim.settle();
        assert_eq!(sim.ipam(0).status().seeds, (0..5).map(name).collect::<Vec<_>>());
        assert!(sim.ipam(5).shared.ring.is_none());
        sim.set_groups(&[0; 6]);
        sim.request(5, 40);
        sim.settle();
        assert_eq!(sim.pending(), 0, "seed {seed}");
        assert_eq!(sim.ipam(5).allocations().count(), 40);
        sim.assert_converged();
    }
}

/// (g) Two peers that each decided alone (consensus count 1) meet: the
/// conflict is reported on both sides and neither ring is merged.
#[test]
fn independently_seeded_rings_are_reported() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, 1, &[0, 1]);
        sim.expect_conflicts = true;
        sim.request(0, 5);
        sim.request(1, 5);
        sim.settle();
        assert_eq!(sim.pending(), 0);
        let rings: Vec<_> = (0..2).map(|i| sim.ipam(i).shared.ring.clone()).collect();
        sim.set_groups(&[0, 0]);
        sim.settle();
        for (i, ring) in rings.iter().enumerate() {
            assert_eq!(&sim.ipam(i).shared.ring, ring, "rings must not merge");
            let conflict = Conflict::DifferentSeeds { ours: vec![name(i as u8)], theirs: vec![name(1 - i as u8)] };
            assert!(sim.ipam(i).conflicts().contains(&conflict), "seed {seed}: peer {i} didn't report");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Request(usize, usize),
    Release(usize),
    Steps(usize),
    Partition(Vec<u32>),
    Restart(usize),
    /// The first peer dies for good; the second runs `rmpeer` on it.
    Remove(usize, usize),
    Timeout,
}

fn arb_op(peers: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..peers, 1usize..30).prop_map(|(i, n)| Op::Request(i, n)),
        1 => (0..peers).prop_map(Op::Release),
        4 => (1usize..300).prop_map(Op::Steps),
        1 => proptest::collection::vec(0u32..2, peers).prop_map(Op::Partition),
        1 => (0..peers).prop_map(Op::Restart),
        1 => (0..peers, 0..peers).prop_map(|(dead, by)| Op::Remove(dead, by)),
        1 => Just(Op::Timeout),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Random interleavings of allocations, releases, partitions,
    /// restarts (from persisted state, at any moment), removals and
    /// timeouts never allocate an address twice; once healed, every
    /// request is served.
    #[test]
    fn random_operations_never_duplicate(seed in any::<u64>(), ops in proptest::collection::vec(arb_op(4), 1..40)) {
        let mut sim = Sim::new(seed, 4, &[0; 4]);
        let mut removed = BTreeSet::new();
        for op in ops {
            match op {
                Op::Request(i, _) | Op::Release(i) | Op::Restart(i) if removed.contains(&i) => {}
                Op::Request(i, n) => sim.request(i, n),
                Op::Release(i) => {
                    let victim = sim.ipam(i).allocations().next().map(|(c, _, _)| c.to_string());
                    if let (Some(c), Some(ipam)) = (victim, sim.nodes[i].ipam.as_mut()) {
                        ipam.release(&c, None);
                    }
                    sim.flush(i);
                }
                Op::Steps(n) => {
                    sim.steps = 0;
                    for _ in 0..n {
                        if !sim.step() {
                            break;
                        }
                    }
                }
                Op::Partition(groups) => sim.set_groups(&groups),
                Op::Restart(i) => {
                    sim.kill(i);
                    sim.restart(i);
                }
                Op::Remove(dead, by) => {
                    if dead == by || removed.contains(&by) || removed.len() >= 2 {
                        continue;
                    }
                    if removed.insert(dead) {
                        sim.kill(dead);
                    }
                    let now = sim.now;
                    let ipam = sim.nodes[by].ipam.as_mut().expect("alive");
                    match ipam.rmpeer(now, name(dead as u8)) {
                        Ok(_) | Err(RmpeerError::UnknownPeer(_)) => {}
                        Err(e) => panic!("rmpeer: {e}"),
                    }
                    sim.flush(by);
                }
                Op::Timeout => {
                    sim.now += REQUEST_RETRY.max(PAXOS_RETRY * 2);
                    sim.advance();
                }
            }
            sim.check_invariants();
        }
        sim.set_groups(&[0; 4]);
        // Consensus may be out of reach (removals before a ring existed
        // leave fewer than a quorum alive): then proposers retry forever.
        let patience = Duration::from_secs(600);
        sim.run_for(patience);
        // Peers may have been removed before anyone learnt their space.
        let survivor = (0..4).find(|i| !removed.contains(i)).expect("someone survives");
        for &dead in &removed {
            let now = sim.now;
            let ipam = sim.nodes[survivor].ipam.as_mut().expect("alive");
            let _ = ipam.rmpeer(now, name(dead as u8));
            sim.flush(survivor);
        }
        sim.run_for(patience);
        // 4 peers could ask for up to 40 * 29 addresses: more than a /24.
        let wanted = sim.pending() + sim.total_allocated();
        let ready = sim.alive().all(|(_, p)| p.is_ready());
        if wanted <= 200 && ready {
            prop_assert_eq!(sim.pending(), 0);
        }
        sim.assert_converged();
    }
}
