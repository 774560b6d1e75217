//! nftables expressions as weft writes and reads them: a small typed subset
//! of the kernel's virtual machine (load, mask, compare, look up, verdict,
//! count, masquerade), converted to and from `netlink-packet-netfilter`'s
//! attribute lists.
//!
//! Reading back normalises what the kernel adds on its own (a lookup's
//! flags, a bitwise's operation, a counter's values), so that a rule read
//! from the kernel compares equal to the rule that was written. Anything
//! outside the subset reads as [`Expr::Unknown`], which equals nothing we
//! write: a foreign rule never passes for ours.

use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute, Lookup, Meta,
    MetaKey as NlMetaKey, Operator, Payload, Register, Verdict as NlVerdict, VerdictAttribute,
};

/// A register number as the kernel's netlink API spells it: 0 is the
/// verdict register, 1..=4 the 128-bit registers, 8..=23 the 32-bit ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg(pub u32);

impl Reg {
    pub const VERDICT: Reg = Reg(0);
    pub const R1: Reg = Reg(1);
}

/// What `meta` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaKey {
    /// The packet mark (`meta mark`), 4 bytes in host order.
    Mark,
    /// Input interface index (`iif`), 4 bytes in host order.
    Iif,
    /// Output interface index (`oif`).
    Oif,
    /// Input interface name (`iifname`), 16 bytes, NUL padded.
    IifName,
    /// Output interface name (`oifname`).
    OifName,
    /// Layer 4 protocol number (`meta l4proto`), 1 byte.
    L4Proto,
    /// Any other key, by number.
    Other(u32),
}

impl MetaKey {
    fn to_netlink(self) -> NlMetaKey {
        match self {
            MetaKey::Mark => NlMetaKey::Mark,
            MetaKey::Iif => NlMetaKey::Iif,
            MetaKey::Oif => NlMetaKey::Oif,
            MetaKey::IifName => NlMetaKey::Iifname,
            MetaKey::OifName => NlMetaKey::Oifname,
            MetaKey::L4Proto => NlMetaKey::L4Proto,
            MetaKey::Other(n) => NlMetaKey::Other(n),
        }
    }

    fn from_netlink(key: NlMetaKey) -> MetaKey {
        match key {
            NlMetaKey::Mark => MetaKey::Mark,
            NlMetaKey::Iif => MetaKey::Iif,
            NlMetaKey::Oif => MetaKey::Oif,
            NlMetaKey::Iifname => MetaKey::IifName,
            NlMetaKey::Oifname => MetaKey::OifName,
            NlMetaKey::L4Proto => MetaKey::L4Proto,
            other => MetaKey::Other(u32::from(other)),
        }
    }
}

/// Which header a `payload` offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadBase {
    LinkLayer,
    Network,
    Transport,
    Other(u32),
}

impl PayloadBase {
    fn number(self) -> u32 {
        match self {
            PayloadBase::LinkLayer => 0,
            PayloadBase::Network => 1,
            PayloadBase::Transport => 2,
            PayloadBase::Other(n) => n,
        }
    }

    fn from_number(n: u32) -> PayloadBase {
        match n {
            0 => PayloadBase::LinkLayer,
            1 => PayloadBase::Network,
            2 => PayloadBase::Transport,
            n => PayloadBase::Other(n),
        }
    }
}

/// A `cmp` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    fn to_netlink(self) -> Operator {
        match self {
            CmpOp::Eq => Operator::Equal,
            CmpOp::Neq => Operator::NotEqual,
            CmpOp::Lt => Operator::LessThan,
            CmpOp::Lte => Operator::LessThanEqual,
            CmpOp::Gt => Operator::GreaterThan,
            CmpOp::Gte => Operator::GreatherThanEqual,
        }
    }

    fn from_netlink(op: Operator) -> Option<CmpOp> {
        Some(match op {
            Operator::Equal => CmpOp::Eq,
            Operator::NotEqual => CmpOp::Neq,
            Operator::LessThan => CmpOp::Lt,
            Operator::LessThanEqual => CmpOp::Lte,
            Operator::GreaterThan => CmpOp::Gt,
            Operator::GreatherThanEqual => CmpOp::Gte,
            _ => return None,
        })
    }
}

