//! The router's command line and environment, parsed once into typed values.

use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_PORT: u16 = 6783;
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";

/// Overhead reserved between the underlay MTU and the pod MTU. Weave's 1376
/// on a 1500 underlay: it covers the sleeve (IP + UDP + weft headers +
/// inner Ethernet) with room for encryption (97 bytes in all, checked below)
/// and for VXLAN's 50 bytes, so a pod's MTU never has to change when a
/// connection switches path.
pub const MTU_OVERHEAD: u32 = 124;

// An encrypted sleeve (33 more bytes per datagram) must fit the same
// budget, so that a pod's MTU does not depend on whether a password is set.
const _: () = assert!(1500 - weft_proto::sleeve::sealed_overlay_mtu(1500) as u32 <= MTU_OVERHEAD);

#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Peer name (MAC-like). Default: generated once and persisted in --data-dir.
    #[arg(long, env = "WEFT_NAME")]
    pub name: Option<weft_proto::PeerName>,
    /// Human-readable name shown next to the peer name. Default: hostname.
    #[arg(long, env = "WEFT_NICKNAME")]
    pub nickname: Option<String>,
    /// TCP control port and UDP sleeve port.
    #[arg(long, env = "WEFT_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Linux bridge that pods attach to; created if missing, used as is otherwise.
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
    pub bridge: String,
    /// Where the peer name and IPAM state are persisted. Default
    /// /var/lib/weft; a router outside the host's network namespace that is
    /// not given one uses /var/lib/weft/netns-<id>, so that several routers
    /// on one machine (namespaced test clusters) never share an identity.
    #[arg(long, env = "WEFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Pod-facing MTU. Default: the underlay MTU toward the peers minus weft's overhead.
    #[arg(long, env = "WEFT_MTU")]
    pub mtu: Option<u32>,
    /// Maximum number of peer connections.
    #[arg(long, env = "WEFT_CONN_LIMIT", default_value_t = 200)]
    pub conn_limit: usize,
    /// The cluster-wide pod address range, divided among the peers.
    #[arg(long, env = "IPALLOC_RANGE", default_value = "10.32.0.0/12")]
    pub ipalloc_range: weft_proto::ipam::Range,
    /// How the range is first divided: `consensus=N` waits for a majority of
    /// N peers to agree (default N: the number of PEERs given, plus one).
    #[arg(long, env = "WEFT_IPALLOC_INIT")]
    pub ipalloc_init: Option<String>,
    /// Do not connect to peers learned through gossip.
    #[arg(long, env = "WEFT_NO_DISCOVERY")]
    pub no_discovery: bool,
    /// Never use the kernel VXLAN fast path: every connection uses the sleeve.
    #[arg(long, env = "WEFT_NO_FASTDP")]
    pub no_fastdp: bool,
    /// Carry the sleeve's frames one by one: no TAP offloads (checksum,
    /// TSO/USO super-frames) and no UDP GSO/GRO.
    #[arg(long, env = "WEFT_NO_OFFLOAD")]
    pub no_offload: bool,
    /// After passing traffic on, the sleeve's worker polls for this many
    /// microseconds before sleeping, so that a reply is forwarded without
    /// a wake-up (lower latency for a little CPU while traffic flows; 0:
    /// always sleep).
    #[arg(long, env = "WEFT_SLEEVE_SPIN_US", default_value_t = 200)]
    pub sleeve_spin_us: u64,
    /// Sleeve worker threads, each with a TAP queue and a UDP socket of its
    /// own; flows are spread over them.
    #[arg(long, env = "WEFT_SLEEVE_WORKERS", default_value_t = 1)]
    pub sleeve_workers: usize,
    /// Encrypt and authenticate every peer link with a key derived from the
    /// password in this file (one trailing newline is ignored). Also from
    /// WEFT_PASSWORD or WEAVE_PASSWORD.
    #[arg(long, env = "WEFT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// The AEAD for encrypted links. auto: per connection, aes-256-gcm
    /// when both ends have AES instructions, else chacha20-poly1305 (a peer
    /// set to one cipher gets that one). chacha20-poly1305 or aes-256-gcm
    /// (needs AES instructions): exactly this cipher; a peer set to the
    /// other one is refused.
    #[arg(long, env = "WEFT_CIPHER", default_value = "auto", value_name = "auto|chacha20-poly1305|aes-256-gcm")]
    pub cipher: CipherSetting,
    /// Test only: rotate sleeve and control keys after this many messages.
    #[arg(long, env = "WEFT_TEST_REKEY_AFTER_MESSAGES", hide = true)]
    pub test_rekey_after_messages: Option<u64>,
    /// Test only: rotate sleeve and control keys after this many seconds.
    #[arg(long, env = "WEFT_TEST_REKEY_AFTER_SECS", hide = true)]
    pub test_rekey_after_secs: Option<u64>,
    /// This node's name in Kubernetes (the downward API's spec.nodeName).
    /// Default: NODE_NAME, else HOSTNAME. Also the default nickname.
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: Option<String>,
    /// Do not use the Kubernetes API (node discovery, reclaim), even when
    /// credentials are found (in-cluster service account, KUBECONFIG).
    #[arg(long, env = "WEFT_NO_KUBE")]
    pub no_kube: bool,
    /// Use this kubeconfig file for the Kubernetes API (default: the pod's
    /// service account, else KUBECONFIG, else ~/.kube/config).
    #[arg(long, env = "WEFT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of weft's own API objects (peer map). Default: POD_NAMESPACE,
    /// else the service account's namespace, else "weft".
    #[arg(long, env = "WEFT_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// Only Nodes matching this label selector run routers (e.g.
    /// kubernetes.io/os=linux). Default: every Node.
    #[arg(long, env = "WEFT_KUBE_NODE_SELECTOR")]
    pub kube_node_selector: Option<String>,
    /// Do not manage weft's nftables table (pod egress masquerading, host
    /// access) nor the bridge netfilter and forwarding sysctls.
    #[arg(long, env = "WEFT_NO_NAT")]
    pub no_nat: bool,
    /// Weave's NO_MASQ_LOCAL: traffic to this node's own pods from outside
    /// keeps its client address (for externalTrafficPolicy: Local). On
    /// unless 0.
    #[arg(long, env = "NO_MASQ_LOCAL", default_value = "1", value_name = "0|1")]
    pub no_masq_local: String,
    /// Write weft's CNI conflist into this directory once the router is
    /// ready (the DaemonSet points it at the host's /etc/cni/net.d).
    #[arg(long, env = "WEFT_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Where the node's CNI plugins are (to chain portmap only if present).
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Peers to connect to, host[:port]. Also from WEFT_PEERS (space separated).
    #[arg(env = "WEFT_PEERS", value_delimiter = ' ')]
    pub peers: Vec<String>,
    /// Weave's KUBE_PEERS: more peers, alongside the others.
    #[arg(long, env = "KUBE_PEERS", value_delimiter = ' ', hide = true)]
    pub kube_peers: Vec<String>,
}

