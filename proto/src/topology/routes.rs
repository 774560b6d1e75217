//! Unicast and broadcast routes over the gossiped topology.
//!
//! Only connections that both ends report as established are used: a
//! one-sided or half-open connection can't be trusted to carry traffic
//! both ways. All path choices are breadth-first with ties broken by
//! `PeerName` order, so every peer holding the same records computes the
//! same paths, which is what makes hop-by-hop forwarding loop-free and
//! broadcast trees agree across peers.

use std::collections::{BTreeMap, VecDeque};

use crate::PeerName;

use super::peer::PeerRecord;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    local: PeerName,
    /// dest -> first hop, for every peer reachable from us except ourselves.
    unicast: BTreeMap<PeerName, PeerName>,
    /// source -> our children in that source's broadcast tree, only for
    /// sources that have any.
    broadcast: BTreeMap<PeerName, Vec<PeerName>>,
}

impl Routes {
    /// `peers` must include `local`'s own record for anything to be
    /// reachable; records are expected in canonical form (connections
    /// sorted by remote), as `Topology` keeps them.
    pub fn compute(local: PeerName, peers: &BTreeMap<PeerName, PeerRecord>) -> Routes {
        let mut routes = Routes { local, ..Routes::default() };
        let graph = Graph::build(peers);
        let Some(root) = graph.index_of(local) else {
            return routes;
        };
        let mut bfs = Bfs::default();

        bfs.run(&graph, root);
        let mut first_hop = vec![root; graph.len()];
        for &v in bfs.order.iter().skip(1) {
            let parent = bfs.parent[v];
            first_hop[v] = if parent == root { v } else { first_hop[parent] };
            routes.unicast.insert(graph.names[v], graph.names[first_hop[v]]);
        }

        // Only sources we can reach can send us broadcasts; with symmetric
        // edges those are exactly the peers we can reach.
        let sources: Vec<usize> = bfs.order.clone();
        for source in sources {
            bfs.run(&graph, source);
            let children: Vec<PeerName> = graph.adjacent[root]
                .iter()
                .filter(|&&n| n != source && bfs.parent[n] == root)
                .map(|&n| graph.names[n])
                .collect();
            if !children.is_empty() {
                routes.broadcast.insert(graph.names[source], children);
            }
        }
        routes
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    /// Where to send a frame for `dest`; `None` for ourselves and for
    /// unreachable peers.
    pub fn next_hop(&self, dest: PeerName) -> Option<PeerName> {
        self.unicast.get(&dest).copied()
    }

    /// Where we forward a broadcast that originated at `source` (possibly
    /// us): our children in `source`'s shortest-path tree. Empty for
    /// sources we can't reach, since no consistent tree delivers their
    /// broadcasts through us.
    pub fn broadcast_next_hops(&self, source: PeerName) -> &[PeerName] {
        self.broadcast.get(&source).map_or(&[], Vec::as_slice)
    }

    /// (dest, next hop) for every reachable peer other than ourselves, in
    /// name order.
    pub fn unicast(&self) -> impl Iterator<Item = (PeerName, PeerName)> + '_ {
        self.unicast.iter().map(|(dest, via)| (*dest, *via))
    }

    pub fn reachable(&self, name: PeerName) -> bool {
        name == self.local || self.unicast.contains_key(&name)
    }
}

/// The symmetric-established subgraph, with peers numbered in name order so
/// that "ascending index" and "ascending name" are the same tie-break.
struct Graph {
    names: Vec<PeerName>,
    /// Ascending, so BFS visits neighbours in name order.
    adjacent: Vec<Vec<usize>>,
}

impl Graph {
    fn build(peers: &BTreeMap<PeerName, PeerRecord>) -> Graph {
        let names: Vec<PeerName> = peers.keys().copied().collect();
        let index_of = |name: PeerName| names.binary_search(&name).ok();
        let adjacent = peers
            .iter()
            .map(|(&name, record)| {
                let mut adj: Vec<usize> = record
                    .connections
                    .iter()
                    .filter(|c| c.established && c.remote != name)
                    .filter(|c| peers.get(&c.remote).is_some_and(|other| other.is_established_to(name)))
                    .filter_map(|c| index_of(c.remote))
                    .collect();
                adj.sort_unstable();
                adj.dedup();
                adj
            })
            .collect();
        Graph { names, adjacent }
    }

