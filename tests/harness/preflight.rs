//! Environment checks: these tests need root and a few tools, and must fail
//! loudly (never skip) without them.

use std::path::Path;
use std::sync::Once;

/// Tools the harness shells out to, with the Debian package providing each.
const TOOLS: &[(&str, &str)] =
    &[("ip", "iproute2"), ("ping", "iputils-ping"), ("nft", "nftables"), ("sysctl", "procps")];

/// Panics with a clear message unless running as root with the tools present.
pub fn require_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: geteuid cannot fail and has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            panic!(
                "weft namespace tests must run as root (euid is {euid}): they create network \
                 namespaces, veths, bridges and nftables rules"
            );
        }
        for (tool, package) in TOOLS {
            if find_in_path(tool).is_none() {
                panic!("required tool `{tool}` not found in PATH; install the Debian package `{package}`");
            }
        }
    });
}

/// The first `PATH` entry containing an executable named `name`.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}
