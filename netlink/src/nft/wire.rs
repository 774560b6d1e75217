//! Conversions between weft's nftables values and the attribute lists of
//! `netlink-packet-netfilter`'s messages, both ways.

use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Hook as NlHook, HookNumber, InetHookNumber, RuleAttribute, RuleMessage, SetAttribute,
    SetElementList, SetElementMessage, SetFlags, SetMessage, TableAttribute, TableFlags, TableMessage,
};

use super::elements::Element;
use super::expr::{Expr, Verdict};
use super::table::{BaseChain, ChainState, ChainType, Hook, Policy, Rule, RuleState, Set};

/// `TYPE_IPADDR` of nft's datatypes: what `nft` shows a key as.
const KEY_TYPE_IPV4_ADDR: u32 = 7;
/// nftnl's user-data TLV type of a rule comment.
const UDATA_RULE_COMMENT: u8 = 0;

pub(super) fn table_message(name: &str, dormant: bool) -> TableMessage {
    let mut attributes = vec![TableAttribute::Name(name.to_owned())];
    if dormant {
        attributes.push(TableAttribute::Flags(TableFlags::Dormant));
    }
    TableMessage { attributes }
}

pub(super) fn table_name_message(name: &str) -> TableMessage {
    TableMessage { attributes: vec![TableAttribute::Name(name.to_owned())] }
}

pub(super) fn chain_message(table: &str, name: &str, base: Option<&BaseChain>) -> ChainMessage {
    let mut attributes = vec![ChainAttribute::Table(table.to_owned()), ChainAttribute::Name(name.to_owned())];
    if let Some(base) = base {
        attributes.push(ChainAttribute::Hook(vec![
            NlHook::Number(HookNumber::Inet(InetHookNumber::from(base.hook.number()))),
            NlHook::Priority(base.priority as u32),
        ]));
        attributes.push(ChainAttribute::Type(base.kind.name().to_owned()));
        attributes.push(ChainAttribute::Policy(Verdict::policy_code(base.policy == Policy::Accept)));
    }
    ChainMessage { attributes }
}

pub(super) fn chain_filter_message(table: &str, name: Option<&str>) -> ChainMessage {
    let mut attributes = vec![ChainAttribute::Table(table.to_owned())];
    attributes.extend(name.map(|n| ChainAttribute::Name(n.to_owned())));
    ChainMessage { attributes }
}

pub(super) fn rule_message(table: &str, chain: &str, rule: &Rule) -> RuleMessage {
    let mut attributes = vec![
        RuleAttribute::Table(table.to_owned()),
        RuleAttribute::Chain(chain.to_owned()),
        RuleAttribute::Expressions(rule.exprs.iter().map(Expr::to_netlink).collect()),
    ];
    if let Some(comment) = &rule.comment {
        attributes.push(RuleAttribute::UserData(comment_udata(comment)));
    }
    RuleMessage { attributes }
}

pub(super) fn rule_handle_message(table: &str, chain: &str, handle: u64) -> RuleMessage {
    RuleMessage {
        attributes: vec![
            RuleAttribute::Table(table.to_owned()),
            RuleAttribute::Chain(chain.to_owned()),
            RuleAttribute::Handle(handle),
        ],
    }
}

pub(super) fn rule_filter_message(table: &str, chain: Option<&str>) -> RuleMessage {
    let mut attributes = vec![RuleAttribute::Table(table.to_owned())];
    attributes.extend(chain.map(|c| RuleAttribute::Chain(c.to_owned())));
    RuleMessage { attributes }
}

pub(super) fn set_message(table: &str, set: &Set, id: u32) -> SetMessage {
    let mut flags = SetFlags::empty();
    if set.interval {
        flags |= SetFlags::Interval;
    }
    SetMessage {
        attributes: vec![
            SetAttribute::Table(table.to_owned()),
            SetAttribute::Name(set.name.clone()),
            SetAttribute::Flags(flags),
            SetAttribute::KeyType(KEY_TYPE_IPV4_ADDR),
            SetAttribute::KeyLen(4),
            SetAttribute::Id(id),
        ],
    }
}

pub(super) fn set_filter_message(table: &str) -> SetMessage {
    SetMessage { attributes: vec![SetAttribute::Table(table.to_owned())] }
}

pub(super) fn elements_message(table: &str, set: &str, elements: &[Element]) -> SetElementMessage {
    let mut attributes = vec![SetElementList::Table(table.to_owned()), SetElementList::Set(set.to_owned())];
    if !elements.is_empty() {
        attributes.push(SetElementList::Elements(elements.iter().map(|e| e.to_netlink()).collect()));
    }
    SetElementMessage { attributes }
}

