//! The ring: the cluster range split at tokens, each token's entry naming
//! the peer that owns the addresses from it up to the next token (the last
//! one up to the end of the range). The first token is always the range
//! start and tokens are never removed, so every address has exactly one
//! covering entry in any one view.
//!
//! It is a state-based CRDT: views merge per token, the higher version
//! winning. Safety rests on one rule: only an entry's current owner writes
//! it (to hand space over, or to report its free count), bumping the
//! version. Ownership of an address therefore passes along a single chain
//! of writes, and since gossip always carries whole rings, a peer that
//! learns it owns an entry also learns every token its predecessors put
//! inside it. So no two peers ever both believe they own one address; a
//! merge that would contradict that is recorded as a `Conflict`.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Bound;

use crate::PeerName;

use super::conflict::{self, Conflict};
use super::range::Range;

/// Most peers a ring is seeded with (and so most names in a consensus
/// value); later peers get space by asking for it.
pub const MAX_SEEDS: usize = 256;
/// Keeps a ring, and so one gossip message, bounded; donations stop
/// splitting once it is reached.
pub const MAX_ENTRIES: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub owner: PeerName,
    /// Bumped by the owner on every change to this entry.
    pub version: u32,
    /// Free addresses in the entry's span, as its owner last reported:
    /// what other peers use to pick whom to ask for space.
    pub free: u32,
}

impl Entry {
    /// The total order merges use, so that every peer keeps the same entry
    /// whatever order views arrive in: newer version first; two different
    /// entries with one version (a conflict) resolve to the lower owner.
    fn precedence(&self) -> (u32, Reverse<PeerName>, u32) {
        (self.version, Reverse(self.owner), self.free)
    }
}

/// An entry together with the addresses it covers, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u64,
    pub entry: Entry,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring has no seeds")]
    NoSeeds,
    #[error("ring seeds are not in strictly ascending order")]
    UnsortedSeeds,
    #[error("ring has {count} seeds, more than the limit of {max}")]
    TooManySeeds { count: usize, max: usize },
    #[error("ring has no entries")]
    NoEntries,
    #[error("ring would have {count} entries, more than the limit of {max}")]
    TooManyEntries { count: usize, max: usize },
    #[error("first ring token {token} is not the range start {start}")]
    FirstToken { token: Ipv4Addr, start: Ipv4Addr },
    #[error("ring token {token} lies outside the range {range}")]
    TokenOutOfRange { token: Ipv4Addr, range: Range },
    #[error("ring uses the reserved broadcast peer name")]
    ReservedName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    range: Range,
    /// The consensus value the ring was built from, ascending: its
    /// identity. Rings with different seeds never merge.
    seeds: Vec<PeerName>,
    entries: BTreeMap<u32, Entry>,
}

impl Ring {
    /// The initial ring every peer builds from one consensus value: the
    /// range cut into equal shares, one per seed in name order. Being a
    /// pure function of (range, seeds), two peers (or two groups) that
    /// decide the same value build identical rings.
    pub fn seeded(range: Range, seeds: &[PeerName]) -> Result<Ring, RingError> {
        let mut seeds: Vec<PeerName> = seeds.to_vec();
        seeds.sort_unstable();
        seeds.dedup();
        if seeds.len() > MAX_SEEDS {
            return Err(RingError::TooManySeeds { count: seeds.len(), max: MAX_SEEDS });
        }
        check_seeds(&seeds)?;
        let n = seeds.len() as u64;
        let mut entries = BTreeMap::new();
        for (i, owner) in seeds.iter().enumerate() {
            // size <= 2^31 and i < 256: no overflow. When there are more
            // seeds than addresses several land on one token and the last
            // of them keeps it; the others get nothing yet.
            let offset = range.size() * i as u64 / n;
            let token = range.first() + offset as u32;
            entries.insert(token, Entry { owner: *owner, version: 1, free: 0 });
        }
        let mut ring = Ring { range, seeds, entries };
        let frees: Vec<(u32, u32)> =
            ring.spans().map(|s| (s.start, clamp_u32(range.usable_in(s.start, s.end)))).collect();
        for (token, free) in frees {
            if let Some(e) = ring.entries.get_mut(&token) {
                e.free = free;
            }
        }
        Ok(ring)
    }

