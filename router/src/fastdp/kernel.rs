//! The fast path's kernel side: the VXLAN device on the bridge, and a task
//! that keeps the kernel's forwarding entries equal to what the control
//! core wants, reports the bridge's local pod MACs and the device's
//! counters. Netlink round trips never run on the control core.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc::UnboundedSender, watch};
use weft_netlink::{BridgeFdbKind, BridgePortOptions, Netlink, VxlanSpec, VxlanVni};
use weft_proto::ethernet::MacAddr;
use weft_proto::fastdp::{self as plan, FastDpHeartbeat, FdbEntry};
use weft_proto::PeerName;

use super::socket::HeartbeatSocket;
use crate::command::Command;
use crate::command::Heartbeat;
use crate::fastdp::{Availability, Desired};
use crate::shared::Shared;

/// One VNI for the whole cluster: the FDB entries, not the VNI, steer
/// frames. ("wef" in ASCII.)
pub const VNI: u32 = 0x77_65_66;
/// How often the kernel state is re-read even without changes: picks up
/// new local pods' MACs and repairs entries someone else changed.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// What the router needs from the fast-path device once it exists.
#[derive(Debug)]
pub struct Device {
    pub index: u32,
    pub socket: HeartbeatSocket,
    /// The device's own FDB as found at startup: left by the previous
    /// incarnation of this router, claimed by reconnecting peers.
    pub inherited: Vec<FdbEntry>,
}

/// The bridge the fast path attaches to, and the sleeve's port on it.
#[derive(Debug, Clone, Copy)]
pub struct Bridge<'a> {
    pub name: &'a str,
    pub index: u32,
    pub tap_index: u32,
}

/// Makes (or reuses) the VXLAN device and attaches it to the bridge.
/// Failures are not fatal: the router runs sleeve-only and says why.
/// Why an encrypted cluster can't use a kernel path, as `weft status`
/// says it: which kernel ciphers this node lacks (or, if present, that
/// weft does not drive them yet).
pub fn encrypted_kernel_note() -> String {
    let wireguard = std::path::Path::new("/sys/module/wireguard").exists();
    let crypto = std::fs::read_to_string("/proc/crypto").unwrap_or_default();
    let esp_aead = crypto.contains("rfc4106(gcm(aes))") || crypto.contains("rfc7539esp(chacha20,poly1305)");
    match (wireguard, esp_aead) {
        (false, false) => "this kernel has no WireGuard module or ESP AEAD; VXLAN would carry pod traffic in clear".into(),
        _ => "weft has no encrypted kernel path yet (the kernel has WireGuard or ESP AEAD); VXLAN would carry pod traffic in clear"
            .into(),
    }
}

pub async fn setup(
    nl: &Netlink,
    off: Option<Availability>,
    bridge: Bridge<'_>,
    port: u16,
    pod_mtu: u32,
    name: PeerName,
) -> (Availability, Option<Device>) {
    let (bridge_index, tap_index) = (bridge.index, bridge.tap_index);
    let vxlan = crate::devices::vxlan_name(bridge.name);
    if let Some(off) = off {
        // A device left from a run with the fast path on would keep
        // flooding pod frames next to the sleeve.
        match nl.delete_link(&vxlan).await {
            Ok(true) => tracing::info!("fast path disabled: removed the old VXLAN device {vxlan}"),
            Ok(false) => {}
            Err(err) => tracing::warn!("fast path disabled, but the old VXLAN device {vxlan} stays: {err}"),
        }
        return (off, None);
    }
    let dstport = port.wrapping_add(1);
    match make_device(nl, &vxlan, bridge_index, tap_index, dstport, pod_mtu, name).await {
        Ok(device) => (Availability::Enabled { vxlan, port: dstport }, Some(device)),
        Err(err) => {
            let why = format!("{err:#}");
            tracing::warn!("fast path unavailable, every connection uses the sleeve: {why}");
            (Availability::Unavailable(why), None)
        }
    }
}

