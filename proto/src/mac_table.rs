//! MAC learning: which peer (or this host) a unicast MAC was last seen
//! behind, so unicast frames go to one peer instead of being flooded.
//!
//! Entries expire after a TTL so a container that moved or went away stops
//! attracting traffic; the table is bounded so a MAC flood (random source
//! addresses) costs a fixed amount of memory. When full, new MACs are
//! refused rather than old ones evicted: frames for an unknown MAC are
//! merely flooded, whereas evicting live entries under attack would make
//! every legitimate flow flood too.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::ethernet::MacAddr;
use crate::PeerName;

/// Room for a /16 worth of pods, while a MAC flood costs at most a few MiB.
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;

/// Where a MAC lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// Behind this host's bridge.
    Local,
    Peer(PeerName),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Local => f.write_str("local"),
            Owner::Peer(name) => fmt::Display::fmt(name, f),
        }
    }
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    New,
    Refreshed,
    /// The MAC was live behind another owner: a migrated container, or two
    /// hosts claiming one MAC. Worth a log line and a counter.
    Moved {
        from: Owner,
    },
    /// Group and all-zero addresses are never a frame's true source.
    Ignored,
    /// The table is full of live entries; the MAC was not learned.
    TableFull,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    owner: Owner,
    last_seen: Instant,
}

#[derive(Debug)]
pub struct MacTable {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<MacAddr, Entry>,
    /// No entry expires before this (a lower bound, not exact: refreshes and
    /// removals only ever push the true earliest expiry later). Lets a full
    /// table under a MAC flood skip the O(n) sweep until a sweep can free
    /// something.
    no_expiry_before: Option<Instant>,
}

impl MacTable {
    pub fn new(ttl: Duration) -> Self {
        Self::with_max_entries(ttl, DEFAULT_MAX_ENTRIES)
    }

    pub fn with_max_entries(ttl: Duration, max_entries: usize) -> Self {
        MacTable { ttl, max_entries, entries: HashMap::new(), no_expiry_before: None }
    }

    fn is_live(&self, now: Instant, entry: &Entry) -> bool {
        now.saturating_duration_since(entry.last_seen) < self.ttl
    }

    pub fn learn(&mut self, now: Instant, mac: MacAddr, owner: Owner) -> Learned {
        if !mac.is_unicast() || mac == MacAddr::ZERO {
            return Learned::Ignored;
        }
        let ttl = self.ttl;
        if let Some(entry) = self.entries.get_mut(&mac) {
            let was_live = now.saturating_duration_since(entry.last_seen) < ttl;
            let from = entry.owner;
            *entry = Entry { owner, last_seen: now.max(entry.last_seen) };
            return match (was_live, from == owner) {
                (false, _) => Learned::New,
                (true, true) => Learned::Refreshed,
                (true, false) => Learned::Moved { from },
            };
        }
        if self.entries.len() >= self.max_entries {
            self.expire(now);
            if self.entries.len() >= self.max_entries {
                return Learned::TableFull;
            }
        }
        self.entries.insert(mac, Entry { owner, last_seen: now });
        Learned::New
    }

    /// Expired entries are misses even before [`expire`](Self::expire)
    /// removes them.
    pub fn lookup(&self, now: Instant, mac: MacAddr) -> Option<Owner> {
        self.entries.get(&mac).filter(|e| self.is_live(now, e)).map(|e| e.owner)
    }

    /// Removes expired entries and returns how many. Cheap when nothing can
    /// have expired yet, so the router may call it as often as it likes.
    pub fn expire(&mut self, now: Instant) -> usize {
        if self.no_expiry_before.is_some_and(|t| now < t) {
            return 0;
        }
        let before = self.entries.len();
        let ttl = self.ttl;
        let mut oldest: Option<Instant> = None;
        self.entries.retain(|_, e| {
            let live = now.saturating_duration_since(e.last_seen) < ttl;
            if live {
                oldest = Some(oldest.map_or(e.last_seen, |o| o.min(e.last_seen)));
            }
            live
        });
        // checked_add: a huge TTL must not panic; then nothing ever expires
        // and `None` (sweep again next time) is merely slower, not wrong.
        self.no_expiry_before = oldest.and_then(|o| o.checked_add(ttl));
        before - self.entries.len()
    }

