//! A real container runtime (podman with its CNI backend and runc) on a
//! simulated node.
//!
//! Two nodes on one machine must not share what a runtime keeps on the host
//! (`/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/cni`, podman's storage and
//! run state), so each [`PodmanNode`] has a *holder*: a process in the
//! node's network namespace with its own mount namespace (per-node
//! directories bound over those paths) and its own PID namespace. Every
//! podman command enters all three with `nsenter` (not `ip netns exec`,
//! whose /sys remount hides the cgroup hierarchy runc needs). Killing the
//! holder's PID-namespace init kills every conmon and container of the node,
//! and their mounts and namespaces vanish with it, so nothing outlives a
//! failed test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd::{run_bounded, run_ok, ManagedChild};
use crate::netns::Netns;
use crate::preflight::find_in_path;
use crate::wait::wait_for;

/// Bound for one podman command (container start includes the CNI ADD).
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);

/// Name of the test image, imported from a busybox rootfs.
pub const IMAGE: &str = "localhost/weft-busybox:test";

/// Host paths given a per-node directory (subdirectory name, mount point).
const NODE_MOUNTS: &[(&str, &str)] = &[
    ("cni-conf", "/etc/cni/net.d"),
    ("cni-bin", "/opt/cni/bin"),
    ("cni-cache", "/var/lib/cni"),
    ("storage", "/var/lib/containers"),
    ("run-containers", "/run/containers"),
    ("run-libpod", "/run/libpod"),
];

/// podman's configuration for a root host whose PID 1 is not systemd and
/// whose kernel crun cannot drive: runc, cgroupfs, file events, the CNI
/// backend; container ulimits within this machine's hard limits.
const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin"]
network_config_dir = "/etc/cni/net.d"
"#;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Tools the podman tests need, with the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("runc", "runc"),
    ("conmon", "conmon"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("tar", "tar"),
    ("chroot", "coreutils"),
];

/// Panics with the package to install when a tool is missing.
pub fn require_podman_tools() {
    for (tool, package) in TOOLS {
        if find_in_path(tool).is_none() {
            panic!(
                "required tool `{tool}` not found in PATH; install the Debian package `{package}` (scripts/setup does)"
            );
        }
    }
}

/// A tar of a minimal root filesystem: a statically linked busybox and its
/// applet links. Panics unless busybox is static (package busybox-static).
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let busybox = find_in_path("busybox")
        .unwrap_or_else(|| panic!("busybox not found; install the Debian package `busybox-static`"));
    let root = dir.join("rootfs");
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).with_context(|| format!("copying {}", busybox.display()))?;
    for applet in ["sh", "ping", "ip", "sleep", "cat", "hostname"] {
        let link = root.join("bin").join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("busybox", &link)?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    // A dynamically linked busybox would fail here, inside a rootfs without libc.
    let mut probe = Command::new("chroot");
    probe.arg(&root).args(["/bin/busybox", "true"]);
    if run_ok(probe).is_err() {
        panic!(
            "{} does not run without shared libraries; install the Debian package `busybox-static`",
            busybox.display()
        );
    }
    let tar = dir.join("rootfs.tar");
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".");
    run_ok(cmd)?;
    Ok(tar)
}

