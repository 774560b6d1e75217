use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn name(n: u8) -> PeerName {
    PeerName::from_bytes([2, 0, 0, 0, 0, n])
}

fn entry(peer: u8, node: &str, claimed_by: Option<u8>) -> Entry {
    Entry { peer: name(peer), node: node.to_string(), claimed_by: claimed_by.map(name) }
}

fn nodes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Router 1 on node n1, planning over `entries`.
fn plan_at(
    r: &mut Reclaimer,
    now: Instant,
    nodes: &BTreeSet<String>,
    entries: &[Entry],
    reachable: &[u8],
) -> Vec<Action> {
    let reachable: BTreeSet<PeerName> = reachable.iter().map(|&n| name(n)).collect();
    r.plan(now, View { me: name(1), my_node: "n1", nodes, entries, reachable: &reachable })
}

#[test]
fn a_deleted_nodes_unreachable_peer_is_claimed_after_the_grace() {
    let t0 = Instant::now();
    let mut r = Reclaimer::new();
    let entries = [entry(1, "n1", None), entry(2, "n2", None), entry(3, "n3", None)];
    let live = nodes(&["n1", "n2"]);
    assert_eq!(plan_at(&mut r, t0, &live, &entries, &[2]), vec![]);
    assert_eq!(r.poll_timeout(t0), Some(t0 + GRACE));
    assert_eq!(plan_at(&mut r, t0 + GRACE / 2, &live, &entries, &[2]), vec![]);
    assert_eq!(
        plan_at(&mut r, t0 + GRACE, &live, &entries, &[2]),
        vec![Action::Claim { peer: name(3), gone: Gone::NodeDeleted }]
    );
}

#[test]
fn a_reachable_peer_is_never_claimed_even_without_its_node() {
    let t0 = Instant::now();
    let mut r = Reclaimer::new();
    let entries = [entry(1, "n1", None), entry(3, "n3", None)];
    for i in 0..10 {
        let now = t0 + CLAIM_STALE * i;
        assert_eq!(plan_at(&mut r, now, &nodes(&["n1"]), &entries, &[3]), vec![]);
    }
}

#[test]
fn a_node_recreated_with_a_fresh_peer_retires_the_old_peer() {
    let t0 = Instant::now();
    let mut r = Reclaimer::new();
    // Peer 4 is node n2's new incarnation (fresh disk); peer 2 its old one.
    let entries = [entry(1, "n1", None), entry(2, "n2", None), entry(4, "n2", None)];
    let all = nodes(&["n1", "n2"]);
    plan_at(&mut r, t0, &all, &entries, &[4]);
    assert_eq!(
        plan_at(&mut r, t0 + GRACE, &all, &entries, &[4]),
        vec![Action::Claim { peer: name(2), gone: Gone::Replaced(name(4)) }]
    );
    // Neither is reachable: which one runs there is unknown; touch neither.
    let mut r = Reclaimer::new();
    plan_at(&mut r, t0, &all, &entries, &[]);
    assert_eq!(plan_at(&mut r, t0 + CLAIM_STALE, &all, &entries, &[]), vec![]);
}

#[test]
fn our_own_node_with_an_old_peer_of_ours_is_retired_too() {
    let t0 = Instant::now();
    let mut r = Reclaimer::new();
    // Peer 9 ran on n1 before this router (peer 1) got a fresh data dir.
    let entries = [entry(1, "n1", None), entry(9, "n1", None)];
    plan_at(&mut r, t0, &nodes(&["n1"]), &entries, &[]);
    assert_eq!(
        plan_at(&mut r, t0 + GRACE, &nodes(&["n1"]), &entries, &[]),
        vec![Action::Claim { peer: name(9), gone: Gone::Replaced(name(1)) }]
    );
}

#[test]
fn a_claim_of_ours_reclaims_and_is_released_when_the_peer_returns() {
    let t0 = Instant::now();
    let mut r = Reclaimer::new();
    let claimed = [entry(1, "n1", None), entry(3, "n3", Some(1))];
    plan_at(&mut r, t0, &nodes(&["n1"]), &claimed, &[]);
    assert_eq!(
        plan_at(&mut r, t0 + GRACE, &nodes(&["n1"]), &claimed, &[]),
        vec![Action::Reclaim { peer: name(3), gone: Gone::NodeDeleted }]
    );
    // The node is back (and its router too): the claim goes.
    assert_eq!(
        plan_at(&mut r, t0 + GRACE, &nodes(&["n1", "n3"]), &claimed, &[3]),
        vec![Action::Release { peer: name(3) }]
    );
}

