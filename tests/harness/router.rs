//! Locating the `weft` binary and running one router process per node.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::ManagedChild;
use crate::netns::Netns;

/// Where the router's HTTP API listens unless `--http-addr` says otherwise.
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 6784));

/// The router's default control (TCP) and data (UDP) port.
pub const DEFAULT_PORT: u16 = 6783;

/// `$WEFT_BIN`, else `weft` from the running executable's target directory.
pub fn weft_bin() -> Result<PathBuf> {
    target_bin("weft", "WEFT_BIN")
}

/// The workspace binary `name`: `$env_override` if set, else `name` next to
/// the directory of the running executable (`target/<profile>/deps/<test>`
/// and `target/<profile>/examples/<example>` both resolve to
/// `target/<profile>/<name>`).
pub fn target_bin(name: &str, env_override: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(env_override) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().context("current_exe")?;
            exe.parent()
                .and_then(Path::parent)
                .map(|dir| dir.join(name))
                .with_context(|| format!("no grandparent directory for {}", exe.display()))?
        }
    };
    if !path.is_file() {
        bail!(
            "{name} binary not found at {}: run `cargo build --bins` (with --release for release tests) \
             first, or set {env_override}",
            path.display()
        );
    }
    Ok(path)
}

/// The `--http-addr` value in `args`, if any.
pub fn http_addr_in(args: &[String]) -> Result<Option<SocketAddr>> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--http-addr" {
            it.next().context("--http-addr without a value")?.as_str()
        } else if let Some(v) = a.strip_prefix("--http-addr=") {
            v
        } else {
            continue;
        };
        return value.parse().map(Some).with_context(|| format!("--http-addr {value:?} is not an ip:port"));
    }
    Ok(None)
}

/// Whether `flag` (as `--flag` or `--flag=...`) is among `args`.
pub fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// A running (or exited, not yet collected) router.
#[derive(Debug)]
pub struct RouterProcess {
    pub child: ManagedChild,
    pub started: Instant,
}

/// Starts `weft ARGS...` inside `ns` with stdout and stderr appended to `log`.
pub fn spawn_router(
    bin: &Path,
    ns: &Netns,
    args: &[String],
    log: &Path,
    env: &[(String, String)],
) -> Result<RouterProcess> {
    let mut file =
        OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    writeln!(file, "===== harness: starting {} {} =====", bin.display(), args.join(" "))?;
    let bin_s = bin.to_str().context("weft path is not UTF-8")?;
    let mut cmd: Command = ns.command(bin_s, &[]);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        // Own process group: a terminal's Ctrl-C reaches only the test,
        // which then shuts routers down in order.
        .process_group(0);
    scrub_weft_env(&mut cmd);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = ManagedChild::spawn(cmd)?;
    Ok(RouterProcess { child, started: Instant::now() })
}

/// Variables the router reads besides `WEFT_*`: Weave's names, the node's
/// identity and Kubernetes credentials.
const ROUTER_ENV: &[&str] = &[
    "IPALLOC_RANGE",
    "IPALLOC_INIT",
    "CONN_LIMIT",
    "WEAVE_MTU",
    "WEAVE_NO_FASTDP",
    "WEAVE_PASSWORD",
    "WEAVE_HTTP_ADDR",
    "NO_MASQ_LOCAL",
    "EXTRA_ARGS",
    "KUBE_PEERS",
    "NODE_NAME",
    "HOSTNAME",
    "POD_NAMESPACE",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
];

/// Removes inherited variables the router reads its options from (`WEFT_*`
/// and [`ROUTER_ENV`]), so a stray one in the tester's shell (a KUBECONFIG,
/// say) can't change a test; and points HOME at nothing so that no
/// `~/.kube/config` is found either. Tests set what they mean explicitly.
pub fn scrub_weft_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("WEFT_") || ROUTER_ENV.contains(&key_text.as_ref()) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("HOME", "/nonexistent");
}

/// Appends a harness marker line to a node log (so restarts and signals are
/// visible in the interleaved output).
pub fn log_marker(log: &Path, what: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "===== harness: {what} =====");
    }
}

/// The last `lines` lines of the file at `path` (reads at most 256 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return format!("(cannot read {})", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Describes an exit status for error messages.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}