async fn make_device(
    nl: &Netlink,
    vxlan: &str,
    bridge_index: u32,
    tap_index: u32,
    dstport: u16,
    pod_mtu: u32,
    name: PeerName,
) -> anyhow::Result<Device> {
    use anyhow::Context;
    let mac = *name.as_bytes();
    if !MacAddr(mac).is_unicast() {
        anyhow::bail!("peer name {name} is not a unicast MAC, so it cannot address heartbeats");
    }
    // Peers address our heartbeats to our peer name: the bridge must take
    // those frames as its own, not flood them to the pods.
    if nl.link_mac(bridge_index).await? != mac {
        nl.set_mac(bridge_index, mac).await.context("setting the bridge's MAC to the peer name")?;
    }
    let spec = VxlanSpec {
        name: vxlan,
        vni: VxlanVni::Fixed(VNI),
        dstport,
        learning: false,
        df_set: true,
        local: None,
        underlay: None,
    };
    let existing = match nl.link_index(vxlan).await? {
        Some(index) => match nl.vxlan_info(index).await? {
            Some(info) if info.vni == Some(VNI) && info.dstport == dstport && !info.learning && info.df_set => {
                Some(index)
            }
            _ => {
                tracing::info!("replacing {vxlan}: its settings are not weft's");
                nl.delete_link(vxlan).await?;
                None
            }
        },
        None => None,
    };
    let (index, inherited) = match existing {
        // A restart: the kernel kept forwarding while we were away.
        Some(index) => {
            let inherited = vxlan_entries(nl, index).await?;
            tracing::info!("reusing {vxlan} with {} forwarding entries", inherited.len());
            (index, inherited)
        }
        None => (nl.create_vxlan(&spec).await.with_context(|| format!("creating VXLAN device {vxlan}"))?, Vec::new()),
    };
    nl.set_mtu(index, pod_mtu).await?;
    nl.set_alias(index, crate::devices::VXLAN_ALIAS).await?;
    nl.set_master(index, bridge_index).await?;
    // Isolation keeps the bridge from passing frames between the sleeve
    // (TAP) and the fast path (VXLAN): each remote peer gets a frame by one
    // of them only. No learning on VXLAN: its MACs are ours to program.
    let vx_port = BridgePortOptions { isolated: Some(true), learning: Some(false), hairpin: None };
    nl.set_bridge_port(index, &vx_port).await.context("isolating the VXLAN bridge port")?;
    let tap_port = BridgePortOptions { isolated: Some(true), learning: None, hairpin: None };
    nl.set_bridge_port(tap_index, &tap_port).await.context("isolating the TAP bridge port")?;
    nl.set_up(index).await?;
    let socket = HeartbeatSocket::open(index).with_context(|| format!("opening a packet socket on {vxlan}"))?;
    Ok(Device { index, socket, inherited })
}

/// Keeps the kernel in line with the latest [`Desired`] state, reports
/// local MACs (as `Command::LocalMacs`) and each applied generation (as
/// `Command::FastDpApplied`), and copies the device's counters to metrics.
pub async fn run(
    nl: Arc<Netlink>,
    bridge_index: u32,
    tap_index: u32,
    vxlan_index: u32,
    mut desired: watch::Receiver<Option<Arc<Desired>>>,
    commands: UnboundedSender<Command>,
    shared: Arc<Shared>,
) {
    let mut last_macs: Option<Vec<MacAddr>> = None;
    let mut failing = false;
    loop {
        let current = desired.borrow_and_update().clone();
        match sync_once(&nl, bridge_index, tap_index, vxlan_index, current.as_deref()).await {
            Ok(macs) => {
                if failing {
                    tracing::info!("kernel forwarding entries in sync again");
                    failing = false;
                }
                if last_macs.as_ref() != Some(&macs) {
                    last_macs = Some(macs.clone());
                    let _ = commands.send(Command::LocalMacs(macs));
                }
                if let Some(d) = current {
                    let _ = commands.send(Command::FastDpApplied(d.generation));
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!("cannot sync kernel forwarding entries (will retry): {err:#}");
                    failing = true;
                }
            }
        }
        if let Ok(stats) = nl.link_stats(vxlan_index).await {
            shared.metrics.set_fastdp_counters(stats.rx_packets, stats.tx_packets, stats.rx_bytes, stats.tx_bytes);
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESYNC_EVERY) => {}
        }
    }
}

