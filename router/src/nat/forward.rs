//! Hosts whose iptables `FORWARD` policy is DROP (Docker sets it; ufw
//! too). With `bridge-nf-call-iptables=1` that policy also drops bridged
//! pod frames, and an accept in weft's own table cannot help: an accept
//! only ends its own base chain, the others on the hook still run. So weft
//! adds two accepts to that very chain, `ip filter FORWARD` (Debian's
//! `iptables` is iptables-nft), in the form iptables-nft itself writes:
//!
//! ```text
//! -A FORWARD -i weft -m comment --comment "weft: forward pod traffic" -j ACCEPT
//! -A FORWARD -o weft -m comment --comment "weft: forward pod traffic" -j ACCEPT
//! ```
//!
//! appended, so that whatever the host and kube-proxy put there first
//! still decides first, and tagged by the comment, so weft (and `weft
//! reset`) finds and removes its own and nothing else. With the policy
//! ACCEPT there is nothing to amend and weft's rules are removed.
//!
//! iptables-legacy keeps its tables in the kernel's x_tables, out of
//! nftables' reach: weft can only say that one exists.

use std::path::Path;

use weft_netlink::nft::{
    iptables_ifname, Batch, ChainState, Direction, Expr, Family, Hook, NftSocket, Policy, Position, Rule, Verdict,
};
use weft_netlink::NetlinkError;

pub const FAMILY: Family = Family::Ipv4;
pub const TABLE: &str = "filter";
pub const CHAIN: &str = "FORWARD";
/// The comment that marks weft's rules.
pub const TAG: &str = "weft: forward pod traffic";
/// Lists the x_tables (iptables-legacy) tables of this namespace.
pub const LEGACY_TABLES: &str = "/proc/net/ip_tables_names";

/// weft's accepts for `bridge`, in and out.
pub fn wanted_rules(bridge: &str) -> Vec<Rule> {
    [Direction::In, Direction::Out]
        .into_iter()
        .map(|d| {
            let exprs = [iptables_ifname(d, bridge), vec![Expr::Counter, Expr::Verdict(Verdict::Accept)]].concat();
            Rule::new(exprs).with_comment(TAG)
        })
        .collect()
}

/// What the chain looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No `ip filter FORWARD` chain: no iptables-nft rules at all.
    NoChain,
    /// The chain exists but is no base chain on the forward hook.
    NotHooked,
    PolicyAccept,
    PolicyDrop,
}

/// What to change in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub found: Found,
    pub add: Vec<Rule>,
    /// Handles of weft's rules to delete (stale, duplicated, or unneeded).
    pub delete: Vec<u64>,
    /// weft's rules in the chain once the plan is carried out.
    pub ours_after: usize,
}

/// Decides, from the chain as read, what makes it right for `bridge`.
pub fn plan(chain: Option<&ChainState>, bridge: &str) -> Plan {
    let Some(chain) = chain else {
        return Plan { found: Found::NoChain, add: Vec::new(), delete: Vec::new(), ours_after: 0 };
    };
    let ours: Vec<_> = chain.rules.iter().filter(|r| r.rule.comment.as_deref() == Some(TAG)).collect();
    let found = match &chain.base {
        Some(base) if base.hook == Hook::Forward => match base.policy {
            Policy::Drop => Found::PolicyDrop,
            Policy::Accept => Found::PolicyAccept,
        },
        _ => Found::NotHooked,
    };
    if found != Found::PolicyDrop {
        return Plan { found, add: Vec::new(), delete: ours.iter().map(|r| r.handle).collect(), ours_after: 0 };
    }
    let mut keep: Vec<u64> = Vec::new();
    let mut add = Vec::new();
    for want in wanted_rules(bridge) {
        match ours.iter().find(|r| r.rule == want && !keep.contains(&r.handle)) {
            Some(r) => keep.push(r.handle),
            None => add.push(want),
        }
    }
    let delete = ours.iter().map(|r| r.handle).filter(|h| !keep.contains(h)).collect();
    let ours_after = keep.len() + add.len();
    Plan { found, add, delete, ours_after }
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }

    pub fn batch(&self) -> Batch {
        let mut batch = Batch::new();
        for handle in &self.delete {
            batch.delete_rule(FAMILY, TABLE, CHAIN, *handle);
        }
        for rule in &self.add {
            batch.add_rule(FAMILY, TABLE, CHAIN, rule, Position::Append);
        }
        batch
    }
}

/// Reads the chain and carries out the plan for `bridge`.
pub fn ensure(sock: &mut NftSocket, bridge: &str) -> Result<Plan, NetlinkError> {
    let chain = sock.read_chain(FAMILY, TABLE, CHAIN)?;
    let plan = plan(chain.as_ref(), bridge);
    sock.commit(&plan.batch())?;
    Ok(plan)
}

