//! Network namespaces owned by a test: created with unique names, deleted on
//! drop, and usable from Rust code through per-thread `setns`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd::{run_bounded, run_ok, CMD_TIMEOUT};

const NETNS_DIR: &str = "/run/netns";

/// All harness-made names start with this, then the test process' PID, then
/// `x` and a per-process counter; that lets [`sweep_stale`] recognise
/// leftovers of dead test processes without touching anything else.
pub const NAME_PREFIX: &str = "wt";

/// A fresh prefix `wt{pid}x{n}` unique on this machine while this process lives.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    // Bounded: a handful of collisions with our own leftovers at most.
    for _ in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{pid}x{n}");
        let taken = std::fs::read_dir(NETNS_DIR)
            .map(|dir| dir.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix)))
            .unwrap_or(false);
        if !taken {
            return prefix;
        }
    }
    panic!("no free namespace prefix for pid {pid}");
}

/// Deletes namespaces left by harness processes that no longer exist (e.g. a
/// test runner killed by a timeout). Runs once per process.
pub fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else { continue };
            if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            eprintln!("[harness] removing stale namespace {name} of dead pid {pid}");
            let _ = run_ok(ip_cmd(&["netns", "del", &name]));
        }
    });
}

fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, tail) = rest.split_once('x')?;
    let counter_digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
    if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) || counter_digits == 0 {
        return None;
    }
    pid.parse().ok()
}

fn ip_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// A network namespace this test created; deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, then brings `lo` up.
    pub fn create(name: impl Into<String>) -> Result<Netns> {
        // `ip netns add` sets up the shared /run/netns mount on first use and
        // concurrent first uses can race; serialise within the process and
        // retry once for races with other processes.
        static CREATE: Mutex<()> = Mutex::new(());
        let name = name.into();
        let mut last = None;
        for _ in 0..3 {
            let guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
            let result = run_ok(ip_cmd(&["netns", "add", &name]));
            drop(guard);
            match result {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if let Some(e) = last {
            return Err(e.context(format!("creating namespace {name}")));
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the handle CNI plugins and `setns` take.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME ARGS...`; returns stdout, errors on failure.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = ip_cmd(&["-n", &self.name]);
        cmd.args(args);
        run_ok(cmd)
    }

    /// `ip -j -n NAME ARGS...` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut cmd = ip_cmd(&["-j", "-n", &self.name]);
        cmd.args(args);
        let out = run_ok(cmd)?;
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j {args:?}` output: {out}"))
    }

    /// A `Command` running `program args...` inside this namespace
    /// (`ip netns exec`, which also gives it a matching /sys).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = ip_cmd(&["netns", "exec", &self.name, program]);
        cmd.args(args);
        cmd
    }

    /// Runs `program args...` in the namespace, bounded by `timeout`.
    /// Returns the output whatever the exit status.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        run_bounded(self.command(program, args), timeout)
    }

    /// Runs `program args...` in the namespace; non-zero exit is an error.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        run_ok(self.command(program, args))
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run_ok("sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }

    /// MTU of `dev` in this namespace, `None` if it does not exist.
    pub fn link_mtu(&self, dev: &str) -> Result<Option<u32>> {
        let mut cmd = ip_cmd(&["-j", "-n", &self.name, "link", "show", "dev", dev]);
        cmd.env("LC_ALL", "C");
        let out = run_bounded(cmd, CMD_TIMEOUT)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("does not exist") {
                return Ok(None);
            }
            bail!("ip link show {dev} in {}: {}", self.name, err.trim());
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mtu = json
            .get(0)
            .and_then(|l| l.get("mtu"))
            .and_then(|m| m.as_u64())
            .with_context(|| format!("no mtu for {dev} in {json}"))?;
        Ok(Some(mtu as u32))
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ok(ip_cmd(&["netns", "del", &self.name])) {
            eprintln!("[harness] deleting namespace {}: {e:#}", self.name);
        }
    }
}

/// Moves the *calling thread* into namespace `ns`. Only call this on threads
/// you created for that purpose; prefer [`in_netns`].
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: valid fd for the duration of the call; CLONE_NEWNET only
    // changes this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    Ok(())
}

/// Runs `f` on a new scoped thread inside namespace `ns` and returns its
/// result; a panic in `f` is propagated to the caller.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(ns: &str, f: F) -> Result<T> {
    thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T> {
            enter_netns(ns)?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Spawns a named thread inside `ns` running `f` (for concurrent work in
/// several namespaces, e.g. a server and a client).
pub fn spawn_in_netns<T, F>(ns: &str, f: F) -> thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
}

/// Plugs `ns` into `bridge` (in `host_ns`) with a veth pair: `host_side` on
/// the bridge, `eth0` with address `cidr` inside `ns`, both with `mtu` and up.
/// The host side gets its MTU before joining the bridge, because a smaller
/// port would lower the bridge's MTU.
pub fn plug_veth(host_ns: &Netns, host_side: &str, bridge: &str, ns: &Netns, cidr: &str, mtu: u32) -> Result<()> {
    let mtu = mtu.to_string();
    host_ns.ip(&[
        "link",
        "add",
        host_side,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        &mtu,
        "netns",
        ns.name(),
    ])?;
    host_ns.ip(&["link", "set", host_side, "master", bridge, "up"])?;
    ns.ip(&["addr", "add", cidr, "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
}
