//! A transaction: nftables changes the kernel applies all or none of,
//! atomically for the packets (one `NFNL_MSG_BATCH_BEGIN` ... `END`).
//! Building one is pure; [`super::NftSocket::commit`] sends it.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::elements::{element_changes, elements_of, Element};
use super::table::{Family, Ipv4Interval, Rule, Table};
use super::wire;

/// `NFNL_SUBSYS_NFTABLES`: the subsystem a batch is for.
const SUBSYS_NFTABLES: u16 = 10;

/// Where a new rule goes in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At the end (`nft add rule`, `iptables -A`).
    Append,
    /// At the start (`nft insert rule`, `iptables -I`).
    Insert,
}

#[derive(Debug, Clone)]
struct Op {
    family: Family,
    flags: u16,
    message: NfTablesMessage,
    what: String,
}

/// Changes to apply in one transaction, in order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    ops: Vec<Op>,
    next_set_id: u32,
}

/// A batch serialised for one `send`: its bytes, and what each
/// acknowledged message was, by sequence number (for error messages).
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub bytes: Vec<u8>,
    pub acks: Vec<(u32, String)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    fn push(&mut self, family: Family, flags: u16, message: NfTablesMessage, what: String) {
        self.ops.push(Op { family, flags, message, what });
    }

    /// Replaces table `table.family table.name` with exactly `table`,
    /// whether it exists or not: create (a no-op if it exists), delete (with
    /// everything in it), create again with its contents. Within one batch
    /// the packets never see the table missing or half built.
    pub fn replace_table(&mut self, table: &Table) {
        let (family, name) = (table.family, table.name.as_str());
        let what = format!("table {} {name}", family.keyword());
        self.push(
            family,
            NLM_F_CREATE,
            NfTablesMessage::NewTable(wire::table_name_message(name)),
            format!("add {what}"),
        );
        self.push(family, 0, NfTablesMessage::DeleteTable(wire::table_name_message(name)), format!("delete {what}"));
        self.push(
            family,
            NLM_F_CREATE,
            NfTablesMessage::NewTable(wire::table_message(name, table.dormant)),
            format!("create {what}"),
        );
        for set in &table.sets {
            self.next_set_id += 1;
            let message = wire::set_message(name, set, self.next_set_id);
            self.push(
                family,
                NLM_F_CREATE,
                NfTablesMessage::NewSet(message),
                format!("add set {} to {what}", set.name),
            );
            let elements: Vec<Element> = elements_of(&set.elements, set.interval).into_iter().collect();
            if !elements.is_empty() {
                self.add_elements(family, name, &set.name, &elements);
            }
        }
        // Every chain first, so rules may jump to any of them.
        for chain in &table.chains {
            let message = wire::chain_message(name, &chain.name, chain.base.as_ref());
            self.push(
                family,
                NLM_F_CREATE,
                NfTablesMessage::NewChain(message),
                format!("add chain {} to {what}", chain.name),
            );
        }
        for chain in &table.chains {
            for rule in &chain.rules {
                self.add_rule(family, name, &chain.name, rule, Position::Append);
            }
        }
    }

    /// Deletes a table and everything in it (an error if there is none).
    pub fn delete_table(&mut self, family: Family, name: &str) {
        let what = format!("delete table {} {name}", family.keyword());
        self.push(family, 0, NfTablesMessage::DeleteTable(wire::table_name_message(name)), what);
    }

    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, rule: &Rule, position: Position) {
        let flags = match position {
            Position::Append => NLM_F_CREATE | NLM_F_APPEND,
            Position::Insert => NLM_F_CREATE,
        };
        let what = format!("add rule to {} {table} {chain}", family.keyword());
        self.push(family, flags, NfTablesMessage::NewRule(wire::rule_message(table, chain, rule)), what);
    }

    pub fn delete_rule(&mut self, family: Family, table: &str, chain: &str, handle: u64) {
        let what = format!("delete rule {handle} of {} {table} {chain}", family.keyword());
        self.push(family, 0, NfTablesMessage::DeleteRule(wire::rule_handle_message(table, chain, handle)), what);
    }

    /// Turns the elements of set `set`, holding `old`, into those of `new`
    /// (deletions first); nothing when they are the same.
    pub fn change_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        interval: bool,
        old: &[Ipv4Interval],
        new: &[Ipv4Interval],
    ) {
        let (delete, add) = element_changes(old, new, interval);
        if !delete.is_empty() {
            let what = format!("delete {} element(s) of set {} {table} {set}", delete.len(), family.keyword());
            let message = wire::elements_message(table, set, &delete);
            self.push(family, 0, NfTablesMessage::DeleteSetElement(message), what);
        }
        if !add.is_empty() {
            self.add_elements(family, table, set, &add);
        }
    }

    fn add_elements(&mut self, family: Family, table: &str, set: &str, elements: &[Element]) {
        let what = format!("add {} element(s) to set {} {table} {set}", elements.len(), family.keyword());
        let message = wire::elements_message(table, set, elements);
        self.push(family, NLM_F_CREATE, NfTablesMessage::NewSetElement(message), what);
    }

    /// The bytes of the whole transaction, sequence numbers from `first_seq`.
    pub fn encode(&self, first_seq: u32) -> EncodedBatch {
        let mut bytes = Vec::new();
        let mut acks = Vec::new();
        let mut seq = first_seq;
        let control = |message: ControlMessage| {
            NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, SUBSYS_NFTABLES), message)
        };
        append(&mut bytes, control(ControlMessage::BatchBegin), NLM_F_REQUEST, seq);
        for op in &self.ops {
            seq = seq.wrapping_add(1);
            let header = NetfilterHeader::new(NetfilterProtoFamily::from(op.family.number()), 0, 0);
            append(
                &mut bytes,
                NetfilterMessage::new(header, op.message.clone()),
                NLM_F_REQUEST | NLM_F_ACK | op.flags,
                seq,
            );
            acks.push((seq, op.what.clone()));
        }
        append(&mut bytes, control(ControlMessage::BatchEnd), NLM_F_REQUEST, seq.wrapping_add(1));
        EncodedBatch { bytes, acks }
    }

    /// How many sequence numbers [`Batch::encode`] uses.
    pub fn sequence_numbers(&self) -> u32 {
        self.ops.len() as u32 + 2
    }
}

