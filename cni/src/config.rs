//! The network configuration the runtime streams on stdin, parsed into
//! typed values with the plugin's defaults filled in.
//!
//! Keys (others are ignored, as the spec allows):
//! `bridge` (default: the router's bridge, else "weft"), `hairpinMode`
//! (true), `mtu` (the router's, else the bridge's), `httpAddr` (the router's
//! API, "127.0.0.1:6784"), `ipam` (with a `type`: delegate to that plugin
//! instead of the router), `dns`, plus the runtime's `prevResult` and
//! `cni.dev/valid-attachments`.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::env::{check_ifname, Attachment};
use crate::error::PluginError;
use crate::result::{CniResult, Dns};
use crate::version::CniVersion;

pub const DEFAULT_BRIDGE: &str = "weft";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";

/// The smallest MTU Linux accepts for IPv4 on an Ethernet-like device.
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;

/// Where addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamConf {
    /// The weft router on this node, over its HTTP API.
    Router,
    /// Another CNI plugin (`ipam.type`), run from `CNI_PATH` with the same
    /// environment and configuration, as the reference plugins delegate.
    Plugin(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub version: CniVersion,
    /// Explicitly configured bridge; `None` means "ask the router".
    pub bridge: Option<String>,
    pub hairpin: bool,
    pub mtu: Option<u32>,
    pub router: SocketAddr,
    pub ipam: IpamConf,
    pub dns: Dns,
    pub prev_result: Option<CniResult>,
    /// GC's list of attachments still in use; `None` when not given.
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    http_addr: Option<String>,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    /// The name an earlier draft of the spec used; libcni sends both.
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
}

#[derive(Debug, Deserialize)]
struct RawIpam {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl NetConf {
    /// Parses stdin. Malformed JSON is a decoding failure (6), an unknown
    /// `cniVersion` an incompatible version (1), bad values invalid
    /// configuration (7).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, PluginError> {
        let value: Value =
            serde_json::from_slice(stdin).map_err(|e| PluginError::decode("the network configuration on stdin", e))?;
        let version = match value.get("cniVersion") {
            Some(Value::String(text)) => {
                CniVersion::parse(text).ok_or_else(|| PluginError::UnsupportedVersion { requested: text.clone() })?
            }
            Some(other) => return Err(PluginError::UnsupportedVersion { requested: other.to_string() }),
            None => return Err(PluginError::UnsupportedVersion { requested: "(none given)".to_owned() }),
        };
        let raw: RawConf =
            serde_json::from_value(value).map_err(|e| PluginError::decode("the network configuration on stdin", e))?;

        if let Some(bridge) = &raw.bridge {
            check_ifname(bridge)
                .map_err(|problem| PluginError::InvalidConfig(format!("`bridge` {bridge:?} {problem}")))?;
        }
        if let Some(mtu) = raw.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(PluginError::InvalidConfig(format!("`mtu` {mtu} must be between {MIN_MTU} and {MAX_MTU}")));
            }
        }
        let http_addr = raw.http_addr.as_deref().unwrap_or(DEFAULT_HTTP_ADDR);
        let router = http_addr.parse().map_err(|_| {
            PluginError::InvalidConfig(format!("`httpAddr` {http_addr:?} must be IP:PORT of the weft router's API"))
        })?;
        let ipam = match raw.ipam.and_then(|ipam| ipam.kind).filter(|kind| !kind.is_empty()) {
            None => IpamConf::Router,
            Some(kind) if kind.contains('/') || kind == "." || kind == ".." => {
                return Err(PluginError::InvalidConfig(format!(
                    "`ipam.type` {kind:?} must be a plugin name, not a path"
                )))
            }
            Some(kind) => IpamConf::Plugin(kind),
        };
        let prev_result = raw
            .prev_result
            .map(CniResult::parse)
            .transpose()
            .map_err(|e| PluginError::decode("`prevResult` in the network configuration", e))?;
        let valid_attachments = raw.valid_attachments.or(raw.attachments).map(|list| {
            list.into_iter().map(|a| Attachment { container_id: a.container_id, ifname: a.ifname }).collect()
        });
        Ok(NetConf {
            version,
            bridge: raw.bridge,
            hairpin: raw.hairpin_mode.unwrap_or(true),
            mtu: raw.mtu,
            router,
            ipam,
            dns: raw.dns.unwrap_or_default(),
            prev_result,
            valid_attachments,
        })
    }
}

