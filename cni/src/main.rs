//! `weft-net`: weft's CNI plugin.
//!
//! Called by the container runtime with `CNI_*` environment variables and
//! the network configuration on stdin; answers on stdout with a result or a
//! CNI error object (and a non-zero exit). Pods get one end of a veth pair,
//! the other end sits on the node's weft bridge; addresses come from the
//! weft router's IPAM over its local HTTP API, or from a delegated IPAM
//! plugin when the configuration names one in `ipam.type`.

mod add;
mod check;
mod config;
mod del;
mod delegate;
mod env;
mod error;
mod garp;
mod gc;
mod host_end;
mod ip_prefix;
mod ipam;
mod result;
mod router_ipam;
mod sandbox;
mod status;
mod version;
mod veth_name;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::config::{version_hint, NetConf};
use crate::env::{CniEnv, Command};
use crate::error::PluginError;
use crate::version::CniVersion;

/// Network configurations are a few KiB; anything near this is not one.
const MAX_STDIN: u64 = 16 << 20;

fn main() -> ExitCode {
    let env = CniEnv::read(|name| std::env::var(name).ok());
    let is_version = matches!(&env, Ok(env) if env.command == Command::Version);
    // VERSION may come without a configuration, even from a terminal.
    let stdin = if is_version && std::io::stdin().is_terminal() { Ok(Vec::new()) } else { read_stdin() };
    let version = stdin.as_deref().map_or(CniVersion::LATEST, version_hint);

    if env.as_ref().is_err_and(|_| std::env::var_os("CNI_COMMAND").is_none()) {
        // Someone ran the binary by hand: say what it is, on stderr.
        eprintln!("weft-net: weft's CNI plugin; CNI protocol versions supported: {}", CniVersion::supported_list());
    }
    let outcome = env.and_then(|env| run(&env, stdin));
    let (output, code) = match outcome {
        Ok(None) => return ExitCode::SUCCESS,
        Ok(Some(output)) => (output, ExitCode::SUCCESS),
        Err(err) => (err.to_json(version), ExitCode::FAILURE),
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{output}").and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    code
}

fn read_stdin() -> Result<Vec<u8>, PluginError> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN)
        .read_to_end(&mut input)
        .map_err(|e| PluginError::io("reading the network configuration from stdin", e))?;
    Ok(input)
}

/// Runs one command; `Some` is what to print on success.
fn run(env: &CniEnv, stdin: Result<Vec<u8>, PluginError>) -> Result<Option<Value>, PluginError> {
    if env.command == Command::Version {
        let version = stdin.as_deref().map_or(CniVersion::LATEST, version_hint);
        let supported: Vec<&str> = CniVersion::SUPPORTED.map(CniVersion::as_str).to_vec();
        return Ok(Some(json!({ "cniVersion": version.as_str(), "supportedVersions": supported })));
    }
    let stdin = stdin?;
    let conf = NetConf::parse(&stdin)?;
    match env.command {
        Command::Add => add::add(env, &conf, &stdin).map(|result| Some(result.to_json(conf.version))),
        Command::Del => del::del(env, &conf, &stdin).map(|()| None),
        Command::Check => check::check(env, &conf, &stdin).map(|()| None),
        Command::Status => status::status(env, &conf, &stdin).map(|()| None),
        Command::Gc => gc::gc(env, &conf, &stdin).map(|()| None),
        Command::Version => Ok(None),
    }
}
