//! The NAT task: puts weft's table in place, keeps it there, and follows
//! this node's ranges.
//!
//! Like Weave's canary, but without polling rules: every [`TICK`] it reads
//! the ruleset generation (one small netlink request), and only when that
//! moved since the table was last verified (anyone's commit moves it:
//! `nft flush ruleset`, kube-proxy's syncs, Docker starting) does it read
//! `table ip weft` back, compare, and replace it if it is missing or
//! different. The same pass re-checks the iptables FORWARD chain, which
//! Docker may create or change at any time. The sysctls are re-checked on
//! every tick (two small file reads).
//!
//! The table stays when the router exits: a restarted (or upgraded) router
//! finds it as wanted and writes nothing, so a rolling update never cuts
//! pod egress; `weft reset` removes it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use weft_netlink::nft::{NftSocket, Table};

use super::apply::{self, Check};
use super::forward::{self, Found};
use super::metrics::{add, set};
use super::ruleset::{desired_table, only_local_elements_differ, range_prefix, LOCAL_SET};
use super::sysctl::{self, Sysctls};
use super::{NatConfig, NatInput, NatState};
use crate::command::Command;
use crate::shared::Shared;

/// How often the generation (and the sysctls) are checked.
pub const TICK: Duration = Duration::from_secs(2);

/// What the FORWARD chain check last found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ForwardState {
    Unknown,
    Checked { found: Found, ours: usize },
    Failed(String),
}

struct NatTask {
    cfg: NatConfig,
    shared: Arc<Shared>,
    input: NatInput,
    sock: Option<NftSocket>,
    /// The table the kernel holds as far as we know (written or verified).
    applied: Option<Table>,
    /// The generation at which the kernel's table was last read back as
    /// wanted and the FORWARD chain checked; `None`: check on the next tick.
    verified_gen: Option<u32>,
    restores: u64,
    table_error: Option<String>,
    sysctls: Option<Sysctls>,
    forward: ForwardState,
    legacy: bool,
}

impl NatTask {
    fn new(cfg: NatConfig, shared: Arc<Shared>, input: NatInput) -> NatTask {
        NatTask {
            cfg,
            shared,
            input,
            sock: None,
            applied: None,
            verified_gen: None,
            restores: 0,
            table_error: None,
            sysctls: None,
            forward: ForwardState::Unknown,
            legacy: false,
        }
    }

    fn want(&self) -> Table {
        desired_table(&self.cfg, &self.input)
    }

    /// Records a failure of the table; logged when it starts or changes.
    fn table_failed(&mut self, what: String) {
        add(&self.shared.nat_metrics.apply_errors, 1);
        if self.table_error.as_deref() != Some(what.as_str()) {
            tracing::error!("NAT: {what}");
        }
        self.table_error = Some(what);
    }

    fn table_ok(&mut self) {
        if self.table_error.take().is_some() {
            tracing::info!("NAT: table ip weft in place again");
        }
    }

    /// Opens the socket if it is not; whether there is one.
    fn open(&mut self) -> bool {
        if self.sock.is_none() {
            match NftSocket::open() {
                Ok(sock) => self.sock = Some(sock),
                Err(err) => {
                    self.table_failed(format!("{err}"));
                    return false;
                }
            }
        }
        true
    }

    /// Replaces the whole table with the wanted one.
    fn replace(&mut self, want: Table) {
        self.verified_gen = None;
        if !self.open() {
            return;
        }
        let Some(sock) = self.sock.as_mut() else { return };
        match apply::replace(sock, &want) {
            Ok(()) => {
                add(&self.shared.nat_metrics.rules_applied, 1);
                self.applied = Some(want);
                self.table_ok();
            }
            Err(err) => {
                // The batch is all or nothing, but whether the table was
                // there before is unknown: rebuild next time, never swap.
                self.applied = None;
                self.table_failed(format!("writing table ip weft: {err}"));
            }
        }
    }

