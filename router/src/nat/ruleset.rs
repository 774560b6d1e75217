//! The table weft wants on a node, as a pure function of its configuration
//! and this node's IPAM ranges (no kernel involved):
//!
//! ```text
//! table ip weft {
//!   set local { type ipv4_addr; flags interval; elements = { this node's ranges } }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     meta mark & 0x00004000 == 0x00004000 return             # kube-proxy masquerades these itself
//!     ip daddr @local return                                   # NO_MASQ_LOCAL (absent with NO_MASQ_LOCAL=0)
//!     ip saddr RANGE ip daddr 224.0.0.0/4 return
//!     ip saddr != RANGE ip daddr RANGE counter masquerade fully-random   # host and outside -> pods
//!     ip saddr RANGE ip daddr != RANGE counter masquerade fully-random   # pods -> outside
//!   }
//!   chain input { type filter hook input priority filter; policy accept;
//!     iif != "lo" ip daddr 127.0.0.0/8 tcp dport HTTP_PORT counter drop }
//! }
//! ```
//!
//! Pod-to-pod traffic (both ends in RANGE) matches no masquerade rule, on
//! one node or across nodes: sources are preserved. The input guard keeps
//! the router's API local even where `route_localnet` (set by kube-proxy
//! for NodePorts on localhost) would let outside packets reach 127/8; a
//! drop is final across tables, so it holds whatever else accepts.

use std::net::Ipv4Addr;

use weft_netlink::nft::{
    iif_is, ipv4_in, ipv4_in_set, mark_has_bits, priority, tcp_dport, BaseChain, Chain, ChainType, Expr, Family, Hook,
    Ipv4Field, Ipv4Interval, Ipv4Prefix, Policy, Rule, Set, Table, Verdict, LOOPBACK_IFINDEX,
};

use super::{NatConfig, NatInput};

pub const FAMILY: Family = Family::Ipv4;
/// `table ip weft`.
pub const TABLE: &str = "weft";
/// The set of this node's IPAM ranges.
pub const LOCAL_SET: &str = "local";
pub const POSTROUTING: &str = "postrouting";
pub const INPUT: &str = "input";
/// kube-proxy's `KUBE-MARK-MASQ` bit: its own POSTROUTING masquerades
/// packets carrying it, and a second masquerade here would fight it.
pub const KUBE_MASQ_MARK: u32 = 0x4000;

/// The pod range as a prefix.
pub fn range_prefix(cfg: &NatConfig) -> Ipv4Prefix {
    Ipv4Prefix::new(cfg.range.start(), cfg.range.prefix())
}

/// This node's IPAM ranges as set elements.
pub fn local_elements(input: &NatInput) -> Vec<Ipv4Interval> {
    input.local.iter().map(|&(first, last)| Ipv4Interval { first, last }).collect()
}

fn rule(parts: &[Vec<Expr>], verdict: Expr, comment: &str) -> Rule {
    let mut exprs: Vec<Expr> = parts.concat();
    if !matches!(verdict, Expr::Verdict(Verdict::Return)) {
        exprs.push(Expr::Counter);
    }
    exprs.push(verdict);
    Rule::new(exprs).with_comment(comment)
}

