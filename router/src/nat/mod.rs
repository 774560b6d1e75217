//! Pod egress and host access (scaffold: the NAT work fills this in).
//!
//! One task owns weft's own nftables table and the sysctls the bridge
//! needs; it talks to the core only through [`NatInput`] (what the rules
//! depend on: this node's IPAM ranges) and `Command::Nat` (its state, for
//! `weft status` and readiness).

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

use crate::command::Command;
use crate::shared::Shared;

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
#[derive(Debug, Clone, Default)]
pub struct NatState {
    /// The rules are in place (or NAT is off): the router may be ready.
    pub ready: bool,
    /// `weft status` lines: (label, text).
    pub lines: Vec<(String, String)>,
}

/// Counters of the NAT task for `/metrics`.
#[derive(Debug, Default)]
pub struct NatMetrics {}

impl NatMetrics {
    pub fn render(&self, _out: &mut String) {}
}

/// Starts the NAT task.
pub fn spawn(
    cfg: NatConfig,
    _input: watch::Receiver<NatInput>,
    commands: UnboundedSender<Command>,
    _shared: Arc<Shared>,
) {
    let state = NatState { ready: true, lines: vec![("NAT".into(), format!("not managed (range {})", cfg.range))] };
    let _ = commands.send(Command::Nat(state));
}
