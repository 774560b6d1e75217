//! DEL: remove the veth pair and release the address. Idempotent: a gone
//! namespace, a missing interface, no `CNI_NETNS`, no `prevResult` or an
//! address already released are all success.

use weft_netlink::{block_on_netlink, LinkKind, NetlinkError};

use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::PluginError;
use crate::host_end::{remove_host_end, Removal};
use crate::ipam::Ipam;
use crate::sandbox::open_pod_netns;
use crate::veth_name::VethNames;

pub fn del(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), PluginError> {
    let attachment = env.attachment()?;
    let names = VethNames::for_attachment(&attachment);

    // Every part is attempted whatever the others did, so one failing still
    // frees what the others can; the runtime retries a failed DEL.
    let pod = unplug_pod(env.netns(), &attachment.ifname);
    let host = unplug_host(&names);
    let released = Ipam::new(conf, env, stdin).and_then(|ipam| ipam.release(&attachment));
    pod.and(host).and(released)
}

/// Deletes the pod end by its name inside the pod, if the pod and the
/// interface still exist.
fn unplug_pod(netns_path: Option<&str>, ifname: &str) -> Result<(), PluginError> {
    let Some(path) = netns_path else { return Ok(()) };
    let netns = match open_pod_netns(path) {
        Ok(netns) => netns,
        // The kernel deleted the pair together with the namespace.
        Err(PluginError::NetnsGone { .. }) => return Ok(()),
        // Not a pod namespace (e.g. the host's): nothing of ours to delete
        // there, and refusing would leave the host end and the address.
        Err(err) => {
            eprintln!("weft-net: DEL: leaving {path:?} alone: {err}");
            return Ok(());
        }
    };
    netns.run(|nl| async move {
        match nl.link_by_name(ifname).await? {
            // Only a veth can be ours; anything else by that name is not.
            Some(link) if link.kind == LinkKind::Veth => nl.delete_link(ifname).await.map(drop),
            _ => Ok(()),
        }
    })??;
    Ok(())
}

/// Deletes the host end (and with it the pod end, if still paired).
fn unplug_host(names: &VethNames) -> Result<(), PluginError> {
    let removal = block_on_netlink(|nl| async move {
        let removal = remove_host_end(&nl, names).await?;
        // Only there if an ADD died between creating and moving the pair.
        nl.delete_link(&names.pod_temporary).await?;
        Ok::<_, NetlinkError>(removal)
    })??;
    if let Removal::NotOurs { alias } = removal {
        eprintln!("weft-net: DEL: leaving {} alone: it belongs to {alias:?}", names.host);
    }
    Ok(())
}
