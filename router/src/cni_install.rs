//! Putting weft's CNI plugin and conflist on the node, where the kubelet's
//! container runtime looks for them.
//!
//! The plugin is installed by `weft install-cni` (the DaemonSet's init
//! container: the image has no shell, so no `cp`); the conflist is written
//! by the router only once it is ready, so the node reports its network as
//! not ready (and gets no pods) until a pod's ADD can succeed. Both are
//! replaced atomically (temp file in the same directory, fsync, rename), so
//! a runtime never runs a half-written plugin or reads a half-written
//! config, and a rename over a running plugin is fine (no ETXTBSY). The
//! conflist is left in place when the router stops: a rolling update must
//! not flap the node's readiness.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

/// The conflist's file name. Runtimes use the lexicographically first
/// config in the directory: this sorts before a leftover Weave
/// `10-weave.conflist` (and flannel's `10-flannel.conflist`).
pub const CONFLIST_NAME: &str = "05-weft.conflist";

/// The plugin's name in `/opt/cni/bin` (the conflist's `type`).
pub const PLUGIN_NAME: &str = "weft-net";

/// Where the image carries the plugin (deploy/Containerfile).
pub const IMAGE_PLUGIN_PATH: &str = "/usr/lib/weft/weft-net";

/// `weft install-cni`: what the DaemonSet's init container runs.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Where the plugin binary is installed on the host (the host's
    /// /opt/cni/bin, mounted into the container).
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The plugin binary to install.
    #[arg(long, env = "WEFT_CNI_PLUGIN", default_value = IMAGE_PLUGIN_PATH)]
    pub plugin: PathBuf,
}

pub fn run(args: InstallArgs) -> Result<()> {
    let (path, outcome) = install_plugin(&args.plugin, &args.cni_bin_dir)?;
    match outcome {
        Installed::Unchanged => println!("weft: {} is up to date", path.display()),
        Installed::Written => println!("weft: installed {}", path.display()),
    }
    Ok(())
}

/// Whether [`install_plugin`] had to write anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The same bytes were already there, executable.
    Unchanged,
    Written,
}

/// Copies the plugin `source` to `<bin_dir>/weft-net`, mode 0755, unless
/// the same bytes are already there (so a restarted init container does
/// not touch a plugin runtimes may be executing).
pub fn install_plugin(source: &Path, bin_dir: &Path) -> Result<(PathBuf, Installed)> {
    let data = std::fs::read(source).with_context(|| format!("reading the CNI plugin {}", source.display()))?;
    if data.is_empty() {
        bail!("the CNI plugin {} is empty", source.display());
    }
    require_dir(bin_dir, "CNI plugin directory (mount the host's /opt/cni/bin there)")?;
    let dest = bin_dir.join(PLUGIN_NAME);
    if same_file_content(&dest, &data, true) {
        return Ok((dest, Installed::Unchanged));
    }
    crate::atomic_file::replace(&dest, &data, 0o755)?;
    Ok((dest, Installed::Written))
}

/// The conflist weft writes: weft-net (hairpin on, so a pod reaches itself
/// through a Service), chained with `portmap` (hostPort) when the node has
/// it; listing a missing plugin would fail every ADD.
pub fn conflist(portmap: bool, http_addr: Option<SocketAddr>) -> String {
    let mut weft = json!({"type": PLUGIN_NAME, "hairpinMode": true});
    // The plugin finds the router at the default address unless told.
    if let Some(addr) = http_addr {
        weft["httpAddr"] = json!(addr.to_string());
    }
    let mut plugins = vec![weft];
    if portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    }
    let list = json!({"cniVersion": "1.0.0", "name": "weft", "plugins": plugins});
    format!("{list:#}\n")
}

/// Writes weft's conflist into `conf_dir` (called by the router once it is
/// ready); `bin_dir` tells which chained plugins exist, `http_addr` is the
/// router's API when not the default. Leaves an identical file alone
/// (runtimes reload on every change of the directory).
pub fn write_conflist(conf_dir: &Path, bin_dir: &Path, http_addr: Option<SocketAddr>) -> Result<PathBuf> {
    require_dir(conf_dir, "CNI config directory (mount the host's /etc/cni/net.d there)")?;
    let text = conflist(has_plugin(bin_dir, "portmap"), http_addr);
    let dest = conf_dir.join(CONFLIST_NAME);
    if !same_file_content(&dest, text.as_bytes(), false) {
        crate::atomic_file::replace(&dest, text.as_bytes(), 0o644)?;
    }
    Ok(dest)
}

