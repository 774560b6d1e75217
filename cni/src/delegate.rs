//! Running another CNI plugin (the configured IPAM) the way libcni's
//! `invoke.Delegate*` does: found in `CNI_PATH`, our own environment with
//! `CNI_COMMAND` set, the network configuration unchanged on stdin.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::env::Command as CniCommand;
use crate::error::PluginError;

/// A delegate that has not answered by then is killed: runtimes give the
/// whole chain about a minute or two, and an orphan must not outlive us.
const DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Delegate {
    name: String,
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
struct ErrorObject {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

impl Delegate {
    /// Finds the plugin `name` in the first `dirs` entry holding it.
    pub fn find(name: &str, dirs: &[PathBuf]) -> Result<Delegate, PluginError> {
        dirs.iter()
            .map(|dir| dir.join(name))
            .find(|path| is_executable(path))
            .map(|path| Delegate { name: name.to_owned(), path })
            .ok_or_else(|| {
                let searched = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
                PluginError::InvalidConfig(format!(
                    "IPAM plugin {name:?} (`ipam.type`) not found in CNI_PATH ({searched}); install it or fix the name"
                ))
            })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `command`; returns the plugin's JSON output, `None` if it
    /// printed nothing (DEL, CHECK, GC, STATUS).
    pub fn run(&self, command: CniCommand, stdin: &[u8]) -> Result<Option<Value>, PluginError> {
        let mut child = Command::new(&self.path)
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The delegate's log lines go where ours go: the runtime's log.
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| PluginError::io(format!("starting IPAM plugin {}", self.path.display()), e))?;
        let writer = child.stdin.take().map(|mut pipe| {
            let input = stdin.to_vec();
            // A thread, so a plugin that does not read cannot block us.
            thread::spawn(move || pipe.write_all(&input))
        });
        let reader = child.stdout.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut output = Vec::new();
                pipe.read_to_end(&mut output).map(|_| output)
            })
        });

        let deadline = Instant::now() + DELEGATE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(PluginError::TryAgainLater(format!(
                        "IPAM plugin {:?} did not finish {} within {DELEGATE_TIMEOUT:?} (killed)",
                        self.name,
                        command.as_str()
                    )));
                }
                Err(e) => return Err(PluginError::io(format!("waiting for IPAM plugin {:?}", self.name), e)),
            }
        };
        // A plugin may exit without reading stdin; that broken pipe is not an error.
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        let output = match reader.map(|r| r.join()) {
            Some(Ok(Ok(output))) => output,
            Some(Ok(Err(e))) => {
                return Err(PluginError::io(format!("reading IPAM plugin {:?}'s output", self.name), e))
            }
            _ => Vec::new(),
        };

        if !status.success() {
            return Err(self.failure(&output, status.to_string()));
        }
        if output.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&output)
            .map(Some)
            .map_err(|e| PluginError::decode(format!("IPAM plugin {:?}'s {} output", self.name, command.as_str()), e))
    }

    /// The delegate's own error object, or its raw output if it gave none.
    fn failure(&self, output: &[u8], status: String) -> PluginError {
        match serde_json::from_slice::<ErrorObject>(output) {
            Ok(error) if !error.msg.is_empty() => PluginError::Delegated {
                plugin: self.name.clone(),
                // Code 0 would be "success"; the spec's catch-all is 999.
                code: if error.code == 0 { 999 } else { error.code },
                msg: error.msg,
                details: error.details,
            },
            _ => PluginError::Delegated {
                plugin: self.name.clone(),
                code: 999,
                msg: format!("failed ({status})"),
                details: String::from_utf8_lossy(output).trim().to_owned(),
            },
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-cni-delegate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn finds_runs_and_reports() {
        let dir = temp_dir("run");
        script(&dir, "echoer", r#"cat >/dev/null; echo "{\"command\": \"$CNI_COMMAND\"}""#);
        script(&dir, "quiet", "exit 0");
        script(&dir, "failer", r#"echo '{"code": 7, "msg": "bad subnet", "details": "10.0.0.0/33"}'; exit 1"#);
        script(&dir, "crasher", "echo oops; exit 2");
        let dirs = vec![PathBuf::from("/nonexistent"), dir.clone()];

        let out = Delegate::find("echoer", &dirs).unwrap().run(CniCommand::Add, b"{}").unwrap();
        assert_eq!(out.unwrap()["command"], "ADD");
        assert_eq!(Delegate::find("quiet", &dirs).unwrap().run(CniCommand::Del, b"{}").unwrap(), None);

        let err = Delegate::find("failer", &dirs).unwrap().run(CniCommand::Add, b"{}").unwrap_err();
        assert_eq!(err.code(), 7);
        assert!(err.to_string().contains("bad subnet"));
        let err = Delegate::find("crasher", &dirs).unwrap().run(CniCommand::Add, b"{}").unwrap_err();
        assert_eq!(err.code(), 999);

        assert_eq!(Delegate::find("missing", &dirs).unwrap_err().code(), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
