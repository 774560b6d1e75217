//! Everything that can make the plugin fail, and how each failure is told
//! to the runtime: a CNI error object with a spec error code.

use std::io;

use serde_json::{json, Value};
use weft_netlink::NetlinkError;

use crate::version::CniVersion;

/// A failed plugin invocation. The message says what to fix; [`code`]
/// gives the runtime the spec's well-known category.
///
/// [`code`]: PluginError::code
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cniVersion {requested:?} is not supported; use one of {}", CniVersion::supported_list())]
    UnsupportedVersion { requested: String },

    #[error("{command} needs cniVersion {needed} or later; the network configuration says {have}")]
    CommandNeedsVersion { command: &'static str, needed: CniVersion, have: CniVersion },

    #[error("environment variable {var}: {problem}")]
    InvalidEnv { var: &'static str, problem: String },

    /// The sandbox is gone; the runtime has nothing to clean up for it.
    #[error("network namespace {path:?} does not exist (the container is gone?)")]
    NetnsGone { path: String },

    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },

    #[error("decoding {what}: {source}")]
    Decode { what: String, source: serde_json::Error },

    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),

    /// Transient: the router is unreachable or its IPAM is not ready yet.
    #[error("{0}")]
    TryAgainLater(String),

    /// STATUS: the plugin cannot serve ADD now.
    #[error("{0}")]
    NotAvailable(String),

    #[error("CHECK: {0}")]
    CheckFailed(String),

    #[error("kernel network configuration failed: {0}")]
    Netlink(#[from] NetlinkError),

    #[error("interface {ifname:?} already exists in {netns}; pick another CNI_IFNAME or DEL the old attachment")]
    InterfaceExists { ifname: String, netns: String },

    /// Host veth names hold 36 bits of hash; this is a collision (or a
    /// link someone made by hand).
    #[error("host interface name {name} is taken by a link that is not this attachment's (alias {owner:?}); delete it or DEL its owner")]
    HostNameTaken { name: String, owner: Option<String> },

    /// The router answered, but refused (a bug or version skew, not a
    /// transient condition).
    #[error("router IPAM at {addr} refused {what}: HTTP {status}: {message}")]
    RouterRefused { addr: String, what: &'static str, status: u16, message: String },

    /// A delegated IPAM plugin failed; its own code and words pass through.
    #[error("IPAM plugin {plugin:?}: {msg}")]
    Delegated { plugin: String, code: u32, msg: String, details: String },
}

/// Plugin-specific codes (the spec reserves 0-99).
const CODE_CHECK_FAILED: u32 = 100;
const CODE_KERNEL: u32 = 101;
const CODE_IPAM: u32 = 102;

impl PluginError {
    /// The spec's error code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            PluginError::UnsupportedVersion { .. } | PluginError::CommandNeedsVersion { .. } => 1,
            PluginError::NetnsGone { .. } => 3,
            PluginError::InvalidEnv { .. } => 4,
            PluginError::Io { .. } => 5,
            PluginError::Decode { .. } => 6,
            PluginError::InvalidConfig(_) => 7,
            PluginError::TryAgainLater(_) => 11,
            PluginError::NotAvailable(_) => 50,
            PluginError::CheckFailed(_) => CODE_CHECK_FAILED,
            PluginError::Netlink(_) | PluginError::InterfaceExists { .. } | PluginError::HostNameTaken { .. } => {
                CODE_KERNEL
            }
            PluginError::RouterRefused { .. } => CODE_IPAM,
            PluginError::Delegated { code, .. } => *code,
        }
    }

    /// The error object printed on stdout.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut object = json!({ "cniVersion": version.as_str(), "code": self.code(), "msg": self.to_string() });
        if let PluginError::Delegated { details, .. } = self {
            if !details.is_empty() {
                object["details"] = Value::String(details.clone());
            }
        }
        object
    }

    pub fn io(what: impl Into<String>, source: io::Error) -> PluginError {
        PluginError::Io { what: what.into(), source }
    }

    pub fn decode(what: impl Into<String>, source: serde_json::Error) -> PluginError {
        PluginError::Decode { what: what.into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_spec_fields() {
        let err = PluginError::UnsupportedVersion { requested: "0.2.0".to_owned() };
        let json = err.to_json(CniVersion::V1_0_0);
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(json["code"], 1);
        assert!(json["msg"].as_str().is_some_and(|m| m.contains("0.2.0") && m.contains("1.1.0")));
        assert!(json.get("details").is_none());
    }

    #[test]
    fn delegated_errors_keep_their_code_and_details() {
        let err = PluginError::Delegated {
            plugin: "host-local".to_owned(),
            code: 999,
            msg: "no IP addresses available".to_owned(),
            details: "range 10.1.0.0/24 is full".to_owned(),
        };
        let json = err.to_json(CniVersion::V0_4_0);
        assert_eq!(json["code"], 999);
        assert_eq!(json["details"], "range 10.1.0.0/24 is full");
    }

    #[test]
    fn codes_match_the_spec() {
        assert_eq!(PluginError::InvalidEnv { var: "CNI_IFNAME", problem: String::new() }.code(), 4);
        assert_eq!(PluginError::InvalidConfig(String::new()).code(), 7);
        assert_eq!(PluginError::TryAgainLater(String::new()).code(), 11);
        assert_eq!(PluginError::NotAvailable(String::new()).code(), 50);
        assert_eq!(PluginError::NetnsGone { path: String::new() }.code(), 3);
    }
}
