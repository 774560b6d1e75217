//! The built `weft-net` binary driven exactly as a runtime drives it, in
//! network namespaces, against a fake router that answers the IPAM API.
//!
//! Each test builds a "node" namespace (bridge `weft` = 10.32.0.1/12, the
//! fake router on its loopback) and "pod" namespaces; the plugin runs inside
//! the node via `ip netns exec`, so the machine's own namespace is never
//! touched. Everything is deleted by Drop guards, even on panic.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};
use weft_tests::netns::{sweep_stale, unique_prefix};
use weft_tests::{in_netns, require_env, run_bounded_input, Netns};

const PLUGIN: &str = env!("CARGO_BIN_EXE_weft-net");
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
const ROUTER_MTU: u32 = 1376;
const CNI_VARS: [&str; 6] = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

// ----- fake router --------------------------------------------------------

#[derive(Debug, Default)]
struct RouterState {
    ready: bool,
    /// Answer 503 to allocations (IPAM not ready).
    unavailable: bool,
    leases: HashMap<(String, String), u32>,
    next_host: u32,
    released: Vec<(String, String)>,
    gc_valid: Option<Value>,
}

/// The router's `/ipam/*` API on 127.0.0.1 inside the node namespace.
struct FakeRouter {
    addr: SocketAddr,
    state: Arc<Mutex<RouterState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRouter {
    fn start(node: &Netns) -> FakeRouter {
        let listener = in_netns(node.name(), || TcpListener::bind("127.0.0.1:0")).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RouterState { ready: true, next_host: 2, ..RouterState::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = serve(stream, &state) {
                                eprintln!("[fake router] {e}");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
                        Err(e) => panic!("fake router accept: {e}"),
                    }
                }
            })
        };
        FakeRouter { addr, state, stop, thread: Some(thread) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap()
    }
}

impl Drop for FakeRouter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<RouterState>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0;
    for _ in 0..100 {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, answer) = route(&mut state.lock().unwrap(), method, path, query, &body);
    let answer = answer.to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

fn key(body: &Value) -> (String, String) {
    (body["container_id"].as_str().unwrap_or("").to_owned(), body["ifname"].as_str().unwrap_or("").to_owned())
}

fn lease(host: u32) -> Value {
    json!({"ip": format!("10.32.0.{host}/12"), "gateway": "10.32.0.1", "mtu": ROUTER_MTU, "bridge": "weft"})
}

fn route(state: &mut RouterState, method: &str, path: &str, query: &str, body: &Value) -> (u16, Value) {
    match (method, path) {
        ("POST", "/ipam/allocate") if state.unavailable => {
            (503, json!({"error": "no space agreed yet", "retry": true}))
        }
        ("POST", "/ipam/allocate") => {
            let next = state.next_host;
            let host = *state.leases.entry(key(body)).or_insert(next);
            if host == next {
                state.next_host += 1;
            }
            (200, lease(host))
        }
        ("POST", "/ipam/release") => {
            let k = key(body);
            let released = u32::from(state.leases.remove(&k).is_some());
            state.released.push(k);
            (200, json!({"released": released}))
        }
        ("GET", "/ipam/lookup") => {
            let params: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
            let k = (
                params.get("container_id").unwrap_or(&"").to_string(),
                params.get("ifname").unwrap_or(&"").to_string(),
            );
            match state.leases.get(&k) {
                Some(host) => (200, lease(*host)),
                None => (404, json!({"error": "no such allocation"})),
            }
        }
        ("POST", "/ipam/gc") => {
            state.gc_valid = Some(body["valid"].clone());
            (200, json!({"released": 0}))
        }
        ("GET", "/ipam/status") => {
            (200, json!({"ready": state.ready, "range": "10.32.0.0/12", "mtu": ROUTER_MTU, "bridge": "weft"}))
        }
        _ => (404, json!({"error": format!("no route {method} {path}")})),
    }
}

// ----- namespaces and the plugin ---------------------------------------------

/// A node namespace with the weft bridge and a fake router, plus a name
/// prefix for the pods of the test.
struct Node {
    prefix: String,
    router: FakeRouter,
    // Declared last: dropped after the router thread stops.
    ns: Netns,
}

