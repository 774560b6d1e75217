//! Pod egress and host access: weft's own nftables table (`table ip weft`,
//! masquerading between the pod range and the rest, see [`ruleset`]), the
//! sysctls the bridge needs ([`sysctl`]), and accept rules in iptables'
//! FORWARD chain where its policy is DROP ([`forward`]).
//!
//! One task owns all of it ([`canary`]); it talks to the core only through
//! [`NatInput`] (what the rules depend on: this node's IPAM ranges) and
//! `Command::Nat` (its state, for `weft status` and readiness). Everything
//! goes over netlink (`weft_netlink::nft`): the image has no `nft` or
//! `iptables` binary.

pub mod apply;
mod canary;
pub mod forward;
mod metrics;
pub mod ruleset;
pub mod sysctl;

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::command::Command;
use crate::shared::Shared;

pub use metrics::NatMetrics;

/// What the router was configured with.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// Manage the table at all (`--no-nat` turns it off).
    pub enabled: bool,
    /// The cluster's pod range.
    pub range: weft_proto::ipam::Range,
    /// The node bridge pods attach to.
    pub bridge: String,
    /// Weave's NO_MASQ_LOCAL: traffic to this node's own pods keeps its
    /// client address (for `externalTrafficPolicy: Local`).
    pub no_masq_local: bool,
    /// The router's HTTP API port, guarded against non-local access.
    pub http_port: u16,
}

/// What the rules depend on, as the core last published it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatInput {
    /// This node's IPAM ranges, `(first, last)` inclusive.
    pub local: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// The NAT task's state, as `weft status` and readiness show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// The rules are in place (or NAT is off): the router may be ready.
    pub ready: bool,
    /// `weft status` lines: (label, text).
    pub lines: Vec<(String, String)>,
}

/// Starts the NAT task on a thread of its own (its netlink calls block
/// for microseconds; its waits go through the runtime of the caller).
pub fn spawn(
    cfg: NatConfig,
    input: watch::Receiver<NatInput>,
    commands: UnboundedSender<Command>,
    shared: Arc<Shared>,
) {
    if !cfg.enabled {
        let state = NatState {
            ready: true,
            lines: vec![("NAT".into(), "not managed (--no-nat): no masquerading, sysctls left as they are".into())],
        };
        let _ = commands.send(Command::Nat(state));
        return;
    }
    let failed = |why: String| NatState { ready: false, lines: vec![("NAT".into(), why)] };
    let runtime = match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle,
        Err(err) => {
            let _ = commands.send(Command::Nat(failed(format!("cannot start: {err}"))));
            return;
        }
    };
    let errors = commands.clone();
    let started = std::thread::Builder::new()
        .name("weft-nat".into())
        .spawn(move || canary::run(cfg, input, commands, shared, runtime));
    if let Err(err) = started {
        let _ = errors.send(Command::Nat(failed(format!("cannot start the NAT thread: {err}"))));
    }
}