    /// This node's ranges changed: swap the set's elements (rules stay).
    fn on_input(&mut self, input: NatInput) {
        self.input = input;
        let want = self.want();
        set(&self.shared.nat_metrics.local_ranges, self.input.local.len() as u64);
        let Some(applied) = self.applied.take() else {
            // Not in place yet: the next tick writes it whole.
            return;
        };
        if applied == want {
            self.applied = Some(applied);
            return;
        }
        if !only_local_elements_differ(&applied, &want) {
            self.replace(want);
            return;
        }
        self.verified_gen = None;
        if !self.open() {
            return;
        }
        let Some(sock) = self.sock.as_mut() else { return };
        match apply::swap_local_elements(sock, &applied, &want) {
            Ok(()) => {
                add(&self.shared.nat_metrics.set_updates, 1);
                tracing::info!("NAT: set {LOCAL_SET} now holds {} range(s) of this node", self.input.local.len());
                self.applied = Some(want);
            }
            Err(err) => {
                add(&self.shared.nat_metrics.apply_errors, 1);
                tracing::warn!("NAT: updating set {LOCAL_SET}: {err}; replacing the table instead");
                self.replace(want);
            }
        }
    }

    fn tick(&mut self) {
        let sysctls = sysctl::ensure_all(Path::new(sysctl::PROC_SYS)).after(self.sysctls.as_ref());
        if self.sysctls.as_ref() != Some(&sysctls) {
            let text = sysctls.describe();
            if sysctls.ok() {
                tracing::info!("NAT: {text}");
            } else {
                tracing::error!("NAT: {text}");
            }
        }
        self.sysctls = Some(sysctls);
        set(&self.shared.nat_metrics.local_ranges, self.input.local.len() as u64);

        if !self.open() {
            return;
        }
        let Some(sock) = self.sock.as_mut() else { return };
        let gen = match sock.generation() {
            Ok(gen) => gen,
            Err(err) => {
                // A broken socket is reopened next time.
                self.sock = None;
                self.table_failed(format!("{err}"));
                return;
            }
        };
        if self.verified_gen == Some(gen) {
            return;
        }
        add(&self.shared.nat_metrics.checks, 1);
        let want = self.want();
        let mut verified = false;
        let Some(sock) = self.sock.as_mut() else { return };
        match apply::check(sock, &want) {
            Ok(Check::Same) => {
                if self.applied.is_none() {
                    tracing::info!("NAT: table ip weft already in place");
                }
                self.applied = Some(want);
                self.table_ok();
                verified = true;
            }
            Ok(outcome) => {
                let what = match outcome {
                    Check::Different(diff) => diff,
                    _ => "table ip weft is missing".to_owned(),
                };
                if self.applied.is_some() {
                    self.restores += 1;
                    add(&self.shared.nat_metrics.restores, 1);
                    tracing::warn!("NAT: {what}: restoring it");
                } else {
                    tracing::info!("NAT: {what}: writing it");
                }
                self.replace(want);
            }
            Err(err) => {
                self.sock = None;
                self.table_failed(format!("reading table ip weft back: {err}"));
                return;
            }
        }
        let forward_ok = self.check_forward();
        self.legacy = forward::legacy_filter_present(Path::new(forward::LEGACY_TABLES));
        // Our own writes moved the generation: the next tick verifies them.
        if verified && forward_ok {
            self.verified_gen = Some(gen);
        }
    }

    fn check_forward(&mut self) -> bool {
        let Some(sock) = self.sock.as_mut() else { return false };
        let state = match forward::ensure(sock, &self.cfg.bridge) {
            Ok(plan) => {
                if !plan.is_noop() {
                    tracing::info!(
                        "NAT: ip filter FORWARD: added {} and removed {} accept rule(s) of weft",
                        plan.add.len(),
                        plan.delete.len()
                    );
                }
                ForwardState::Checked { found: plan.found, ours: plan.ours_after }
            }
            Err(err) => {
                add(&self.shared.nat_metrics.apply_errors, 1);
                ForwardState::Failed(format!("cannot amend ip filter FORWARD: {err}"))
            }
        };
        if state != self.forward {
            match &state {
                ForwardState::Failed(err) => tracing::error!("NAT: {err}"),
                ForwardState::Checked { found, ours } => {
                    tracing::info!("NAT: {}", forward::describe(*found, *ours, &self.cfg.bridge, false))
                }
                ForwardState::Unknown => {}
            }
        }
        let ok = matches!(state, ForwardState::Checked { .. });
        if let ForwardState::Checked { ours, .. } = state {
            set(&self.shared.nat_metrics.forward_rules, ours as u64);
        }
        self.forward = state;
        ok
    }

