//! Putting weft's table in place and checking that it still is: a whole
//! replacement in one transaction, an element swap when only this node's
//! ranges changed, and a read-back compared with what is wanted.

use weft_netlink::nft::{Batch, NftSocket, Table};
use weft_netlink::NetlinkError;

use super::ruleset::{FAMILY, LOCAL_SET, TABLE};

/// The kernel's table against the wanted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Same,
    Missing,
    /// How it differs, in words (for the log).
    Different(String),
}

/// Reads `table ip weft` back and compares it with `want`.
pub fn check(sock: &mut NftSocket, want: &Table) -> Result<Check, NetlinkError> {
    Ok(match sock.read_table(FAMILY, TABLE)? {
        None => Check::Missing,
        Some(actual) => match want.difference(&actual) {
            None => Check::Same,
            Some(diff) => Check::Different(diff),
        },
    })
}

/// Replaces the table with `want`, atomically (whatever was there, or nothing).
pub fn replace(sock: &mut NftSocket, want: &Table) -> Result<(), NetlinkError> {
    let mut batch = Batch::new();
    batch.replace_table(want);
    sock.commit(&batch)
}

/// Turns the `local` set of `from` (what the kernel holds) into that of `to`.
pub fn swap_local_elements(sock: &mut NftSocket, from: &Table, to: &Table) -> Result<(), NetlinkError> {
    let elements = |t: &Table| t.set(LOCAL_SET).map(|s| (s.interval, s.elements.clone()));
    let (Some((interval, old)), Some((_, new))) = (elements(from), elements(to)) else {
        return Err(NetlinkError::Invalid {
            op: format!("updating set {LOCAL_SET}"),
            problem: "the table has no such set".into(),
        });
    };
    let mut batch = Batch::new();
    batch.change_elements(FAMILY, TABLE, LOCAL_SET, interval, &old, &new);
    sock.commit(&batch)
}

/// Deletes the table if it exists (for `weft reset`); whether it did.
pub fn remove(sock: &mut NftSocket) -> Result<bool, NetlinkError> {
    if sock.read_table(FAMILY, TABLE)?.is_none() {
        return Ok(false);
    }
    let mut batch = Batch::new();
    batch.delete_table(FAMILY, TABLE);
    match sock.commit(&batch) {
        Ok(()) => Ok(true),
        // Gone since the read: someone else removed it.
        Err(err) if err.errno() == Some(libc::ENOENT) => Ok(false),
        Err(err) => Err(err),
    }
}