    /// Validates a ring received from a peer (entries already in token
    /// order, as a map).
    pub fn from_parts(range: Range, seeds: Vec<PeerName>, entries: BTreeMap<u32, Entry>) -> Result<Ring, RingError> {
        if seeds.len() > MAX_SEEDS {
            return Err(RingError::TooManySeeds { count: seeds.len(), max: MAX_SEEDS });
        }
        check_seeds(&seeds)?;
        if entries.len() > MAX_ENTRIES {
            return Err(RingError::TooManyEntries { count: entries.len(), max: MAX_ENTRIES });
        }
        let (&first, _) = entries.first_key_value().ok_or(RingError::NoEntries)?;
        if first != range.first() {
            return Err(RingError::FirstToken { token: Ipv4Addr::from(first), start: range.start() });
        }
        for (&token, entry) in &entries {
            if !range.contains_u32(token) {
                return Err(RingError::TokenOutOfRange { token: Ipv4Addr::from(token), range });
            }
            if entry.owner.is_broadcast() {
                return Err(RingError::ReservedName);
            }
        }
        Ok(Ring { range, seeds, entries })
    }

    pub fn range(&self) -> Range {
        self.range
    }

    pub fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn entries(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries.iter().map(|(t, e)| (*t, e))
    }

    pub fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        let mut iter = self.entries.iter().peekable();
        std::iter::from_fn(move || {
            let (&start, &entry) = iter.next()?;
            let end = iter.peek().map_or(self.range.end(), |(t, _)| u64::from(**t));
            Some(Span { start, end, entry })
        })
    }

    /// The span of the entry covering `addr`, if `addr` is in the range.
    pub fn span_of(&self, addr: u32) -> Option<Span> {
        if !self.range.contains_u32(addr) {
            return None;
        }
        let (&start, &entry) = self.entries.range(..=addr).next_back()?;
        Some(Span { start, end: self.next_token(start), entry })
    }

    pub fn owner_of(&self, addr: u32) -> Option<PeerName> {
        self.span_of(addr).map(|s| s.entry.owner)
    }

    pub fn owned_spans(&self, peer: PeerName) -> impl Iterator<Item = Span> + '_ {
        self.spans().filter(move |s| s.entry.owner == peer)
    }

    /// Usable addresses `peer` owns, and how many of them are free by the
    /// counts last gossiped (clamped: a count predating a split may exceed
    /// what the span now holds).
    pub fn owned_and_free(&self, peer: PeerName) -> (u64, u64) {
        self.owned_spans(peer).fold((0, 0), |(owned, free), s| {
            let usable = self.range.usable_in(s.start, s.end);
            (owned + usable, free + u64::from(s.entry.free).min(usable))
        })
    }

    fn next_token(&self, token: u32) -> u64 {
        self.entries
            .range((Bound::Excluded(token), Bound::Unbounded))
            .next()
            .map_or(self.range.end(), |(t, _)| u64::from(*t))
    }

    /// Folds `other` (same range and seeds: the caller checks) into this
    /// ring; returns whether anything changed. Merges that contradict the
    /// single-writer rule are appended to `conflicts` and still applied, so
    /// that every peer converges on the same ring and the conflict shows up
    /// everywhere rather than only here.
    pub(crate) fn merge(
        &mut self,
        other: &Ring,
        local: PeerName,
        conflicts: &mut Vec<Conflict>,
    ) -> Result<bool, RingError> {
        let mut updates = Vec::new();
        let mut added = 0;
        for (&token, theirs) in &other.entries {
            match self.entries.get(&token) {
                Some(ours) if ours == theirs => {}
                Some(ours) => {
                    if ours.version == theirs.version && ours.owner != theirs.owner {
                        conflict::record(
                            conflicts,
                            Conflict::InconsistentEntry {
                                token: Ipv4Addr::from(token),
                                version: ours.version,
                                first: ours.owner.min(theirs.owner),
                                second: ours.owner.max(theirs.owner),
                            },
                        );
                    }
                    if theirs.precedence() > ours.precedence() {
                        if ours.owner == local && theirs.owner != local {
                            let c = Conflict::SpaceTaken { token: Ipv4Addr::from(token), by: theirs.owner };
                            conflict::record(conflicts, c);
                        }
                        updates.push((token, *theirs));
                    }
                }
                None => {
                    // Only the owner of the surrounding space creates a
                    // token, and we would have created it ourselves.
                    if theirs.owner != local && self.owner_of(token) == Some(local) {
                        let c = Conflict::SpaceTaken { token: Ipv4Addr::from(token), by: theirs.owner };
                        conflict::record(conflicts, c);
                    }
                    added += 1;
                    updates.push((token, *theirs));
                }
            }
        }
        let count = self.entries.len() + added;
        if count > MAX_ENTRIES {
            return Err(RingError::TooManyEntries { count, max: MAX_ENTRIES });
        }
        let changed = !updates.is_empty();
        self.entries.extend(updates);
        Ok(changed)
    }

    /// Records a new free count for an entry `local` owns; bumps its
    /// version if the count changed and returns whether it did.
    pub(crate) fn set_free(&mut self, local: PeerName, token: u32, free: u32) -> bool {
        match self.entries.get_mut(&token) {
            Some(e) if e.owner == local && e.free != free => {
                e.free = free;
                e.version = e.version.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Hands `[start, end)`, which must lie inside one entry `local` owns,
    /// to `to`, inserting up to two tokens. Returns false (changing
    /// nothing) if the preconditions don't hold or the ring is full.
    pub(crate) fn grant(&mut self, local: PeerName, start: u32, end: u64, to: PeerName) -> bool {
        let Some(span) = self.span_of(start) else { return false };
        if span.entry.owner != local || to == local || u64::from(start) >= end || end > span.end {
            return false;
        }
        let new_tokens = usize::from(start != span.start) + usize::from(end < span.end);
        if self.entries.len() + new_tokens > MAX_ENTRIES {
            return false;
        }
        let free = clamp_u32(self.range.usable_in(start, end));
        if end < span.end {
            // end < span.end <= 2^32, so it fits.
            let tail = Entry { owner: local, version: 1, free: clamp_u32(self.range.usable_in(end as u32, span.end)) };
            self.entries.insert(end as u32, tail);
        }
        if let Some(head) = self.entries.get_mut(&span.start) {
            head.version = head.version.saturating_add(1);
            if start == span.start {
                head.owner = to;
                head.free = free;
            } else {
                head.free = head.free.min(clamp_u32(self.range.usable_in(span.start, u64::from(start))));
                self.entries.insert(start, Entry { owner: to, version: 1, free });
            }
        }
        true
    }

    /// `heir` takes over the entry at `token` (whose owner was removed).
    pub(crate) fn take_over(&mut self, token: u32, heir: PeerName, free: u32) -> bool {
        match self.entries.get_mut(&token) {
            Some(e) if e.owner != heir => {
                *e = Entry { owner: heir, version: e.version.saturating_add(1), free };
                true
            }
            _ => false,
        }
    }

    /// The entries before `token`, nearest first, wrapping around (and
    /// excluding `token`'s own): where removed peers' heirs are found.
    pub(crate) fn predecessors(&self, token: u32) -> impl Iterator<Item = &Entry> {
        let before = self.entries.range(..token).rev();
        let wrapped = self.entries.range((Bound::Excluded(token), Bound::Unbounded)).rev();
        before.chain(wrapped).map(|(_, e)| e)
    }
}

fn check_seeds(seeds: &[PeerName]) -> Result<(), RingError> {
    if seeds.is_empty() {
        return Err(RingError::NoSeeds);
    }
    if seeds.windows(2).any(|w| w[0] >= w[1]) {
        return Err(RingError::UnsortedSeeds);
    }
    if seeds.iter().any(PeerName::is_broadcast) {
        return Err(RingError::ReservedName);
    }
    Ok(())
}

/// Free counts are u32 on the wire; only a /1 range has spans too big
/// for that, and there the count saturates harmlessly.
pub(crate) fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn name(n: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, n])
    }

    pub fn small_range() -> Range {
        "10.0.0.0/24".parse().unwrap()
    }

    fn ip(last: u8) -> u32 {
        u32::from(Ipv4Addr::new(10, 0, 0, last))
    }

    fn owners(ring: &Ring) -> Vec<(u32, PeerName)> {
        ring.entries().map(|(t, e)| (t, e.owner)).collect()
    }

    #[test]
    fn seeded_divides_evenly_in_name_order() {
        let ring = Ring::seeded(small_range(), &[name(3), name(1), name(2), name(1)]).unwrap();
        assert_eq!(ring.seeds(), &[name(1), name(2), name(3)]);
        assert_eq!(owners(&ring), vec![(ip(0), name(1)), (ip(85), name(2)), (ip(170), name(3))]);
        assert_eq!(ring.owned_and_free(name(1)), (84, 84));
        assert_eq!(ring.owned_and_free(name(2)), (85, 85));
        assert_eq!(ring.owned_and_free(name(3)), (85, 85));
        assert_eq!(ring.owner_of(ip(84)), Some(name(1)));
        assert_eq!(ring.owner_of(ip(255)), Some(name(3)));
        assert_eq!(ring.owner_of(ip(0) - 1), None);
        assert_eq!(Ring::seeded(small_range(), &[]), Err(RingError::NoSeeds));
    }

    #[test]
    fn more_seeds_than_addresses_still_covers_the_range() {
        let range: Range = "10.0.0.0/30".parse().unwrap();
        let seeds: Vec<PeerName> = (1..=9).map(name).collect();
        let ring = Ring::seeded(range, &seeds).unwrap();
        assert_eq!(ring.len(), 4);
        assert_eq!(ring.entries().next().map(|(t, _)| t), Some(range.first()));
        let total: u64 = seeds.iter().map(|p| ring.owned_and_free(*p).0).sum();
        assert_eq!(total, 2);
    }

    #[test]
    fn grant_splits_and_bumps() {
        let mut ring = Ring::seeded(small_range(), &[name(1), name(2)]).unwrap();
        // Middle of name(1)'s span [0, 128): two new tokens.
        assert!(ring.grant(name(1), ip(10), u64::from(ip(20)), name(5)));
        assert_eq!(owners(&ring), vec![(ip(0), name(1)), (ip(10), name(5)), (ip(20), name(1)), (ip(128), name(2))]);
        assert_eq!(ring.entries().next().map(|(_, e)| e.version), Some(2));
        assert_eq!(ring.owned_and_free(name(5)), (10, 10));
        // At the head of a span: no new token, owner changes.
        assert!(ring.grant(name(2), ip(128), u64::from(ip(200)), name(5)));
        assert_eq!(ring.span_of(ip(128)).map(|s| (s.entry.owner, s.entry.version)), Some((name(5), 2)));
        assert_eq!(ring.owner_of(ip(200)), Some(name(2)));
        // Preconditions.
        assert!(!ring.grant(name(1), ip(128), u64::from(ip(129)), name(5)), "not ours");
        assert!(!ring.grant(name(1), ip(0), u64::from(ip(11)), name(5)), "crosses an entry");
        assert!(!ring.grant(name(1), ip(5), u64::from(ip(5)), name(5)), "empty");
        assert!(!ring.grant(name(1), ip(5), u64::from(ip(6)), name(1)), "to self");
    }

    #[test]
    fn predecessors_are_nearest_first_and_wrap() {
        let ring = Ring::seeded(small_range(), &[name(1), name(2), name(3), name(4)]).unwrap();
        let owners = |token| ring.predecessors(token).map(|e| e.owner).collect::<Vec<_>>();
        assert_eq!(owners(ip(128)), vec![name(2), name(1), name(4)]);
        assert_eq!(owners(ip(0)), vec![name(4), name(3), name(2)]);
    }

    #[test]
    fn merge_takes_newer_and_reports_stolen_space() {
        let base = Ring::seeded(small_range(), &[name(1), name(2)]).unwrap();
        let mut mine = base.clone();
        let mut theirs = base.clone();
        assert!(theirs.grant(name(2), ip(200), u64::from(ip(210)), name(3)));
        let mut conflicts = Vec::new();
        assert_eq!(mine.merge(&theirs, name(1), &mut conflicts), Ok(true));
        assert_eq!(mine, theirs);
        assert!(conflicts.is_empty());
        assert_eq!(mine.merge(&theirs, name(1), &mut conflicts), Ok(false));

        // name(2) (wrongly) splits space name(1) owns.
        let mut forged = base.clone();
        forged.entries.insert(ip(50), Entry { owner: name(2), version: 1, free: 0 });
        let mut mine = base.clone();
        assert_eq!(mine.merge(&forged, name(1), &mut conflicts), Ok(true));
        assert_eq!(conflicts, vec![Conflict::SpaceTaken { token: Ipv4Addr::from(ip(50)), by: name(2) }]);

        // Same version, different owners.
        let mut a = base.clone();
        let mut b = base.clone();
        assert!(a.take_over(ip(128), name(3), 0));
        assert!(b.take_over(ip(128), name(4), 0));
        let mut conflicts = Vec::new();
        let mut merged = a.clone();
        merged.merge(&b, name(1), &mut conflicts).unwrap();
        assert_eq!(merged.owner_of(ip(128)), Some(name(3)), "lower owner wins deterministically");
        assert!(matches!(conflicts[..], [Conflict::InconsistentEntry { version: 2, .. }]));
    }

    #[test]
    fn from_parts_validates() {
        let range = small_range();
        let entry = Entry { owner: name(1), version: 1, free: 0 };
        let ok = BTreeMap::from([(ip(0), entry), (ip(9), entry)]);
        assert!(Ring::from_parts(range, vec![name(1)], ok.clone()).is_ok());
        assert_eq!(Ring::from_parts(range, vec![], ok.clone()), Err(RingError::NoSeeds));
        assert_eq!(Ring::from_parts(range, vec![name(2), name(1)], ok.clone()), Err(RingError::UnsortedSeeds));
        assert_eq!(Ring::from_parts(range, vec![name(1)], BTreeMap::new()), Err(RingError::NoEntries));
        let late = BTreeMap::from([(ip(1), entry)]);
        assert!(matches!(Ring::from_parts(range, vec![name(1)], late), Err(RingError::FirstToken { .. })));
        let outside = BTreeMap::from([(ip(0), entry), (ip(0) + 256, entry)]);
        assert!(matches!(Ring::from_parts(range, vec![name(1)], outside), Err(RingError::TokenOutOfRange { .. })));
        let bad_owner = BTreeMap::from([(ip(0), Entry { owner: PeerName::BROADCAST, ..entry })]);
        assert_eq!(Ring::from_parts(range, vec![name(1)], bad_owner), Err(RingError::ReservedName));
    }

    /// Rings that all descend from one seeded ring through arbitrary
    /// entries (not necessarily legal writes: merge must converge anyway).
    pub fn arb_ring() -> impl Strategy<Value = Ring> {
        let entry = (1u8..6, 1u32..5, 0u32..40).prop_map(|(o, version, free)| Entry { owner: name(o), version, free });
        proptest::collection::btree_map(1u32..255, entry.clone(), 0..8).prop_flat_map(move |extra| {
            entry.clone().prop_map(move |first| {
                let mut entries = extra.clone().into_iter().map(|(t, e)| (ip(0) + t, e)).collect::<BTreeMap<_, _>>();
                entries.insert(ip(0), first);
                Ring::from_parts(small_range(), vec![name(1), name(2)], entries).unwrap()
            })
        })
    }

    fn merged(a: &Ring, b: &Ring) -> Ring {
        let mut out = a.clone();
        out.merge(b, name(9), &mut Vec::new()).unwrap();
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(a in arb_ring(), b in arb_ring(), c in arb_ring()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
        }

        #[test]
        fn spans_tile_the_range(ring in arb_ring()) {
            let range = ring.range();
            let mut next = u64::from(range.first());
            for s in ring.spans() {
                prop_assert_eq!(u64::from(s.start), next);
                prop_assert!(u64::from(s.start) < s.end);
                next = s.end;
            }
            prop_assert_eq!(next, range.end());
        }
    }
}
