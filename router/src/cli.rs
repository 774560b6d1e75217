//! The CLI commands: thin clients of the router's HTTP API, so that the
//! output is exactly what `curl 127.0.0.1:6784/status` shows.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatusPart {
    Peers,
    Connections,
    Targets,
    Ipam,
}

fn url(http_addr: &str, path: &str) -> String {
    format!("http://{http_addr}{path}")
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(10)).build()
}

/// Turns an HTTP answer into its body, or an error that says what the
/// router answered (or that it is not running).
fn body(http_addr: &str, result: Result<ureq::Response, ureq::Error>) -> Result<String> {
    match result {
        Ok(resp) => resp.into_string().context("reading the router's answer"),
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            bail!("router answered {code}: {}", text.trim())
        }
        Err(ureq::Error::Transport(t)) => {
            bail!("cannot reach the weft router at {http_addr} (is it running?): {t}")
        }
    }
}

fn get(http_addr: &str, path: &str) -> Result<String> {
    body(http_addr, agent().get(&url(http_addr, path)).call())
}

fn post(http_addr: &str, path: &str, form: &[(&str, &str)]) -> Result<String> {
    body(http_addr, agent().post(&url(http_addr, path)).send_form(form))
}

pub fn status(http_addr: &str, what: Option<StatusPart>) -> Result<()> {
    let path = match what {
        None => "/status",
        Some(StatusPart::Peers) => "/status/peers",
        Some(StatusPart::Connections) => "/status/connections",
        Some(StatusPart::Targets) => "/status/targets",
        Some(StatusPart::Ipam) => "/status/ipam",
    };
    print!("{}", get(http_addr, path)?);
    Ok(())
}

pub fn report(http_addr: &str) -> Result<()> {
    println!("{}", get(http_addr, "/report")?.trim_end());
    Ok(())
}

pub fn connect(http_addr: &str, peers: &[String], replace: bool) -> Result<()> {
    let mut form: Vec<(&str, &str)> = peers.iter().map(|p| ("peer", p.as_str())).collect();
    if replace {
        form.push(("replace", "true"));
    }
    print!("{}", post(http_addr, "/connect", &form)?);
    Ok(())
}

pub fn forget(http_addr: &str, peers: &[String]) -> Result<()> {
    let form: Vec<(&str, &str)> = peers.iter().map(|p| ("peer", p.as_str())).collect();
    print!("{}", post(http_addr, "/forget", &form)?);
    Ok(())
}

pub fn rmpeer(http_addr: &str, peer: &str) -> Result<()> {
    print!("{}", post(http_addr, "/rmpeer", &[("peer", peer)])?);
    Ok(())
}