impl Node {
    fn new() -> Node {
        require_env();
        sweep_stale();
        let prefix = unique_prefix();
        let ns = Netns::create(format!("{prefix}n")).unwrap();
        ns.ip(&["link", "add", "weft", "type", "bridge"]).unwrap();
        ns.ip(&["addr", "add", "10.32.0.1/12", "dev", "weft"]).unwrap();
        ns.ip(&["link", "set", "weft", "up"]).unwrap();
        let router = FakeRouter::start(&ns);
        Node { prefix, router, ns }
    }

    fn pod(&self, tag: &str) -> Netns {
        Netns::create(format!("{}p{tag}", self.prefix)).unwrap()
    }

    /// The network configuration, with `extra` keys merged in.
    fn config(&self, version: &str, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": "weft",
            "type": "weft-net",
            "httpAddr": self.router.addr.to_string(),
            "dns": {"nameservers": ["10.96.0.10"]},
        });
        if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
            conf.extend(extra.clone());
        }
        conf
    }

    /// Runs the plugin inside the node namespace.
    fn cni(&self, env: &[(&str, &str)], stdin: &Value) -> Outcome {
        let mut cmd = self.ns.command(PLUGIN, &[]);
        run_plugin(&mut cmd, env, Some(stdin.to_string().as_bytes()))
    }

    fn add(&self, pod: &Netns, id: &str, conf: &Value) -> Outcome {
        let netns = pod.path();
        self.cni(
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", id), ("CNI_NETNS", path_str(&netns)), ("CNI_IFNAME", "eth0")],
            conf,
        )
    }

    fn del(&self, netns: &str, id: &str, conf: &Value) -> Outcome {
        self.cni(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0")], conf)
    }

    fn check(&self, pod: &Netns, id: &str, conf: &Value) -> Outcome {
        let netns = pod.path();
        self.cni(
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", path_str(&netns)),
                ("CNI_IFNAME", "eth0"),
            ],
            conf,
        )
    }

    /// Host veths the plugin made, by name.
    fn host_veths(&self) -> Vec<String> {
        let links = self.ns.ip_json(&["link", "show"]).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("vethw"))
            .map(str::to_owned)
            .collect()
    }

    fn assert_nothing_left(&self, what: &str) {
        assert_eq!(self.host_veths(), Vec::<String>::new(), "{what}: veths left on the node");
        assert!(
            self.router.state().leases.is_empty(),
            "{what}: addresses left allocated: {:?}",
            self.router.state().leases
        );
    }
}

#[derive(Debug)]
struct Outcome {
    success: bool,
    json: Value,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn ok(&self) -> &Value {
        assert!(self.success, "plugin failed: {} (stderr: {})", self.stdout, self.stderr);
        &self.json
    }

    fn quiet_ok(&self) {
        self.ok();
        assert_eq!(self.stdout.trim(), "", "expected no output");
    }

    /// Asserts failure with CNI error `code`; returns the message.
    fn err(&self, code: u64) -> String {
        assert!(!self.success, "plugin succeeded, expected error {code}: {}", self.stdout);
        assert_eq!(self.json["code"], code, "wrong error: {} (stderr: {})", self.stdout, self.stderr);
        assert!(self.json["cniVersion"].is_string(), "error lacks cniVersion: {}", self.stdout);
        self.json["msg"].as_str().unwrap().to_owned()
    }
}

