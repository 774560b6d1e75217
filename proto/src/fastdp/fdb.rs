//! Which kernel VXLAN forwarding entries should exist, and how to get
//! there from the ones that do.
//!
//! A unicast MAC entry sends a pod's frames straight to the node hosting
//! it; entries for the all-zero MAC are the flood list, one per fast-path
//! peer, so broadcasts and unknown destinations reach every one of them.
//! Peers on the sleeve get no pod or flood entries, since their frames
//! must not leak out of the VXLAN device as well as the sleeve; only the
//! entry for their heartbeats, which probe whether the path works again.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::ethernet::MacAddr;

/// One kernel forwarding entry: frames for `mac` go to the node at `dst`.
/// `MacAddr::ZERO` is the flood entry and may appear once per `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// Edits that turn the kernel's entries into the desired ones. Apply
/// `remove` before `add`: the kernel refuses a second destination for a
/// unicast MAC, so a MAC that moved node must lose its old entry first.
/// Both lists are sorted and free of duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdbPlan {
    pub add: Vec<FdbEntry>,
    pub remove: Vec<FdbEntry>,
}

impl FdbPlan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Diffs the two sets of entries, each keyed by (MAC, destination) so that
/// flood entries with several destinations and stale extra destinations of
/// a unicast MAC are handled alike. Duplicates in either input are one
/// entry, as they are in the kernel.
pub fn plan(desired: &[FdbEntry], actual: &[FdbEntry]) -> FdbPlan {
    let desired: BTreeSet<FdbEntry> = desired.iter().copied().collect();
    let actual: BTreeSet<FdbEntry> = actual.iter().copied().collect();
    FdbPlan {
        add: desired.difference(&actual).copied().collect(),
        remove: actual.difference(&desired).copied().collect(),
    }
}

