//! Typed accessors over the router's `GET /report` JSON.

use std::ops::Deref;

use anyhow::{Context, Result};
use serde_json::Value;

/// The `/report` document. Derefs to the raw JSON for fields without an accessor.
#[derive(Debug, Clone)]
pub struct Report(pub Value);

/// One entry of `Router.Connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub address: String,
    pub outbound: bool,
    pub state: String,
    pub info: String,
}

impl ConnectionInfo {
    pub fn is_established(&self) -> bool {
        self.state == "established"
    }
}

impl Deref for Report {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl Report {
    pub fn router(&self) -> Result<&Value> {
        self.0.get("Router").with_context(|| format!("no Router in /report: {}", self.0))
    }

    fn field(&self, name: &str) -> Result<&Value> {
        self.router()?.get(name).with_context(|| format!("no Router.{name} in /report: {}", self.0))
    }

    fn array(&self, name: &str) -> Result<&Vec<Value>> {
        let v = self.field(name)?;
        // A Go-style encoder renders an empty list as null.
        if v.is_null() {
            static EMPTY: Vec<Value> = Vec::new();
            return Ok(&EMPTY);
        }
        v.as_array().with_context(|| format!("Router.{name} is not an array in /report: {}", self.0))
    }

    fn string(&self, name: &str) -> Result<String> {
        self.field(name)?.as_str().map(str::to_owned).with_context(|| format!("Router.{name} is not a string"))
    }

    /// `Router.Name`: this router's peer name.
    pub fn name(&self) -> Result<String> {
        self.string("Name")
    }

    pub fn nickname(&self) -> Result<String> {
        self.string("NickName")
    }

    /// `Router.Peers`, raw.
    pub fn peers(&self) -> Result<&Vec<Value>> {
        self.array("Peers")
    }

    /// Names of all known peers (including this router).
    pub fn peer_names(&self) -> Result<Vec<String>> {
        Ok(self.peers()?.iter().filter_map(|p| p.get("Name").and_then(Value::as_str).map(str::to_owned)).collect())
    }

    pub fn peer_nicknames(&self) -> Result<Vec<String>> {
        Ok(self.peers()?.iter().filter_map(|p| p.get("NickName").and_then(Value::as_str).map(str::to_owned)).collect())
    }

    /// `Router.Connections`: this router's own connections.
    pub fn connections(&self) -> Result<Vec<ConnectionInfo>> {
        let s = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(self
            .array("Connections")?
            .iter()
            .map(|c| ConnectionInfo {
                address: s(c, "Address"),
                outbound: c.get("Outbound").and_then(Value::as_bool).unwrap_or(false),
                state: s(c, "State"),
                info: s(c, "Info"),
            })
            .collect())
    }

    pub fn established_count(&self) -> Result<usize> {
        Ok(self.connections()?.iter().filter(|c| c.is_established()).count())
    }

    /// Whether some established connection's address mentions `ip` (host part).
    pub fn has_established_to(&self, ip: &str) -> Result<bool> {
        Ok(self.connections()?.iter().any(|c| c.is_established() && address_host(&c.address) == ip))
    }

    /// `Router.UnicastRoutes[].Dest`.
    pub fn unicast_dests(&self) -> Result<Vec<String>> {
        Ok(self
            .array("UnicastRoutes")?
            .iter()
            .filter_map(|r| r.get("Dest").and_then(Value::as_str).map(str::to_owned))
            .collect())
    }

    /// `Router.UnicastRoutes` as `(Dest, Via)` pairs.
    pub fn unicast_routes(&self) -> Result<Vec<(String, String)>> {
        let s = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(self.array("UnicastRoutes")?.iter().map(|r| (s(r, "Dest"), s(r, "Via"))).collect())
    }

    /// `Router.Targets`.
    pub fn targets(&self) -> Result<Vec<String>> {
        Ok(self.array("Targets")?.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
    }

    pub fn termination_count(&self) -> Result<u64> {
        self.field("TerminationCount")?.as_u64().context("Router.TerminationCount is not a number")
    }
}

/// The host part of `host:port` (or the whole string without a port).
pub fn address_host(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    }
}
