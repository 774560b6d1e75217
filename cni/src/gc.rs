//! GC (1.1.0): release every address of this network whose attachment the
//! runtime no longer lists. Host veths need no collecting: the kernel
//! deletes a pair when its pod's namespace goes.

use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::PluginError;
use crate::ipam::Ipam;
use crate::version::CniVersion;

pub fn gc(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), PluginError> {
    if !conf.version.has_status_and_gc() {
        return Err(PluginError::CommandNeedsVersion { command: "GC", needed: CniVersion::V1_1_0, have: conf.version });
    }
    // Without the list, "everything not listed" would be every pod on the node.
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        PluginError::InvalidConfig("GC needs `cni.dev/valid-attachments`, the attachments still in use".to_owned())
    })?;
    Ipam::new(conf, env, stdin)?.gc(valid)
}