/// The entries the kernel should hold: each unicast MAC to the node it
/// lives on (pod MACs of fast-path peers, peers' heartbeat MACs), and the
/// all-zero MAC once per node in `flood` (the fast-path peers).
///
/// A MAC listed more than once keeps its last node (the most recent
/// knowledge), so no unicast MAC ever gets two destinations. Group MACs and
/// the all-zero MAC are skipped: flooding is what the flood entries are for.
pub fn desired_entries(
    macs: impl Iterator<Item = (MacAddr, IpAddr)>,
    flood: impl Iterator<Item = IpAddr>,
) -> Vec<FdbEntry> {
    let owner: HashMap<MacAddr, IpAddr> = macs.filter(|(mac, _)| mac.is_unicast() && *mac != MacAddr::ZERO).collect();
    let unicast = owner.into_iter().map(|(mac, dst)| FdbEntry { mac, dst });
    let flood = flood.map(|dst| FdbEntry { mac: MacAddr::ZERO, dst });
    let entries: BTreeSet<FdbEntry> = unicast.chain(flood).collect();
    entries.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, last])
    }

    fn entry(mac: MacAddr, dst: IpAddr) -> FdbEntry {
        FdbEntry { mac, dst }
    }

    #[test]
    fn removes_extra_destinations_of_a_unicast_mac() {
        let desired = [entry(mac(1), ip(1))];
        let actual = [entry(mac(1), ip(1)), entry(mac(1), ip(2)), entry(mac(1), ip(3))];
        let p = plan(&desired, &actual);
        assert!(p.add.is_empty());
        assert_eq!(p.remove, [entry(mac(1), ip(2)), entry(mac(1), ip(3))]);
    }

    #[test]
    fn moved_mac_is_removed_then_added() {
        let p = plan(&[entry(mac(1), ip(2))], &[entry(mac(1), ip(1))]);
        assert_eq!(p, FdbPlan { add: vec![entry(mac(1), ip(2))], remove: vec![entry(mac(1), ip(1))] });
    }

    #[test]
    fn flood_entries_are_kept_per_destination() {
        let desired = [entry(MacAddr::ZERO, ip(1)), entry(MacAddr::ZERO, ip(2))];
        let actual = [entry(MacAddr::ZERO, ip(2)), entry(MacAddr::ZERO, ip(3))];
        let p = plan(&desired, &actual);
        assert_eq!(p.add, [entry(MacAddr::ZERO, ip(1))]);
        assert_eq!(p.remove, [entry(MacAddr::ZERO, ip(3))]);
    }

    #[test]
    fn desired_entries_skip_group_macs_and_flood_per_node() {
        let macs = [
            (mac(10), ip(1)),
            (mac(11), ip(2)),
            (MacAddr::BROADCAST, ip(1)),
            (MacAddr::ZERO, ip(1)),
            (MacAddr([0x01, 0, 0x5e, 0, 0, 1]), ip(2)),
        ];
        let got = desired_entries(macs.into_iter(), [ip(1), ip(2), ip(1)].into_iter());
        assert_eq!(
            got,
            [entry(MacAddr::ZERO, ip(1)), entry(MacAddr::ZERO, ip(2)), entry(mac(10), ip(1)), entry(mac(11), ip(2)),]
        );
    }

    #[test]
    fn a_mac_seen_twice_keeps_its_latest_node() {
        let got = desired_entries([(mac(10), ip(1)), (mac(10), ip(2))].into_iter(), std::iter::empty());
        assert_eq!(got, [entry(mac(10), ip(2))]);
    }

    fn small_entry() -> impl Strategy<Value = FdbEntry> {
        // Small pools so that collisions (same MAC, several dsts) are common.
        let mac = prop_oneof![Just(MacAddr::ZERO), (1u8..5).prop_map(mac)];
        (mac, (1u8..5).prop_map(ip)).prop_map(|(mac, dst)| FdbEntry { mac, dst })
    }

    proptest! {
        #[test]
        fn applying_the_plan_yields_exactly_desired(
            desired in proptest::collection::vec(small_entry(), 0..12),
            actual in proptest::collection::vec(small_entry(), 0..12),
        ) {
            let p = plan(&desired, &actual);
            let desired_set: BTreeSet<FdbEntry> = desired.iter().copied().collect();
            let mut applied: BTreeSet<FdbEntry> = actual.iter().copied().collect();
            for e in &p.remove {
                prop_assert!(!desired_set.contains(e), "removes desired {:?}", e);
                prop_assert!(applied.remove(e), "removes absent or duplicate {:?}", e);
            }
            for e in &p.add {
                prop_assert!(applied.insert(*e), "adds present or duplicate {:?}", e);
            }
            prop_assert_eq!(&applied, &desired_set);
            let applied: Vec<FdbEntry> = applied.into_iter().collect();
            prop_assert!(plan(&desired, &applied).is_empty());
            prop_assert!(plan(&desired, &desired).is_empty());
        }

        #[test]
        fn desired_entries_give_one_dst_per_unicast_mac(
            macs in proptest::collection::vec((1u8..8, 1u8..5), 0..20),
            flood in proptest::collection::vec(1u8..5, 0..4),
        ) {
            let got = desired_entries(macs.iter().map(|&(m, i)| (mac(m), ip(i))), flood.iter().map(|&i| ip(i)));
            let set: BTreeSet<FdbEntry> = got.iter().copied().collect();
            prop_assert_eq!(set.len(), got.len(), "duplicates");
            let floods: BTreeSet<IpAddr> =
                got.iter().filter(|e| e.mac == MacAddr::ZERO).map(|e| e.dst).collect();
            prop_assert_eq!(floods, flood.iter().map(|&i| ip(i)).collect::<BTreeSet<_>>());
            let mut seen = BTreeSet::new();
            for e in got.iter().filter(|e| e.mac != MacAddr::ZERO) {
                prop_assert!(seen.insert(e.mac), "two dsts for {:?}", e.mac);
                let last = macs.iter().rev().find(|&&(m, _)| mac(m) == e.mac).map(|&(_, i)| ip(i));
                prop_assert_eq!(last, Some(e.dst));
            }
            prop_assert_eq!(seen.len(), macs.iter().map(|&(m, _)| m).collect::<BTreeSet<_>>().len());
        }
    }
}
