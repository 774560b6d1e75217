//! `weft reset`: undoes what weft set up on this node. Stops a running
//! router through its API, deletes the devices the router and weft-net
//! made, weft's nftables table and the accept rules it added to iptables'
//! FORWARD chain, and removes the router's persisted state, so that the
//! next start is a fresh peer. Safe to repeat: what is already gone is not
//! an error.

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_netlink::nft::NftSocket;
use weft_netlink::{is_pod_veth_tag, LinkDetails, LinkKind, Netlink, NetlinkError};

use crate::devices::{is_router_alias, tap_name, vxlan_name};

/// How long a router gets to stop answering after being asked to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Per request: a router that does not answer within this is taken as gone.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The router's files under its data dir. Their write-then-rename
/// leftovers are their `atomic_file::temp_path`s.
const STATE_FILES: [&str; 4] =
    [crate::identity::NAME_FILE, crate::ipam::STATE_FILE, crate::kube::MARKER_FILE, crate::kube::NODES_CACHE_FILE];

#[derive(Debug, Clone, clap::Args)]
pub struct ResetArgs {
    /// The bridge the router used (as its --bridge).
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
    pub bridge: String,
    /// The router's --data-dir. Default: the router's default here
    /// (/var/lib/weft, or /var/lib/weft/netns-<id> outside the host's
    /// network namespace).
    #[arg(long, env = "WEFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: ResetArgs, http_addr: &str) -> Result<()> {
    stop_router(http_addr)?;
    let bridge = args.bridge.as_str();
    let (mut tally, listed) = weft_netlink::block_on_netlink(|nl| async move {
        let mut tally = Tally::default();
        let listed = remove_links(&nl, bridge, &mut tally).await;
        (tally, listed)
    })?;
    listed.context("listing this node's network devices")?;
    remove_nat(&mut tally);
    let data_dir = args.data_dir.unwrap_or_else(crate::config::default_data_dir);
    remove_state(&data_dir, &mut tally);
    tally.finish()
}

