//! The expression sequences `nft` and `iptables-nft` generate for common
//! matches, so rules built here read back (and list) exactly as theirs do.
//! Each function returns the expressions of one match; a rule is their
//! concatenation followed by a verdict.

use std::net::Ipv4Addr;

use super::expr::{CmpOp, Expr, MetaKey, PayloadBase, Reg};

/// Offsets in the IPv4 header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;
/// Offset of the destination port in TCP and UDP headers.
const L4_DPORT: u32 = 2;
const IPPROTO_TCP: u8 = 6;
/// The loopback device's ifindex, the same in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// An IPv4 prefix, e.g. 10.32.0.0/12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Prefix {
    /// `addr/len` with the host bits cleared; `len` is capped at 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Ipv4Prefix {
        let len = len.min(32);
        let addr = Ipv4Addr::from(u32::from(addr) & Self::mask_bits(len));
        Ipv4Prefix { addr, len }
    }

    fn mask_bits(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_bits(self.len))
    }
}

impl std::fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Which IPv4 address a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Field {
    Saddr,
    Daddr,
}

impl Ipv4Field {
    fn offset(self) -> u32 {
        match self {
            Ipv4Field::Saddr => IPV4_SADDR,
            Ipv4Field::Daddr => IPV4_DADDR,
        }
    }
}

fn load_ipv4(field: Ipv4Field) -> Expr {
    Expr::Payload { base: PayloadBase::Network, offset: field.offset(), len: 4, dreg: Reg::R1 }
}

/// `ip saddr|daddr [!=] prefix` (a /32 compares without a mask, as nft does).
pub fn ipv4_in(field: Ipv4Field, prefix: Ipv4Prefix, negate: bool) -> Vec<Expr> {
    let op = if negate { CmpOp::Neq } else { CmpOp::Eq };
    let mut exprs = vec![load_ipv4(field)];
    if prefix.len < 32 {
        exprs.push(Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: prefix.mask().octets().to_vec(),
            xor: vec![0; 4],
        });
    }
    exprs.push(Expr::Cmp { sreg: Reg::R1, op, data: prefix.addr.octets().to_vec() });
    exprs
}

/// `ip saddr|daddr [!=] @set`.
pub fn ipv4_in_set(field: Ipv4Field, set: &str, negate: bool) -> Vec<Expr> {
    vec![load_ipv4(field), Expr::Lookup { set: set.to_owned(), sreg: Reg::R1, invert: negate }]
}

/// `meta mark & mask == mask`: every bit of `mask` set.
pub fn mark_has_bits(mask: u32) -> Vec<Expr> {
    vec![
        Expr::Meta { key: MetaKey::Mark, dreg: Reg::R1 },
        Expr::Bitwise { sreg: Reg::R1, dreg: Reg::R1, mask: mask.to_ne_bytes().to_vec(), xor: vec![0; 4] },
        Expr::Cmp { sreg: Reg::R1, op: CmpOp::Eq, data: mask.to_ne_bytes().to_vec() },
    ]
}

/// `iif [!=] INDEX` (interface by index, host byte order).
pub fn iif_is(index: u32, negate: bool) -> Vec<Expr> {
    let op = if negate { CmpOp::Neq } else { CmpOp::Eq };
    vec![
        Expr::Meta { key: MetaKey::Iif, dreg: Reg::R1 },
        Expr::Cmp { sreg: Reg::R1, op, data: index.to_ne_bytes().to_vec() },
    ]
}

/// Which interface name a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The input interface (`-i`, `iifname`).
    In,
    /// The output interface (`-o`, `oifname`).
    Out,
}

/// iptables-nft's `-i NAME` / `-o NAME` (no `+` wildcard): the name and its
/// NUL compared, not nft's 16 padded bytes, so `iptables -S` prints it back.
pub fn iptables_ifname(direction: Direction, name: &str) -> Vec<Expr> {
    let key = match direction {
        Direction::In => MetaKey::IifName,
        Direction::Out => MetaKey::OifName,
    };
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    vec![Expr::Meta { key, dreg: Reg::R1 }, Expr::Cmp { sreg: Reg::R1, op: CmpOp::Eq, data }]
}

/// `tcp dport PORT` (with the `meta l4proto tcp` nft puts first).
pub fn tcp_dport(port: u16) -> Vec<Expr> {
    vec![
        Expr::Meta { key: MetaKey::L4Proto, dreg: Reg::R1 },
        Expr::Cmp { sreg: Reg::R1, op: CmpOp::Eq, data: vec![IPPROTO_TCP] },
        Expr::Payload { base: PayloadBase::Transport, offset: L4_DPORT, len: 2, dreg: Reg::R1 },
        Expr::Cmp { sreg: Reg::R1, op: CmpOp::Eq, data: port.to_be_bytes().to_vec() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_clear_host_bits_and_mask() {
        let p = Ipv4Prefix::new(Ipv4Addr::new(10, 47, 1, 2), 12);
        assert_eq!(p.addr, Ipv4Addr::new(10, 32, 0, 0));
        assert_eq!(p.mask(), Ipv4Addr::new(255, 240, 0, 0));
        assert_eq!(p.to_string(), "10.32.0.0/12");
        assert_eq!(Ipv4Prefix::new(Ipv4Addr::new(1, 2, 3, 4), 0).mask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(Ipv4Prefix::new(Ipv4Addr::new(1, 2, 3, 4), 40).len, 32);
    }

    #[test]
    fn host_addresses_compare_without_a_mask() {
        let exprs = ipv4_in(Ipv4Field::Daddr, Ipv4Prefix::new(Ipv4Addr::new(10, 96, 0, 10), 32), false);
        assert_eq!(exprs.len(), 2);
        let exprs = ipv4_in(Ipv4Field::Saddr, Ipv4Prefix::new(Ipv4Addr::new(10, 32, 0, 0), 12), true);
        assert_eq!(exprs.len(), 3);
        assert!(matches!(&exprs[2], Expr::Cmp { op: CmpOp::Neq, data, .. } if data == &[10, 32, 0, 0]));
    }

    #[test]
    fn iptables_names_carry_their_nul() {
        let exprs = iptables_ifname(Direction::Out, "weft");
        assert_eq!(exprs[1], Expr::Cmp { sreg: Reg::R1, op: CmpOp::Eq, data: b"weft\0".to_vec() });
    }
}
