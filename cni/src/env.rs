//! The `CNI_*` environment variables: which command, for which container,
//! interface and namespace, and where other plugins live.

use std::path::PathBuf;

use crate::error::PluginError;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    fn parse(text: &str) -> Option<Command> {
        [Command::Add, Command::Del, Command::Check, Command::Status, Command::Gc, Command::Version]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// One attachment of a container to this network: the key the runtime,
/// the router's IPAM and GC all use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The environment as given, parsed only as far as every command needs;
/// the per-command requirements are checked by the accessors.
#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
    path: Option<String>,
}

impl CniEnv {
    /// Reads the variables through `var` (the process environment in
    /// production, a map in tests). Unset and empty are the same.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<CniEnv, PluginError> {
        let get = |name: &str| var(name).filter(|value| !value.is_empty());
        let command = get("CNI_COMMAND").ok_or(PluginError::InvalidEnv {
            var: "CNI_COMMAND",
            problem: "not set; expected one of ADD, DEL, CHECK, STATUS, GC, VERSION".to_owned(),
        })?;
        let command = Command::parse(&command).ok_or_else(|| PluginError::InvalidEnv {
            var: "CNI_COMMAND",
            problem: format!("unknown command {command:?}; expected one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        })?;
        Ok(CniEnv {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            path: get("CNI_PATH"),
        })
    }

    /// `CNI_CONTAINERID` and `CNI_IFNAME`, both required and validated.
    pub fn attachment(&self) -> Result<Attachment, PluginError> {
        let container_id = self.container_id.as_deref().ok_or(PluginError::InvalidEnv {
            var: "CNI_CONTAINERID",
            problem: format!("required for {}", self.command.as_str()),
        })?;
        if !valid_container_id(container_id) {
            return Err(PluginError::InvalidEnv {
                var: "CNI_CONTAINERID",
                problem: format!(
                    "{container_id:?} must start with a letter or digit, then letters, digits, '_', '.' or '-'"
                ),
            });
        }
        let ifname = self.ifname.as_deref().ok_or(PluginError::InvalidEnv {
            var: "CNI_IFNAME",
            problem: format!("required for {}", self.command.as_str()),
        })?;
        if let Err(problem) = check_ifname(ifname) {
            return Err(PluginError::InvalidEnv { var: "CNI_IFNAME", problem: format!("{ifname:?} {problem}") });
        }
        Ok(Attachment { container_id: container_id.to_owned(), ifname: ifname.to_owned() })
    }

    /// `CNI_NETNS`, required (ADD, CHECK).
    pub fn required_netns(&self) -> Result<&str, PluginError> {
        self.netns.as_deref().ok_or(PluginError::InvalidEnv {
            var: "CNI_NETNS",
            problem: format!("required for {}: the path of the container's network namespace", self.command.as_str()),
        })
    }

    /// `CNI_NETNS` if given (DEL may come without it).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The directories of `CNI_PATH`, for finding a delegated IPAM plugin.
    pub fn plugin_dirs(&self) -> Result<Vec<PathBuf>, PluginError> {
        let path = self.path.as_deref().ok_or(PluginError::InvalidEnv {
            var: "CNI_PATH",
            problem: "required to find the IPAM plugin named in the configuration's `ipam.type`".to_owned(),
        })?;
        Ok(std::env::split_paths(path).filter(|dir| !dir.as_os_str().is_empty()).collect())
    }
}

/// The spec's container id syntax: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn valid_container_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Linux interface name rules (as `dev_valid_name` in the kernel), which
/// the spec adopts for `CNI_IFNAME`; also used for the `bridge` key.
pub fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return Err("must not be \".\" or \"..\"");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, PluginError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CniEnv::read(|name| map.get(name).cloned())
    }

    #[test]
    fn command_is_required_and_known() {
        assert!(matches!(env(&[]), Err(PluginError::InvalidEnv { var: "CNI_COMMAND", .. })));
        assert!(matches!(env(&[("CNI_COMMAND", "add")]), Err(PluginError::InvalidEnv { var: "CNI_COMMAND", .. })));
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
    }

    #[test]
    fn attachment_needs_valid_id_and_ifname() {
        let ok = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc-1.2_3"), ("CNI_IFNAME", "eth0")]).unwrap();
        assert_eq!(
            ok.attachment().unwrap(),
            Attachment { container_id: "abc-1.2_3".to_owned(), ifname: "eth0".to_owned() }
        );
        let missing = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap();
        assert!(matches!(missing.attachment(), Err(PluginError::InvalidEnv { var: "CNI_CONTAINERID", .. })));
        let bad_id = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "-x"), ("CNI_IFNAME", "eth0")]).unwrap();
        assert!(matches!(bad_id.attachment(), Err(PluginError::InvalidEnv { var: "CNI_CONTAINERID", .. })));
        for ifname in ["a/b", "0123456789abcdef", "..", "e th0", "a:b"] {
            let bad = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", ifname)]).unwrap();
            assert!(matches!(bad.attachment(), Err(PluginError::InvalidEnv { var: "CNI_IFNAME", .. })), "{ifname}");
        }
    }

    #[test]
    fn empty_netns_is_absent() {
        let del = env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]).unwrap();
        assert_eq!(del.netns(), None);
        assert!(del.required_netns().is_err());
    }

    #[test]
    fn plugin_dirs_split_on_colons() {
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni")]).unwrap();
        assert_eq!(e.plugin_dirs().unwrap(), vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
        let none = env(&[("CNI_COMMAND", "ADD")]).unwrap();
        assert!(matches!(none.plugin_dirs(), Err(PluginError::InvalidEnv { var: "CNI_PATH", .. })));
    }
}