/// A rule's (or a chain policy's) verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Continue,
    Jump(String),
    Goto(String),
}

// include/uapi/linux/netfilter.h
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

impl Verdict {
    fn attributes(&self) -> Vec<VerdictAttribute> {
        let (code, chain) = match self {
            Verdict::Accept => (NlVerdict::Other(NF_ACCEPT), None),
            Verdict::Drop => (NlVerdict::Other(NF_DROP), None),
            Verdict::Return => (NlVerdict::Return, None),
            Verdict::Continue => (NlVerdict::Continue, None),
            Verdict::Jump(chain) => (NlVerdict::Jump, Some(chain)),
            Verdict::Goto(chain) => (NlVerdict::Goto, Some(chain)),
        };
        let mut attributes = vec![VerdictAttribute::Code(code)];
        attributes.extend(chain.map(|c| VerdictAttribute::Chain(c.clone())));
        attributes
    }

    fn from_attributes(attributes: &[VerdictAttribute]) -> Option<Verdict> {
        let mut code = None;
        let mut chain = None;
        for attribute in attributes {
            match attribute {
                VerdictAttribute::Code(c) => code = Some(*c),
                VerdictAttribute::Chain(name) => chain = Some(name.clone()),
                _ => {}
            }
        }
        Some(match (code?, chain) {
            (NlVerdict::Other(NF_ACCEPT), None) => Verdict::Accept,
            (NlVerdict::Other(NF_DROP), None) => Verdict::Drop,
            (NlVerdict::Return, None) => Verdict::Return,
            (NlVerdict::Continue, None) => Verdict::Continue,
            (NlVerdict::Jump, Some(chain)) => Verdict::Jump(chain),
            (NlVerdict::Goto, Some(chain)) => Verdict::Goto(chain),
            _ => return None,
        })
    }

    /// A base chain's policy as the kernel stores it (`NF_ACCEPT`/`NF_DROP`).
    pub(super) fn policy_code(accept: bool) -> u32 {
        if accept {
            NF_ACCEPT
        } else {
            NF_DROP
        }
    }

    pub(super) fn policy_accepts(code: u32) -> bool {
        code == NF_ACCEPT
    }
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `meta KEY => dreg`.
    Meta { key: MetaKey, dreg: Reg },
    /// `payload load len bytes at base + offset => dreg`.
    Payload { base: PayloadBase, offset: u32, len: u32, dreg: Reg },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise { sreg: Reg, dreg: Reg, mask: Vec<u8>, xor: Vec<u8> },
    /// Compares `sreg` with `data`; the rule stops here unless it holds.
    Cmp { sreg: Reg, op: CmpOp, data: Vec<u8> },
    /// Whether `sreg` is in the named set (or not, with `invert`).
    Lookup { set: String, sreg: Reg, invert: bool },
    /// `immediate` into the verdict register.
    Verdict(Verdict),
    /// Packet and byte counter (its values are not part of the rule).
    Counter,
    /// Source NAT to the output interface's address.
    Masquerade { fully_random: bool },
    /// An expression outside this subset, by name.
    Unknown { name: String },
}

// include/uapi/linux/netfilter/nf_tables.h
const NFT_LOOKUP_F_INV: u32 = 1;
const NFTA_MASQ_FLAGS: u16 = 1;
// include/uapi/linux/netfilter/nf_nat.h
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 1 << 4;

