//! The sysctls pod traffic needs, set in the router's own network
//! namespace (both are per namespace on current kernels):
//!
//! * `net.ipv4.ip_forward=1`: the node routes pod traffic to and from the
//!   outside, and to Service addresses.
//! * `net.bridge.bridge-nf-call-iptables=1`: frames the bridge forwards
//!   (pod to pod, pod to the overlay) pass the IPv4 netfilter hooks. Without
//!   it a reply that is bridged straight back to a pod never meets the
//!   conntrack entry of kube-proxy's DNAT (Service traffic to a pod on the
//!   same bridge, or to one whose reply comes over the overlay), so the
//!   client sees the backend's own address and resets. The sysctl exists
//!   only with `br_netfilter` loaded, which an image without modprobe can
//!   only ask for.

use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel's sysctls are; tests point this elsewhere.
pub const PROC_SYS: &str = "/proc/sys";
pub const IP_FORWARD: &str = "net/ipv4/ip_forward";
pub const BRIDGE_DIR: &str = "net/bridge";
pub const BRIDGE_NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";

/// What became of one sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// It already had the value.
    Already,
    /// weft wrote it (it had the value given).
    Set {
        was: String,
    },
    /// The sysctl does not exist.
    Missing,
    Failed(String),
}

impl Setting {
    pub fn ok(&self) -> bool {
        matches!(self, Setting::Already | Setting::Set { .. })
    }

    /// This pass's outcome, remembering an earlier one: a value weft wrote
    /// that is still in place goes on saying that weft set it.
    fn after(self, before: &Setting) -> Setting {
        match (self, before) {
            (Setting::Already, set @ Setting::Set { .. }) => set.clone(),
            (now, _) => now,
        }
    }
}

/// The state of both sysctls after one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctls {
    pub ip_forward: Setting,
    pub bridge_nf_call_iptables: Setting,
}

impl Sysctls {
    /// This pass's state, keeping what earlier passes set (see [`Setting::after`]).
    pub fn after(self, before: Option<&Sysctls>) -> Sysctls {
        let Some(before) = before else { return self };
        Sysctls {
            ip_forward: self.ip_forward.after(&before.ip_forward),
            bridge_nf_call_iptables: self.bridge_nf_call_iptables.after(&before.bridge_nf_call_iptables),
        }
    }

    pub fn ok(&self) -> bool {
        self.ip_forward.ok() && self.bridge_nf_call_iptables.ok()
    }

    /// The `weft status` text.
    pub fn describe(&self) -> String {
        let bridge = match &self.bridge_nf_call_iptables {
            Setting::Already => "br_netfilter on (bridge-nf-call-iptables=1)".to_owned(),
            Setting::Set { was } => format!("br_netfilter on (bridge-nf-call-iptables=1, was {was}: set by weft)"),
            Setting::Missing => {
                "br_netfilter is not loaded: load br_netfilter (modprobe br_netfilter) so bridged pod traffic \
                 passes netfilter"
                    .to_owned()
            }
            Setting::Failed(err) => format!("cannot set bridge-nf-call-iptables=1: {err}"),
        };
        let forward = match &self.ip_forward {
            Setting::Already => "ip_forward=1".to_owned(),
            Setting::Set { was } => format!("ip_forward=1 (was {was}: set by weft)"),
            Setting::Missing => "ip_forward missing (no IPv4?)".to_owned(),
            Setting::Failed(err) => format!("cannot set ip_forward=1: {err}"),
        };
        format!("{bridge}, {forward}")
    }
}

/// Makes `root/key` read `want`, writing it only when it does not.
fn ensure(root: &Path, key: &str, want: &str) -> Setting {
    let path: PathBuf = root.join(key);
    let current = match std::fs::read_to_string(&path) {
        Ok(v) => v.trim().to_owned(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Setting::Missing,
        Err(err) => return Setting::Failed(format!("reading {}: {err}", path.display())),
    };
    if current == want {
        return Setting::Already;
    }
    match std::fs::write(&path, want) {
        Ok(()) => Setting::Set { was: current },
        Err(err) => Setting::Failed(format!("writing {}: {err}", path.display())),
    }
}

/// One pass over both sysctls under `root` (normally [`PROC_SYS`]).
pub fn ensure_all(root: &Path) -> Sysctls {
    let bridge =
        if root.join(BRIDGE_DIR).is_dir() { ensure(root, BRIDGE_NF_CALL_IPTABLES, "1") } else { Setting::Missing };
    Sysctls { ip_forward: ensure(root, IP_FORWARD, "1"), bridge_nf_call_iptables: bridge }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-sysctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net/ipv4")).unwrap();
        dir
    }

    #[test]
    fn values_are_written_once_and_reported() {
        let root = scratch("write");
        std::fs::create_dir_all(root.join(BRIDGE_DIR)).unwrap();
        std::fs::write(root.join(IP_FORWARD), "0\n").unwrap();
        std::fs::write(root.join(BRIDGE_NF_CALL_IPTABLES), "1\n").unwrap();
        let first = ensure_all(&root);
        assert_eq!(first.ip_forward, Setting::Set { was: "0".into() });
        assert_eq!(first.bridge_nf_call_iptables, Setting::Already);
        assert!(first.ok());
        assert_eq!(std::fs::read_to_string(root.join(IP_FORWARD)).unwrap(), "1");
        assert_eq!(first.describe(), "br_netfilter on (bridge-nf-call-iptables=1), ip_forward=1 (was 0: set by weft)");
        let second = ensure_all(&root);
        assert_eq!(second.ip_forward, Setting::Already);
        assert_eq!(second.describe(), "br_netfilter on (bridge-nf-call-iptables=1), ip_forward=1");
        // What the task shows: weft's write is remembered while it holds...
        let kept = second.after(Some(&first));
        assert_eq!(kept, first);
        // ...and forgotten once someone else changed the value again.
        std::fs::write(root.join(IP_FORWARD), "0").unwrap();
        let reset = ensure_all(&root).after(Some(&kept));
        assert_eq!(reset.ip_forward, Setting::Set { was: "0".into() });
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn without_br_netfilter_it_says_to_load_it() {
        let root = scratch("nobridge");
        std::fs::write(root.join(IP_FORWARD), "1").unwrap();
        let s = ensure_all(&root);
        assert_eq!(s.bridge_nf_call_iptables, Setting::Missing);
        assert!(!s.ok());
        assert!(s.describe().contains("load br_netfilter"), "{}", s.describe());
        std::fs::remove_dir_all(root).unwrap();
    }
}
