//! A router configured the way a weave-net DaemonSet configures Weave:
//! Weave's environment variables (and EXTRA_ARGS) work unchanged.
//! Needs root and the release binaries; fails, never skips, without them.
#![allow(clippy::unwrap_used)]

use anyhow::{ensure, Result};
use weft_tests::scenario::with_built_cluster;
use weft_tests::*;

#[test]
fn weave_environment_variables_configure_the_router() {
    let builder = Cluster::builder()
        .nodes(1)
        .router_env("IPALLOC_RANGE", "10.40.0.0/16")
        .router_env("WEAVE_MTU", "1300")
        // Weave treats any value as "on", even this one.
        .router_env("WEAVE_NO_FASTDP", "false")
        .router_env("NODE_NAME", "worker-7")
        .router_env("EXTRA_ARGS", "--no-discovery --conn-limit 7");
    with_built_cluster(builder, |c| -> Result<()> {
        let data_dir = c.node(0).data_dir().display().to_string();
        c.start_router_args(0, vec!["router".into(), "--data-dir".into(), data_dir])?;
        c.wait_ready(0)?;
        let status = c.get(0, "/status")?;
        for line in ["(worker-7)", "FastDP: disabled", "PeerDiscovery: disabled", "Bridge: weft (mtu 1300)"] {
            ensure!(status.contains(line), "status lacks {line:?}:\n{status}");
        }
        let ipam = ipam_status(c, 0)?;
        ensure!(ipam.range.to_string() == "10.40.0.0/16" && ipam.mtu == 1300, "{ipam:?}");
        Ok(())
    });
}

#[test]
fn an_unknown_extra_arg_is_refused_with_a_clear_error() {
    let builder = Cluster::builder().nodes(1).router_env("EXTRA_ARGS", "--no-such-flag");
    with_built_cluster(builder, |c| -> Result<()> {
        c.start_router(0, &[], &[])?;
        let exited = c.wait_ready(0).is_err();
        ensure!(exited, "a router with an unknown EXTRA_ARGS flag must not start");
        let log = c.log_tail(0, 20);
        ensure!(log.contains("--no-such-flag"), "the error should name the flag:\n{log}");
        Ok(())
    });
}
