//! Multi-peer gossip in simulated time: no sockets, one `Topology` per peer
//! and a message queue between them, delivered in a seeded random order.
//! Peers gossip as the router does: full state to a neighbour when a
//! connection comes up, then changed records to every neighbour.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const N: usize = 10;
const TTL: Duration = Duration::from_secs(5);
/// Simulated time per delivered message.
const TICK: Duration = Duration::from_millis(1);
/// Deliveries allowed before a run counts as not converging. Observed runs
/// on these ~10-peer graphs need at most ~500.
const MAX_STEPS: usize = 2_000;

fn name(i: usize) -> PeerName {
    PeerName::from_bytes([2, 0, 0, 0, 0, i as u8])
}

fn index(name: PeerName) -> usize {
    name.as_bytes()[5] as usize
}

struct Message {
    from: usize,
    to: usize,
    /// The connection it was sent on: if that closes, the message is lost.
    connection: u64,
    update: Vec<u8>,
}

struct Sim {
    now: Instant,
    peers: Vec<Option<Topology>>,
    /// Open connections keyed (low, high), each with a unique id.
    links: BTreeMap<(usize, usize), u64>,
    next_connection: u64,
    queue: VecDeque<Message>,
    rng: StdRng,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let now = Instant::now();
        let mut sim = Sim {
            now,
            peers: Vec::new(),
            links: BTreeMap::new(),
            next_connection: 0,
            queue: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
        };
        for i in 0..N {
            sim.peers.push(Some(sim.fresh_peer(i, 1000 + i as u64)));
        }
        sim
    }

    fn fresh_peer(&self, i: usize, uid: u64) -> Topology {
        let config = TopologyConfig { unreachable_ttl: TTL };
        Topology::with_config(name(i), format!("peer{i}"), uid, self.now, config)
    }

    fn alive(&self) -> impl Iterator<Item = (usize, &Topology)> {
        self.peers.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|t| (i, t)))
    }

    fn topology(&self, i: usize) -> &Topology {
        self.peers[i].as_ref().expect("peer is alive")
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        self.links
            .keys()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    fn send(&mut self, from: usize, to: usize, update: Vec<u8>) {
        if let Some(&connection) = self.links.get(&(from.min(to), from.max(to))) {
            self.queue.push_back(Message { from, to, connection, update });
        }
    }

    fn gossip(&mut self, from: usize, changed: &[PeerName]) {
        let mut update = Vec::new();
        self.topology(from).encode_peers(changed, &mut update);
        for to in self.neighbours(from) {
            self.send(from, to, update.clone());
        }
    }

    /// Tells peer `i` its current connections, gossiping its record if that
    /// changed.
    fn refresh(&mut self, i: usize) {
        let now = self.now;
        let conns = self
            .neighbours(i)
            .into_iter()
            .map(|j| ConnectionInfo {
                remote: name(j),
                address: format!("10.0.0.{j}:6783"),
                outbound: i < j,
                established: true,
            })
            .collect();
        let Some(topology) = self.peers[i].as_mut() else { return };
        if topology.set_local_connections(conns, now) {
            self.gossip(i, &[name(i)]);
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.next_connection += 1;
        self.links.insert((a.min(b), a.max(b)), self.next_connection);
        self.refresh(a);
        self.refresh(b);
        for (from, to) in [(a, b), (b, a)] {
            let mut update = Vec::new();
            self.topology(from).encode_all(&mut update);
            self.send(from, to, update);
        }
    }

    /// The peer vanishes; its neighbours notice their connections die.
    fn kill(&mut self, k: usize) {
        let neighbours = self.neighbours(k);
        self.links.retain(|&(a, b), _| a != k && b != k);
        self.peers[k] = None;
        for n in neighbours {
            self.refresh(n);
        }
    }

    fn restart(&mut self, k: usize, uid: u64, neighbours: &[usize]) {
        self.kill(k);
        self.peers[k] = Some(self.fresh_peer(k, uid));
        for &n in neighbours {
            self.connect(k, n);
        }
    }

    /// Delivers messages in random order until none are left; returns how
    /// many were delivered.
    fn run(&mut self) -> usize {
        let mut steps = 0;
        while self.step() {
            steps += 1;
            assert!(steps <= MAX_STEPS, "no convergence after {MAX_STEPS} deliveries");
        }
        steps
    }

    /// Delivers one randomly chosen message; false if there were none.
    fn step(&mut self) -> bool {
        if self.queue.is_empty() {
            return false;
        }
        self.now += TICK;
        let pick = self.rng.gen_range(0..self.queue.len());
        let Some(Message { from, to, connection, update }) = self.queue.swap_remove_back(pick) else {
            return false;
        };
        if self.links.get(&(from.min(to), from.max(to))) != Some(&connection) {
            return true;
        }
        let now = self.now;
        let Some(topology) = self.peers[to].as_mut() else { return true };
        let changed = topology.apply_update(now, &update).expect("peers only send valid updates");
        if !changed.is_empty() {
            self.gossip(to, &changed);
        }
        true
    }

    /// Every live peer holds exactly the same records, and reaches exactly
    /// the live peers that are connected to it through live links.
    fn assert_converged(&self) {
        let mut views = self.alive().map(|(i, t)| (i, t.peers().cloned().collect::<Vec<_>>()));
        let (first, reference) = views.next().expect("someone is alive");
        for (i, view) in views {
            assert_eq!(view, reference, "peer {i} disagrees with peer {first}");
        }
        for (i, t) in self.alive() {
            let component = self.component(i);
            for (j, _) in self.alive() {
                assert_eq!(t.routes().reachable(name(j)), component.contains(&j), "{i} reaching {j}");
            }
        }
    }

    fn component(&self, start: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([start]);
        let mut todo = vec![start];
        while let Some(i) = todo.pop() {
            for n in self.neighbours(i) {
                if seen.insert(n) {
                    todo.push(n);
                }
            }
        }
        seen
    }

    fn record_of(&self, viewer: usize, subject: usize) -> Option<&PeerRecord> {
        self.topology(viewer).peer(&name(subject))
    }
}

fn chain(sim: &mut Sim) {
    for i in 0..N - 1 {
        sim.connect(i, i + 1);
    }
}

fn ring(sim: &mut Sim) {
    chain(sim);
    sim.connect(N - 1, 0);
}

/// A random spanning tree plus a few extra links, connected in random order.
fn random_graph(sim: &mut Sim) {
    let mut edges = BTreeSet::new();
    for i in 1..N {
        let j = sim.rng.gen_range(0..i);
        edges.insert((j, i));
    }
    for _ in 0..N / 2 {
        let a = sim.rng.gen_range(0..N);
        let b = sim.rng.gen_range(0..N);
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    }
    let mut edges: Vec<_> = edges.into_iter().collect();
    for i in (1..edges.len()).rev() {
        edges.swap(i, sim.rng.gen_range(0..=i));
    }
    for (a, b) in edges {
        sim.connect(a, b);
        // Interleave connection setup with gossip already in flight.
        for _ in 0..sim.rng.gen_range(0..4) {
            sim.step();
        }
    }
}

#[test]
fn chain_converges() {
    let mut sim = Sim::new(1);
    chain(&mut sim);
    sim.run();
    sim.assert_converged();
    assert_eq!(sim.topology(0).peers().count(), N);
    assert_eq!(sim.topology(0).routes().next_hop(name(N - 1)), Some(name(1)));
    assert_eq!(sim.topology(N - 1).routes().next_hop(name(0)), Some(name(N - 2)));
}

#[test]
fn ring_converges() {
    let mut sim = Sim::new(2);
    ring(&mut sim);
    sim.run();
    sim.assert_converged();
    // Both ways round are 5 hops to the opposite peer; the tie goes to the
    // lower-named first hop.
    assert_eq!(sim.topology(0).routes().next_hop(name(5)), Some(name(1)));
    assert_eq!(sim.topology(0).routes().next_hop(name(6)), Some(name(N - 1)));
}

#[test]
fn random_graphs_converge_whatever_the_delivery_order() {
    for seed in 0..30 {
        let mut sim = Sim::new(seed);
        random_graph(&mut sim);
        sim.run();
        sim.assert_converged();
        assert_eq!(sim.topology(0).peers().count(), N, "seed {seed}");
    }
}

#[test]
fn gossip_is_quiet_once_converged() {
    let mut sim = Sim::new(3);
    ring(&mut sim);
    sim.run();
    // Re-sending everyone's full state changes nothing, so triggers nothing.
    for &(from, to) in sim.links.clone().keys() {
        let mut update = Vec::new();
        sim.topology(from).encode_all(&mut update);
        sim.send(from, to, update);
    }
    assert_eq!(sim.run(), sim.links.len());
    sim.assert_converged();
}

#[test]
fn restarted_peer_is_accepted_everywhere() {
    for (seed, new_uid) in [(4, 5), (5, 99_999)] {
        // Lower and higher uid than the old incarnation's.
        let mut sim = Sim::new(seed);
        ring(&mut sim);
        sim.run();
        let old = sim.record_of(0, 3).cloned().expect("known");

        // Restart before anyone has heard that the old incarnation went.
        sim.restart(3, new_uid, &[2, 4]);
        sim.run();
        sim.assert_converged();
        for (i, _) in sim.alive() {
            let now = sim.record_of(i, 3).expect("known");
            assert_eq!(now.uid, new_uid, "seed {seed}: peer {i} still has the old incarnation");
            assert!(now.supersedes(&old));
            assert!(sim.topology(i).routes().reachable(name(3)));
        }
    }
}

/// A leaf's only neighbour is also the one that tells it about its old
/// incarnation, so the bumped record has to go back to that same neighbour.
#[test]
fn restarted_leaf_is_accepted_by_its_only_neighbour() {
    let mut sim = Sim::new(9);
    chain(&mut sim);
    sim.run();
    sim.restart(N - 1, 1, &[N - 2]);
    sim.run();
    sim.assert_converged();
    assert_eq!(sim.record_of(N - 2, N - 1).map(|r| r.uid), Some(1));
}

#[test]
fn restart_after_the_old_incarnation_was_noticed_gone() {
    let mut sim = Sim::new(6);
    random_graph(&mut sim);
    sim.run();
    let neighbours = sim.neighbours(7);
    sim.kill(7);
    sim.run();
    sim.peers[7] = Some(sim.fresh_peer(7, 1));
    for n in neighbours {
        sim.connect(7, n);
    }
    sim.run();
    sim.assert_converged();
    for (i, _) in sim.alive() {
        assert_eq!(sim.record_of(i, 7).map(|r| r.uid), Some(1), "peer {i}");
    }
}

#[test]
fn vanished_peer_is_dropped_after_the_ttl_and_can_come_back() {
    let mut sim = Sim::new(7);
    ring(&mut sim);
    sim.run();
    let killed_at = sim.now;
    sim.kill(5);
    sim.run();
    sim.assert_converged();

    let quiet_at = sim.now;
    for (i, t) in sim.alive() {
        assert!(!t.routes().reachable(name(5)), "peer {i}");
        let deadline = t.poll_timeout().expect("peer 5 is pending removal");
        assert!(deadline > killed_at + TTL && deadline <= quiet_at + TTL, "peer {i}");
    }
    for i in (0..N).filter(|&i| i != 5) {
        let t = sim.peers[i].as_mut().expect("alive");
        let deadline = t.poll_timeout().expect("pending");
        assert!(t.handle_timeout(deadline - TICK).is_empty());
        assert_eq!(t.handle_timeout(deadline), vec![name(5)], "peer {i}");
        assert!(t.peer(&name(5)).is_none());
        assert_eq!(t.poll_timeout(), None);
    }
    sim.now = quiet_at + TTL;
    sim.assert_converged();

    sim.peers[5] = Some(sim.fresh_peer(5, 555));
    sim.connect(5, 4);
    sim.connect(5, 6);
    sim.run();
    sim.assert_converged();
    assert_eq!(sim.record_of(0, 5).map(|r| r.uid), Some(555));
}

#[test]
fn partitioned_peers_are_dropped_on_both_sides() {
    let mut sim = Sim::new(8);
    chain(&mut sim);
    sim.run();
    sim.kill(5);
    sim.run();
    let later = sim.now + TTL;
    let mut dropped: Vec<Vec<usize>> = vec![Vec::new(); N];
    for (i, slot) in sim.peers.iter_mut().enumerate() {
        if let Some(t) = slot {
            dropped[i] = t.handle_timeout(later).into_iter().map(index).collect();
        }
    }
    for (i, dropped) in dropped.iter().enumerate() {
        let expected: Vec<usize> = match i {
            0..5 => (5..N).collect(),
            5 => vec![],
            _ => (0..=5).collect(),
        };
        assert_eq!(*dropped, expected, "peer {i}");
    }
}