/// Deletes every rule of weft's from the chain (for `weft reset`); the
/// handles of those it deleted.
pub fn remove_all(sock: &mut NftSocket) -> Result<Vec<u64>, NetlinkError> {
    let Some(chain) = sock.read_chain(FAMILY, TABLE, CHAIN)? else { return Ok(Vec::new()) };
    let ours: Vec<u64> =
        chain.rules.iter().filter(|r| r.rule.comment.as_deref() == Some(TAG)).map(|r| r.handle).collect();
    let mut batch = Batch::new();
    for handle in &ours {
        batch.delete_rule(FAMILY, TABLE, CHAIN, *handle);
    }
    sock.commit(&batch)?;
    Ok(ours)
}

/// Whether iptables-legacy has a filter table in this namespace.
pub fn legacy_filter_present(tables_file: &Path) -> bool {
    std::fs::read_to_string(tables_file).map(|s| s.lines().any(|l| l.trim() == "filter")).unwrap_or(false)
}

/// The `weft status` text for what was found and done.
pub fn describe(found: Found, ours: usize, bridge: &str, legacy: bool) -> String {
    let mut text = match found {
        Found::NoChain => "no iptables FORWARD chain (ip filter): nothing to amend".to_owned(),
        Found::NotHooked => "ip filter FORWARD is not hooked to forwarding: nothing to amend".to_owned(),
        Found::PolicyAccept => "FORWARD policy accept: nothing to amend".to_owned(),
        Found::PolicyDrop if ours == 2 => {
            format!("FORWARD policy drop: accept rules for {bridge} inserted into ip filter FORWARD")
        }
        Found::PolicyDrop => format!("FORWARD policy drop: only {ours} of 2 accept rules for {bridge} in place"),
    };
    if legacy {
        text.push_str(&format!(
            "; iptables-legacy has a filter table here, which weft cannot read or amend: if its FORWARD policy is \
             DROP, pod traffic is dropped (add `-A FORWARD -i {bridge} -j ACCEPT` and `-A FORWARD -o {bridge} -j \
             ACCEPT` with iptables-legacy)"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_netlink::nft::{BaseChain, ChainType, RuleState};

    fn chain(policy: Policy, rules: Vec<Rule>) -> ChainState {
        ChainState {
            name: CHAIN.into(),
            base: Some(BaseChain { kind: ChainType::Filter, hook: Hook::Forward, priority: 0, policy }),
            rules: rules.into_iter().enumerate().map(|(i, rule)| RuleState { handle: i as u64 + 10, rule }).collect(),
        }
    }

    fn docker() -> Rule {
        Rule::new(
            [iptables_ifname(Direction::In, "docker0"), vec![Expr::Counter, Expr::Verdict(Verdict::Accept)]].concat(),
        )
    }

    #[test]
    fn a_drop_policy_gets_both_accepts_once() {
        let p = plan(Some(&chain(Policy::Drop, vec![docker()])), "weft");
        assert_eq!(p.found, Found::PolicyDrop);
        assert_eq!(p.add, wanted_rules("weft"));
        assert!(p.delete.is_empty());
        assert_eq!(p.ours_after, 2);
        // Applied: nothing more to do.
        let mut rules = vec![docker()];
        rules.extend(wanted_rules("weft"));
        let p = plan(Some(&chain(Policy::Drop, rules)), "weft");
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(
            describe(p.found, p.ours_after, "weft", false),
            "FORWARD policy drop: accept rules for weft inserted into ip filter FORWARD"
        );
    }

    #[test]
    fn stale_and_duplicate_rules_of_ours_go_and_foreign_ones_stay() {
        let mut rules = vec![docker()];
        rules.extend(wanted_rules("old-bridge"));
        rules.extend(wanted_rules("weft"));
        rules.push(wanted_rules("weft")[0].clone());
        // The same expressions without our tag are someone else's.
        rules.push(Rule { comment: None, ..wanted_rules("weft")[1].clone() });
        let p = plan(Some(&chain(Policy::Drop, rules)), "weft");
        assert!(p.add.is_empty());
        assert_eq!(p.delete, [11, 12, 15]);
    }

    #[test]
    fn an_accept_policy_or_no_chain_needs_nothing_of_ours() {
        let mut rules = vec![docker()];
        rules.extend(wanted_rules("weft"));
        let p = plan(Some(&chain(Policy::Accept, rules)), "weft");
        assert_eq!((p.found, p.add.len(), p.delete.clone()), (Found::PolicyAccept, 0, vec![11, 12]));
        let p = plan(None, "weft");
        assert_eq!(p.found, Found::NoChain);
        assert!(p.is_noop());
        assert!(describe(Found::NoChain, 0, "weft", true).contains("iptables-legacy has a filter table"));
    }

    #[test]
    fn legacy_tables_are_read_from_the_proc_listing() {
        let path = std::env::temp_dir().join(format!("weft-legacy-{}", std::process::id()));
        std::fs::write(&path, "nat\nfilter\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(legacy_filter_present(&path));
        std::fs::write(&path, "nat\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(!legacy_filter_present(&path));
        let _ = std::fs::remove_file(&path);
        assert!(!legacy_filter_present(&path));
    }
}