impl Expr {
    /// The attribute list element the kernel takes for this expression.
    pub(super) fn to_netlink(&self) -> ListAttribute<ExpressionAttribute> {
        let reg = |r: Reg| Register::from(r.0);
        let value = |bytes: &[u8]| DataAttribute::Value(bytes.to_vec());
        let expressions = match self {
            Expr::Meta { key, dreg } => {
                Expressions::Meta(vec![Meta::Key(key.to_netlink()), Meta::DestinationRegister(reg(*dreg))])
            }
            Expr::Payload { base, offset, len, dreg } => Expressions::Payload(vec![
                Payload::DestinationRegister(reg(*dreg)),
                Payload::Base(base.number()),
                Payload::Offset(*offset),
                Payload::Len(*len),
            ]),
            Expr::Bitwise { sreg, dreg, mask, xor } => Expressions::Bitwise(vec![
                Bitwise::SourceRegister(reg(*sreg)),
                Bitwise::DestinationRegister(reg(*dreg)),
                Bitwise::Length(mask.len() as u32),
                Bitwise::Mask(value(mask)),
                Bitwise::Xor(value(xor)),
            ]),
            Expr::Cmp { sreg, op, data } => Expressions::Cmp(vec![
                Cmp::SourceRegister(reg(*sreg)),
                Cmp::Op(op.to_netlink()),
                Cmp::Data(value(data)),
            ]),
            Expr::Lookup { set, sreg, invert } => {
                let mut attributes = vec![Lookup::Set(set.clone()), Lookup::SourceRegister(reg(*sreg))];
                if *invert {
                    attributes.push(Lookup::Flags(NFT_LOOKUP_F_INV));
                }
                Expressions::Lookup(attributes)
            }
            Expr::Verdict(verdict) => Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Verdict),
                Immediate::Data(DataAttribute::Verdict(verdict.attributes())),
            ]),
            Expr::Counter => Expressions::Other { expression_type: "counter".into(), attributes: Vec::new() },
            Expr::Masquerade { fully_random } => {
                let mut attributes = Vec::new();
                if *fully_random {
                    attributes
                        .push(DefaultNla::new(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY.to_be_bytes().to_vec()));
                }
                Expressions::Other { expression_type: "masq".into(), attributes }
            }
            // Never written: the caller has a rule it read and cannot know.
            Expr::Unknown { name } => Expressions::Other { expression_type: name.clone(), attributes: Vec::new() },
        };
        expressions.into()
    }

    /// Reads one element of a dumped rule's expression list.
    pub(super) fn from_netlink(element: &ListAttribute<ExpressionAttribute>) -> Expr {
        let ListAttribute::Element(attributes) = element else {
            return Expr::Unknown { name: "(not an expression)".into() };
        };
        let name = attributes.iter().find_map(|a| match a {
            ExpressionAttribute::Name(name) => Some(name.clone()),
            _ => None,
        });
        let data = attributes.iter().find_map(|a| match a {
            ExpressionAttribute::Data(data) => Some(data),
            _ => None,
        });
        let name = name.unwrap_or_default();
        let parsed = match data {
            Some(data) => decode(&name, data),
            // Expressions without parameters (e.g. a bare `counter` some
            // kernels dump without data) carry none.
            None => decode(&name, &Expressions::Other { expression_type: name.clone(), attributes: Vec::new() }),
        };
        parsed.unwrap_or(Expr::Unknown { name })
    }
}

fn value_of(data: &DataAttribute) -> Option<Vec<u8>> {
    match data {
        DataAttribute::Value(bytes) => Some(bytes.clone()),
        _ => None,
    }
}

fn nla_value(nla: &DefaultNla) -> Vec<u8> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    value
}