/// Asks a router answering at `http_addr` to exit and waits until its API
/// is gone. Nothing answering is success: there is no router to stop.
fn stop_router(http_addr: &str) -> Result<()> {
    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
    let url = |path: &str| format!("http://{http_addr}{path}");
    match agent.post(&url("/shutdown")).call() {
        Ok(_) => println!("asked the router at {http_addr} to shut down"),
        Err(ureq::Error::Status(404, _)) => println!(
            "the router at {http_addr} is an older version without /shutdown: \
             waiting for it to be stopped some other way (e.g. SIGTERM)"
        ),
        Err(ureq::Error::Status(code, response)) => {
            let text = response.into_string().unwrap_or_default();
            bail!("the router at {http_addr} refused to shut down: {code} {}", text.trim())
        }
        Err(ureq::Error::Transport(_)) => {
            println!("no router answering at {http_addr}");
            return Ok(());
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    // Any answer, even an error status, means it is still there.
    while !matches!(agent.get(&url("/status")).call(), Err(ureq::Error::Transport(_))) {
        if Instant::now() >= deadline {
            bail!(
                "the router at {http_addr} did not stop within {}s; stop it (e.g. SIGTERM) and run reset again",
                STOP_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
    println!("router stopped");
    Ok(())
}

/// Deletes, ports first: the fast path's VXLAN device, any device the
/// router tagged on the bridge (a VXLAN or TAP under an older name), the
/// TAP, the host ends of pods' veths (tagged by weft-net), the bridge.
/// A link with one of our names but of another kind is left alone.
async fn remove_links(nl: &Netlink, bridge: &str, tally: &mut Tally) -> Result<(), NetlinkError> {
    let links = nl.links().await?;
    let bridge_link = named(&links, bridge, LinkKind::Bridge);
    let mut doomed: Vec<(&LinkDetails, String)> = Vec::new();
    if let Some(vxlan) = named(&links, &vxlan_name(bridge), LinkKind::Vxlan) {
        doomed.push((vxlan, format!("VXLAN device {}", vxlan.name)));
    }
    if let Some(bridge_link) = bridge_link {
        for link in &links {
            let tagged = link.alias.as_deref().is_some_and(is_router_alias);
            if tagged && link.master == Some(bridge_link.index) && matches!(link.kind, LinkKind::Vxlan | LinkKind::Tun)
            {
                doomed.push((
                    link,
                    format!("{} device {} ({})", link.kind, link.name, link.alias.as_deref().unwrap_or("")),
                ));
            }
        }
    }
    if let Some(tap) = named(&links, &tap_name(bridge), LinkKind::Tun) {
        doomed.push((tap, format!("TAP {}", tap.name)));
    }
    for link in &links {
        if let (LinkKind::Veth, Some(alias)) = (&link.kind, link.alias.as_deref()) {
            if is_pod_veth_tag(alias) {
                doomed.push((link, format!("pod veth {} ({alias})", link.name)));
            }
        }
    }
    if let Some(bridge_link) = bridge_link {
        doomed.push((bridge_link, format!("bridge {}", bridge_link.name)));
    }

    let mut done = Vec::new();
    for (link, what) in doomed {
        if done.contains(&link.index) {
            continue;
        }
        done.push(link.index);
        match nl.delete_link(&link.name).await {
            Ok(true) => tally.removed(what),
            // Gone since the listing (e.g. a veth's other end).
            Ok(false) => {}
            Err(err) => tally.failed(what, err),
        }
    }
    Ok(())
}

/// Deletes `table ip weft` and weft's rules in `ip filter FORWARD` (the
/// router keeps both across restarts, so only reset removes them).
fn remove_nat(tally: &mut Tally) {
    let unsupported =
        |err: &NetlinkError| matches!(err.errno(), Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT));
    let mut sock = match NftSocket::open() {
        Ok(sock) => sock,
        Err(err) => {
            tally.failed("weft's nftables rules (opening the netlink socket)", err);
            return;
        }
    };
    match crate::nat::apply::remove(&mut sock) {
        Ok(true) => tally.removed(format!("nftables table ip {}", crate::nat::ruleset::TABLE)),
        Ok(false) => {}
        Err(err) if unsupported(&err) => {
            println!("no nftables in this kernel: no weft rules to remove");
            return;
        }
        Err(err) => tally.failed(format!("nftables table ip {}", crate::nat::ruleset::TABLE), err),
    }
    match crate::nat::forward::remove_all(&mut sock) {
        Ok(handles) => {
            for handle in handles {
                tally.removed(format!("accept rule {handle} of weft in iptables' ip filter FORWARD"));
            }
        }
        Err(err) => tally.failed("weft's accept rules in ip filter FORWARD", err),
    }
}

/// The link called `name` if it is of kind `wanted`; says so if one of
/// another kind holds the name.
fn named<'a>(links: &'a [LinkDetails], name: &str, wanted: LinkKind) -> Option<&'a LinkDetails> {
    let link = links.iter().find(|link| link.name == name)?;
    if link.kind == wanted {
        return Some(link);
    }
    println!("left {name} alone: it is a {}, not a {wanted}", link.kind);
    None
}

/// Removes the state files, their leftovers, then the directory if that
/// left it empty.
fn remove_state(data_dir: &Path, tally: &mut Tally) {
    for name in STATE_FILES {
        let path = data_dir.join(name);
        // Also the temp file of an older weft (`NAME.tmp`).
        let leftovers = [crate::atomic_file::temp_path(&path), Some(path.with_extension("tmp"))];
        for path in leftovers.into_iter().flatten().chain([path]) {
            match std::fs::remove_file(&path) {
                Ok(()) => tally.removed(path.display()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => tally.failed(path.display(), err),
            }
        }
    }
    match std::fs::remove_dir(data_dir) {
        Ok(()) => tally.removed(format!("directory {}", data_dir.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => {
            println!("kept {}: it holds other files", data_dir.display());
        }
        Err(err) => tally.failed(format!("directory {}", data_dir.display()), err),
    }
}

/// What reset did, printed as it happens, one line per item.
#[derive(Debug, Default)]
struct Tally {
    removed: usize,
    failed: usize,
}

impl Tally {
    fn removed(&mut self, what: impl Display) {
        println!("removed {what}");
        self.removed += 1;
    }

    fn failed(&mut self, what: impl Display, err: impl Display) {
        eprintln!("weft: could not remove {what}: {err}");
        self.failed += 1;
    }

    fn finish(self) -> Result<()> {
        if self.failed > 0 {
            bail!("reset incomplete: {} item(s) could not be removed ({} removed)", self.failed, self.removed);
        }
        match self.removed {
            0 => println!("reset: nothing was left to remove"),
            n => println!("reset: removed {n} item(s)"),
        }
        Ok(())
    }
}
