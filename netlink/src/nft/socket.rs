//! The `NETLINK_NETFILTER` socket: committing batches, reading the ruleset
//! generation, and dumping tables, chains, rules, sets and elements.
//!
//! Synchronous on purpose: the kernel handles each request inside `send`,
//! so every call is a few microseconds of system time; async callers run
//! it on a thread of their own (or `spawn_blocking`). A reply that never
//! comes ends the call after [`REPLY_TIMEOUT`] instead of hanging it.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{GenAttribute, GenMessage, NfTablesMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::batch::{append, Batch};
use super::elements::intervals_of;
use super::table::{ChainState, Family, Set, Table};
use super::wire;
use crate::NetlinkError;

/// How long one reply may take before the call fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: a dump of a large ruleset arrives in many datagrams,
/// but they must not overflow the socket while we parse.
const RCVBUF: usize = 4 << 20;

/// An open nftables netlink socket, in the network namespace of the thread
/// that opened it.
#[derive(Debug)]
pub struct NftSocket {
    socket: Socket,
    seq: u32,
}

fn io_error(op: &str, err: io::Error) -> NetlinkError {
    NetlinkError::Netns { op: op.to_owned(), source: err }
}

fn protocol(op: &str, detail: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::Protocol { op: op.to_owned(), detail: detail.to_string() }
}