fn run_plugin(cmd: &mut Command, env: &[(&str, &str)], stdin: Option<&[u8]>) -> Outcome {
    for var in CNI_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let cmd = std::mem::replace(cmd, Command::new("true"));
    let output = run_bounded_input(cmd, stdin, PLUGIN_TIMEOUT).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Outcome {
        success: output.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `ip -j` details of one link in `ns`.
fn link(ns: &Netns, name: &str) -> Value {
    ns.ip_json(&["-d", "link", "show", "dev", name]).unwrap()[0].clone()
}

fn has_link(ns: &Netns, name: &str) -> bool {
    ns.ip_json(&["link", "show"]).unwrap().as_array().unwrap().iter().any(|l| l["ifname"] == name)
}

fn with_prev_result(mut conf: Value, result: &Value) -> Value {
    conf["prevResult"] = result.clone();
    conf
}

// ----- tests ---------------------------------------------------------------

#[test]
fn version_answers_with_dummy_env_and_any_stdin() {
    let dummies = [
        ("CNI_COMMAND", "VERSION"),
        ("CNI_CONTAINERID", "dummy"),
        ("CNI_NETNS", "dummy"),
        ("CNI_IFNAME", "dummy"),
        ("CNI_PATH", "dummy"),
    ];
    let expected = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    for (env, stdin, version) in [
        (&[("CNI_COMMAND", "VERSION")][..], None, "1.1.0"),
        (&dummies[..], None, "1.1.0"),
        (&dummies[..], Some(&br#"{"cniVersion": "0.4.0"}"#[..]), "0.4.0"),
        (&dummies[..], Some(&b"not json"[..]), "1.1.0"),
    ] {
        let out = run_plugin(&mut Command::new(PLUGIN), env, stdin);
        let json = out.ok();
        assert_eq!(json["supportedVersions"], expected);
        assert_eq!(json["cniVersion"], version);
    }
}

#[test]
fn add_check_del_cni_1_1() {
    let node = Node::new();
    let pod = node.pod("a");
    let conf = node.config("1.1.0", json!({}));
    let result = node.add(&pod, "ctr-a", &conf).ok().clone();

    // The result, as a 1.1.0 runtime reads it.
    assert_eq!(result["cniVersion"], "1.1.0");
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert!(host_veth.starts_with("vethwe") && host_veth.len() <= 15, "{host_veth}");
    assert!(result["interfaces"][0].get("sandbox").is_none());
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], path_str(&pod.path()));
    assert_eq!(result["interfaces"][1]["mtu"], ROUTER_MTU);
    assert_eq!(result["ips"], json!([{"interface": 1, "address": "10.32.0.2/12", "gateway": "10.32.0.1"}]));
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]));
    assert_eq!(result["dns"], json!({"nameservers": ["10.96.0.10"]}));

    // The kernel agrees.
    let eth0 = link(&pod, "eth0");
    assert_eq!(eth0["mtu"], ROUTER_MTU);
    assert_eq!(eth0["address"], result["interfaces"][1]["mac"]);
    assert!(eth0["flags"].as_array().unwrap().contains(&json!("UP")));
    let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]).unwrap();
    assert_eq!(addrs[0]["addr_info"][0]["local"], "10.32.0.2");
    assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 12);
    let default = pod.ip_json(&["route", "show", "default"]).unwrap();
    assert_eq!(default[0]["gateway"], "10.32.0.1");
    assert_eq!(default[0]["dev"], "eth0");
    let host = link(&node.ns, &host_veth);
    assert_eq!(host["master"], "weft");
    assert_eq!(host["mtu"], ROUTER_MTU);
    assert_eq!(host["address"], result["interfaces"][0]["mac"]);
    assert_eq!(host["linkinfo"]["info_slave_data"]["hairpin"], true);
    let ping = pod.run("ping", &["-c", "1", "-W", "2", "10.32.0.1"], Duration::from_secs(10)).unwrap();
    assert!(ping.status.success(), "pod cannot reach the bridge: {}", String::from_utf8_lossy(&ping.stdout));

    // CHECK passes on what ADD made...
    let checked = with_prev_result(conf.clone(), &result);
    node.check(&pod, "ctr-a", &checked).quiet_ok();
    // ...and fails, saying what is wrong, once it is broken.
    pod.ip(&["route", "del", "default"]).unwrap();
    let msg = node.check(&pod, "ctr-a", &checked).err(100);
    assert!(msg.contains("route 0.0.0.0/0 via 10.32.0.1"), "{msg}");
    pod.ip(&["route", "add", "default", "via", "10.32.0.1", "dev", "eth0"]).unwrap();
    node.check(&pod, "ctr-a", &checked).quiet_ok();
    node.ns.ip(&["link", "set", &host_veth, "nomaster"]).unwrap();
    let msg = node.check(&pod, "ctr-a", &checked).err(100);
    assert!(msg.contains("not bridge \"weft\""), "{msg}");
    pod.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    let msg = node.check(&pod, "ctr-a", &checked).err(100);
    assert!(msg.contains("lacks address 10.32.0.2/12"), "{msg}");

    // DEL removes both ends and the address; again, and without a netns, is fine.
    let netns = path_str(&pod.path()).to_owned();
    node.del(&netns, "ctr-a", &checked).quiet_ok();
    assert!(!has_link(&pod, "eth0"));
    node.assert_nothing_left("after DEL");
    node.del(&netns, "ctr-a", &checked).quiet_ok();
    node.del("", "ctr-a", &conf).quiet_ok();
    node.del("/run/netns/no-such-namespace", "ctr-a", &conf).quiet_ok();
    assert_eq!(node.router.state().released.len(), 4);
    // CHECK after DEL: IPAM no longer holds the address.
    node.check(&pod, "ctr-a", &checked).err(100);
}

