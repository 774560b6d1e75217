//! STATUS (1.1.0): whether an ADD could succeed now.

use crate::config::NetConf;
use crate::env::CniEnv;
use crate::error::PluginError;
use crate::ipam::Ipam;
use crate::version::CniVersion;

pub fn status(env: &CniEnv, conf: &NetConf, stdin: &[u8]) -> Result<(), PluginError> {
    if !conf.version.has_status_and_gc() {
        return Err(PluginError::CommandNeedsVersion {
            command: "STATUS",
            needed: CniVersion::V1_1_0,
            have: conf.version,
        });
    }
    // A delegated plugin missing from CNI_PATH is "not available" too.
    let ipam = Ipam::new(conf, env, stdin).map_err(|err| PluginError::NotAvailable(err.to_string()))?;
    ipam.status()
}