#[test]
fn anothers_claim_is_respected_while_it_is_reachable_and_taken_over_when_stale() {
    let t0 = Instant::now();
    let mut r = Reclaimer::new();
    let entries = [entry(1, "n1", None), entry(2, "n2", None), entry(3, "n3", Some(2))];
    let live = nodes(&["n1", "n2"]);
    for i in 0..5 {
        assert_eq!(plan_at(&mut r, t0 + CLAIM_STALE * i, &live, &entries, &[2]), vec![]);
    }
    // The holder died mid-reclaim: after CLAIM_STALE unreachable, take over.
    let mut r = Reclaimer::new();
    plan_at(&mut r, t0, &live, &entries, &[]);
    assert_eq!(plan_at(&mut r, t0 + GRACE, &live, &entries, &[]), vec![]);
    assert_eq!(r.poll_timeout(t0 + GRACE), Some(t0 + GRACE + CLAIM_STALE));
    assert_eq!(
        plan_at(&mut r, t0 + GRACE + CLAIM_STALE, &live, &entries, &[]),
        vec![Action::Claim { peer: name(3), gone: Gone::NodeDeleted }]
    );
}

#[test]
fn registers_until_its_own_entry_names_its_node() {
    let t0 = Instant::now();
    let mut r = Reclaimer::new();
    assert_eq!(plan_at(&mut r, t0, &nodes(&["n1"]), &[], &[]), vec![Action::Register]);
    assert_eq!(plan_at(&mut r, t0, &nodes(&["n1"]), &[entry(1, "old", None)], &[]), vec![Action::Register]);
    assert_eq!(plan_at(&mut r, t0, &nodes(&["n1"]), &[entry(1, "n1", None)], &[]), vec![]);
}

fn arb_view() -> impl Strategy<Value = (Vec<Entry>, BTreeSet<String>, BTreeSet<PeerName>)> {
    let node = prop::sample::select(vec!["n1", "n2", "n3", "n4"]);
    let entry = (1u8..6, node, prop::option::of(1u8..6)).prop_map(|(p, n, c)| entry(p, n, c));
    (
        prop::collection::vec(entry, 0..8),
        prop::collection::btree_set(prop::sample::select(vec!["n1", "n2", "n3", "n4"]), 0..4),
        prop::collection::btree_set(1u8..6, 0..5),
    )
        .prop_map(|(entries, nodes, reachable)| {
            (entries, nodes.into_iter().map(String::from).collect(), reachable.into_iter().map(name).collect())
        })
}

proptest! {
    /// Whatever the view: a reachable peer, or one whose node is listed
    /// and runs no other reachable peer, is never claimed or reclaimed;
    /// and we register exactly when our entry is missing.
    #[test]
    fn never_reclaims_a_peer_that_may_be_alive((entries, nodes, reachable) in arb_view(), steps in 1u32..4) {
        let t0 = Instant::now();
        let mut r = Reclaimer::new();
        let view = View { me: name(1), my_node: "n1", nodes: &nodes, entries: &entries, reachable: &reachable };
        for i in 0..steps {
            let actions = r.plan(t0 + (GRACE + CLAIM_STALE) * i, view);
            let registered = entries.iter().any(|e| e.peer == name(1) && e.node == "n1");
            prop_assert_eq!(actions.contains(&Action::Register), !registered);
            for a in &actions {
                if let Action::Claim { peer, .. } | Action::Reclaim { peer, .. } = a {
                    prop_assert!(*peer != name(1));
                    prop_assert!(!reachable.contains(peer), "{peer} is reachable");
                    let e = entries.iter().find(|e| e.peer == *peer && view.gone(e).is_some());
                    prop_assert!(e.is_some(), "{peer} has no gone entry");
                }
                if let Action::Reclaim { peer, .. } = a {
                    prop_assert!(entries.iter().any(|e| e.peer == *peer && e.claimed_by == Some(name(1))));
                }
            }
        }
    }
}

/// A peer map with whole-map compare-and-swap, like a ConfigMap written
/// with a resourceVersion precondition.
#[derive(Debug, Clone, Default)]
struct Store {
    version: u64,
    entries: Vec<Entry>,
}

impl Store {
    fn cas(&mut self, seen: u64, change: impl FnOnce(&mut Vec<Entry>)) -> bool {
        if seen != self.version {
            return false;
        }
        change(&mut self.entries);
        self.version += 1;
        true
    }
}

struct Router {
    me: PeerName,
    node: String,
    planner: Reclaimer,
    /// The router's copy of the store (a watch lags behind).
    copy: Store,
}