/// `--cipher` as given: `auto`, or one cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSetting {
    Auto,
    Fixed(weft_proto::crypto::Cipher),
}

impl std::str::FromStr for CipherSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(CipherSetting::Auto);
        }
        s.trim()
            .parse()
            .map(CipherSetting::Fixed)
            .map_err(|_| format!("unknown cipher {s:?}: expected auto, chacha20-poly1305 or aes-256-gcm"))
    }
}

impl CipherSetting {
    /// The choice each connection's negotiation starts from; `auto` with
    /// whether this CPU has AES instructions.
    fn choice(self) -> anyhow::Result<weft_proto::control::CipherChoice> {
        use weft_proto::control::CipherChoice;
        use weft_proto::crypto::Cipher;
        match self {
            CipherSetting::Auto => Ok(CipherChoice::Auto { aes_capable: Cipher::Aes256Gcm.hardware_accelerated() }),
            CipherSetting::Fixed(cipher) if !cipher.hardware_accelerated() => anyhow::bail!(
                "--cipher {cipher}: this CPU has no AES instructions; use auto (the default) or chacha20-poly1305"
            ),
            CipherSetting::Fixed(cipher) => Ok(CipherChoice::Fixed(cipher)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: Option<weft_proto::PeerName>,
    pub nickname: String,
    pub port: u16,
    pub bridge: String,
    pub data_dir: PathBuf,
    pub mtu: Option<u32>,
    pub conn_limit: usize,
    pub discovery: bool,
    pub fastdp: bool,
    /// TAP offloads and UDP GSO/GRO on the sleeve.
    pub offload: bool,
    /// How long the sleeve's worker polls after traffic before sleeping.
    pub sleeve_spin: std::time::Duration,
    /// Sleeve worker threads (TAP queues).
    pub sleeve_workers: usize,
    pub peers: Vec<String>,
    pub http_addr: SocketAddr,
    pub ipalloc_range: weft_proto::ipam::Range,
    /// `--ipalloc-init consensus=N`, if given.
    pub ipalloc_init: Option<usize>,
    /// This node's name (for Kubernetes).
    pub node_name: String,
    pub kube: bool,
    pub kubeconfig: Option<PathBuf>,
    pub kube_namespace: Option<String>,
    pub kube_node_selector: Option<String>,
    pub nat: bool,
    pub no_masq_local: bool,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dir: PathBuf,
    /// The password (not yet stretched) and cipher choice; `None`: unencrypted.
    pub password: Option<Password>,
}

/// A password as given, with the cipher choice and rekey limits to use it with.
#[derive(Clone)]
pub struct Password {
    pub secret: Vec<u8>,
    /// Where it came from, for logs: never the password itself.
    pub source: &'static str,
    pub cipher: weft_proto::control::CipherChoice,
    pub rekey: weft_proto::crypto::RekeyPolicy,
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Password").field("source", &self.source).field("cipher", &self.cipher).finish()
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        weft_proto::crypto::wipe(&mut self.secret);
    }
}

impl Password {
    /// The cipher choice as the startup log says it.
    pub fn cipher_description(&self) -> String {
        match self.cipher {
            weft_proto::control::CipherChoice::Fixed(cipher) => format!("{cipher}, fixed by --cipher"),
            auto => auto.to_string(),
        }
    }

    /// Stretches the password into the cluster key: deliberately slow
    /// (Argon2id, see docs/encryption.md), done once at start.
    pub fn encryption(&self) -> anyhow::Result<weft_proto::control::Encryption> {
        let psk = weft_proto::crypto::Psk::derive(&self.secret)?;
        Ok(weft_proto::control::Encryption { psk, cipher: self.cipher, rekey: self.rekey })
    }
}

/// The password from --password-file, WEFT_PASSWORD or WEAVE_PASSWORD, in
/// that order. An empty variable means none; an empty file is an error
/// (a mounted Secret that lost its content must not turn encryption off).
fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<Option<(Vec<u8>, &'static str)>> {
    use anyhow::Context;
    if let Some(path) = file {
        let mut secret = std::fs::read(path).with_context(|| format!("--password-file {}", path.display()))?;
        if secret.last() == Some(&b'\n') {
            secret.pop();
            if secret.last() == Some(&b'\r') {
                secret.pop();
            }
        }
        if secret.is_empty() {
            anyhow::bail!("--password-file {}: the file is empty", path.display());
        }
        return Ok(Some((secret, "--password-file")));
    }
    for (var, source) in [("WEFT_PASSWORD", "WEFT_PASSWORD"), ("WEAVE_PASSWORD", "WEAVE_PASSWORD")] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(Some((std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str()).to_vec(), source)));
        }
    }
    Ok(None)
}