/// nftnl's encoding of a rule comment: type, length (with the NUL), text, NUL.
fn comment_udata(comment: &str) -> Vec<u8> {
    // The TLV length is one byte; nft caps comments at 128 bytes anyway.
    let text: String = comment.chars().take(127).collect();
    let mut out = vec![UDATA_RULE_COMMENT, (text.len() + 1) as u8];
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    out
}

/// The comment in a rule's user data, if it has one.
fn comment_of(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let value = tail.get(..len)?;
        if *kind == UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = &tail[len..];
    }
    None
}

/// A dumped table: (name, dormant).
pub(super) fn parse_table(message: &TableMessage) -> Option<(String, bool)> {
    let mut name = None;
    let mut dormant = false;
    for attribute in &message.attributes {
        match attribute {
            TableAttribute::Name(n) => name = Some(n.clone()),
            TableAttribute::Flags(flags) => dormant = flags.contains(TableFlags::Dormant),
            _ => {}
        }
    }
    Some((name?, dormant))
}

/// A dumped chain: (table, chain without its rules).
pub(super) fn parse_chain(message: &ChainMessage) -> Option<(String, ChainState)> {
    let (mut table, mut name, mut hook, mut priority, mut kind, mut policy) = (None, None, None, None, None, None);
    for attribute in &message.attributes {
        match attribute {
            ChainAttribute::Table(t) => table = Some(t.clone()),
            ChainAttribute::Name(n) => name = Some(n.clone()),
            ChainAttribute::Type(t) => kind = Some(ChainType::from_name(t)),
            ChainAttribute::Policy(p) => {
                policy = Some(if Verdict::policy_accepts(*p) { Policy::Accept } else { Policy::Drop })
            }
            ChainAttribute::Hook(hooks) => {
                for h in hooks {
                    match h {
                        NlHook::Number(n) => hook = Some(Hook::from_number(u32::from(*n))),
                        NlHook::Priority(p) => priority = Some(*p as i32),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let base = match (hook, priority) {
        (Some(hook), Some(priority)) => Some(BaseChain {
            kind: kind.unwrap_or(ChainType::Filter),
            hook,
            priority,
            policy: policy.unwrap_or(Policy::Accept),
        }),
        _ => None,
    };
    Some((table?, ChainState { name: name?, base, rules: Vec::new() }))
}

/// A dumped rule: (table, chain, rule).
pub(super) fn parse_rule(message: &RuleMessage) -> Option<(String, String, RuleState)> {
    let (mut table, mut chain, mut handle, mut exprs, mut comment) = (None, None, None, Vec::new(), None);
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Table(t) => table = Some(t.clone()),
            RuleAttribute::Chain(c) => chain = Some(c.clone()),
            RuleAttribute::Handle(h) => handle = Some(*h),
            RuleAttribute::Expressions(list) => exprs = list.iter().map(Expr::from_netlink).collect(),
            RuleAttribute::UserData(udata) => comment = comment_of(udata),
            _ => {}
        }
    }
    Some((table?, chain?, RuleState { handle: handle?, rule: Rule { exprs, comment } }))
}

/// A dumped set: (table, name, interval), or `None` for sets whose keys are
/// not 4 bytes (not IPv4 addresses) or that are maps.
pub(super) fn parse_set(message: &SetMessage) -> Option<(String, String, bool)> {
    let (mut table, mut name, mut flags, mut key_len) = (None, None, SetFlags::empty(), None);
    for attribute in &message.attributes {
        match attribute {
            SetAttribute::Table(t) => table = Some(t.clone()),
            SetAttribute::Name(n) => name = Some(n.clone()),
            SetAttribute::Flags(f) => flags = *f,
            SetAttribute::KeyLen(l) => key_len = Some(*l),
            _ => {}
        }
    }
    if key_len != Some(4) || flags.intersects(SetFlags::Map | SetFlags::Object | SetFlags::Concat) {
        return None;
    }
    Some((table?, name?, flags.contains(SetFlags::Interval)))
}

/// The elements of a dumped element list.
pub(super) fn parse_elements(message: &SetElementMessage) -> Vec<Element> {
    message
        .attributes
        .iter()
        .filter_map(|a| match a {
            SetElementList::Elements(list) => Some(list),
            _ => None,
        })
        .flatten()
        .filter_map(Element::from_netlink)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_nftnl_tlvs() {
        let udata = comment_udata("weft: pods");
        assert_eq!(udata, b"\x00\x0bweft: pods\x00");
        assert_eq!(comment_of(&udata).as_deref(), Some("weft: pods"));
        // Other TLVs first (nft's own, e.g. type 1), then the comment.
        let mut mixed = vec![1, 2, 9, 9];
        mixed.extend(&udata);
        assert_eq!(comment_of(&mixed).as_deref(), Some("weft: pods"));
        assert_eq!(comment_of(&[0, 40, b'x']), None);
        assert_eq!(comment_of(&[]), None);
    }
}