fn u32_of(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// `None` when the expression uses anything outside the subset.
fn decode(name: &str, data: &Expressions) -> Option<Expr> {
    let reg = |r: &Register| Reg(u32::from(*r));
    match (name, data) {
        ("meta", Expressions::Meta(attributes)) => {
            let (mut key, mut dreg) = (None, None);
            for a in attributes {
                match a {
                    Meta::Key(k) => key = Some(MetaKey::from_netlink(*k)),
                    Meta::DestinationRegister(r) => dreg = Some(reg(r)),
                    // A source register makes it `meta set`: not a load.
                    _ => return None,
                }
            }
            Some(Expr::Meta { key: key?, dreg: dreg? })
        }
        ("payload", Expressions::Payload(attributes)) => {
            let (mut base, mut offset, mut len, mut dreg) = (None, None, None, None);
            for a in attributes {
                match a {
                    Payload::Base(b) => base = Some(PayloadBase::from_number(*b)),
                    Payload::Offset(o) => offset = Some(*o),
                    Payload::Len(l) => len = Some(*l),
                    Payload::DestinationRegister(r) => dreg = Some(reg(r)),
                    _ => return None,
                }
            }
            Some(Expr::Payload { base: base?, offset: offset?, len: len?, dreg: dreg? })
        }
        ("bitwise", Expressions::Bitwise(attributes)) => {
            let (mut sreg, mut dreg, mut len, mut mask, mut xor) = (None, None, None, None, None);
            for a in attributes {
                match a {
                    Bitwise::SourceRegister(r) => sreg = Some(reg(r)),
                    Bitwise::DestinationRegister(r) => dreg = Some(reg(r)),
                    Bitwise::Length(l) => len = Some(*l),
                    Bitwise::Mask(d) => mask = value_of(d),
                    Bitwise::Xor(d) => xor = value_of(d),
                    // The mask-and-xor operation is 0; shifts are not ours.
                    Bitwise::Op(0) => {}
                    _ => return None,
                }
            }
            let (mask, xor) = (mask?, xor?);
            if len? as usize != mask.len() || mask.len() != xor.len() {
                return None;
            }
            Some(Expr::Bitwise { sreg: sreg?, dreg: dreg?, mask, xor })
        }
        ("cmp", Expressions::Cmp(attributes)) => {
            let (mut sreg, mut op, mut data) = (None, None, None);
            for a in attributes {
                match a {
                    Cmp::SourceRegister(r) => sreg = Some(reg(r)),
                    Cmp::Op(o) => op = CmpOp::from_netlink(*o),
                    Cmp::Data(d) => data = value_of(d),
                    _ => return None,
                }
            }
            Some(Expr::Cmp { sreg: sreg?, op: op?, data: data? })
        }
        ("lookup", Expressions::Lookup(attributes)) => {
            let (mut set, mut sreg, mut flags) = (None, None, 0);
            for a in attributes {
                match a {
                    Lookup::Set(name) => set = Some(name.clone()),
                    Lookup::SourceRegister(r) => sreg = Some(reg(r)),
                    Lookup::Flags(f) => flags = *f,
                    // The id only names the set within one transaction.
                    Lookup::SetId(_) => {}
                    // A destination register makes it a map lookup.
                    _ => return None,
                }
            }
            if flags & !NFT_LOOKUP_F_INV != 0 {
                return None;
            }
            Some(Expr::Lookup { set: set?, sreg: sreg?, invert: flags & NFT_LOOKUP_F_INV != 0 })
        }
        ("immediate", Expressions::Immediate(attributes)) => {
            let (mut dreg, mut verdict) = (None, None);
            for a in attributes {
                match a {
                    Immediate::DestinationRegister(r) => dreg = Some(reg(r)),
                    Immediate::Data(DataAttribute::Verdict(v)) => verdict = Verdict::from_attributes(v),
                    _ => return None,
                }
            }
            (dreg? == Reg::VERDICT).then_some(Expr::Verdict(verdict?))
        }
        ("counter", Expressions::Other { .. }) => Some(Expr::Counter),
        ("masq", Expressions::Other { attributes, .. }) => {
            let mut flags = 0;
            for a in attributes {
                if a.kind() != NFTA_MASQ_FLAGS {
                    // Register-given port ranges are not ours.
                    return None;
                }
                flags = u32_of(&nla_value(a))?;
            }
            match flags {
                0 => Some(Expr::Masquerade { fully_random: false }),
                NF_NAT_RANGE_PROTO_RANDOM_FULLY => Some(Expr::Masquerade { fully_random: true }),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NlaBuffer, Parseable};

    /// What the kernel would see, parsed back as a dump would be.
    fn round_trip(expr: &Expr) -> Expr {
        let element = expr.to_netlink();
        let mut bytes = vec![0; element.buffer_len()];
        element.emit(&mut bytes);
        let parsed = ListAttribute::<ExpressionAttribute>::parse(&NlaBuffer::new(&bytes[..])).unwrap();
        Expr::from_netlink(&parsed)
    }

    #[test]
    fn every_expression_survives_encoding_and_decoding() {
        let exprs = [
            Expr::Meta { key: MetaKey::Mark, dreg: Reg::R1 },
            Expr::Meta { key: MetaKey::IifName, dreg: Reg::R1 },
            Expr::Meta { key: MetaKey::Other(33), dreg: Reg(8) },
            Expr::Payload { base: PayloadBase::Network, offset: 12, len: 4, dreg: Reg::R1 },
            Expr::Bitwise { sreg: Reg::R1, dreg: Reg::R1, mask: vec![255, 240, 0, 0], xor: vec![0; 4] },
            Expr::Cmp { sreg: Reg::R1, op: CmpOp::Neq, data: vec![10, 32, 0, 0] },
            Expr::Lookup { set: "local".into(), sreg: Reg::R1, invert: false },
            Expr::Lookup { set: "local".into(), sreg: Reg::R1, invert: true },
            Expr::Verdict(Verdict::Accept),
            Expr::Verdict(Verdict::Drop),
            Expr::Verdict(Verdict::Return),
            Expr::Verdict(Verdict::Jump("KUBE-SERVICES".into())),
            Expr::Counter,
            Expr::Masquerade { fully_random: true },
            Expr::Masquerade { fully_random: false },
        ];
        for expr in exprs {
            assert_eq!(round_trip(&expr), expr);
        }
    }

    #[test]
    fn kernel_defaults_read_as_what_was_written() {
        // A dump carries a lookup's flags and a bitwise's operation even
        // when the request left them out.
        let lookup = ListAttribute::Element(vec![
            ExpressionAttribute::Name("lookup".into()),
            ExpressionAttribute::Data(Expressions::Lookup(vec![
                Lookup::Set("local".into()),
                Lookup::SourceRegister(Register::Reg1),
                Lookup::Flags(0),
            ])),
        ]);
        assert_eq!(Expr::from_netlink(&lookup), Expr::Lookup { set: "local".into(), sreg: Reg::R1, invert: false });
        let counter = ListAttribute::Element(vec![
            ExpressionAttribute::Name("counter".into()),
            ExpressionAttribute::Data(Expressions::Other {
                expression_type: "counter".into(),
                attributes: vec![DefaultNla::new(1, 7u64.to_be_bytes().to_vec())],
            }),
        ]);
        assert_eq!(Expr::from_netlink(&counter), Expr::Counter);
    }

    #[test]
    fn anything_else_is_unknown() {
        let nat = ListAttribute::Element(vec![
            ExpressionAttribute::Name("nat".into()),
            ExpressionAttribute::Data(Expressions::Other { expression_type: "nat".into(), attributes: Vec::new() }),
        ]);
        assert_eq!(Expr::from_netlink(&nat), Expr::Unknown { name: "nat".into() });
        // `meta mark set ...` has a source register, not a destination.
        let meta_set = ListAttribute::Element(vec![
            ExpressionAttribute::Name("meta".into()),
            ExpressionAttribute::Data(Expressions::Meta(vec![
                Meta::Key(NlMetaKey::Mark),
                Meta::SourceRegister(Register::Reg1),
            ])),
        ]);
        assert_eq!(Expr::from_netlink(&meta_set), Expr::Unknown { name: "meta".into() });
        let masq_ports = Expressions::Other {
            expression_type: "masq".into(),
            attributes: vec![DefaultNla::new(2, 1u32.to_be_bytes().to_vec())],
        };
        let element = ListAttribute::Element(vec![
            ExpressionAttribute::Name("masq".into()),
            ExpressionAttribute::Data(masq_ports),
        ]);
        assert_eq!(Expr::from_netlink(&element), Expr::Unknown { name: "masq".into() });
    }
}
