//! The wrapper against the running kernel, each test in a network namespace
//! of its own (so nothing on the machine is touched and tests run in
//! parallel). Needs root: without it the tests fail, they never skip.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::future::Future;

use weft_netlink::{
    BridgeFdbEntry, BridgeFdbKind, BridgePortOptions, Netlink, NetnsFile, VxlanInfo, VxlanSpec, VxlanVni,
};

const VNI: u32 = 0x776566;
const MAC: [u8; 6] = [0x02, 0x77, 0x65, 0x66, 0, 1];

/// Runs `work` with a netlink connection inside a fresh namespace.
fn in_fresh_netns<T: Send, F, Fut>(work: F) -> T
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = T>,
{
    let netns = NetnsFile::create().expect("creating a network namespace (these tests must run as root)");
    netns.run(work).unwrap()
}

fn spec(name: &str) -> VxlanSpec<'_> {
    VxlanSpec {
        name,
        vni: VxlanVni::Fixed(VNI),
        dstport: 6784,
        learning: false,
        df_set: true,
        local: None,
        underlay: None,
    }
}

/// A bridge `br0` (up) with the VXLAN `vx0` of [`spec`] on it (up);
/// returns their indexes.
async fn bridge_with_vxlan(nl: &Netlink) -> (u32, u32) {
    let bridge = nl.ensure_bridge("br0").await.unwrap().index;
    nl.set_up(bridge).await.unwrap();
    let vxlan = nl.create_vxlan(&spec("vx0")).await.unwrap();
    nl.set_master(vxlan, bridge).await.unwrap();
    nl.set_up(vxlan).await.unwrap();
    (bridge, vxlan)
}

#[test]
fn vxlan_settings_read_back() {
    in_fresh_netns(|nl| async move {
        let (bridge, vxlan) = bridge_with_vxlan(&nl).await;
        assert_eq!(
            nl.vxlan_info(vxlan).await.unwrap(),
            Some(VxlanInfo { vni: Some(VNI), dstport: 6784, learning: false, df_set: true })
        );
        // The kernel refuses a second device with the same VNI and port.
        assert_eq!(nl.create_vxlan(&spec("vx1")).await.unwrap_err().errno(), Some(libc::EEXIST));
        let plain = VxlanSpec { vni: VxlanVni::Fixed(7), learning: true, df_set: false, ..spec("vx1") };
        let plain = nl.create_vxlan(&plain).await.unwrap();
        assert_eq!(
            nl.vxlan_info(plain).await.unwrap(),
            Some(VxlanInfo { vni: Some(7), dstport: 6784, learning: true, df_set: false })
        );
        let external = nl.create_vxlan(&VxlanSpec { vni: VxlanVni::External, dstport: 4790, ..spec("vx2") }).await;
        assert_eq!(nl.vxlan_info(external.unwrap()).await.unwrap().unwrap().vni, None);
        assert_eq!(nl.vxlan_info(bridge).await.unwrap(), None);
        assert_eq!(nl.vxlan_info(99_999).await.unwrap_err().errno(), Some(libc::ENODEV));
    });
}

#[test]
fn bridge_port_flags_are_set_and_read_back() {
    in_fresh_netns(|nl| async move {
        let (bridge, vxlan) = bridge_with_vxlan(&nl).await;
        let defaults = nl.bridge_port_options(vxlan).await.unwrap().unwrap();
        assert_eq!(defaults, BridgePortOptions { isolated: Some(false), learning: Some(true), hairpin: Some(false) });

        let fastdp = BridgePortOptions { isolated: Some(true), learning: Some(false), hairpin: None };
        nl.set_bridge_port(vxlan, &fastdp).await.unwrap();
        let expected = BridgePortOptions { hairpin: Some(false), ..fastdp };
        assert_eq!(nl.bridge_port_options(vxlan).await.unwrap(), Some(expected));

        // Unset fields stay as they are.
        nl.set_bridge_port_hairpin(vxlan, true).await.unwrap();
        let expected = BridgePortOptions { hairpin: Some(true), ..fastdp };
        assert_eq!(nl.bridge_port_options(vxlan).await.unwrap(), Some(expected));
        nl.set_bridge_port(vxlan, &BridgePortOptions::default()).await.unwrap();
        assert_eq!(nl.bridge_port_options(vxlan).await.unwrap(), Some(expected));

        assert_eq!(nl.bridge_port_options(bridge).await.unwrap(), None);
    });
}

