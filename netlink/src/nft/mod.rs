//! nftables over netlink (`NETLINK_NETFILTER`), without the `nft` binary:
//! tables, chains, rules, IPv4 address sets and their elements as plain
//! values ([`Table`], [`Chain`], [`Rule`], [`Expr`], [`Set`]), changed in
//! atomic transactions ([`Batch`]) and read back from the kernel
//! ([`NftSocket::read_table`], [`NftSocket::read_chain`]) in the same
//! terms, so that "is the kernel's table the one we want" is a comparison
//! ([`Table::difference`]).
//!
//! `netlink-packet-netfilter` does the attribute encoding; this module
//! keeps its types out of the interface. Its expression list has no
//! `masq` or `counter` type: those are built from its raw `Other`
//! expression here ([`expr`]). Rule comments use nftnl's user-data TLV,
//! which `nft` and `iptables-nft` both display.

mod batch;
mod elements;
mod expr;
mod matches;
mod socket;
mod table;
mod wire;

#[cfg(test)]
mod kernel_tests;

pub use batch::{Batch, EncodedBatch, Position};
pub use elements::{element_changes, elements_of, intervals_of, Element};
pub use expr::{CmpOp, Expr, MetaKey, PayloadBase, Reg, Verdict};
pub use matches::{
    iif_is, iptables_ifname, ipv4_in, ipv4_in_set, mark_has_bits, tcp_dport, Direction, Ipv4Field, Ipv4Prefix,
    LOOPBACK_IFINDEX,
};
pub use socket::{NftSocket, REPLY_TIMEOUT};
pub use table::{
    priority, BaseChain, Chain, ChainState, ChainType, Family, Hook, Ipv4Interval, Policy, Rule, RuleState, Set, Table,
};