/// The whole table for `cfg` and `input`.
pub fn desired_table(cfg: &NatConfig, input: &NatInput) -> Table {
    use Ipv4Field::{Daddr, Saddr};
    let range = range_prefix(cfg);
    let multicast = Ipv4Prefix::new(Ipv4Addr::new(224, 0, 0, 0), 4);
    let loopback = Ipv4Prefix::new(Ipv4Addr::new(127, 0, 0, 0), 8);
    let ret = || Expr::Verdict(Verdict::Return);
    let masquerade = || Expr::Masquerade { fully_random: true };

    let mut nat = vec![rule(&[mark_has_bits(KUBE_MASQ_MARK)], ret(), "kube-proxy masquerades what it marked")];
    if cfg.no_masq_local {
        nat.push(rule(
            &[ipv4_in_set(Daddr, LOCAL_SET, false)],
            ret(),
            "NO_MASQ_LOCAL: clients of this node's pods keep their address",
        ));
    }
    nat.push(rule(&[ipv4_in(Saddr, range, false), ipv4_in(Daddr, multicast, false)], ret(), "pod multicast"));
    nat.push(rule(
        &[ipv4_in(Saddr, range, true), ipv4_in(Daddr, range, false)],
        masquerade(),
        "host and outside to pods",
    ));
    nat.push(rule(&[ipv4_in(Saddr, range, false), ipv4_in(Daddr, range, true)], masquerade(), "pods to outside"));

    let guard = rule(
        &[iif_is(LOOPBACK_IFINDEX, true), ipv4_in(Daddr, loopback, false), tcp_dport(cfg.http_port)],
        Expr::Verdict(Verdict::Drop),
        "the router API only answers local clients",
    );

    let mut table = Table::new(FAMILY, TABLE);
    table.sets.push(Set { name: LOCAL_SET.into(), interval: true, elements: local_elements(input) });
    table.chains.push(Chain {
        name: POSTROUTING.into(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: priority::SRCNAT,
            policy: Policy::Accept,
        }),
        rules: nat,
    });
    table.chains.push(Chain {
        name: INPUT.into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority: priority::FILTER,
            policy: Policy::Accept,
        }),
        rules: vec![guard],
    });
    table
}