#[test]
fn bridge_fdb_entries_are_added_listed_and_deleted() {
    in_fresh_netns(|nl| async move {
        let (bridge, vxlan) = bridge_with_vxlan(&nl).await;
        let port = nl.create_veth("p0", "p1").await.unwrap();
        nl.set_master(port, bridge).await.unwrap();
        let ours = |entries: Vec<BridgeFdbEntry>| -> Vec<BridgeFdbEntry> {
            entries.into_iter().filter(|entry| entry.mac == MAC).collect()
        };

        nl.bridge_fdb_add(vxlan, MAC, true).await.unwrap();
        let sticky = BridgeFdbEntry { mac: MAC, port: vxlan, kind: BridgeFdbKind::Static, sticky: true, vlan: None };
        assert_eq!(ours(nl.bridge_fdb_list(bridge).await.unwrap()), [sticky]);
        // The VXLAN's own table is another one.
        assert!(nl.fdb_list(vxlan).await.unwrap().iter().all(|entry| entry.mac != MAC));

        // Replacing moves the MAC and drops the sticky flag.
        nl.bridge_fdb_add(port, MAC, false).await.unwrap();
        let moved = BridgeFdbEntry { port, sticky: false, ..sticky };
        assert_eq!(ours(nl.bridge_fdb_list(bridge).await.unwrap()), [moved]);

        assert!(!nl.bridge_fdb_del(vxlan, MAC).await.unwrap());
        assert!(nl.bridge_fdb_del(port, MAC).await.unwrap());
        assert!(!nl.bridge_fdb_del(port, MAC).await.unwrap());
        assert_eq!(ours(nl.bridge_fdb_list(bridge).await.unwrap()), []);

        // What else the list holds: the ports' own addresses, permanent.
        let entries = nl.bridge_fdb_list(bridge).await.unwrap();
        let port_mac = nl.link_mac(port).await.unwrap();
        assert!(entries.iter().any(|e| e.mac == port_mac && e.port == port && e.kind == BridgeFdbKind::Permanent));
        assert!(entries.iter().all(|e| e.kind == BridgeFdbKind::Permanent));

        // Another bridge's entries are not listed.
        let other = nl.ensure_bridge("br1").await.unwrap().index;
        let other_port = nl.create_veth("q0", "q1").await.unwrap();
        nl.set_master(other_port, other).await.unwrap();
        nl.bridge_fdb_add(other_port, MAC, false).await.unwrap();
        assert_eq!(ours(nl.bridge_fdb_list(bridge).await.unwrap()), []);
        assert_eq!(ours(nl.bridge_fdb_list(other).await.unwrap()).len(), 1);
    });
}

#[test]
fn link_counters_are_read() {
    in_fresh_netns(|nl| async move {
        let (bridge, _) = bridge_with_vxlan(&nl).await;
        let stats = nl.link_stats(bridge).await.unwrap();
        // A fresh bridge has sent little (IPv6 router solicitations at most).
        assert!(stats.rx_packets < 100 && stats.tx_bytes < 100_000, "{stats:?}");
        assert_eq!(nl.link_stats(99_999).await.unwrap_err().errno(), Some(libc::ENODEV));
    });
}

#[test]
fn links_lists_every_link() {
    in_fresh_netns(|nl| async move {
        let (bridge, vxlan) = bridge_with_vxlan(&nl).await;
        nl.set_alias(vxlan, "weft:vxlan").await.unwrap();
        let links = nl.links().await.unwrap();
        let mut names: Vec<_> = links.iter().map(|link| link.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["br0", "lo", "vx0"]);
        let vx = links.iter().find(|link| link.index == vxlan).unwrap();
        assert_eq!((vx.master, vx.alias.as_deref()), (Some(bridge), Some("weft:vxlan")));
    });
}
