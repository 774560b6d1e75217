//! Installing weft's CNI plugin and conflist on the node (scaffold: the
//! image work fills this in).

use std::path::{Path, PathBuf};

use anyhow::Result;

/// `weft install-cni`: what the DaemonSet's init container runs.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Where the plugin binary is installed on the host.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
}

pub fn run(_args: InstallArgs) -> Result<()> {
    anyhow::bail!("install-cni is not implemented yet")
}

/// Writes weft's conflist into `conf_dir` (called by the router once it is
/// ready); `bin_dir` tells which chained plugins exist.
pub fn write_conflist(_conf_dir: &Path, _bin_dir: &Path) -> Result<PathBuf> {
    anyhow::bail!("writing the conflist is not implemented yet")
}