impl NftSocket {
    pub fn open() -> Result<NftSocket, NetlinkError> {
        let op = "opening the nftables netlink socket";
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io_error(op, e))?;
        socket.bind_auto().map_err(|e| io_error(op, e))?;
        // Best effort: a smaller buffer only matters for huge dumps.
        let _ = socket.set_rx_buf_sz(RCVBUF);
        set_receive_timeout(&socket, REPLY_TIMEOUT).map_err(|e| io_error(op, e))?;
        // Sequence numbers only need to differ between our own requests.
        let seq = std::process::id().wrapping_mul(7919);
        Ok(NftSocket { socket, seq })
    }

    fn next_seq(&mut self, count: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Applies `batch` as one transaction: all of it, or (on the first
    /// refusal) none of it, with the refused change named in the error.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), NetlinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = self.next_seq(batch.sequence_numbers());
        let encoded = batch.encode(first);
        self.send(&encoded.bytes, "sending an nftables batch")?;
        let mut pending: BTreeMap<u32, String> = encoded.acks.into_iter().collect();
        let mut failure: Option<NetlinkError> = None;
        // The kernel has answered every message by the time `send` returns;
        // a failed batch answers all the same, so read until each is.
        while !pending.is_empty() {
            let datagram = match self.recv("waiting for the batch's acknowledgements") {
                Ok(d) => d,
                // Some refusals (e.g. out of memory) end the batch early.
                Err(err) => return Err(failure.unwrap_or(err)),
            };
            for message in messages(&datagram, "reading the batch's acknowledgements")? {
                let seq = message.header.sequence_number;
                if let NetlinkPayload::Error(err) = message.payload {
                    // The batch begin's number: the commit itself failed.
                    let what =
                        if seq == first { Some("commit the nftables batch".to_owned()) } else { pending.remove(&seq) };
                    if let (Some(what), Some(code)) = (what, err.code) {
                        failure.get_or_insert(NetlinkError::Kernel {
                            op: format!("nftables: {what}"),
                            errno: code.get().abs(),
                        });
                    }
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The ruleset generation: it changes with every committed transaction,
    /// whoever made it.
    pub fn generation(&mut self) -> Result<u32, NetlinkError> {
        let op = "reading the nftables generation";
        let replies =
            self.request(Family::Ipv4, NfTablesMessage::GetGen(GenMessage { attributes: vec![] }), false, op)?;
        let replies = replies.ok_or_else(|| protocol(op, "the kernel has no generation"))?;
        replies
            .iter()
            .find_map(|m| match m {
                NfTablesMessage::NewGen(gen) => gen.attributes.iter().find_map(|a| match a {
                    GenAttribute::Id(id) => Some(*id),
                    _ => None,
                }),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::BadReply { op: op.into(), problem: "no NFTA_GEN_ID".into() })
    }

    /// Table `family name` with its sets (IPv4 address sets only), chains
    /// and rules, or `None` if there is no such table.
    pub fn read_table(&mut self, family: Family, name: &str) -> Result<Option<Table>, NetlinkError> {
        let what = format!("table {} {name}", family.keyword());
        let op = format!("reading {what}");
        let Some(replies) =
            self.request(family, NfTablesMessage::GetTable(wire::table_name_message(name)), false, &op)?
        else {
            return Ok(None);
        };
        let Some((_, dormant)) = replies.iter().find_map(|m| match m {
            NfTablesMessage::NewTable(t) => wire::parse_table(t),
            _ => None,
        }) else {
            return Err(NetlinkError::BadReply { op, problem: "no table in the reply".into() });
        };
        let mut table = Table::new(family, name);
        table.dormant = dormant;

        let op = format!("listing the sets of {what}");
        for message in self.dump(family, NfTablesMessage::GetSet(wire::set_filter_message(name)), &op)? {
            let NfTablesMessage::NewSet(set) = message else { continue };
            let Some((set_table, set_name, interval)) = wire::parse_set(&set) else { continue };
            if set_table != name {
                continue;
            }
            let op = format!("listing the elements of set {set_name} in {what}");
            let request = NfTablesMessage::GetSetElement(wire::elements_message(name, &set_name, &[]));
            let elements: Vec<_> = self
                .dump(family, request, &op)?
                .iter()
                .filter_map(|m| match m {
                    NfTablesMessage::NewSetElement(e) => Some(wire::parse_elements(e)),
                    _ => None,
                })
                .flatten()
                .collect();
            table.sets.push(Set { name: set_name, interval, elements: intervals_of(&elements, interval) });
        }

        let mut chains = self.chains(family, name, None)?;
        let op = format!("listing the rules of {what}");
        for message in self.dump(family, NfTablesMessage::GetRule(wire::rule_filter_message(name, None)), &op)? {
            let NfTablesMessage::NewRule(rule) = message else { continue };
            let Some((rule_table, chain, rule)) = wire::parse_rule(&rule) else { continue };
            if rule_table != name {
                continue;
            }
            if let Some(c) = chains.iter_mut().find(|c| c.name == chain) {
                c.rules.push(rule);
            }
        }
        table.chains = chains.iter().map(ChainState::to_chain).collect();
        Ok(Some(table))
    }

    /// Chain `family table chain` with its rules and their handles, or
    /// `None` if the table or the chain does not exist.
    pub fn read_chain(&mut self, family: Family, table: &str, chain: &str) -> Result<Option<ChainState>, NetlinkError> {
        let Some(mut state) = self.chains(family, table, Some(chain))?.into_iter().next() else {
            return Ok(None);
        };
        let op = format!("listing the rules of chain {} {table} {chain}", family.keyword());
        let request = NfTablesMessage::GetRule(wire::rule_filter_message(table, Some(chain)));
        for message in self.dump(family, request, &op)? {
            let NfTablesMessage::NewRule(rule) = message else { continue };
            if let Some((t, c, rule)) = wire::parse_rule(&rule) {
                if t == table && c == chain {
                    state.rules.push(rule);
                }
            }
        }
        Ok(Some(state))
    }

    /// The chains of `table` (only `only` if given), without their rules.
    fn chains(&mut self, family: Family, table: &str, only: Option<&str>) -> Result<Vec<ChainState>, NetlinkError> {
        let op = format!("listing the chains of table {} {table}", family.keyword());
        let replies = match only {
            Some(name) => {
                match self.request(
                    family,
                    NfTablesMessage::GetChain(wire::chain_filter_message(table, Some(name))),
                    false,
                    &op,
                )? {
                    Some(replies) => replies,
                    None => return Ok(Vec::new()),
                }
            }
            None => self.dump(family, NfTablesMessage::GetChain(wire::chain_filter_message(table, None)), &op)?,
        };
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                NfTablesMessage::NewChain(c) => wire::parse_chain(c),
                _ => None,
            })
            .filter(|(t, c)| t == table && only.is_none_or(|name| c.name == name))
            .map(|(_, c)| c)
            .collect())
    }

    /// A dump (`NLM_F_DUMP`): every object the kernel lists, or nothing if
    /// what it lists in (a table, a set) does not exist.
    fn dump(
        &mut self,
        family: Family,
        message: NfTablesMessage,
        op: &str,
    ) -> Result<Vec<NfTablesMessage>, NetlinkError> {
        Ok(self.request(family, message, true, op)?.unwrap_or_default())
    }

    /// Sends one request and gathers its replies until the dump's end or
    /// the acknowledgement; `None` when the kernel answers ENOENT.
    fn request(
        &mut self,
        family: Family,
        message: NfTablesMessage,
        dump: bool,
        op: &str,
    ) -> Result<Option<Vec<NfTablesMessage>>, NetlinkError> {
        let seq = self.next_seq(1);
        let header = NetfilterHeader::new(NetfilterProtoFamily::from(family.number()), 0, 0);
        let flags = if dump { NLM_F_REQUEST | NLM_F_DUMP } else { NLM_F_REQUEST | NLM_F_ACK };
        let mut bytes = Vec::new();
        append(&mut bytes, NetfilterMessage::new(header, message), flags, seq);
        self.send(&bytes, op)?;
        let mut out = Vec::new();
        loop {
            let datagram = self.recv(op)?;
            for reply in messages(&datagram, op)? {
                if reply.header.sequence_number != seq {
                    // A late answer to an earlier request that timed out.
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(Some(out)),
                    NetlinkPayload::Error(err) => {
                        return match err.code.map(|c| c.get().abs()) {
                            None => Ok(Some(out)),
                            Some(libc::ENOENT) => Ok(None),
                            Some(errno) => Err(NetlinkError::Kernel { op: op.to_owned(), errno }),
                        };
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(m),
                        ..
                    }) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    fn send(&self, bytes: &[u8], op: &str) -> Result<(), NetlinkError> {
        let sent = self.socket.send(bytes, 0).map_err(|e| io_error(op, e))?;
        if sent != bytes.len() {
            return Err(protocol(op, format!("sent {sent} of {} bytes", bytes.len())));
        }
        Ok(())
    }

    fn recv(&self, op: &str) -> Result<Vec<u8>, NetlinkError> {
        match self.socket.recv_from_full() {
            Ok((datagram, _)) => Ok(datagram),
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(protocol(op, format!("no answer from the kernel within {}s", REPLY_TIMEOUT.as_secs())))
            }
            Err(err) => Err(io_error(op, err)),
        }
    }
}

/// The netlink messages in one datagram.
fn messages(datagram: &[u8], op: &str) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, NetlinkError> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let buffer = NetlinkBuffer::new_checked(rest).map_err(|e| protocol(op, e))?;
        let len = (buffer.length() as usize).min(rest.len());
        let message = NetlinkMessage::<NetfilterMessage>::deserialize(&rest[..len]).map_err(|e| protocol(op, e))?;
        out.push(message);
        // Messages are 4-byte aligned within a datagram.
        let advance = (len + 3) & !3;
        rest = rest.get(advance..).unwrap_or_default();
    }
    Ok(out)
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
