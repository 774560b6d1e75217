//! The CNI result: what ADD reports, what arrives back as `prevResult`, and
//! what an IPAM plugin answers. Parsed from any supported version, written
//! in the version the runtime asked for.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::ip_prefix::IpPrefix;
use crate::version::CniVersion;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Set for interfaces inside a sandbox (the netns path), absent for
    /// host interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// One address. A 0.x `version` field ("4"/"6") is accepted and ignored:
/// the address says its family.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`; IPAM plugins leave it out.
    #[serde(default)]
    pub interface: Option<usize>,
    pub address: IpPrefix,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpPrefix,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

impl CniResult {
    /// Reads a result of any supported version; unknown keys are ignored.
    pub fn parse(value: Value) -> Result<CniResult, serde_json::Error> {
        serde_json::from_value(value)
    }

    /// The result as `version` spells it.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self.interfaces.iter().map(|i| i.to_json(version)).collect();
        let ips: Vec<Value> = self.ips.iter().map(|ip| ip.to_json(version)).collect();
        let routes: Vec<Value> = self.routes.iter().map(Route::to_json).collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            // Always present, as the reference plugins write it.
            "dns": self.dns,
        })
    }

    /// Appends `other` after `self` (chaining: our own interfaces after a
    /// previous plugin's), shifting `other`'s interface indexes to match.
    pub fn append(&mut self, other: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|ip| IpConfig { interface: ip.interface.map(|i| i + offset), ..ip }));
        self.routes.extend(other.routes);
        if !other.dns.is_empty() {
            self.dns = other.dns;
        }
    }
}

impl Interface {
    fn to_json(&self, version: CniVersion) -> Value {
        let mut object = Map::new();
        object.insert("name".to_owned(), Value::from(self.name.as_str()));
        if let Some(mac) = &self.mac {
            object.insert("mac".to_owned(), Value::from(mac.as_str()));
        }
        if let (Some(mtu), true) = (self.mtu, version.interfaces_carry_mtu()) {
            object.insert("mtu".to_owned(), Value::from(mtu));
        }
        if let Some(sandbox) = &self.sandbox {
            object.insert("sandbox".to_owned(), Value::from(sandbox.as_str()));
        }
        Value::Object(object)
    }
}

impl IpConfig {
    fn to_json(&self, version: CniVersion) -> Value {
        let mut object = Map::new();
        if version.ips_carry_family() {
            object.insert("version".to_owned(), Value::from(if self.address.addr.is_ipv4() { "4" } else { "6" }));
        }
        if let Some(interface) = self.interface {
            object.insert("interface".to_owned(), Value::from(interface));
        }
        object.insert("address".to_owned(), Value::from(self.address.to_string()));
        if let Some(gateway) = self.gateway {
            object.insert("gateway".to_owned(), Value::from(gateway.to_string()));
        }
        Value::Object(object)
    }
}

impl Route {
    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("dst".to_owned(), Value::from(self.dst.to_string()));
        if let Some(gw) = self.gw {
            object.insert("gw".to_owned(), Value::from(gw.to_string()));
        }
        Value::Object(object)
    }
}

/// Formats a MAC address the way CNI results (and `ip link`) do.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vethwe0123456".to_owned(),
                    mac: Some("02:00:00:00:00:01".to_owned()),
                    mtu: None,
                    sandbox: None,
                },
                Interface {
                    name: "eth0".to_owned(),
                    mac: Some("02:00:00:00:00:02".to_owned()),
                    mtu: Some(1376),
                    sandbox: Some("/run/netns/pod".to_owned()),
                },
            ],
            ips: vec![IpConfig {
                interface: Some(1),
                address: "10.32.0.5/12".parse().unwrap(),
                gateway: Some("10.32.0.1".parse().unwrap()),
            }],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("10.32.0.1".parse().unwrap()) }],
            dns: Dns { nameservers: vec!["10.96.0.10".to_owned()], ..Dns::default() },
        }
    }

    #[test]
    fn v1_has_no_ip_version_and_1_1_has_mtu() {
        let json = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(json["cniVersion"], "1.1.0");
        assert_eq!(json["ips"][0], json!({"interface": 1, "address": "10.32.0.5/12", "gateway": "10.32.0.1"}));
        assert_eq!(json["interfaces"][1]["mtu"], 1376);
        assert_eq!(json["interfaces"][1]["sandbox"], "/run/netns/pod");
        assert!(json["interfaces"][0].get("sandbox").is_none());
        assert_eq!(json["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "10.32.0.1"}));
        assert_eq!(json["dns"], json!({"nameservers": ["10.96.0.10"]}));
        let json = sample().to_json(CniVersion::V1_0_0);
        assert!(json["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn v0_ips_name_their_family() {
        for version in [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0] {
            let json = sample().to_json(version);
            assert_eq!(json["cniVersion"], version.as_str());
            assert_eq!(json["ips"][0]["version"], "4");
        }
        let mut v6 = sample();
        v6.ips[0].address = "fd00::5/64".parse().unwrap();
        v6.ips[0].gateway = None;
        assert_eq!(
            v6.to_json(CniVersion::V0_3_1)["ips"][0],
            json!({"version": "6", "interface": 1, "address": "fd00::5/64"})
        );
    }

    #[test]
    fn every_version_reads_back() {
        for version in CniVersion::SUPPORTED {
            let mut expected = sample();
            if !version.interfaces_carry_mtu() {
                expected.interfaces[1].mtu = None;
            }
            assert_eq!(CniResult::parse(sample().to_json(version)).unwrap(), expected, "{version}");
        }
    }

    #[test]
    fn ipam_answers_parse() {
        // host-local's answer: no interfaces, 0.x version fields, extra keys.
        let answer = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {},
            "somethingNew": true
        });
        let result = CniResult::parse(answer).unwrap();
        assert_eq!(result.ips[0].interface, None);
        assert_eq!(result.routes[0].gw, None);
        assert!(result.dns.is_empty());
        assert!(CniResult::parse(json!({"ips": [{"address": "10.1.0.2"}]})).is_err());
    }

    #[test]
    fn append_shifts_interface_indexes() {
        let mut prev = CniResult {
            interfaces: vec![Interface { name: "lo".to_owned(), mac: None, mtu: None, sandbox: Some("/x".to_owned()) }],
            ..CniResult::default()
        };
        prev.append(sample());
        assert_eq!(prev.interfaces.len(), 3);
        assert_eq!(prev.ips[0].interface, Some(2));
        assert_eq!(prev.dns.nameservers, vec!["10.96.0.10".to_owned()]);
    }

    #[test]
    fn mac_formatting() {
        assert_eq!(format_mac([0x02, 0xab, 0, 1, 0x10, 0xff]), "02:ab:00:01:10:ff");
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
                let _ = CniResult::parse(value);
            }
        }

        #[test]
        fn roundtrips(octets in any::<[u8; 4]>(), prefix in 0u8..=32, gw in any::<Option<[u8; 4]>>(), version in 0usize..5) {
            let version = CniVersion::SUPPORTED[version];
            let result = CniResult {
                ips: vec![IpConfig {
                    interface: Some(0),
                    address: IpPrefix { addr: IpAddr::from(octets), prefix },
                    gateway: gw.map(IpAddr::from),
                }],
                ..sample()
            };
            let mut expected = result.clone();
            if !version.interfaces_carry_mtu() {
                expected.interfaces[1].mtu = None;
            }
            prop_assert_eq!(CniResult::parse(result.to_json(version)).unwrap(), expected);
        }
    }
}
