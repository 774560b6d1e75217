//! This peer's allocations, keyed by (container id, interface name), and
//! the searches over the space it owns: lowest free address, free counts,
//! the largest free run (what it donates from).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::range::Range;

/// Longest container id or interface name accepted (and persisted).
pub const MAX_ID_LEN: usize = 255;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Allocations {
    by_container: BTreeMap<String, BTreeMap<String, u32>>,
    used: BTreeSet<u32>,
}

impl Allocations {
    pub fn get(&self, container_id: &str, ifname: &str) -> Option<u32> {
        self.by_container.get(container_id)?.get(ifname).copied()
    }

    /// Records an allocation; refuses (returning false) an address already
    /// in use or a key already allocated, so the two maps stay in step.
    pub fn insert(&mut self, container_id: &str, ifname: &str, addr: u32) -> bool {
        if self.used.contains(&addr) || self.get(container_id, ifname).is_some() {
            return false;
        }
        self.used.insert(addr);
        self.by_container.entry(container_id.to_owned()).or_default().insert(ifname.to_owned(), addr);
        true
    }

    /// Releases one interface's address, or all of a container's; returns
    /// the addresses freed.
    pub fn release(&mut self, container_id: &str, ifname: Option<&str>) -> Vec<u32> {
        let Some(ifaces) = self.by_container.get_mut(container_id) else { return Vec::new() };
        let freed: Vec<u32> = match ifname {
            Some(ifname) => ifaces.remove(ifname).into_iter().collect(),
            None => std::mem::take(ifaces).into_values().collect(),
        };
        if ifaces.is_empty() {
            self.by_container.remove(container_id);
        }
        for addr in &freed {
            self.used.remove(addr);
        }
        freed
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u32)> {
        self.by_container
            .iter()
            .flat_map(|(c, ifaces)| ifaces.iter().map(move |(i, addr)| (c.as_str(), i.as_str(), *addr)))
    }

    /// Allocated addresses outside `spans` (which must be ascending and
    /// disjoint), in one sweep over both.
    pub fn outside(&self, spans: impl Iterator<Item = (u32, u64)>) -> Vec<u32> {
        let mut spans = spans.peekable();
        let mut out = Vec::new();
        for addr in self.used.iter().copied() {
            while spans.peek().is_some_and(|&(_, end)| end <= u64::from(addr)) {
                spans.next();
            }
            if spans.peek().is_none_or(|&(start, _)| start > addr) {
                out.push(addr);
            }
        }
        out
    }