/// Whether `a` and `b` differ in nothing but the elements of [`LOCAL_SET`]
/// (then a change of this node's ranges is an element swap, not a rebuild).
pub fn only_local_elements_differ(a: &Table, b: &Table) -> bool {
    let strip = |t: &Table| {
        let mut t = t.clone();
        for set in &mut t.sets {
            if set.name == LOCAL_SET {
                set.elements.clear();
            }
        }
        t
    };
    strip(a) == strip(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weft_netlink::nft::CmpOp;

    fn cfg(no_masq_local: bool) -> NatConfig {
        NatConfig {
            enabled: true,
            range: "10.32.0.0/12".parse().unwrap(),
            bridge: "weft".into(),
            no_masq_local,
            http_port: 6784,
        }
    }

    fn input() -> NatInput {
        NatInput { local: vec![(Ipv4Addr::new(10, 32, 0, 0), Ipv4Addr::new(10, 35, 255, 255))] }
    }

    fn postrouting(t: &Table) -> &Chain {
        t.chain(POSTROUTING).unwrap()
    }

    /// Runs the postrouting chain on a new connection's first packet as the
    /// kernel would: whether it ends in a masquerade (else a return, or the
    /// end of the chain: no NAT).
    fn masquerades(t: &Table, saddr: Ipv4Addr, daddr: Ipv4Addr, mark: u32) -> bool {
        'rules: for rule in &postrouting(t).rules {
            let mut reg: Vec<u8> = Vec::new();
            for e in &rule.exprs {
                match e {
                    Expr::Meta { .. } => reg = mark.to_ne_bytes().to_vec(),
                    Expr::Payload { offset: 12, .. } => reg = saddr.octets().to_vec(),
                    Expr::Payload { offset: 16, .. } => reg = daddr.octets().to_vec(),
                    Expr::Bitwise { mask, .. } => reg = reg.iter().zip(mask).map(|(a, m)| a & m).collect(),
                    Expr::Cmp { op, data, .. } => {
                        let eq = &reg == data;
                        if (*op == CmpOp::Eq) != eq {
                            continue 'rules;
                        }
                    }
                    Expr::Lookup { set, invert, .. } => {
                        let addr = Ipv4Addr::from(<[u8; 4]>::try_from(reg.as_slice()).unwrap());
                        let inside = t.set(set).unwrap().elements.iter().any(|i| i.first <= addr && addr <= i.last);
                        if inside == *invert {
                            continue 'rules;
                        }
                    }
                    Expr::Counter => {}
                    Expr::Verdict(Verdict::Return) => return false,
                    Expr::Masquerade { .. } => return true,
                    other => panic!("unexpected {other:?} in postrouting"),
                }
            }
        }
        false
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn pods_reaching_outside_are_masqueraded_and_pod_to_pod_never() {
        let t = desired_table(&cfg(true), &input());
        assert!(masquerades(&t, ip("10.32.0.5"), ip("172.31.0.200"), 0));
        assert!(masquerades(&t, ip("10.40.1.5"), ip("8.8.8.8"), 0));
        // Pod to pod: local, remote, either direction.
        assert!(!masquerades(&t, ip("10.32.0.5"), ip("10.32.0.6"), 0));
        assert!(!masquerades(&t, ip("10.32.0.5"), ip("10.40.0.6"), 0));
        assert!(!masquerades(&t, ip("10.40.0.6"), ip("10.32.0.5"), 0));
        // Multicast from pods, and what kube-proxy marked, are left alone.
        assert!(!masquerades(&t, ip("10.32.0.5"), ip("239.1.2.3"), 0));
        assert!(!masquerades(&t, ip("10.32.0.5"), ip("172.31.0.200"), 0x4000));
        assert!(!masquerades(&t, ip("10.32.0.5"), ip("172.31.0.200"), 0xc000));
        assert!(masquerades(&t, ip("10.32.0.5"), ip("172.31.0.200"), 0x8000));
    }

    #[test]
    fn no_masq_local_keeps_client_addresses_for_local_pods_only() {
        let t = desired_table(&cfg(true), &input());
        // To a pod of this node: kept. To a pod elsewhere: masqueraded so
        // the reply comes back through this node.
        assert!(!masquerades(&t, ip("172.31.0.200"), ip("10.33.0.9"), 0));
        assert!(masquerades(&t, ip("172.31.0.200"), ip("10.40.0.9"), 0));
        let t = desired_table(&cfg(false), &input());
        assert!(masquerades(&t, ip("172.31.0.200"), ip("10.33.0.9"), 0));
        assert!(t.set(LOCAL_SET).is_some(), "the set stays, only its rule goes");
        assert_eq!(postrouting(&t).rules.len(), 4);
        assert_eq!(postrouting(&desired_table(&cfg(true), &input())).rules.len(), 5);
    }

    #[test]
    fn the_table_follows_the_configuration() {
        let mut c = cfg(true);
        c.range = "10.244.0.0/16".parse().unwrap();
        c.http_port = 7000;
        let t = desired_table(&c, &NatInput::default());
        assert!(masquerades(&t, ip("10.244.3.1"), ip("10.32.0.1"), 0));
        assert!(!masquerades(&t, ip("10.244.3.1"), ip("10.244.9.1"), 0));
        let guard = &t.chain(INPUT).unwrap().rules[0];
        assert!(guard.exprs.contains(&Expr::Cmp {
            sreg: weft_netlink::nft::Reg::R1,
            op: CmpOp::Eq,
            data: 7000u16.to_be_bytes().to_vec()
        }));
        assert!(guard.exprs.ends_with(&[Expr::Counter, Expr::Verdict(Verdict::Drop)]));
        assert!(t.set(LOCAL_SET).unwrap().elements.is_empty());
    }

    #[test]
    fn a_change_of_ranges_is_only_an_element_change() {
        let a = desired_table(&cfg(true), &input());
        let more = NatInput { local: vec![(ip("10.32.0.0"), ip("10.47.255.255"))] };
        let b = desired_table(&cfg(true), &more);
        assert_ne!(a, b);
        assert!(only_local_elements_differ(&a, &b));
        assert!(!only_local_elements_differ(&a, &desired_table(&cfg(false), &more)));
    }
}