/// Routers on random nodes; some nodes are deleted with their routers
/// stopped, some routers stop (crash) with their nodes still listed, and
/// every router plans on a possibly stale copy and writes with CAS. Every
/// removed peer is reclaimed by exactly one router (unless its claimer
/// crashed mid-reclaim: then another takes over, and the tombstone, set
/// once, makes the repeat harmless), never a live one, and every dead
/// peer's entry ends up gone.
#[test]
fn simulated_routers_reclaim_every_dead_peer_exactly_once() {
    let mut reclaimed = 0;
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(2..7u8);
        let mut routers: Vec<Router> = (1..=n)
            .map(|i| Router { me: name(i), node: format!("n{i}"), planner: Reclaimer::new(), copy: Store::default() })
            .collect();
        let mut store = Store::default();
        let mut node_list: BTreeSet<String> = routers.iter().map(|r| r.node.clone()).collect();
        let mut alive: BTreeSet<PeerName> = routers.iter().map(|r| r.me).collect();
        let mut rmpeer_runs: BTreeMap<PeerName, BTreeSet<PeerName>> = BTreeMap::new();
        let mut crashed_claimers = BTreeSet::new();
        let mut now = Instant::now();
        let deletions = rng.gen_range(0..n);
        let mut deleted = BTreeSet::new();
        for step in 0..4000 {
            now += Duration::from_millis(rng.gen_range(0..800));
            // Deletions and crashes happen in the first part of the run.
            if step < 2000 && rng.gen_bool(0.01) && deleted.len() < deletions as usize {
                let victim = name(rng.gen_range(1..=n));
                // Only registered peers can be reclaimed (a router registers
                // as soon as it reaches the store).
                let registered = store.entries.iter().any(|e| e.peer == victim);
                if alive.len() > 1 && registered && alive.remove(&victim) {
                    node_list.remove(&format!("n{}", victim.as_bytes()[5]));
                    deleted.insert(victim);
                }
            }
            if step < 2000 && rng.gen_bool(0.002) && alive.len() > 1 {
                // A router stops mid-work (its node stays listed).
                let victim = *alive.iter().nth(rng.gen_range(0..alive.len())).unwrap();
                if store.entries.iter().any(|e| e.claimed_by == Some(victim)) {
                    crashed_claimers.insert(victim);
                }
                alive.remove(&victim);
            }
            let live: Vec<usize> = (0..routers.len()).filter(|&i| alive.contains(&routers[i].me)).collect();
            let i = live[rng.gen_range(0..live.len())];
            let r = &mut routers[i];
            if rng.gen_bool(0.5) {
                r.copy = store.clone();
            }
            let view =
                View { me: r.me, my_node: &r.node, nodes: &node_list, entries: &r.copy.entries, reachable: &alive };
            for action in r.planner.plan(now, view) {
                let (me, node) = (r.me, r.node.clone());
                let ok = match action {
                    Action::Register => store.cas(r.copy.version, |e| {
                        e.retain(|x| x.peer != me);
                        e.push(Entry { peer: me, node, claimed_by: None });
                    }),
                    Action::Claim { peer, .. } => store.cas(r.copy.version, |e| {
                        e.iter_mut().filter(|x| x.peer == peer).for_each(|x| x.claimed_by = Some(me))
                    }),
                    Action::Release { peer } => store.cas(r.copy.version, |e| {
                        e.iter_mut().filter(|x| x.peer == peer).for_each(|x| x.claimed_by = None)
                    }),
                    Action::Reclaim { peer, .. } => {
                        assert!(!alive.contains(&peer), "seed {seed}: rmpeer of live peer {peer}");
                        rmpeer_runs.entry(peer).or_default().insert(me);
                        store.cas(r.copy.version, |e| e.retain(|x| x.peer != peer))
                    }
                };
                // A conflict (or success) means: read again before more.
                r.copy = store.clone();
                if !ok {
                    break;
                }
            }
        }
        for peer in &deleted {
            let runs = rmpeer_runs.get(peer).map_or(0, BTreeSet::len);
            let by_crashed = rmpeer_runs.get(peer).is_some_and(|v| v.iter().any(|c| crashed_claimers.contains(c)));
            assert!(runs >= 1, "seed {seed}: deleted peer {peer} never reclaimed");
            assert!(runs == 1 || by_crashed, "seed {seed}: {peer} reclaimed {runs} times by {:?}", rmpeer_runs[peer]);
            assert!(!store.entries.iter().any(|e| e.peer == *peer), "seed {seed}: {peer}'s entry left behind");
            reclaimed += 1;
        }
        for peer in rmpeer_runs.keys() {
            assert!(!alive.contains(peer), "seed {seed}: live {peer} reclaimed");
        }
    }
    assert!(reclaimed > 200, "the simulation deleted too few nodes to mean much: {reclaimed}");
}