/// The version to answer in when the configuration may be unusable: its
/// `cniVersion` if that is one we speak, else the latest.
pub fn version_hint(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|value| value.get("cniVersion").and_then(Value::as_str).and_then(CniVersion::parse))
        .unwrap_or(CniVersion::LATEST)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<NetConf, PluginError> {
        NetConf::parse(value.to_string().as_bytes())
    }

    #[test]
    fn defaults() {
        let conf = parse(json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net"})).unwrap();
        assert_eq!(conf.version, CniVersion::V1_0_0);
        assert_eq!(conf.bridge, None);
        assert!(conf.hairpin);
        assert_eq!(conf.mtu, None);
        assert_eq!(conf.router, DEFAULT_HTTP_ADDR.parse().unwrap());
        assert_eq!(conf.ipam, IpamConf::Router);
        assert!(conf.dns.is_empty());
        assert_eq!(conf.prev_result, None);
        assert_eq!(conf.valid_attachments, None);
    }

    #[test]
    fn all_keys() {
        let conf = parse(json!({
            "cniVersion": "0.3.1", "name": "n", "type": "weft-net",
            "bridge": "br-pods", "hairpinMode": false, "mtu": 1400, "httpAddr": "127.0.0.1:7000",
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
            "prevResult": {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.2/16"}]},
            "runtimeConfig": {"portMappings": []},
            "somethingElse": [1, 2, 3]
        }))
        .unwrap();
        assert_eq!(conf.bridge.as_deref(), Some("br-pods"));
        assert!(!conf.hairpin);
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(conf.router.port(), 7000);
        assert_eq!(conf.ipam, IpamConf::Plugin("host-local".to_owned()));
        assert_eq!(conf.dns.search, vec!["svc.cluster.local".to_owned()]);
        assert_eq!(conf.prev_result.unwrap().ips.len(), 1);
    }

    #[test]
    fn empty_ipam_means_the_router() {
        for ipam in [json!({}), json!({"type": ""}), Value::Null] {
            let conf = parse(json!({"cniVersion": "1.1.0", "ipam": ipam})).unwrap();
            assert_eq!(conf.ipam, IpamConf::Router);
        }
    }

    #[test]
    fn gc_attachments_under_either_name() {
        let list = json!([{"containerID": "c1", "ifname": "eth0"}]);
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let mut conf = json!({"cniVersion": "1.1.0"});
            conf[key] = list.clone();
            let conf = parse(conf).unwrap();
            assert_eq!(
                conf.valid_attachments,
                Some(vec![Attachment { container_id: "c1".to_owned(), ifname: "eth0".to_owned() }])
            );
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code(), 6);
        assert_eq!(parse(json!({"cniVersion": "0.2.0"})).unwrap_err().code(), 1);
        assert_eq!(parse(json!({"cniVersion": 1})).unwrap_err().code(), 1);
        assert_eq!(parse(json!({"name": "x"})).unwrap_err().code(), 1);
        assert_eq!(parse(json!({"cniVersion": "1.0.0", "mtu": "big"})).unwrap_err().code(), 6);
        assert_eq!(parse(json!({"cniVersion": "1.0.0", "mtu": 20})).unwrap_err().code(), 7);
        assert_eq!(parse(json!({"cniVersion": "1.0.0", "bridge": "way-too-long-bridge"})).unwrap_err().code(), 7);
        assert_eq!(parse(json!({"cniVersion": "1.0.0", "httpAddr": "router"})).unwrap_err().code(), 7);
        assert_eq!(parse(json!({"cniVersion": "1.0.0", "ipam": {"type": "../x"}})).unwrap_err().code(), 7);
        assert_eq!(parse(json!({"cniVersion": "1.0.0", "prevResult": {"ips": 3}})).unwrap_err().code(), 6);
    }

    #[test]
    fn version_hint_falls_back_to_latest() {
        assert_eq!(version_hint(br#"{"cniVersion": "0.4.0"}"#), CniVersion::V0_4_0);
        assert_eq!(version_hint(br#"{"cniVersion": "9.9.9"}"#), CniVersion::LATEST);
        assert_eq!(version_hint(b""), CniVersion::LATEST);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = NetConf::parse(&bytes);
            let _ = version_hint(&bytes);
        }

        #[test]
        fn never_panics_on_plausible_json(
            mtu in any::<i64>(), hairpin in any::<bool>(), bridge in ".{0,20}", addr in ".{0,24}", kind in ".{0,10}"
        ) {
            let conf = json!({
                "cniVersion": "1.1.0", "mtu": mtu, "hairpinMode": hairpin, "bridge": bridge,
                "httpAddr": addr, "ipam": {"type": kind}
            });
            let _ = parse(conf);
        }
    }
}