/// The per-node directories and podman configuration under `dir`.
fn prepare_dirs(dir: &Path) -> Result<()> {
    require_podman_tools();
    std::fs::create_dir_all(dir)?;
    for (sub, _) in NODE_MOUNTS {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(dir.join("containers.conf"), CONTAINERS_CONF)?;
    Ok(())
}

/// One node's podman, isolated as described in the module docs.
#[derive(Debug)]
pub struct PodmanNode {
    holder: ManagedChild,
    /// PID (as seen from here) of the init of the holder's PID namespace.
    init_pid: u32,
    dir: PathBuf,
    label: String,
}

impl PodmanNode {
    /// Starts the holder inside `node_ns` with state under `dir`, installs
    /// `conflist_name` with `conflist` into its `/etc/cni/net.d` and links
    /// `plugins` (name, executable) into its `/opt/cni/bin`.
    pub fn start(
        node_ns: &Netns,
        dir: &Path,
        conflist_name: &str,
        conflist: &str,
        plugins: &[(&str, PathBuf)],
    ) -> Result<PodmanNode> {
        prepare_dirs(dir)?;
        std::fs::write(dir.join("cni-conf").join(conflist_name), conflist)?;
        for (name, target) in plugins {
            let link = dir.join("cni-bin").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link)?;
        }
        PodmanNode::spawn_holder(node_ns, dir)
    }

    /// A holder whose podman has no CNI network of its own: for containers
    /// on the host network only (as a DaemonSet's `hostNetwork` pods).
    pub fn start_host_network_only(node_ns: &Netns, dir: &Path) -> Result<PodmanNode> {
        prepare_dirs(dir)?;
        PodmanNode::spawn_holder(node_ns, dir)
    }

    fn spawn_holder(node_ns: &Netns, dir: &Path) -> Result<PodmanNode> {
        let ready = dir.join("holder.ready");
        let _ = std::fs::remove_file(&ready);
        let mut script = String::from("set -e\n");
        for (sub, target) in NODE_MOUNTS {
            let src = dir.join(sub);
            script.push_str(&format!("mkdir -p {target}\nmount --bind '{}' {target}\n", src.display()));
        }
        // Podman names its container namespaces there; a private tmpfs makes
        // them vanish with the holder instead of lingering on the host.
        script.push_str("mkdir -p /run/netns\nmount -t tmpfs -o mode=0755 weft-test-netns /run/netns\n");
        script.push_str(&format!("touch '{}'\n", ready.display()));
        // PID 1 of the namespace: reaps orphans (conmon double-forks) and
        // ends on SIGTERM.
        script.push_str("trap 'exit 0' TERM\nwhile :; do sleep 3600 & wait $! || true; done\n");

        let log = std::fs::File::create(dir.join("holder.log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", node_ns.path().display()))
            .args(["--", "unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .args(["--propagation", "private", "--", "bash", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut holder = ManagedChild::spawn(cmd)?;
        let label = node_ns.name().to_owned();
        let unshare_pid = holder.pid();
        let init_pid = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Some(status) = holder.try_exited() {
                let log = std::fs::read_to_string(dir.join("holder.log")).unwrap_or_default();
                return Err(crate::wait::stop_waiting(format!("podman holder exited ({status}): {log}")));
            }
            if !ready.exists() {
                return Ok(None);
            }
            let children = std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))?;
            Ok(children.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        })
        .with_context(|| format!("starting the podman holder for {label}"))?;
        Ok(PodmanNode { holder, init_pid, dir: dir.to_owned(), label })
    }

    /// The per-node state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init_pid.to_string(), "-m", "-p", "-n", "--wd=/", "--"])
            .args(["podman", "--storage-driver", "vfs"])
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        cmd
    }

    /// Runs `podman ARGS...` in this node, bounded; any exit status.
    pub fn podman(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        run_bounded(self.command(args), timeout).with_context(|| format!("podman {} on {}", args.join(" "), self.label))
    }

    /// `podman ARGS...` that must succeed without warnings about CNI (podman
    /// only warns when a network's plugins fail VERSION, then ignores that
    /// network). Returns stdout, trimmed.
    pub fn podman_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.podman(args, PODMAN_TIMEOUT)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() {
            bail!("podman {} on {} failed ({}): {}{stdout}", args.join(" "), self.label, out.status, stderr.trim());
        }
        if let Some(line) = stderr.lines().find(|l| l.to_ascii_lowercase().contains("cni")) {
            bail!("podman {} on {} complained about CNI: {line}\nfull stderr: {stderr}", args.join(" "), self.label);
        }
        Ok(stdout)
    }
}

impl Drop for PodmanNode {
    fn drop(&mut self) {
        // Let podman run the plugins' DEL while the router may still be up;
        // then the holder's death takes everything else down.
        let _ = self.podman(&["rm", "--force", "--all", "--time", "0"], Duration::from_secs(20));
        let _ = self.holder.kill();
    }
}