impl Config {
    pub fn from_args(args: RouterArgs, http_addr: &str) -> anyhow::Result<Config> {
        use anyhow::Context;
        let http_addr: SocketAddr =
            http_addr.parse().with_context(|| format!("--http-addr {http_addr:?} is not an ip:port"))?;
        if args.bridge.is_empty() || args.bridge.len() > 15 {
            anyhow::bail!("--bridge {:?}: interface names are 1 to 15 characters", args.bridge);
        }
        if let Some(mtu) = args.mtu {
            if !(576..=65000).contains(&mtu) {
                anyhow::bail!("--mtu {mtu}: must be between 576 and 65000");
            }
        }
        let node_name = args
            .node_name
            .or_else(|| env_nonempty("NODE_NAME"))
            .or_else(|| env_nonempty("HOSTNAME"))
            .unwrap_or_else(hostname);
        let nickname = args.nickname.unwrap_or_else(|| node_name.clone());
        let peers: Vec<String> =
            args.peers.into_iter().chain(args.kube_peers).filter(|p| !p.trim().is_empty()).collect();
        let ipalloc_init = match args.ipalloc_init.as_deref() {
            None => None,
            Some(init) => match init.strip_prefix("consensus=").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Some(n),
                _ => anyhow::bail!("--ipalloc-init {init:?}: expected consensus=N with N >= 1"),
            },
        };
        let no_masq_local = match args.no_masq_local.trim() {
            "0" => false,
            "1" | "" => true,
            other => anyhow::bail!("NO_MASQ_LOCAL / --no-masq-local {other:?}: expected 0 or 1"),
        };
        let password = match read_password(args.password_file.as_deref())? {
            None => None,
            Some((secret, source)) => {
                let cipher = args.cipher.choice()?;
                let mut rekey = weft_proto::crypto::RekeyPolicy::default();
                if let Some(n) = args.test_rekey_after_messages {
                    rekey.after_messages = n.max(1);
                }
                if let Some(secs) = args.test_rekey_after_secs {
                    rekey.after_time = std::time::Duration::from_secs(secs.max(1));
                }
                Some(Password { secret, source, cipher, rekey })
            }
        };
        Ok(Config {
            password,
            name: args.name,
            nickname,
            port: args.port,
            bridge: args.bridge,
            data_dir: args.data_dir.unwrap_or_else(default_data_dir),
            mtu: args.mtu,
            conn_limit: args.conn_limit,
            discovery: !args.no_discovery,
            fastdp: !args.no_fastdp,
            offload: !args.no_offload,
            sleeve_spin: std::time::Duration::from_micros(args.sleeve_spin_us),
            sleeve_workers: args.sleeve_workers.clamp(1, 16),
            peers,
            http_addr,
            ipalloc_range: args.ipalloc_range,
            ipalloc_init,
            node_name,
            kube: !args.no_kube,
            kubeconfig: args.kubeconfig,
            kube_namespace: args.kube_namespace,
            kube_node_selector: args.kube_node_selector.filter(|s| !s.trim().is_empty()),
            nat: !args.no_nat,
            no_masq_local,
            cni_conf_dir: args.cni_conf_dir,
            cni_bin_dir: args.cni_bin_dir,
        })
    }
}

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Weave's environment variables, as a Weave DaemonSet sets them: which
/// of weft's variables they set (only where weft's own are unset, so weft's
/// names win) and the command line with `EXTRA_ARGS` added to `weft
/// router`'s arguments (unknown ones are refused by the parser like any
/// other). `get` reads the environment.
pub fn weave_env(
    get: impl Fn(&str) -> Option<String>,
    mut argv: Vec<std::ffi::OsString>,
) -> (Vec<(&'static str, String)>, Vec<std::ffi::OsString>) {
    let set = |var: &str| get(var).is_some_and(|v| !v.trim().is_empty());
    let mut vars = Vec::new();
    for (weave, weft) in [
        ("IPALLOC_INIT", "WEFT_IPALLOC_INIT"),
        ("CONN_LIMIT", "WEFT_CONN_LIMIT"),
        ("WEAVE_MTU", "WEFT_MTU"),
        ("WEAVE_HTTP_ADDR", "WEFT_HTTP_ADDR"),
    ] {
        if let (Some(value), false) = (get(weave).filter(|v| !v.trim().is_empty()), get(weft).is_some()) {
            vars.push((weft, value.trim().to_string()));
        }
    }
    // Weave treats any non-empty value as "on", even "false".
    if set("WEAVE_NO_FASTDP") && get("WEFT_NO_FASTDP").is_none() {
        vars.push(("WEFT_NO_FASTDP", "true".to_string()));
    }
    if argv.get(1).is_some_and(|a| a == "router") {
        if let Some(extra) = get("EXTRA_ARGS") {
            argv.extend(extra.split_whitespace().map(std::ffi::OsString::from));
        }
    }
    (vars, argv)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "weft".to_string())
}