    fn len(&self) -> usize {
        self.names.len()
    }

    fn index_of(&self, name: PeerName) -> Option<usize> {
        self.names.binary_search(&name).ok()
    }
}

/// Breadth-first search state, reused across the per-source runs.
#[derive(Default)]
struct Bfs {
    /// Valid only for visited vertices; the root is its own parent.
    parent: Vec<usize>,
    visited: Vec<bool>,
    /// Visited vertices in BFS order, root first.
    order: Vec<usize>,
    queue: VecDeque<usize>,
}

impl Bfs {
    fn run(&mut self, graph: &Graph, root: usize) {
        self.parent.clear();
        self.parent.resize(graph.len(), root);
        self.visited.clear();
        self.visited.resize(graph.len(), false);
        self.order.clear();
        self.queue.clear();

        self.visited[root] = true;
        self.queue.push_back(root);
        while let Some(v) = self.queue.pop_front() {
            self.order.push(v);
            for &n in &graph.adjacent[v] {
                if !self.visited[n] {
                    self.visited[n] = true;
                    self.parent[n] = v;
                    self.queue.push_back(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::peer::ConnectionInfo;
    use super::*;
    use proptest::prelude::*;

    fn name(i: usize) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i as u8])
    }

    /// What peer i reports about its connection to peer j.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Link {
        None,
        Pending,
        Established,
    }

    /// Records for `links.len()` peers, where `links[i][j]` is what i says.
    fn records(links: &[Vec<Link>]) -> BTreeMap<PeerName, PeerRecord> {
        (0..links.len())
            .map(|i| {
                let connections = (0..links.len())
                    .filter(|&j| j != i && links[i][j] != Link::None)
                    .map(|j| ConnectionInfo {
                        remote: name(j),
                        address: String::new(),
                        outbound: i < j,
                        established: links[i][j] == Link::Established,
                    })
                    .collect();
                (name(i), PeerRecord { name: name(i), nickname: String::new(), uid: 1, version: 1, connections })
            })
            .collect()
    }

    fn symmetric(links: &[Vec<Link>], a: usize, b: usize) -> bool {
        links[a][b] == Link::Established && links[b][a] == Link::Established
    }

    /// Independent oracle: hop distances over symmetric established links,
    /// by Floyd-Warshall rather than BFS.
    fn distances(links: &[Vec<Link>]) -> Vec<Vec<Option<usize>>> {
        let n = links.len();
        let mut dist: Vec<Vec<Option<usize>>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| match () {
                        _ if i == j => Some(0),
                        _ if symmetric(links, i, j) => Some(1),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    if let (Some(a), Some(b)) = (dist[i][k], dist[k][j]) {
                        let shorter = match dist[i][j] {
                            Some(cur) => a + b < cur,
                            None => true,
                        };
                        if shorter {
                            dist[i][j] = Some(a + b);
                        }
                    }
                }
            }
        }
        dist
    }

    fn arb_links() -> impl Strategy<Value = Vec<Vec<Link>>> {
        (2usize..=12).prop_flat_map(|n| {
            let link = prop_oneof![
                3 => Just(Link::None),
                1 => Just(Link::Pending),
                4 => Just(Link::Established),
            ];
            proptest::collection::vec(proptest::collection::vec(link, n), n)
        })
    }

    fn all_routes(links: &[Vec<Link>]) -> Vec<Routes> {
        let peers = records(links);
        (0..links.len()).map(|i| Routes::compute(name(i), &peers)).collect()
    }

    proptest! {
        #[test]
        fn unicast_follows_shortest_paths_to_the_destination(links in arb_links()) {
            let n = links.len();
            let routes = all_routes(&links);
            let dist = distances(&links);
            for (src, from_src) in dist.iter().enumerate() {
                for (dest, &distance) in from_src.iter().enumerate() {
                    prop_assert_eq!(routes[src].reachable(name(dest)), distance.is_some());
                    let Some(expected_hops) = distance.filter(|&d| d > 0) else {
                        prop_assert_eq!(routes[src].next_hop(name(dest)), None);
                        continue;
                    };
                    let mut at = src;
                    let mut hops = 0;
                    while at != dest {
                        let via = routes[at].next_hop(name(dest));
                        let via = via.map(|v| v.as_bytes()[5] as usize);
                        prop_assert!(via.is_some_and(|v| symmetric(&links, at, v)), "{at} -> {via:?} toward {dest}");
                        at = via.unwrap_or(dest);
                        hops += 1;
                        prop_assert!(hops <= n, "loop toward {dest}");
                    }
                    prop_assert_eq!(hops, expected_hops);
                }
            }
        }

        #[test]
        fn broadcast_reaches_every_reachable_peer_exactly_once(links in arb_links()) {
            let n = links.len();
            let routes = all_routes(&links);
            let dist = distances(&links);
            for (source, from_source) in dist.iter().enumerate() {
                let mut deliveries = vec![0usize; n];
                let mut queue = VecDeque::from([source]);
                while let Some(at) = queue.pop_front() {
                    for next in routes[at].broadcast_next_hops(name(source)) {
                        let next = next.as_bytes()[5] as usize;
                        prop_assert!(symmetric(&links, at, next));
                        deliveries[next] += 1;
                        // A second delivery is already a failure; stop
                        // before a loop makes this run forever.
                        prop_assert!(deliveries[next] == 1, "{next} got {source}'s broadcast twice");
                        queue.push_back(next);
                    }
                }
                for peer in 0..n {
                    let expected = usize::from(peer != source && from_source[peer].is_some());
                    prop_assert_eq!(deliveries[peer], expected, "peer {} from source {}", peer, source);
                }
            }
        }

        #[test]
        fn unicast_listing_matches_next_hop(links in arb_links()) {
            let routes = all_routes(&links);
            for r in &routes {
                let listed: Vec<(PeerName, PeerName)> = r.unicast().collect();
                let expected: Vec<(PeerName, PeerName)> = (0..links.len())
                    .filter_map(|d| r.next_hop(name(d)).map(|via| (name(d), via)))
                    .collect();
                prop_assert_eq!(listed, expected);
            }
        }
    }

    use Link::{Established as E, None as N, Pending as P};

    #[test]
    fn square_breaks_ties_by_name() {
        // 0 - 1
        // |   |
        // 3 - 2
        let links = vec![vec![N, E, N, E], vec![E, N, E, N], vec![N, E, N, E], vec![E, N, E, N]];
        let routes = all_routes(&links);
        assert_eq!(routes[0].next_hop(name(2)), Some(name(1)));
        assert_eq!(routes[2].next_hop(name(0)), Some(name(1)));
        assert_eq!(routes[0].broadcast_next_hops(name(0)), &[name(1), name(3)]);
        assert_eq!(routes[1].broadcast_next_hops(name(0)), &[name(2)]);
        assert_eq!(routes[3].broadcast_next_hops(name(0)), &[] as &[PeerName]);
        assert_eq!(routes[2].broadcast_next_hops(name(0)), &[] as &[PeerName]);
        assert_eq!(routes[0].next_hop(name(0)), None);
        assert!(routes[0].reachable(name(0)));
    }

    #[test]
    fn ignores_one_sided_and_pending_connections() {
        // 0 says established to 1, 1 doesn't list 0; 0 and 2 both pending.
        let links = vec![vec![N, E, P], vec![N, N, N], vec![P, N, N]];
        let routes = all_routes(&links);
        assert!(!routes[0].reachable(name(1)));
        assert!(!routes[0].reachable(name(2)));
        assert_eq!(routes[0].unicast().count(), 0);
        assert!(routes[0].broadcast_next_hops(name(0)).is_empty());
    }

    #[test]
    fn local_missing_from_records_reaches_nothing() {
        let links = vec![vec![N, E], vec![E, N]];
        let routes = Routes::compute(name(7), &records(&links));
        assert!(!routes.reachable(name(0)));
        assert!(routes.reachable(name(7)));
    }
}
