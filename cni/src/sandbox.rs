//! The pod's network namespace (`CNI_NETNS`): opened once, and never the
//! host's own, where "rename a veth to eth0 and give it a default route"
//! would take the node off the network.

use std::io;
use std::path::Path;

use weft_netlink::NetnsFile;

use crate::error::PluginError;

/// Opens `path` as the pod's namespace.
pub fn open_pod_netns(path: &str) -> Result<NetnsFile, PluginError> {
    let netns = NetnsFile::open(Path::new(path)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => PluginError::NetnsGone { path: path.to_owned() },
        io::ErrorKind::InvalidInput => {
            PluginError::InvalidEnv { var: "CNI_NETNS", problem: format!("{path:?} is not a network namespace: {e}") }
        }
        _ => PluginError::io(format!("opening network namespace {path:?}"), e),
    })?;
    let id = netns.id().map_err(|e| PluginError::io(format!("inspecting network namespace {path:?}"), e))?;
    let own = NetnsFile::current().and_then(|own| own.id());
    // Not readable in every setup (hidepid); the plugin's own namespace is
    // the one that matters, as that is where the node's links are.
    let init = NetnsFile::open(Path::new("/proc/1/ns/net")).and_then(|init| init.id());
    if own.as_ref().is_ok_and(|own| *own == id) || init.as_ref().is_ok_and(|init| *init == id) {
        return Err(PluginError::InvalidEnv {
            var: "CNI_NETNS",
            problem: format!("{path:?} is the host's network namespace; pods need a namespace of their own"),
        });
    }
    own.map_err(|e| PluginError::io("inspecting the plugin's own network namespace", e))?;
    Ok(netns)
}
