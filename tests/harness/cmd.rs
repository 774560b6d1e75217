//! Running external commands with hard time bounds, and owning long-lived
//! child processes so that they never outlive the test that started them.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Default bound for short administrative commands (`ip`, `nft`, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a process gets between SIGTERM and SIGKILL by default.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Every child is forked from one thread that lives as long as the process.
///
/// Children get `PR_SET_PDEATHSIG = SIGKILL`, so even a SIGKILLed test runner
/// leaves no routers behind. The kernel delivers that signal when the *thread*
/// that forked the child exits, not the process: forking from short-lived
/// test threads would kill routers whenever the starting thread ends.
fn spawner() -> &'static mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let spawned = thread::Builder::new().name("harness-spawner".into()).spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(spawn_with_deathsig(&mut cmd));
            }
        });
        if let Err(e) = spawned {
            panic!("cannot start the harness spawner thread: {e}");
        }
        tx
    })
}

fn spawn_with_deathsig(cmd: &mut Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only calls async-signal-safe syscalls (prctl,
    // getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                return Err(io::Error::other("harness parent died before exec"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` so that it is SIGKILLed if the test process dies.
pub fn spawn_guarded(cmd: Command) -> Result<Child> {
    let what = format!("{cmd:?}");
    let (tx, rx) = mpsc::channel();
    spawner().send((cmd, tx)).map_err(|_| anyhow!("harness spawner thread is gone"))?;
    let child = rx.recv_timeout(CMD_TIMEOUT).map_err(|_| anyhow!("harness spawner did not answer for {what}"))?;
    child.with_context(|| format!("spawning {what}"))
}

/// Runs `cmd` to completion, capturing output; SIGKILLs it after `timeout`.
pub fn run_bounded(cmd: Command, timeout: Duration) -> Result<Output> {
    run_bounded_input(cmd, None, timeout)
}

/// [`run_bounded`] feeding `input` to the command's stdin (e.g. a CNI
/// plugin's network configuration).
pub fn run_bounded_input(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_guarded(cmd)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A thread, so a child that never reads cannot block us past the timeout.
        thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
    }
    let stdout = child.stdout.take().map(drain_in_thread);
    let stderr = child.stderr.take().map(drain_in_thread);
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let stdout = stdout.map(join_drain).unwrap_or_default();
    let stderr = stderr.map(join_drain).unwrap_or_default();
    match status {
        Some(status) => Ok(Output { status, stdout, stderr }),
        None => bail!(
            "{what} did not finish within {timeout:?} (killed); stdout: {} stderr: {}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        ),
    }
}

/// Like [`run_bounded`] with [`CMD_TIMEOUT`], but a non-zero exit is an error.
/// Returns stdout.
pub fn run_ok(cmd: Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = run_bounded(cmd, CMD_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Convenience: `run_ok` on a program and argument list.
pub fn run_args<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_ok(cmd)
}

fn drain_in_thread<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_drain(h: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}

/// A long-lived child process that is terminated (by its PID only) on drop.
#[derive(Debug)]
pub struct ManagedChild {
    child: Child,
    what: String,
    reaped: Option<ExitStatus>,
}

impl ManagedChild {
    /// Spawns `cmd` via [`spawn_guarded`].
    pub fn spawn(cmd: Command) -> Result<ManagedChild> {
        let what = format!("{cmd:?}");
        let child = spawn_guarded(cmd)?;
        Ok(ManagedChild { child, what, reaped: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn description(&self) -> &str {
        &self.what
    }

    /// `Some(status)` once the process has exited (reaping it).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = Some(status);
            }
        }
        self.reaped
    }

    /// Sends `signal` to our child's PID unless it has been reaped already
    /// (after reaping, the PID may belong to someone else).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_exited().is_some() {
            return Ok(());
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscall on a PID we own and have not reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err).with_context(|| format!("kill({pid}, {signal})"));
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap. Returns the exit status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.wait_timeout(Duration::from_secs(10)).ok_or_else(|| anyhow!("{} survived SIGKILL for 10s", self.what))
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Errors if SIGKILL was needed.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace) {
            return Ok(status);
        }
        self.kill()?;
        bail!("{} ignored SIGTERM for {grace:?}; SIGKILLed", self.what)
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if self.try_exited().is_none() {
            let _ = self.terminate(TERM_GRACE);
        }
    }
}