/// Whether `bin_dir` holds plugin `name`. A symlink counts even when it
/// does not resolve here: inside a container an absolute link points into
/// the host's filesystem, which the runtime (on the host) will follow.
fn has_plugin(bin_dir: &Path, name: &str) -> bool {
    match std::fs::symlink_metadata(bin_dir.join(name)) {
        Ok(meta) if meta.file_type().is_symlink() => true,
        Ok(meta) => meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

fn require_dir(dir: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!("{what}: {} is not a directory", dir.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!("{what}: {} does not exist", dir.display()),
        Err(err) => Err(err).with_context(|| format!("{what}: {}", dir.display())),
    }
}

/// Whether `path` is a regular file holding exactly `data` (and, if asked,
/// executable).
fn same_file_content(path: &Path, data: &[u8], executable: bool) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return false };
    if !meta.is_file() || meta.len() != data.len() as u64 {
        return false;
    }
    if executable && meta.permissions().mode() & 0o111 == 0 {
        return false;
    }
    std::fs::read(path).is_ok_and(|current| current == data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::MetadataExt;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("weft-cni-install-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("creating a temp dir");
            TempDir(path)
        }
        fn sub(&self, name: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::create_dir_all(&p).expect("creating a temp subdir");
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("listing a temp dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn source(t: &TempDir, content: &[u8]) -> PathBuf {
        let src = t.sub("image").join("weft-net");
        std::fs::write(&src, content).expect("writing the source plugin");
        src
    }

    #[test]
    fn installs_the_plugin_executable_and_nothing_else() {
        let t = TempDir::new("install");
        let src = source(&t, b"\x7fELF plugin v1");
        let bin = t.sub("bin");
        let (path, outcome) = install_plugin(&src, &bin).expect("install");
        assert_eq!(outcome, Installed::Written);
        assert_eq!(path, bin.join("weft-net"));
        assert_eq!(std::fs::read(&path).expect("installed plugin"), b"\x7fELF plugin v1");
        let meta = std::fs::metadata(&path).expect("metadata");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(entries(&bin), ["weft-net"], "no temp file may be left behind");
    }

    #[test]
    fn reinstalling_the_same_plugin_leaves_the_file_alone() {
        let t = TempDir::new("idem");
        let src = source(&t, b"same bytes");
        let bin = t.sub("bin");
        install_plugin(&src, &bin).expect("first install");
        let inode = std::fs::metadata(bin.join("weft-net")).expect("metadata").ino();
        let (_, outcome) = install_plugin(&src, &bin).expect("second install");
        assert_eq!(outcome, Installed::Unchanged);
        assert_eq!(std::fs::metadata(bin.join("weft-net")).expect("metadata").ino(), inode);
    }

    #[test]
    fn a_new_plugin_replaces_the_old_one_by_rename() {
        let t = TempDir::new("upgrade");
        let bin = t.sub("bin");
        std::fs::write(bin.join("weft-net"), b"old").expect("old plugin");
        // An old copy still open (as by a running ADD) keeps its bytes.
        let old = File::open(bin.join("weft-net")).expect("open old");
        let old_inode = old.metadata().expect("metadata").ino();
        // Leftover of an interrupted install.
        std::fs::write(bin.join(".weft-net.weft-tmp"), b"partial").expect("leftover");
        let src = source(&t, b"new plugin");
        let (path, outcome) = install_plugin(&src, &bin).expect("install");
        assert_eq!(outcome, Installed::Written);
        assert_eq!(std::fs::read(&path).expect("read"), b"new plugin");
        assert_ne!(std::fs::metadata(&path).expect("metadata").ino(), old_inode, "replaced by rename, not in place");
        assert_eq!(entries(&bin), ["weft-net"]);
    }

    #[test]
    fn a_non_executable_copy_is_reinstalled() {
        let t = TempDir::new("mode");
        let bin = t.sub("bin");
        std::fs::write(bin.join("weft-net"), b"plugin").expect("copy");
        std::fs::set_permissions(bin.join("weft-net"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let src = source(&t, b"plugin");
        let (path, outcome) = install_plugin(&src, &bin).expect("install");
        assert_eq!(outcome, Installed::Written);
        assert_eq!(std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn install_errors_name_what_is_missing() {
        let t = TempDir::new("errors");
        let bin = t.sub("bin");
        let err = format!("{:#}", install_plugin(&t.0.join("nope"), &bin).expect_err("missing source"));
        assert!(err.contains("reading the CNI plugin") && err.contains("nope"), "{err}");
        let src = source(&t, b"plugin");
        let err = format!("{:#}", install_plugin(&src, &t.0.join("absent")).expect_err("missing bin dir"));
        assert!(err.contains("absent") && err.contains("does not exist") && err.contains("/opt/cni/bin"), "{err}");
        let empty = source(&t, b"");
        let err = format!("{:#}", install_plugin(&empty, &bin).expect_err("empty source"));
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn conflist_chains_portmap_only_when_the_node_has_it() {
        let t = TempDir::new("conflist");
        let conf = t.sub("net.d");
        let bin = t.sub("bin");
        let path = write_conflist(&conf, &bin, None).expect("write without portmap");
        assert_eq!(path, conf.join("05-weft.conflist"));
        let list: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("conflist is JSON");
        let types: Vec<&str> =
            list["plugins"].as_array().expect("plugins").iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(types, ["weft-net"]);
        assert_eq!(list["plugins"][0]["hairpinMode"], true);
        assert_eq!(list["name"], "weft");

        std::fs::write(bin.join("portmap"), b"#!portmap").expect("portmap");
        std::fs::set_permissions(bin.join("portmap"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        write_conflist(&conf, &bin, None).expect("write with portmap");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            include_str!("../../deploy/05-weft.conflist"),
            "deploy/05-weft.conflist is what the router writes"
        );
        assert_eq!(entries(&conf), ["05-weft.conflist"], "no temp file may be left behind");
    }

    #[test]
    fn portmap_as_a_symlink_into_the_host_counts() {
        let t = TempDir::new("symlink");
        let bin = t.sub("bin");
        std::os::unix::fs::symlink("/nonexistent/host/usr/lib/cni/portmap", bin.join("portmap")).expect("symlink");
        assert!(has_plugin(&bin, "portmap"));
        std::fs::write(bin.join("bandwidth"), b"not executable").expect("file");
        assert!(!has_plugin(&bin, "bandwidth"));
        assert!(!has_plugin(&bin, "tuning"));
    }

    #[test]
    fn an_unchanged_conflist_is_not_rewritten() {
        let t = TempDir::new("conf-idem");
        let conf = t.sub("net.d");
        let bin = t.sub("bin");
        let path = write_conflist(&conf, &bin, None).expect("first write");
        let inode = std::fs::metadata(&path).expect("metadata").ino();
        write_conflist(&conf, &bin, None).expect("second write");
        assert_eq!(std::fs::metadata(&path).expect("metadata").ino(), inode);
        // A changed node (portmap installed later) gets the new list.
        std::os::unix::fs::symlink("/usr/lib/cni/portmap", bin.join("portmap")).expect("symlink");
        write_conflist(&conf, &bin, None).expect("third write");
        assert_ne!(std::fs::metadata(&path).expect("metadata").ino(), inode);
    }

    #[test]
    fn conflist_sorts_before_the_other_networks_configs() {
        // The runtime picks the lexicographically first file.
        for other in ["10-weave.conflist", "10-weft.conflist", "10-flannel.conflist", "10-containerd-net.conflist"] {
            assert!(CONFLIST_NAME < other, "{CONFLIST_NAME} must sort before {other}");
        }
    }

    #[test]
    fn conflist_needs_its_directory() {
        let t = TempDir::new("conf-missing");
        let err = format!("{:#}", write_conflist(&t.0.join("net.d"), &t.0, None).expect_err("missing dir"));
        assert!(err.contains("net.d") && err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_router_api_elsewhere_is_named_in_the_conflist() {
        let addr: SocketAddr = "127.0.0.1:7784".parse().expect("an address");
        let text = conflist(false, Some(addr));
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["plugins"][0]["httpAddr"], "127.0.0.1:7784");
        assert!(conflist(false, None).find("httpAddr").is_none());
    }
}
