//! nftables objects as plain values: a table with its sets, chains and
//! rules, as weft wants one to be and as it reads one back from the kernel.

use std::net::Ipv4Addr;

use super::expr::Expr;

/// The address family of a table (`nft`'s `ip`, `inet`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
    Inet,
    Bridge,
    Netdev,
    Arp,
}

impl Family {
    /// `NFPROTO_*`.
    pub(super) fn number(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ipv4 => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
            Family::Bridge => 7,
            Family::Ipv6 => 10,
        }
    }

    /// As `nft` spells it.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
            Family::Inet => "inet",
            Family::Bridge => "bridge",
            Family::Netdev => "netdev",
            Family::Arp => "arp",
        }
    }
}

/// A base chain's hook (the netfilter hooks of the ip/ip6/inet families).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Other(u32),
}

impl Hook {
    pub(super) fn number(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
            Hook::Other(n) => n,
        }
    }

    pub(super) fn from_number(n: u32) -> Hook {
        match n {
            0 => Hook::Prerouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::Postrouting,
            n => Hook::Other(n),
        }
    }
}

/// A base chain's type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
    Other(String),
}

impl ChainType {
    pub(super) fn name(&self) -> &str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
            ChainType::Other(name) => name,
        }
    }

    pub(super) fn from_name(name: &str) -> ChainType {
        match name {
            "filter" => ChainType::Filter,
            "nat" => ChainType::Nat,
            "route" => ChainType::Route,
            other => ChainType::Other(other.to_owned()),
        }
    }
}

/// What a base chain does with a packet no rule decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Accept,
    Drop,
}

/// Standard priorities (`nft`'s `filter`, `srcnat`, ...).
pub mod priority {
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SRCNAT: i32 = 100;
}

/// What makes a chain a base chain: where it hooks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Policy,
}

/// A rule: its expressions and an optional comment (the rule's user data,
/// which both `nft` and `iptables-nft` show).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(exprs: Vec<Expr>) -> Rule {
        Rule { exprs, comment: None }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

/// A chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    pub name: String,
    /// `None` for a regular chain (only reached by jump or goto).
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// A rule as read back, with the handle that names it for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleState {
    pub handle: u64,
    pub rule: Rule,
}

/// A chain as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<RuleState>,
}

impl ChainState {
    pub fn to_chain(&self) -> Chain {
        Chain {
            name: self.name.clone(),
            base: self.base.clone(),
            rules: self.rules.iter().map(|r| r.rule.clone()).collect(),
        }
    }
}

/// An inclusive range of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Interval {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// A named set of IPv4 addresses (`type ipv4_addr`), with `flags interval`
/// when `interval` (then its elements are ranges, else single addresses).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set {
    pub name: String,
    pub interval: bool,
    pub elements: Vec<Ipv4Interval>,
}

/// A table and everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    /// `flags dormant`: present but not evaluated.
    pub dormant: bool,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table { family, name: name.into(), dormant: false, sets: Vec::new(), chains: Vec::new() }
    }

    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// How `actual` (read from the kernel) differs from this table, in
    /// words; `None` when they are the same. Sets and chains compare by
    /// name, whatever order the kernel lists them in; rules in order.
    pub fn difference(&self, actual: &Table) -> Option<String> {
        let what = format!("table {} {}", self.family.keyword(), self.name);
        if (self.family, &self.name) != (actual.family, &actual.name) {
            return Some(format!("{what}: comparing with table {} {}", actual.family.keyword(), actual.name));
        }
        if self.dormant != actual.dormant {
            return Some(format!("{what}: dormant is {}", actual.dormant));
        }
        for set in &self.sets {
            match actual.set(&set.name) {
                None => return Some(format!("{what}: set {} is missing", set.name)),
                Some(other) if other.interval != set.interval => {
                    return Some(format!("{what}: set {} has other flags", set.name))
                }
                Some(other) if sorted(&other.elements) != sorted(&set.elements) => {
                    return Some(format!("{what}: set {} holds other elements", set.name))
                }
                Some(_) => {}
            }
        }
        for chain in &self.chains {
            let Some(other) = actual.chain(&chain.name) else {
                return Some(format!("{what}: chain {} is missing", chain.name));
            };
            if other.base != chain.base {
                return Some(format!("{what}: chain {} hooks in differently", chain.name));
            }
            if other.rules.len() != chain.rules.len() {
                return Some(format!(
                    "{what}: chain {} has {} rules, not {}",
                    chain.name,
                    other.rules.len(),
                    chain.rules.len()
                ));
            }
            if let Some(i) = chain.rules.iter().zip(&other.rules).position(|(a, b)| a != b) {
                return Some(format!("{what}: chain {} rule {} differs", chain.name, i + 1));
            }
        }
        let extra_set = actual.sets.iter().find(|s| self.set(&s.name).is_none());
        if let Some(set) = extra_set {
            return Some(format!("{what}: holds a set {} of someone else", set.name));
        }
        let extra_chain = actual.chains.iter().find(|c| self.chain(&c.name).is_none());
        if let Some(chain) = extra_chain {
            return Some(format!("{what}: holds a chain {} of someone else", chain.name));
        }
        None
    }
}

fn sorted(elements: &[Ipv4Interval]) -> Vec<Ipv4Interval> {
    let mut v = elements.to_vec();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::expr::Verdict;

    fn table() -> Table {
        let mut t = Table::new(Family::Ipv4, "t");
        t.sets.push(Set {
            name: "s".into(),
            interval: true,
            elements: vec![
                Ipv4Interval { first: Ipv4Addr::new(10, 0, 0, 0), last: Ipv4Addr::new(10, 0, 0, 255) },
                Ipv4Interval { first: Ipv4Addr::new(10, 0, 2, 0), last: Ipv4Addr::new(10, 0, 2, 255) },
            ],
        });
        t.chains.push(Chain {
            name: "c".into(),
            base: Some(BaseChain { kind: ChainType::Filter, hook: Hook::Input, priority: 0, policy: Policy::Accept }),
            rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Accept)]), Rule::new(vec![Expr::Counter])],
        });
        t.chains.push(Chain { name: "d".into(), base: None, rules: Vec::new() });
        t
    }

    #[test]
    fn order_of_sets_chains_and_elements_does_not_matter() {
        let a = table();
        let mut b = table();
        b.chains.reverse();
        b.sets[0].elements.reverse();
        assert_eq!(a.difference(&b), None);
    }

    #[test]
    fn differences_are_named() {
        let a = table();
        let mut b = table();
        b.chains[0].rules.clear();
        assert_eq!(a.difference(&b).as_deref(), Some("table ip t: chain c has 0 rules, not 2"));
        let mut b = table();
        b.chains[0].rules.swap(0, 1);
        assert_eq!(a.difference(&b).as_deref(), Some("table ip t: chain c rule 1 differs"));
        let mut b = table();
        b.sets[0].elements.pop();
        assert_eq!(a.difference(&b).as_deref(), Some("table ip t: set s holds other elements"));
        let mut b = table();
        b.chains.push(Chain { name: "x".into(), base: None, rules: Vec::new() });
        assert_eq!(a.difference(&b).as_deref(), Some("table ip t: holds a chain x of someone else"));
        let mut b = table();
        b.dormant = true;
        assert!(a.difference(&b).is_some());
        let mut b = table();
        if let Some(base) = b.chains[0].base.as_mut() {
            base.policy = Policy::Drop;
        }
        assert_eq!(a.difference(&b).as_deref(), Some("table ip t: chain c hooks in differently"));
    }
}
