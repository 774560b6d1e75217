//! Removing the host end of a pod's veth pair, but only if it is ours.

use weft_netlink::{Netlink, NetlinkError};

use crate::veth_name::VethNames;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Deleted (and with it the pod end, if still paired).
    Removed,
    Absent,
    /// A link by that name exists but belongs to someone else (its alias
    /// names another attachment, or none): left alone.
    NotOurs {
        alias: Option<String>,
    },
}

pub async fn remove_host_end(nl: &Netlink, names: &VethNames) -> Result<Removal, NetlinkError> {
    let Some(link) = nl.link_by_name(&names.host).await? else {
        return Ok(Removal::Absent);
    };
    if link.alias.as_deref() != Some(names.owner.as_str()) {
        return Ok(Removal::NotOurs { alias: link.alias });
    }
    Ok(if nl.delete_link(&names.host).await? { Removal::Removed } else { Removal::Absent })
}
