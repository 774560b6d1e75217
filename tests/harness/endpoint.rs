//! Things with an IP inside their own namespace (pods, underlay hosts), and
//! what tests do with them: ping, wait for reachability, move bytes.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::ping::{ping, PingStats};
use crate::transfer::{tcp_transfer, TransferStats};
use crate::wait::wait_until;

/// A namespace with one interesting address.
pub trait Endpoint {
    fn netns(&self) -> &Netns;
    fn ip(&self) -> Ipv4Addr;

    /// `ping -c count` from this endpoint; loss shows in the stats, not as `Err`.
    fn ping(&self, target: impl Into<IpAddr>, count: u32) -> Result<PingStats> {
        ping(self.netns(), target.into(), count)
    }

    /// Pings (one request at a time) until one reply arrives, within `timeout`.
    fn wait_reachable(&self, target: impl Into<IpAddr>, timeout: Duration) -> Result<()> {
        let target = target.into();
        wait_until(timeout, Duration::from_millis(100), || Ok(self.ping(target, 1)?.received > 0))
            .with_context(|| format!("{} ({}) cannot reach {target}", self.ip(), self.netns().name()))
    }

    /// Waits until `target` answers, then requires `count` pings to be answered
    /// exactly once each.
    fn ping_ok(&self, target: impl Into<IpAddr>, count: u32, timeout: Duration) -> Result<PingStats> {
        let target = target.into();
        self.wait_reachable(target, timeout)?;
        let stats = self.ping(target, count)?;
        if !stats.all_received() {
            bail!("ping {} -> {target}: {stats:?}", self.ip());
        }
        Ok(stats)
    }

    /// Byte-exact TCP transfer of `bytes` from this endpoint to `to`.
    fn tcp_transfer_to(&self, to: &impl Endpoint, bytes: u64, timeout: Duration) -> Result<TransferStats> {
        tcp_transfer(self.netns(), to.netns(), IpAddr::V4(to.ip()), bytes, timeout)
    }

    /// Runs `f` on a thread inside this endpoint's namespace.
    fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        self.netns().enter(f)
    }
}

/// A pod: its own namespace whose `eth0` is a veth into a node's bridge.
/// Dropping it deletes the namespace and with it both veth ends.
#[derive(Debug)]
pub struct Pod {
    netns: Netns,
    ip: Ipv4Addr,
    node: usize,
    host_veth: String,
    mtu: u32,
}

/// Where and how to plug a new pod in; see [`Pod::attach`].
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// Namespace holding the bridge.
    pub node_ns: &'a Netns,
    /// Index of that node, for the caller's bookkeeping.
    pub node: usize,
    pub bridge: &'a str,
    /// Name of the pod's namespace.
    pub name: String,
    /// Name of the veth end left in `node_ns` (at most 15 characters).
    pub host_veth: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
}

impl Pod {
    /// Creates the pod namespace and plugs it into the bridge via a veth
    /// (`host_veth` on the node side, `eth0` in the pod), both with `mtu`.
    pub fn attach(spec: PodSpec<'_>) -> Result<Pod> {
        let PodSpec { node_ns, node, bridge, name, host_veth, ip, prefix_len, mtu } = spec;
        let netns = Netns::create(name)?;
        crate::netns::plug_veth(node_ns, &host_veth, bridge, &netns, &format!("{ip}/{prefix_len}"), mtu)?;
        Ok(Pod { netns, ip, node, host_veth, mtu })
    }

    /// Index of the node whose bridge this pod is on.
    pub fn node(&self) -> usize {
        self.node
    }

    /// Name of the veth end inside the node namespace.
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// MTU given to the pod's `eth0` (the bridge's MTU at attach time).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }
}

impl Endpoint for Pod {
    fn netns(&self) -> &Netns {
        &self.netns
    }
    fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

/// A non-router host on the underlay wire (e.g. a source of garbage traffic).
#[derive(Debug)]
pub struct UnderlayHost {
    pub(crate) netns: Netns,
    pub(crate) ip: Ipv4Addr,
}

impl Endpoint for UnderlayHost {
    fn netns(&self) -> &Netns {
        &self.netns
    }
    fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}
