//! Set elements on the wire. An interval set stores a range as two
//! elements: its first address, and the address after its last flagged as
//! an interval end (none when the range reaches 255.255.255.255). A plain
//! set stores one element per address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use netlink_packet_netfilter::nftables::{DataAttribute, ListAttribute, SetElementAttribute, SetElementFlags};

use super::table::Ipv4Interval;

/// One element as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Ipv4Addr,
    /// An interval end (the first address no longer in the range).
    pub end: bool,
}

impl Element {
    pub(super) fn to_netlink(self) -> ListAttribute<SetElementAttribute> {
        let mut attributes = vec![SetElementAttribute::Key(DataAttribute::Value(self.key.octets().to_vec()))];
        if self.end {
            attributes.push(SetElementAttribute::Flags(SetElementFlags::IntervalEnd));
        }
        ListAttribute::Element(attributes)
    }

    /// `None` for anything but a 4-byte key (a catch-all, a map's data).
    pub(super) fn from_netlink(element: &ListAttribute<SetElementAttribute>) -> Option<Element> {
        let ListAttribute::Element(attributes) = element else { return None };
        let mut key = None;
        let mut end = false;
        for attribute in attributes {
            match attribute {
                SetElementAttribute::Key(DataAttribute::Value(bytes)) => {
                    key = Some(Ipv4Addr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?))
                }
                SetElementAttribute::Flags(flags) => {
                    if flags.contains(SetElementFlags::CatchAll) {
                        return None;
                    }
                    end = flags.contains(SetElementFlags::IntervalEnd);
                }
                _ => {}
            }
        }
        Some(Element { key: key?, end })
    }
}

/// The elements that store `intervals` in a set (`interval`: an interval
/// set, else one element per address, which suits only small ranges).
pub fn elements_of(intervals: &[Ipv4Interval], interval: bool) -> BTreeSet<Element> {
    let mut out = BTreeSet::new();
    for range in intervals {
        let (first, last) = (u32::from(range.first), u32::from(range.last));
        if first > last {
            continue;
        }
        if interval {
            out.insert(Element { key: range.first, end: false });
            if let Some(next) = last.checked_add(1) {
                out.insert(Element { key: Ipv4Addr::from(next), end: true });
            }
        } else {
            out.extend((first..=last).map(|a| Element { key: Ipv4Addr::from(a), end: false }));
        }
    }
    out
}

/// The intervals a dump's elements stand for: each start runs to the next
/// interval end (or to the top of the address space); ends without a start
/// (as `nft` writes before a first range) stand for nothing.
pub fn intervals_of(elements: &[Element], interval: bool) -> Vec<Ipv4Interval> {
    let mut sorted = elements.to_vec();
    // An end sorts before a start at the same key: [a, k-1] then [k, ...].
    sorted.sort_by_key(|e| (e.key, !e.end));
    if !interval {
        return sorted.iter().map(|e| Ipv4Interval { first: e.key, last: e.key }).collect();
    }
    let mut out = Vec::new();
    let mut open: Option<Ipv4Addr> = None;
    for e in sorted {
        match (open, e.end) {
            (None, false) => open = Some(e.key),
            (Some(first), true) => {
                let last = u32::from(e.key).saturating_sub(1);
                out.push(Ipv4Interval { first, last: Ipv4Addr::from(last) });
                open = None;
            }
            // Two starts in a row: the first range ends just before the next.
            (Some(first), false) => {
                let last = u32::from(e.key).saturating_sub(1);
                out.push(Ipv4Interval { first, last: Ipv4Addr::from(last) });
                open = Some(e.key);
            }
            (None, true) => {}
        }
    }
    if let Some(first) = open {
        out.push(Ipv4Interval { first, last: Ipv4Addr::BROADCAST });
    }
    out
}

/// What turns a set holding `old` into one holding `new`: (elements to
/// delete, elements to add).
pub fn element_changes(old: &[Ipv4Interval], new: &[Ipv4Interval], interval: bool) -> (Vec<Element>, Vec<Element>) {
    let (old, new) = (elements_of(old, interval), elements_of(new, interval));
    (old.difference(&new).copied().collect(), new.difference(&old).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(a: [u8; 4], b: [u8; 4]) -> Ipv4Interval {
        Ipv4Interval { first: Ipv4Addr::from(a), last: Ipv4Addr::from(b) }
    }

    #[test]
    fn intervals_round_trip_through_elements() {
        let ranges = vec![iv([10, 32, 0, 0], [10, 33, 255, 255]), iv([10, 40, 0, 0], [10, 40, 0, 0])];
        let elements: Vec<_> = elements_of(&ranges, true).into_iter().collect();
        assert_eq!(elements.len(), 4);
        assert_eq!(intervals_of(&elements, true), ranges);
        let top = vec![iv([255, 0, 0, 0], [255, 255, 255, 255])];
        let elements: Vec<_> = elements_of(&top, true).into_iter().collect();
        assert_eq!(elements, [Element { key: Ipv4Addr::new(255, 0, 0, 0), end: false }]);
        assert_eq!(intervals_of(&elements, true), top);
    }

    #[test]
    fn a_leading_end_and_adjacent_ranges_read_right() {
        let elements = [
            Element { key: Ipv4Addr::UNSPECIFIED, end: true },
            Element { key: Ipv4Addr::new(10, 0, 0, 0), end: false },
            Element { key: Ipv4Addr::new(10, 0, 1, 0), end: true },
            Element { key: Ipv4Addr::new(10, 0, 1, 0), end: false },
            Element { key: Ipv4Addr::new(10, 0, 2, 0), end: true },
        ];
        assert_eq!(
            intervals_of(&elements, true),
            [iv([10, 0, 0, 0], [10, 0, 0, 255]), iv([10, 0, 1, 0], [10, 0, 1, 255])]
        );
    }

    #[test]
    fn changes_touch_only_what_moved() {
        let old = [iv([10, 32, 0, 0], [10, 33, 255, 255])];
        let new = [iv([10, 32, 0, 0], [10, 35, 255, 255])];
        let (del, add) = element_changes(&old, &new, true);
        assert_eq!(del, [Element { key: Ipv4Addr::new(10, 34, 0, 0), end: true }]);
        assert_eq!(add, [Element { key: Ipv4Addr::new(10, 36, 0, 0), end: true }]);
        assert_eq!(element_changes(&new, &new, true), (vec![], vec![]));
    }

    #[test]
    fn plain_sets_hold_single_addresses() {
        let ranges = [iv([10, 0, 0, 1], [10, 0, 0, 3])];
        let elements: Vec<_> = elements_of(&ranges, false).into_iter().collect();
        assert_eq!(elements.len(), 3);
        assert_eq!(intervals_of(&elements, false).len(), 3);
    }
}