/// The VXLAN device's own (`self`) entries that have a destination.
async fn vxlan_entries(nl: &Netlink, index: u32) -> Result<Vec<FdbEntry>, weft_netlink::NetlinkError> {
    let entries = nl.fdb_list(index).await?;
    Ok(entries.into_iter().filter_map(|e| Some(FdbEntry { mac: MacAddr(e.mac), dst: e.dst? })).collect())
}

/// One reconciliation; returns the pod MACs learned on local ports.
async fn sync_once(
    nl: &Netlink,
    bridge_index: u32,
    tap_index: u32,
    vxlan_index: u32,
    desired: Option<&Desired>,
) -> anyhow::Result<Vec<MacAddr>> {
    let bridge_entries = nl.bridge_fdb_list(bridge_index).await?;
    let local: BTreeSet<MacAddr> = bridge_entries
        .iter()
        .filter(|e| e.kind == BridgeFdbKind::Dynamic && e.port != tap_index && e.port != vxlan_index)
        .map(|e| MacAddr(e.mac))
        .filter(|m| m.is_unicast())
        .collect();
    let Some(desired) = desired else { return Ok(local.into_iter().collect()) };

    // Bridge entries steering pod MACs to the VXLAN port. One that
    // learning moved elsewhere, or that lost `sticky`, is not in place.
    let ours = bridge_entries.iter().filter(|e| e.port == vxlan_index && e.kind == BridgeFdbKind::Static);
    let in_place: BTreeSet<MacAddr> = ours.clone().filter(|e| e.sticky).map(|e| MacAddr(e.mac)).collect();
    let want: BTreeSet<MacAddr> = desired.bridge.iter().copied().collect();
    // Removals first, bridge before device: a frame is then steered to
    // VXLAN only while the device still knows where to send it.
    for mac in ours.map(|e| MacAddr(e.mac)).filter(|m| !want.contains(m)) {
        nl.bridge_fdb_del(vxlan_index, mac.0).await?;
    }
    let actual = vxlan_entries(nl, vxlan_index).await?;
    let edits = plan::plan(&desired.vxlan, &actual);
    for e in &edits.remove {
        nl.fdb_del(vxlan_index, &weft_netlink::FdbEntry { mac: e.mac.0, dst: Some(e.dst) }).await?;
    }
    for e in &edits.add {
        let entry = weft_netlink::FdbEntry { mac: e.mac.0, dst: Some(e.dst) };
        if e.mac == MacAddr::ZERO {
            nl.fdb_append(vxlan_index, &entry).await?;
        } else {
            nl.fdb_add(vxlan_index, &entry).await?;
        }
    }
    // `bridge_fdb_add` replaces, so it also takes back a MAC that a
    // dynamic entry on another port holds.
    for mac in want.difference(&in_place) {
        nl.bridge_fdb_add(vxlan_index, mac.0, true).await?;
    }
    if !edits.is_empty() {
        tracing::debug!("fast-path FDB: {} added, {} removed", edits.add.len(), edits.remove.len());
    }
    Ok(local.into_iter().collect())
}

/// Fast-path heartbeats arrive on a packet socket; a thread blocks on it
/// and hands them to the core through the bounded heartbeat queue.
pub fn spawn_heartbeat_reader(socket: HeartbeatSocket, shared: Arc<Shared>) -> std::io::Result<()> {
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    std::thread::Builder::new().name("weft-fastdp-hb".into()).spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let len = match socket.recv(&mut buf) {
                Ok(Some(len)) => len,
                Ok(None) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("fast-path heartbeat socket failed: {e}");
                    return;
                }
            };
            match FastDpHeartbeat::parse(&buf[..len]) {
                Ok(hb) => {
                    if shared.heartbeats.try_send(Heartbeat::FastDp(hb)).is_err() {
                        shared.metrics.drop(crate::metrics::Drop::HeartbeatQueueFull, 1);
                    }
                }
                Err(err) => {
                    tracing::trace!("malformed fast-path heartbeat: {err}");
                    shared.metrics.drop(crate::metrics::Drop::MalformedFrame, 1);
                }
            }
        }
    })?;
    Ok(())
}