/// Serialises one netlink message onto `out`.
pub(super) fn append(out: &mut Vec<u8>, message: NetfilterMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    message.finalize();
    let start = out.len();
    out.resize(start + message.buffer_len(), 0);
    message.serialize(&mut out[start..]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::nft::expr::{Expr, Verdict};
    use crate::nft::table::{BaseChain, Chain, ChainType, Hook, Policy, Set};
    use netlink_packet_core::NetlinkBuffer;
    use std::net::Ipv4Addr;

    fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let buf = NetlinkBuffer::new_checked(rest).unwrap();
            out.push((buf.message_type(), buf.flags(), buf.sequence_number()));
            let len = buf.length() as usize;
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn a_replace_is_framed_create_delete_create_then_contents() {
        let mut table = Table::new(Family::Ipv4, "weft");
        table.sets.push(Set {
            name: "local".into(),
            interval: true,
            elements: vec![Ipv4Interval { first: Ipv4Addr::new(10, 32, 0, 0), last: Ipv4Addr::new(10, 32, 255, 255) }],
        });
        table.chains.push(Chain {
            name: "postrouting".into(),
            base: Some(BaseChain {
                kind: ChainType::Nat,
                hook: Hook::Postrouting,
                priority: 100,
                policy: Policy::Accept,
            }),
            rules: vec![Rule::new(vec![Expr::Verdict(Verdict::Return)])],
        });
        let mut batch = Batch::new();
        batch.replace_table(&table);
        let encoded = batch.encode(100);
        let msgs = messages(&encoded.bytes);
        // begin, newtable, deltable, newtable, newset, newsetelem, newchain, newrule, end
        let types: Vec<u16> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(types, [0x10, 0xa00, 0xa02, 0xa00, 0xa09, 0xa0c, 0xa03, 0xa06, 0x11]);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.2).collect();
        assert_eq!(seqs, (100..109).collect::<Vec<_>>());
        // Only the changes ask for an ACK, the framing does not.
        assert!(msgs[1..8].iter().all(|m| m.1 & NLM_F_ACK != 0));
        assert!(msgs[0].1 & NLM_F_ACK == 0 && msgs[8].1 & NLM_F_ACK == 0);
        assert_eq!(encoded.acks.len(), 7);
        assert_eq!(batch.sequence_numbers(), 9);
        // The batch begin names the nftables subsystem (big endian res_id).
        assert_eq!(&encoded.bytes[16..20], &[0, 0, 0, 10]);
    }

    #[test]
    fn rules_append_or_insert() {
        let mut batch = Batch::new();
        let rule = Rule::new(vec![Expr::Verdict(Verdict::Accept)]);
        batch.add_rule(Family::Ipv4, "filter", "FORWARD", &rule, Position::Append);
        batch.add_rule(Family::Ipv4, "filter", "FORWARD", &rule, Position::Insert);
        let msgs = messages(&batch.encode(1).bytes);
        assert!(msgs[1].1 & NLM_F_APPEND != 0);
        assert!(msgs[2].1 & NLM_F_APPEND == 0);
    }

    #[test]
    fn unchanged_elements_make_no_messages() {
        let ranges = [Ipv4Interval { first: Ipv4Addr::new(10, 0, 0, 0), last: Ipv4Addr::new(10, 0, 0, 255) }];
        let mut batch = Batch::new();
        batch.change_elements(Family::Ipv4, "weft", "local", true, &ranges, &ranges);
        assert!(batch.is_empty());
        batch.change_elements(Family::Ipv4, "weft", "local", true, &ranges, &[]);
        assert_eq!(batch.len(), 1);
    }
}
