//! `weft reset` without a router running: it finds what weft made on a node
//! by name, kind and alias tag, deletes that and nothing else, removes the
//! router's state files, and says so; run again, it finds nothing left.
//! (A running router being stopped first is in `fastdp.rs`.)
//!
//! Needs root and `cargo build --bins` first (or `WEFT_BIN`); fails, never
//! skips, without them.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use anyhow::{ensure, Result};
use weft_tests::*;

/// Runs `scenario` on a fresh one-node cluster whose router is never
/// started, and panics on `Err` while the cluster is still alive.
fn with_node(scenario: impl FnOnce(&Cluster) -> Result<()>) {
    let cluster = Cluster::new(1).expect("building the namespace cluster");
    if let Err(e) = scenario(&cluster) {
        panic!("{e:#}");
    }
}

fn reset(c: &Cluster, data_dir: &Path) -> Result<String> {
    let dir = data_dir.to_str().unwrap();
    c.weft_cli_ok(0, &["reset", "--data-dir", dir])
}

fn link_names(ns: &Netns) -> Result<Vec<String>> {
    let links = ns.ip_json(&["link", "show"])?;
    let names = links.as_array().into_iter().flatten().filter_map(|l| l["ifname"].as_str());
    let mut names: Vec<String> = names.map(str::to_owned).collect();
    names.sort();
    Ok(names)
}

#[test]
fn reset_removes_weft_devices_and_state_and_is_idempotent() {
    with_node(|c| {
        let ns = c.node_ns(0);
        // What a router and weft-net leave behind (the TAP made persistent,
        // as a crashed router's is not, to prove it goes too).
        ns.ip(&["link", "add", "weft", "type", "bridge"])?;
        ns.ip(&["link", "add", "weft-vxlan", "type", "vxlan", "id", "7824742", "dstport", "6784", "nolearning"])?;
        ns.ip(&["link", "set", "weft-vxlan", "alias", "weft:vxlan", "master", "weft"])?;
        // A tagged device under another name (e.g. from a renamed scheme).
        ns.ip(&["link", "add", "old-vxlan", "type", "vxlan", "id", "42", "dstport", "6784"])?;
        ns.ip(&["link", "set", "old-vxlan", "alias", "weft:vxlan", "master", "weft"])?;
        ns.ip(&["tuntap", "add", "dev", "weft-tap", "mode", "tap"])?;
        ns.ip(&["link", "set", "weft-tap", "master", "weft"])?;
        ns.ip(&["link", "add", "vethwe000000001", "type", "veth", "peer", "name", "vethwp000000001"])?;
        ns.ip(&["link", "set", "vethwe000000001", "alias", "weft-net:abc/eth0", "master", "weft"])?;
        // Not weft's: an untagged veth, and a tagged VXLAN on no bridge of ours.
        ns.ip(&["link", "add", "keep0", "type", "veth", "peer", "name", "keep1"])?;
        ns.ip(&["link", "set", "keep0", "alias", "someone-else"])?;
        ns.ip(&["link", "add", "stray-vxlan", "type", "vxlan", "id", "43", "dstport", "6784"])?;
        ns.ip(&["link", "set", "stray-vxlan", "alias", "weft:vxlan"])?;

        let data = c.node(0).data_dir();
        for file in ["peer-name", "ipam.bin", "peer-name.tmp", "ipam.tmp"] {
            std::fs::write(data.join(file), b"x")?;
        }

        let out = reset(c, data)?;
        eprintln!("weft reset said:\n{}", out.trim_end());
        for line in [
            "no router answering at",
            "removed VXLAN device weft-vxlan",
            "removed vxlan device old-vxlan (weft:vxlan)",
            "removed TAP weft-tap",
            "removed pod veth vethwe000000001 (weft-net:abc/eth0)",
            "removed bridge weft",
            "removed directory ",
            "reset: removed 10 item(s)",
        ] {
            ensure!(out.contains(line), "no {line:?} in the output of `weft reset`");
        }
        let left = link_names(ns)?;
        ensure!(left == ["eth0", "keep0", "keep1", "lo", "stray-vxlan"], "links after reset: {left:?}");
        ensure!(!data.exists(), "{} left after reset", data.display());

        let again = reset(c, data)?;
        ensure!(again.contains("reset: nothing was left to remove"), "second reset said: {again}");
        ensure!(link_names(ns)? == left, "the second reset changed the links");
        Ok(())
    });
}

#[test]
fn reset_leaves_foreign_links_with_weft_names_and_other_files() {
    with_node(|c| {
        let ns = c.node_ns(0);
        ns.ip(&["link", "add", "weft", "type", "veth", "peer", "name", "weft-vxlan"])?;
        let data = c.node(0).data_dir();
        std::fs::write(data.join("peer-name"), b"x")?;
        std::fs::write(data.join("notes.txt"), b"mine")?;

        let out = reset(c, data)?;
        for line in [
            "left weft alone: it is a veth, not a bridge",
            "left weft-vxlan alone: it is a veth, not a vxlan",
            "removed ",
            "kept ",
            "reset: removed 1 item(s)",
        ] {
            ensure!(out.contains(line), "no {line:?} in the output of `weft reset`:\n{out}");
        }
        ensure!(link_names(ns)? == ["eth0", "lo", "weft", "weft-vxlan"], "links after reset: {:?}", link_names(ns)?);
        ensure!(data.join("notes.txt").exists() && !data.join("peer-name").exists(), "wrong files removed");
        Ok(())
    });
}