    /// Drops every MAC learned behind `peer` (it disconnected or restarted);
    /// returns how many.
    pub fn forget_peer(&mut self, peer: PeerName) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.owner != Owner::Peer(peer));
        before - self.entries.len()
    }

    /// Every entry, expired or not, with when it was last seen: for /report.
    pub fn iter(&self) -> impl Iterator<Item = (MacAddr, Owner, Instant)> + '_ {
        self.entries.iter().map(|(mac, e)| (*mac, e.owner, e.last_seen))
    }

    /// Entries held, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(300);

    fn mac(n: u32) -> MacAddr {
        let [a, b, c, d] = n.to_be_bytes();
        MacAddr([0x02, 0x42, a, b, c, d])
    }

    fn peer(n: u8) -> Owner {
        Owner::Peer(PeerName::from_bytes([0x02, 0, 0, 0, 0, n]))
    }

    #[test]
    fn learn_lookup_refresh_expire() {
        let t0 = Instant::now();
        let mut t = MacTable::new(TTL);
        assert_eq!(t.learn(t0, mac(1), peer(1)), Learned::New);
        assert_eq!(t.lookup(t0, mac(1)), Some(peer(1)));
        let t1 = t0 + Duration::from_secs(200);
        assert_eq!(t.learn(t1, mac(1), peer(1)), Learned::Refreshed);
        // Refreshed at t1, so still live at t0 + 400s.
        assert_eq!(t.lookup(t0 + Duration::from_secs(400), mac(1)), Some(peer(1)));
        assert_eq!(t.lookup(t1 + TTL, mac(1)), None);
        assert_eq!(t.expire(t1 + TTL - Duration::from_secs(1)), 0);
        assert_eq!(t.expire(t1 + TTL), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn moves_are_reported() {
        let t0 = Instant::now();
        let mut t = MacTable::new(TTL);
        t.learn(t0, mac(1), Owner::Local);
        assert_eq!(t.learn(t0, mac(1), peer(1)), Learned::Moved { from: Owner::Local });
        assert_eq!(t.learn(t0, mac(1), peer(2)), Learned::Moved { from: peer(1) });
        assert_eq!(t.learn(t0, mac(1), Owner::Local), Learned::Moved { from: peer(2) });
        assert_eq!(t.lookup(t0, mac(1)), Some(Owner::Local));
        // A stale entry re-learned elsewhere is just new, not a move.
        assert_eq!(t.learn(t0 + TTL, mac(1), peer(3)), Learned::New);
        assert_eq!(t.lookup(t0 + TTL, mac(1)), Some(peer(3)));
    }

    #[test]
    fn group_and_zero_addresses_are_ignored() {
        let now = Instant::now();
        let mut t = MacTable::new(TTL);
        for m in [MacAddr::BROADCAST, MacAddr([0x01, 0, 0x5e, 0, 0, 1]), MacAddr::ZERO] {
            assert_eq!(t.learn(now, m, peer(1)), Learned::Ignored);
        }
        assert!(t.is_empty());
    }

    #[test]
    fn forget_peer_drops_only_its_macs() {
        let now = Instant::now();
        let mut t = MacTable::new(TTL);
        t.learn(now, mac(1), peer(1));
        t.learn(now, mac(2), peer(1));
        t.learn(now, mac(3), peer(2));
        t.learn(now, mac(4), Owner::Local);
        assert_eq!(t.forget_peer(PeerName::from_bytes([0x02, 0, 0, 0, 0, 1])), 2);
        let mut left: Vec<_> = t.iter().map(|(m, o, _)| (m, o)).collect();
        left.sort_by_key(|(m, _)| *m);
        assert_eq!(left, vec![(mac(3), peer(2)), (mac(4), Owner::Local)]);
    }

    #[test]
    fn bounded_refuses_when_full_of_live_entries() {
        let t0 = Instant::now();
        let mut t = MacTable::with_max_entries(TTL, 3);
        for n in 0..3 {
            let at = t0 + Duration::from_secs((10 * n).into());
            assert_eq!(t.learn(at, mac(n), peer(1)), Learned::New);
        }
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(t.learn(t1, mac(10), peer(1)), Learned::TableFull);
        // Known MACs still refresh and move while full.
        assert_eq!(t.learn(t1, mac(1), peer(2)), Learned::Moved { from: peer(1) });
        assert_eq!(t.len(), 3);
        // Only mac(0), last seen at t0, has expired: a new MAC takes its slot.
        let later = t0 + TTL + Duration::from_secs(5);
        assert_eq!(t.learn(later, mac(11), peer(1)), Learned::New);
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(later, mac(0)), None);
        assert_eq!(t.lookup(later, mac(1)), Some(peer(2)));
        assert_eq!(t.lookup(later, mac(11)), Some(peer(1)));
        assert_eq!(t.learn(later, mac(12), peer(1)), Learned::TableFull);
    }

    #[test]
    fn huge_ttl_does_not_panic() {
        let now = Instant::now();
        let mut t = MacTable::with_max_entries(Duration::MAX, 1);
        t.learn(now, mac(1), peer(1));
        assert_eq!(t.learn(now, mac(2), peer(1)), Learned::TableFull);
        assert_eq!(t.expire(now + Duration::from_secs(1)), 0);
        assert_eq!(t.lookup(now + Duration::from_secs(1), mac(1)), Some(peer(1)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Learn { mac: u8, owner: u8, dt: u16 },
        Expire { dt: u16 },
        Forget { owner: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16, 0u8..4, 0u16..30).prop_map(|(mac, owner, dt)| Op::Learn { mac, owner, dt }),
            (0u16..60).prop_map(|dt| Op::Expire { dt }),
            (0u8..4).prop_map(|owner| Op::Forget { owner }),
        ]
    }

    fn owner(n: u8) -> Owner {
        if n == 0 {
            Owner::Local
        } else {
            peer(n)
        }
    }

    proptest! {
        /// Against a naive model: a HashMap where nothing is ever swept
        /// early and fullness counts live entries only.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 0..64)) {
            let ttl = Duration::from_secs(100);
            let max = 6;
            let mut now = Instant::now();
            let mut t = MacTable::with_max_entries(ttl, max);
            let mut model: HashMap<MacAddr, (Owner, Instant)> = HashMap::new();
            let live = |m: &HashMap<MacAddr, (Owner, Instant)>, now: Instant, k: &MacAddr| {
                m.get(k).filter(|(_, seen)| now.duration_since(*seen) < ttl).map(|(o, _)| *o)
            };
            for op in ops {
                match op {
                    Op::Learn { mac: m, owner: o, dt } => {
                        now += Duration::from_secs(dt.into());
                        let (m, o) = (mac(m.into()), owner(o));
                        let got = t.learn(now, m, o);
                        let live_count = model.keys().filter(|k| live(&model, now, k).is_some()).count();
                        match live(&model, now, &m) {
                            Some(prev) if prev == o => prop_assert_eq!(got, Learned::Refreshed),
                            Some(prev) => prop_assert_eq!(got, Learned::Moved { from: prev }),
                            None if live_count < max => prop_assert_eq!(got, Learned::New),
                            // Whether a stale entry for this MAC still holds
                            // a slot depends on when the table last swept.
                            None if model.contains_key(&m) => {
                                prop_assert!(matches!(got, Learned::New | Learned::TableFull), "{got:?}")
                            }
                            None => prop_assert_eq!(got, Learned::TableFull),
                        }
                        if got != Learned::TableFull {
                            model.insert(m, (o, now));
                        }
                    }
                    Op::Expire { dt } => {
                        now += Duration::from_secs(dt.into());
                        t.expire(now);
                        model.retain(|_, (_, seen)| now.duration_since(*seen) < ttl);
                    }
                    Op::Forget { owner: o } => {
                        if let Owner::Peer(p) = owner(o) {
                            t.forget_peer(p);
                            model.retain(|_, (owner, _)| *owner != Owner::Peer(p));
                        }
                    }
                }
                prop_assert!(t.len() <= max);
                for n in 0..16 {
                    prop_assert_eq!(t.lookup(now, mac(n)), live(&model, now, &mac(n)));
                }
            }
        }
    }
}