#[test]
fn results_follow_the_requested_version() {
    let node = Node::new();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
        let pod = node.pod(&format!("v{i}"));
        let id = format!("ctr-v{i}");
        let conf = node.config(version, json!({"mtu": 1400}));
        let result = node.add(&pod, &id, &conf).ok().clone();
        assert_eq!(result["cniVersion"], version);
        let ip = &result["ips"][0];
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{version}: {result}");
        } else {
            assert!(ip.get("version").is_none(), "{version}: {result}");
        }
        assert!(result["interfaces"][1].get("mtu").is_none(), "mtu is a 1.1.0 field: {result}");
        // The configured MTU wins over the router's.
        assert_eq!(link(&pod, "eth0")["mtu"], 1400);
        if version == "0.3.1" {
            // CHECK came with 0.4.0.
            node.check(&pod, &id, &with_prev_result(conf.clone(), &result)).err(1);
        }
        node.del(path_str(&pod.path()), &id, &conf).quiet_ok();
    }
    node.assert_nothing_left("after DELs");
}

#[test]
fn bad_input_is_refused_and_leaks_nothing() {
    let node = Node::new();
    let pod = node.pod("b");
    let netns = path_str(&pod.path()).to_owned();
    let conf = node.config("1.0.0", json!({}));
    let add_env = |id: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", id.into()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".into()),
        ]
    };
    let run = |env: &[(&str, String)], stdin: &[u8]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_plugin(&mut node.ns.command(PLUGIN, &[]), &env, Some(stdin))
    };
    let conf_bytes = conf.to_string().into_bytes();

    run(&add_env("c1"), b"{\"cniVersion\": ").err(6);
    run(&add_env("c1"), node.config("0.2.0", json!({})).to_string().as_bytes()).err(1);
    run(&add_env("c1"), node.config("2.0.0", json!({})).to_string().as_bytes()).err(1);
    run(&add_env("c1"), node.config("1.0.0", json!({"mtu": 10})).to_string().as_bytes()).err(7);
    let mut no_command = add_env("c1");
    no_command.remove(0);
    run(&no_command, &conf_bytes).err(4);
    let mut no_id = add_env("c1");
    no_id.remove(1);
    run(&no_id, &conf_bytes).err(4);
    let mut bad_ifname = add_env("c1");
    bad_ifname[3].1 = "much-too-long-ifname".into();
    run(&bad_ifname, &conf_bytes).err(4);
    let mut missing_netns = add_env("c1");
    missing_netns[2].1 = "/run/netns/no-such-namespace".into();
    let msg = run(&missing_netns, &conf_bytes).err(3);
    assert!(msg.contains("no-such-namespace"), "{msg}");
    let mut not_netns = add_env("c1");
    not_netns[2].1 = "/etc/hostname".into();
    run(&not_netns, &conf_bytes).err(4);
    node.assert_nothing_left("after refused input");

    // The router down (nothing listens on the port) or not ready: try again later.
    let closed = in_netns(node.ns.name(), || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).unwrap();
    let down = node.config("1.0.0", json!({"httpAddr": closed.to_string()}));
    let msg = run(&add_env("c1"), down.to_string().as_bytes()).err(11);
    assert!(msg.contains("is the weft router running"), "{msg}");
    node.router.state().unavailable = true;
    run(&add_env("c1"), &conf_bytes).err(11);
    node.router.state().unavailable = false;
    node.assert_nothing_left("with the router down");

    // Failures after the allocation roll everything back.
    let msg =
        run(&add_env("c2"), node.config("1.0.0", json!({"bridge": "nosuchbridge"})).to_string().as_bytes()).err(11);
    assert!(msg.contains("nosuchbridge"), "{msg}");
    assert_eq!(node.router.state().released.last(), Some(&("c2".to_owned(), "eth0".to_owned())));
    node.assert_nothing_left("after a missing bridge");
    // Not a veth, so not something DEL would mistake for ours.
    pod.ip(&["link", "add", "eth0", "type", "bridge"]).unwrap();
    let msg = run(&add_env("c3"), &conf_bytes).err(101);
    assert!(msg.contains("already exists"), "{msg}");
    node.assert_nothing_left("after an interface name clash");
    assert_eq!(link(&pod, "eth0")["linkinfo"]["info_kind"], "bridge", "someone else's eth0 must survive");
    pod.ip(&["link", "del", "eth0"]).unwrap();
    // Only lo is left: the pod end went with the rollback.
    let pod_links = pod.ip_json(&["link", "show"]).unwrap();
    assert_eq!(pod_links.as_array().unwrap().len(), 1, "{pod_links}");

    // And after all that, a good ADD still works.
    let result = node.add(&pod, "c4", &conf).ok().clone();
    node.del(&netns, "c4", &conf).quiet_ok();
    node.assert_nothing_left("after the final DEL");

    // A link by our host veth name that is not tagged as ours (a hash
    // collision, or made by hand) is neither replaced by ADD nor deleted by DEL.
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap();
    node.ns.ip(&["link", "add", host_veth, "type", "veth", "peer", "name", "strangerpeer"]).unwrap();
    let msg = run(&add_env("c4"), &conf_bytes).err(101);
    assert!(msg.contains("taken"), "{msg}");
    node.del(&netns, "c4", &conf).quiet_ok();
    assert!(has_link(&node.ns, host_veth), "DEL deleted a link that was not its own");
    assert!(node.router.state().leases.is_empty());
}