    fn state(&self) -> NatState {
        let range = range_prefix(&self.cfg);
        let table_ready = self.table_error.is_none() && self.applied.is_some();
        let nat = match (&self.table_error, &self.applied) {
            (Some(err), _) => format!("table ip weft not in place: {err}"),
            (None, None) => "writing nftables table ip weft".to_owned(),
            (None, Some(_)) => {
                let local = if self.cfg.no_masq_local {
                    format!("client addresses kept for this node's {} range(s)", self.input.local.len())
                } else {
                    "NO_MASQ_LOCAL=0: outside traffic to local pods masqueraded too".to_owned()
                };
                format!(
                    "masquerading {range} egress, {local} (nftables table ip weft, restored {} times)",
                    self.restores
                )
            }
        };
        let sysctls_ok = self.sysctls.as_ref().is_some_and(Sysctls::ok);
        let netfilter = self.sysctls.as_ref().map_or_else(|| "checking sysctls".to_owned(), Sysctls::describe);
        let (forwarding, forward_ok) = match &self.forward {
            ForwardState::Unknown => {
                let mut text = "checking iptables FORWARD".to_owned();
                if self.legacy {
                    text = forward::describe(Found::NoChain, 0, &self.cfg.bridge, true);
                }
                (text, false)
            }
            ForwardState::Checked { found, ours } => (
                forward::describe(*found, *ours, &self.cfg.bridge, self.legacy),
                *found != Found::PolicyDrop || *ours == 2,
            ),
            ForwardState::Failed(err) => (err.clone(), false),
        };
        let ready = table_ready && sysctls_ok && forward_ok;
        NatState {
            ready,
            lines: vec![("NAT".into(), nat), ("Netfilter".into(), netfilter), ("Forwarding".into(), forwarding)],
        }
    }
}

/// The task's thread: ticks and input changes until the core goes away.
pub(super) fn run(
    cfg: NatConfig,
    mut input: watch::Receiver<NatInput>,
    commands: UnboundedSender<Command>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
) {
    let first = input.borrow_and_update().clone();
    let mut task = NatTask::new(cfg, shared, first);
    let mut sent: Option<NatState> = None;
    let mut legacy_logged = false;
    loop {
        task.tick();
        if task.legacy && !legacy_logged {
            tracing::warn!(
                "NAT: iptables-legacy has a filter table in this namespace; weft cannot read or amend it: if its \
                 FORWARD policy is DROP, pod traffic is dropped"
            );
            legacy_logged = true;
        }
        if !report(&task, &commands, &mut sent) {
            return;
        }
        let next = Instant::now() + TICK;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // The timer must be made inside the runtime's context.
            match runtime.block_on(async { tokio::time::timeout(left, input.changed()).await }) {
                Ok(Ok(())) => {
                    let changed = input.borrow_and_update().clone();
                    task.on_input(changed);
                    if !report(&task, &commands, &mut sent) {
                        return;
                    }
                }
                // The core is gone: so is the router.
                Ok(Err(_)) => return,
                Err(_elapsed) => break,
            }
        }
    }
}

/// Sends the state to the core when it changed; `false` once the core is gone.
fn report(task: &NatTask, commands: &UnboundedSender<Command>, sent: &mut Option<NatState>) -> bool {
    let state = task.state();
    set(&task.shared.nat_metrics.ready, u64::from(state.ready));
    if sent.as_ref() == Some(&state) {
        return true;
    }
    *sent = Some(state.clone());
    commands.send(Command::Nat(state)).is_ok()
}