const DEFAULT_DATA_DIR: &str = "/var/lib/weft";

pub(crate) fn default_data_dir() -> PathBuf {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    match (ns("self"), ns("1")) {
        (Some(mine), Some(host)) if mine != host => {
            // "net:[4026532177]" -> "4026532177"
            let id: String = mine.to_string_lossy().chars().filter(char::is_ascii_digit).collect();
            PathBuf::from(DEFAULT_DATA_DIR).join(format!("netns-{id}"))
        }
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn weave(env: &[(&str, &str)], argv: &[&str]) -> (Vec<(&'static str, String)>, Vec<String>) {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let (vars, argv) = weave_env(|k| env.get(k).cloned(), argv);
        (vars, argv.into_iter().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn weave_variables_map_onto_weft_ones_unless_those_are_set() {
        let (vars, _) = weave(&[("IPALLOC_INIT", "consensus=3"), ("CONN_LIMIT", "30"), ("WEFT_CONN_LIMIT", "50")], &[]);
        assert_eq!(vars, vec![("WEFT_IPALLOC_INIT", "consensus=3".to_string())]);
        let (vars, _) = weave(&[("WEAVE_MTU", " 1400 "), ("WEAVE_HTTP_ADDR", "")], &[]);
        assert_eq!(vars, vec![("WEFT_MTU", "1400".to_string())]);
    }

    #[test]
    fn weave_no_fastdp_is_on_for_any_value_even_false() {
        for value in ["1", "true", "false", "0"] {
            let (vars, _) = weave(&[("WEAVE_NO_FASTDP", value)], &[]);
            assert_eq!(vars, vec![("WEFT_NO_FASTDP", "true".to_string())], "{value}");
        }
        assert!(weave(&[("WEAVE_NO_FASTDP", "")], &[]).0.is_empty());
    }

    #[test]
    fn cipher_setting_parses_auto_and_both_ciphers() {
        use weft_proto::crypto::Cipher;
        assert_eq!("auto".parse(), Ok(CipherSetting::Auto));
        assert_eq!("AUTO".parse(), Ok(CipherSetting::Auto));
        assert_eq!("chacha20-poly1305".parse(), Ok(CipherSetting::Fixed(Cipher::ChaCha20Poly1305)));
        assert_eq!("aes-256-gcm".parse(), Ok(CipherSetting::Fixed(Cipher::Aes256Gcm)));
        let err = "des".parse::<CipherSetting>().unwrap_err();
        assert!(err.contains("auto") && err.contains("aes-256-gcm"), "{err}");
        let aes = Cipher::Aes256Gcm.hardware_accelerated();
        assert_eq!(
            CipherSetting::Auto.choice().ok(),
            Some(weft_proto::control::CipherChoice::Auto { aes_capable: aes })
        );
        assert_eq!(CipherSetting::Fixed(Cipher::Aes256Gcm).choice().is_ok(), aes);
    }

    #[test]
    fn extra_args_extend_the_router_command_only() {
        let (_, argv) = weave(&[("EXTRA_ARGS", "--no-discovery  --conn-limit 10")], &["weft", "router", "10.0.0.1"]);
        assert_eq!(argv, ["weft", "router", "10.0.0.1", "--no-discovery", "--conn-limit", "10"]);
        let (_, argv) = weave(&[("EXTRA_ARGS", "--no-discovery")], &["weft", "status"]);
        assert_eq!(argv, ["weft", "status"]);
    }
}
