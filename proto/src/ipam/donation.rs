//! Moving free space to a peer that ran out. The requester names its
//! donor (the eligible peer with the most free space by the gossiped
//! counts, lowest name on ties) in its own gossip entry; the donor hands
//! over about half of its largest free run by rewriting its own ring
//! entries. Naming the donor keeps it to one donation per request even
//! when views of the free counts differ.

use std::collections::BTreeMap;

use crate::PeerName;

use super::allocator::Allocations;
use super::ring::Ring;

/// The peer to ask for space: most free addresses among those `eligible`
/// with any, lowest name first among equals. Every peer with the same
/// view picks the same one.
pub(crate) fn choose_donor(ring: &Ring, eligible: impl Fn(&PeerName) -> bool) -> Option<PeerName> {
    let mut free: BTreeMap<PeerName, u64> = BTreeMap::new();
    let range = ring.range();
    for span in ring.spans().filter(|s| eligible(&s.entry.owner)) {
        let usable = range.usable_in(span.start, span.end);
        *free.entry(span.entry.owner).or_default() += u64::from(span.entry.free).min(usable);
    }
    // Ascending names: `max_by_key` keeps the last maximum, so reverse.
    free.into_iter().rev().filter(|(_, f)| *f > 0).max_by_key(|(_, f)| *f).map(|(p, _)| p)
}

/// What `local` gives away when asked: the upper half (at least one
/// address) of its largest free run, which lies inside one of its entries.
pub(crate) fn donation(ring: &Ring, allocations: &Allocations, local: PeerName) -> Option<(u32, u64)> {
    let spans = ring.owned_spans(local).map(|s| (s.start, s.end));
    let (start, end) = allocations.largest_free_run(ring.range(), spans)?;
    let len = end - u64::from(start);
    let give = (len / 2).max(1);
    // start + (len - give) < end <= 2^32.
    Some((start + (len - give) as u32, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::ring::tests::{name, small_range};

    #[test]
    fn donor_has_most_free_lowest_name_on_ties() {
        let mut ring = Ring::seeded(small_range(), &[name(1), name(2), name(3), name(4)]).unwrap();
        let first = small_range().first();
        assert_eq!(choose_donor(&ring, |_| true), Some(name(2)), "name(1) loses the network address");
        assert_eq!(choose_donor(&ring, |p| *p != name(2)), Some(name(3)));
        assert!(ring.set_free(name(3), first + 128, 0));
        assert!(ring.set_free(name(4), first + 192, 0));
        assert!(ring.set_free(name(2), first + 64, 0));
        assert_eq!(choose_donor(&ring, |p| *p != name(1)), None);
    }

    #[test]
    fn donates_upper_half_of_largest_run() {
        let ring = Ring::seeded(small_range(), &[name(1), name(2)]).unwrap();
        let first = small_range().first();
        let mut allocs = Allocations::default();
        allocs.insert("a", "eth0", first + 100);
        // name(1) owns [0, 128): runs [1, 100) and [101, 128).
        assert_eq!(donation(&ring, &allocs, name(1)), Some((first + 51, u64::from(first) + 100)));
        for i in 1..128 {
            allocs.insert(&i.to_string(), "eth0", first + i);
        }
        assert_eq!(donation(&ring, &allocs, name(1)), None);
        let mut one = Allocations::default();
        for i in 2..128 {
            one.insert(&i.to_string(), "eth0", first + i);
        }
        assert_eq!(donation(&ring, &one, name(1)), Some((first + 1, u64::from(first) + 2)));
    }
}