#[test]
fn host_namespace_is_refused() {
    let node = Node::new();
    let conf = node.config("1.0.0", json!({}));
    let own = node.ns.path();
    let add = |netns: &str| {
        node.cni(
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "h"), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0")],
            &conf,
        )
    };
    for netns in [path_str(&own), "/proc/self/ns/net"] {
        let msg = add(netns).err(4);
        assert!(msg.contains("host's network namespace"), "{netns}: {msg}");
    }
    // Init's namespace is refused too, or, in sandboxes that hide it even
    // from root, cannot be opened at all.
    let init = add("/proc/1/ns/net");
    let code = if std::fs::File::open("/proc/1/ns/net").is_ok() { 4 } else { 5 };
    init.err(code);
    node.assert_nothing_left("after refusing the host namespace");
    // DEL given the host's namespace must not touch the host's own eth0.
    node.ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]).unwrap();
    node.del(path_str(&own), "h", &conf).quiet_ok();
    assert!(has_link(&node.ns, "eth0"));
}

#[test]
fn status_and_gc() {
    let node = Node::new();
    let conf = node.config("1.1.0", json!({}));
    let status = |conf: &Value| node.cni(&[("CNI_COMMAND", "STATUS")], conf);
    status(&conf).quiet_ok();
    node.router.state().ready = false;
    let msg = status(&conf).err(50);
    assert!(msg.contains("not ready"), "{msg}");
    let closed = in_netns(node.ns.name(), || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).unwrap();
    status(&node.config("1.1.0", json!({"httpAddr": closed.to_string()}))).err(50);
    status(&node.config("1.0.0", json!({}))).err(1);

    let gc = |conf: &Value| node.cni(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/nonexistent")], conf);
    let valid = json!([{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]);
    gc(&node.config("1.1.0", json!({"cni.dev/valid-attachments": valid}))).quiet_ok();
    assert_eq!(
        node.router.state().gc_valid,
        Some(json!([{"container_id": "c1", "ifname": "eth0"}, {"container_id": "c2", "ifname": "net1"}]))
    );
    gc(&conf).err(7);
    gc(&node.config("1.0.0", json!({"cni.dev/valid-attachments": []}))).err(1);
}

/// Delegation to the reference `host-local` IPAM, then chaining with the
/// reference `portmap`, as a runtime runs `deploy/05-weft.conflist`.
#[test]
fn host_local_ipam_and_portmap_chain() {
    for plugin in ["host-local", "portmap"] {
        assert!(
            Path::new(REFERENCE_PLUGINS).join(plugin).exists(),
            "{REFERENCE_PLUGINS}/{plugin} missing: install the Debian package containernetworking-plugins"
        );
    }
    let node = Node::new();
    node.ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "weft"]).unwrap();
    let pod = node.pod("h");
    let netns = path_str(&pod.path()).to_owned();
    let data_dir = std::env::temp_dir().join(format!("{}-host-local", node.prefix));
    let _cleanup = RemoveDir(data_dir.clone());
    let plugin_dir = Path::new(PLUGIN).parent().unwrap();
    let cni_path = format!("{}:{REFERENCE_PLUGINS}", plugin_dir.display());
    let conf = node.config(
        "1.0.0",
        json!({"ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.0.0/24", "gateway": "10.99.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir.to_str().unwrap(),
        }}),
    );
    let env = |command: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", command.into()),
            ("CNI_CONTAINERID", "ctr-h".into()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", cni_path.clone()),
        ]
    };
    let run = |program: &str, command: &'static str, stdin: &Value| {
        let env = env(command);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_plugin(&mut node.ns.command(program, &[]), &env, Some(stdin.to_string().as_bytes()))
    };

    let result = run(PLUGIN, "ADD", &conf).ok().clone();
    assert_eq!(result["ips"], json!([{"interface": 1, "address": "10.99.0.2/24", "gateway": "10.99.0.1"}]));
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}]));
    assert!(node.router.state().leases.is_empty(), "the router must not be asked");
    assert_eq!(pod.ip_json(&["route", "show", "default"]).unwrap()[0]["gateway"], "10.99.0.1");
    // Neither the router nor the configuration gave an MTU: the bridge's.
    assert_eq!(link(&pod, "eth0")["mtu"], 1500);
    assert!(data_dir.join("weft").join("10.99.0.2").exists(), "host-local recorded no lease");

    // portmap after us, as the conflist chains it.
    let portmap_conf = json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": result,
    });
    let chained = run(&format!("{REFERENCE_PLUGINS}/portmap"), "ADD", &portmap_conf).ok().clone();
    assert_eq!(chained["ips"], result["ips"]);
    assert_eq!(chained["interfaces"], result["interfaces"]);
    let nat = node.ns.run_ok("iptables", &["-t", "nat", "-S"]).unwrap();
    assert!(nat.contains("18080") && nat.contains("10.99.0.2"), "no port mapping in the node's NAT table:\n{nat}");

    // CHECK through the chain's final result, delegating to host-local's CHECK.
    run(PLUGIN, "CHECK", &with_prev_result(conf.clone(), &chained)).quiet_ok();

    // DEL in reverse order.
    run(&format!("{REFERENCE_PLUGINS}/portmap"), "DEL", &portmap_conf).ok();
    run(PLUGIN, "DEL", &with_prev_result(conf.clone(), &chained)).quiet_ok();
    assert!(!data_dir.join("weft").join("10.99.0.2").exists(), "host-local still holds the address");
    node.assert_nothing_left("after DEL");
    run(PLUGIN, "DEL", &conf).quiet_ok();

    // The shipped conflist is what a runtime would read.
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/05-weft.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped["cniVersion"], "1.0.0");
    assert_eq!(shipped["plugins"][0]["type"], "weft-net");
    assert_eq!(shipped["plugins"][1]["type"], "portmap");
    assert_eq!(shipped["plugins"][1]["snat"], true);
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