    fn used_in(&self, start: u32, end: u64) -> impl Iterator<Item = u32> + '_ {
        let upper = match u32::try_from(end) {
            Ok(end) => Bound::Excluded(end),
            Err(_) => Bound::Unbounded,
        };
        self.used.range((Bound::Included(start), upper)).copied()
    }

    /// Usable addresses in `[start, end)` not allocated here.
    pub fn free_in(&self, range: Range, start: u32, end: u64) -> u64 {
        let used = self.used_in(start, end).filter(|a| range.is_usable(*a)).count() as u64;
        range.usable_in(start, end).saturating_sub(used)
    }

    /// The free runs in `[start, end)`: maximal stretches of usable,
    /// unallocated addresses, ascending.
    fn free_runs(&self, range: Range, start: u32, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        // Usable addresses exclude the range's first and last.
        let lo = u64::from(start).max(u64::from(range.first()) + 1);
        let hi = end.min(range.end() - 1);
        let mut next = lo;
        let mut used = self.used_in(start, end).map(u64::from).filter(move |a| *a >= lo && *a < hi);
        let mut done = false;
        std::iter::from_fn(move || loop {
            if done {
                return None;
            }
            let run_start = next;
            let run_end = match used.next() {
                Some(a) => {
                    next = a + 1;
                    a
                }
                None => {
                    done = true;
                    hi
                }
            };
            if run_start < run_end {
                return Some((run_start, run_end));
            }
        })
    }

    /// The lowest usable, unallocated address in any of `spans`.
    pub fn lowest_free(&self, range: Range, spans: impl Iterator<Item = (u32, u64)>) -> Option<u32> {
        spans.filter_map(|(s, e)| self.free_runs(range, s, e).next()).map(|(start, _)| start as u32).min()
    }

    /// The longest free run in any of `spans` (the lowest of equals).
    pub fn largest_free_run(&self, range: Range, spans: impl Iterator<Item = (u32, u64)>) -> Option<(u32, u64)> {
        spans
            .flat_map(|(s, e)| self.free_runs(range, s, e))
            .min_by_key(|&(start, end)| (std::cmp::Reverse(end - start), start))
            .map(|(s, e)| (s as u32, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range() -> Range {
        "10.0.0.0/28".parse().unwrap()
    }

    fn at(offset: u32) -> u32 {
        range().first() + offset
    }

    fn whole() -> std::iter::Once<(u32, u64)> {
        std::iter::once((at(0), range().end()))
    }

    #[test]
    fn insert_get_release() {
        let mut a = Allocations::default();
        assert!(a.insert("c1", "eth0", at(1)));
        assert!(a.insert("c1", "eth1", at(2)));
        assert!(a.insert("c2", "eth0", at(3)));
        assert!(!a.insert("c3", "eth0", at(1)), "address in use");
        assert!(!a.insert("c1", "eth0", at(4)), "key in use");
        assert_eq!(a.get("c1", "eth1"), Some(at(2)));
        assert_eq!(a.len(), 3);
        assert_eq!(a.release("c1", Some("eth1")), vec![at(2)]);
        assert_eq!(a.release("c1", None), vec![at(1)]);
        assert_eq!(a.release("c1", None), Vec::<u32>::new());
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![("c2", "eth0", at(3))]);
    }

    #[test]
    fn searches_skip_network_broadcast_and_used() {
        let mut a = Allocations::default();
        assert_eq!(a.lowest_free(range(), whole()), Some(at(1)));
        assert_eq!(a.free_in(range(), at(0), range().end()), 14);
        assert_eq!(a.largest_free_run(range(), whole()), Some((at(1), u64::from(at(15)))));
        for i in [1, 2, 5] {
            a.insert(&format!("c{i}"), "eth0", at(i));
        }
        assert_eq!(a.lowest_free(range(), whole()), Some(at(3)));
        assert_eq!(a.free_in(range(), at(0), range().end()), 11);
        assert_eq!(a.largest_free_run(range(), whole()), Some((at(6), u64::from(at(15)))));
        let spans = [(at(8), u64::from(at(10))), (at(3), u64::from(at(5)))];
        assert_eq!(a.lowest_free(range(), spans.into_iter()), Some(at(3)));
        assert_eq!(a.largest_free_run(range(), spans.into_iter()), Some((at(3), u64::from(at(5)))));
        assert_eq!(a.lowest_free(range(), std::iter::once((at(15), range().end()))), None);
        let owned = [(at(0), u64::from(at(2))), (at(4), u64::from(at(8)))];
        assert_eq!(a.outside(owned.into_iter()), vec![at(2)]);
        assert_eq!(a.outside(std::iter::empty()), vec![at(1), at(2), at(5)]);
    }

    proptest! {
        #[test]
        fn searches_agree_with_enumeration(used in proptest::collection::btree_set(0u32..16, 0..16), s in 0u32..16, len in 0u64..17) {
            let mut a = Allocations::default();
            for u in &used {
                a.insert(&u.to_string(), "eth0", at(*u));
            }
            let end = (u64::from(at(s)) + len).min(range().end());
            let free: Vec<u32> = (u64::from(at(s))..end).map(|x| x as u32).filter(|x| range().is_usable(*x) && !used.contains(&(x - at(0)))).collect();
            let span = std::iter::once((at(s), end));
            prop_assert_eq!(a.free_in(range(), at(s), end), free.len() as u64);
            prop_assert_eq!(a.lowest_free(range(), span.clone()), free.first().copied());
            if let Some((rs, re)) = a.largest_free_run(range(), span) {
                prop_assert!((u64::from(rs)..re).all(|x| free.contains(&(x as u32))));
                // No longer run exists.
                let mut longest = 0u64;
                let mut current = 0u64;
                let mut prev: Option<u32> = None;
                for x in &free {
                    current = if prev.is_some_and(|p| p + 1 == *x) { current + 1 } else { 1 };
                    longest = longest.max(current);
                    prev = Some(*x);
                }
                prop_assert_eq!(re - u64::from(rs), longest);
            } else {
                prop_assert!(free.is_empty());
            }
        }
    }
}
