//! Encryption (issue 5), end to end on namespace clusters: a password-
//! protected cluster forms, reports itself encrypted and carries traffic;
//! an eavesdropper on the underlay sees no plaintext (and does see it
//! without a password, so the check can fail); a wrong or missing password
//! and a cipher mismatch are refused with the documented reasons; the
//! default `--cipher auto` negotiates each connection's cipher;
//! replayed and forged datagrams are counted and dropped without harm;
//! keys rotate many times under load without losing a byte.
//!
//! Needs root and `cargo build --bins` first (or `WEFT_BIN`); fails, never
//! skips, without them. The first tests here only check this file's own
//! parsers and need neither.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use weft_proto::crypto::{Nonce, NONCE_LEN};
use weft_proto::sleeve::{sealed_header, KIND_SEALED, SEALED_HEADER_LEN, SEAL_OVERHEAD};
use weft_tests::fastdp::{BackgroundPing, FASTDP_PORT};
use weft_tests::scenario::*;
use weft_tests::*;

/// Time for routers to find each other and bring connections up (the
/// password KDF adds a moment to each start).
const CONVERGE: Duration = Duration::from_secs(40);
/// Time for a pod to reach another once the routers are connected.
const REACH: Duration = Duration::from_secs(20);
/// Time for a refused connection to show its reason on both sides.
const REFUSAL: Duration = Duration::from_secs(30);
/// Time for counters to catch up with what was just sent.
const COUNTED: Duration = Duration::from_secs(10);
const PINGS: u32 = 5;
const BIG: u64 = 50 * 1000 * 1000;
const MEDIUM: u64 = 10 * 1000 * 1000;
/// Bytes moved while the underlay is captured (the pattern search indexes
/// all of them).
const CAPTURED: u64 = 20 * 1000 * 1000;
const TRANSFER: Duration = Duration::from_secs(180);
const BG_INTERVAL: Duration = Duration::from_millis(100);

const PASSWORD: &str = "weft test password: correct horse battery staple";
const OTHER_PASSWORD: &str = "weft test password: Tr0ub4dor&3";
const CHACHA: &str = "chacha20-poly1305";
const AES: &str = "aes-256-gcm";

const PASSWORD_DIFFERS: &str = "authentication failed: password differs";
const PEER_HAS_NO_PASSWORD: &str = "encryption mismatch: peer has no password";
const PEER_REQUIRES_PASSWORD: &str = "encryption mismatch: peer requires a password";
const CIPHER_MISMATCH: &str = "cipher mismatch";

/// What a node shows and uses for its cipher: `weft status`'s
/// `Encryption: enabled (STATUS)` and the cipher its connections
/// negotiated (in `weft status connections` and `/report`'s attrs).
#[derive(Debug, Clone, Copy)]
struct Ciphers {
    status: &'static str,
    conn: &'static str,
}

const FIXED_CHACHA: Ciphers = Ciphers { status: CHACHA, conn: CHACHA };
const FIXED_AES: Ciphers = Ciphers { status: AES, conn: AES };

/// No `--cipher` (auto), between two routers of this machine: AES-256-GCM
/// with AES instructions, else ChaCha20-Poly1305.
fn auto_ciphers() -> Result<Ciphers> {
    Ok(if cpu_has_aes()? {
        Ciphers { status: "auto: aes-256-gcm with peers that have AES instructions, else chacha20-poly1305", conn: AES }
    } else {
        Ciphers {
            status:
                "auto: chacha20-poly1305, this CPU has no AES instructions; aes-256-gcm only with peers fixed to it",
            conn: CHACHA,
        }
    })
}

/// Every 100 messages (and every second): a 50 MB transfer (~36k sleeve
/// datagrams) then goes through more than 256 epochs, so the one-byte epoch
/// on the wire wraps around at least once.
const REKEY_ARGS: [&str; 4] = ["--test-rekey-after-messages", "100", "--test-rekey-after-secs", "1"];
/// Epochs one byte on the wire tells apart.
const EPOCHS_ON_THE_WIRE: f64 = 256.0;

// ----- what the router shows -----------------------------------------------

/// One line of `weft status connections`:
/// `-> ADDRESS  STATE  INFO...` (`<-` for inbound).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnLine {
    outbound: bool,
    address: String,
    state: String,
    info: String,
}

impl ConnLine {
    fn parse_all(text: &str) -> Vec<ConnLine> {
        text.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let dir = words.next()?;
                if dir != "->" && dir != "<-" {
                    return None;
                }
                let address = words.next()?.to_owned();
                let state = words.next()?.to_owned();
                Some(ConnLine { outbound: dir == "->", address, state, info: words.collect::<Vec<_>>().join(" ") })
            })
            .collect()
    }

    fn is_established(&self) -> bool {
        self.state == "established"
    }

    fn has_word(&self, word: &str) -> bool {
        self.info.split_whitespace().any(|w| w == word)
    }

    /// A connection attempt that was turned down (`retrying` on the dialing
    /// side, `failed` on the accepting side) for a reason containing `why`.
    fn is_refused_for(&self, why: &str) -> bool {
        (self.state == "retrying" || self.state == "failed") && self.info.contains(why)
    }
}

fn status(c: &Cluster, i: usize) -> Result<String> {
    c.weft_cli_ok(i, &["status"])
}

fn connections(c: &Cluster, i: usize) -> Result<(Vec<ConnLine>, String)> {
    let text = c.weft_cli_ok(i, &["status", "connections"])?;
    Ok((ConnLine::parse_all(&text), text))
}

/// `(Address, State, Attrs.encrypted, Attrs.cipher)` of one `/report` connection.
type ConnEncryption = (String, String, Option<bool>, Option<String>);

/// `Router.Encryption` and, per entry of `Router.Connections`, its
/// `(Address, State, Attrs.encrypted, Attrs.cipher)`.
fn report_encryption(c: &Cluster, i: usize) -> Result<(Option<bool>, Vec<ConnEncryption>)> {
    let r = c.report(i)?;
    let router = r.router()?;
    let conns = match router.get("Connections") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok((
        router.get("Encryption").and_then(Value::as_bool),
        conns
            .iter()
            .map(|c| {
                let attrs = c.get("Attrs");
                let encrypted = attrs.and_then(|a| a.get("encrypted")).and_then(Value::as_bool);
                let cipher = attrs.and_then(|a| a.get("cipher")).and_then(Value::as_str).map(str::to_owned);
                (s(c, "Address"), s(c, "State"), encrypted, cipher)
            })
            .collect(),
    ))
}

/// Node `i` says it encrypts as `ciphers.status` says, has the fast path
/// off, and has exactly `peers` established connections, every one on the
/// sleeve and encrypted with `ciphers.conn` (in `weft status connections`
/// and in `/report`).
fn check_encrypted_node(c: &Cluster, i: usize, ciphers: Ciphers, peers: usize) -> Result<()> {
    let st = status(c, i)?;
    let want = format!("Encryption: enabled ({})\n", ciphers.status);
    ensure!(st.contains(&want), "node{i} `weft status` lacks {want:?}:\n{st}");
    ensure!(
        st.contains("FastDP: disabled (encrypted"),
        "node{i} `weft status` lacks \"FastDP: disabled (encrypted...)\":\n{st}"
    );
    let (lines, text) = connections(c, i)?;
    let established: Vec<&ConnLine> = lines.iter().filter(|l| l.is_established()).collect();
    ensure!(
        established.len() == peers,
        "node{i}: {} established connections, want {peers}:\n{text}",
        established.len()
    );
    let with_cipher = format!("encrypted ({})", ciphers.conn);
    for l in &established {
        ensure!(
            l.has_word("encrypted") && l.has_word("sleeve") && !l.has_word("unencrypted") && !l.has_word("fastdp"),
            "node{i}: established connection {} is not \"sleeve encrypted\": {:?}\n{text}",
            l.address,
            l.info
        );
        ensure!(
            l.info.contains(&with_cipher),
            "node{i}: established connection {} does not say {with_cipher:?}: {:?}\n{text}",
            l.address,
            l.info
        );
    }
    let (enc, conns) = report_encryption(c, i)?;
    ensure!(enc == Some(true), "node{i} /report Router.Encryption is {enc:?}, want true");
    for (addr, state, encrypted, cipher) in conns.iter().filter(|(_, s, _, _)| s == "established") {
        ensure!(
            *encrypted == Some(true) && cipher.as_deref() == Some(ciphers.conn),
            "node{i} /report: established connection {addr} ({state}) has Attrs.encrypted {encrypted:?}, \
             Attrs.cipher {cipher:?}; want true, {:?}",
            ciphers.conn
        );
    }
    Ok(())
}

/// The cipher `/report` gives node `i`'s established connection to node
/// `peer` (`None`: no such connection, or no cipher attribute).
fn cipher_to(c: &Cluster, i: usize, peer: usize) -> Result<Option<String>> {
    let (_, conns) = report_encryption(c, i)?;
    let ip = c.node_ip(peer).to_string();
    Ok(conns
        .into_iter()
        .find(|(addr, state, _, _)| state == "established" && weft_tests::report::address_host(addr) == ip)
        .and_then(|(_, _, _, cipher)| cipher))
}

/// Sum of `name{labels...}` on node `i`.
fn metric(c: &Cluster, i: usize, name: &str, labels: &[&str]) -> Result<f64> {
    Ok(metric_sum_labels(&c.metrics(i)?, name, labels))
}

/// Waits until `name{labels}` on node `i` is at least `at_least`; returns it.
fn wait_metric(c: &Cluster, i: usize, name: &str, labels: &[&str], at_least: f64) -> Result<f64> {
    let mut seen = f64::NAN;
    wait_until(COUNTED, Duration::from_millis(200), || {
        seen = metric(c, i, name, labels)?;
        Ok(seen >= at_least)
    })
    .with_context(|| format!("node{i}: {name}{{{}}} is {seen}, want >= {at_least}", labels.join(",")))?;
    Ok(seen)
}

/// `Err` (ending any wait) if node `i` has an established connection.
fn ensure_isolated(c: &Cluster, i: usize) -> Result<()> {
    c.check_alive(i)?;
    let n = c.report(i)?.established_count()?;
    if n > 0 {
        let (_, text) = connections(c, i)?;
        return Err(stop_waiting(format!("node{i} was let in: {n} established connections:\n{text}")));
    }
    Ok(())
}

/// Waits until node `i` shows a connection refused for `why`; with
/// `isolated`, node `isolated` must have no established connection all
/// along.
fn wait_refused(c: &Cluster, i: usize, why: &str, isolated: Option<usize>) -> Result<ConnLine> {
    let mut last = String::new();
    wait_for(REFUSAL, Duration::from_millis(250), || {
        if let Some(j) = isolated {
            ensure_isolated(c, j)?;
        }
        c.check_alive(i)?;
        let (lines, text) = connections(c, i)?;
        last = text;
        Ok(lines.into_iter().find(|l| l.is_refused_for(why)))
    })
    .with_context(|| format!("node{i} never showed a retrying/failed connection for {why:?}; last seen:\n{last}"))
}

/// A password file (content + newline, which the router strips) in the
/// cluster's directory; returns the `--password-file` arguments.
fn password_args(c: &Cluster, name: &str, password: &str) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let path = c.dir().join(name);
    std::fs::write(&path, format!("{password}\n")).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(vec!["--password-file".into(), path.display().to_string()])
}

/// Starts the router on node `i` with `args`, telling it of `peers`, and
/// waits until it answers.
fn start(c: &Cluster, i: usize, args: &[String], peers: &[usize]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.start_router(i, &args, peers)?;
    c.wait_ready(i)
}

fn pods(c: &Cluster, nodes: &[usize]) -> Result<Vec<Pod>> {
    nodes.iter().map(|&i| c.add_pod(i, pod_ip(i, 0))).collect()
}

/// Transfers `bytes` from `a` to `b`, checked byte for byte.
fn transfer(a: &Pod, b: &Pod, bytes: u64) -> Result<()> {
    let stats = a.tcp_transfer_to(b, bytes, TRANSFER)?;
    ensure!(stats.bytes == bytes);
    eprintln!(
        "{} MB node{} -> node{} in {:.2?} ({:.0} Mbit/s)",
        bytes / 1_000_000,
        a.node(),
        b.node(),
        stats.elapsed,
        stats.mbit_per_sec()
    );
    Ok(())
}

// ----- parsers (no cluster needed) -----------------------------------------

#[test]
fn parse_status_connection_lines() {
    let text =
        "-> 172.31.0.1:6783        established sleeve encrypted (aes-256-gcm) 02:00:00:00:00:01(node0) mtu=1343\n\
                <- 172.31.0.3:41234       failed      authentication failed: password differs\n\
                -> 172.31.0.4:6783        retrying    encryption mismatch: peer has no password, retry in 3s\n\
                garbage line\n";
    let lines = ConnLine::parse_all(text);
    assert_eq!(lines.len(), 3);
    assert!(lines[0].outbound && lines[0].is_established());
    assert!(lines[0].has_word("encrypted") && !lines[0].has_word("unencrypted"));
    assert!(lines[0].info.contains("encrypted (aes-256-gcm)"));
    assert_eq!(lines[1].address, "172.31.0.3:41234");
    assert!(!lines[1].outbound && lines[1].is_refused_for(PASSWORD_DIFFERS));
    assert!(lines[2].is_refused_for(PEER_HAS_NO_PASSWORD) && !lines[2].is_refused_for(PEER_REQUIRES_PASSWORD));
    assert!(!lines[0].is_refused_for(""), "an established connection is not refused");
}

// ----- scenarios -----------------------------------------------------------

#[test]
fn encrypted_cluster_pings_and_transfers() {
    with_built_cluster(Cluster::builder().nodes(3).router_env("WEFT_PASSWORD", PASSWORD), |c| {
        start_routers(c, &[&[], &[0], &[0]], &[])?;
        c.wait_mesh(&[0, 1, 2], CONVERGE)?;
        let auto = auto_ciphers()?;
        for i in 0..3 {
            check_encrypted_node(c, i, auto, 2)?;
        }
        let p = pods(c, &[0, 1, 2])?;
        ping_all_pairs(&p.iter().collect::<Vec<_>>(), PINGS, REACH)?;
        transfer(&p[0], &p[2], BIG)?;
        transfer(&p[2], &p[1], MEDIUM)?;
        // Still the same picture after bulk traffic.
        c.wait_mesh(&[0, 1, 2], Duration::ZERO).context("the mesh changed during the transfers")?;
        for i in 0..3 {
            check_encrypted_node(c, i, auto, 2)?;
            // Genuine traffic, heartbeats included from the first one on,
            // always finds its keys and always verifies.
            let m = c.metrics(i)?;
            for reason in ["auth_failed", "no_session", "unencrypted", "unknown_epoch", "replay"] {
                let n = metric_sum(&m, "weft_drops_total", &format!("reason=\"{reason}\""));
                ensure!(n == 0.0, "node{i} dropped {n} genuine datagrams as {reason}");
            }
        }
        Ok(())
    });
}

/// Relayed traffic is opened and re-sealed hop by hop: with the underlay
/// between nodes 0 and 2 blocked, their pods still talk through node 1,
/// which counts the frames in from one peer and out to the other under
/// their own keys, and nobody sees an authentication failure.
#[test]
fn relayed_frames_are_re_encrypted_per_hop() {
    with_built_cluster(Cluster::builder().nodes(3).router_env("WEFT_PASSWORD", PASSWORD), |c| {
        c.block_underlay(0, 2)?;
        start_routers(c, &[&[1], &[], &[1]], &[])?;
        wait_until(CONVERGE, Duration::from_millis(200), || {
            for i in 0..3 {
                ensure!(c.report(i)?.peers()?.len() == 3, "node{i} does not know 3 peers yet");
            }
            let relay = c.node_ip(1).to_string();
            Ok(c.report(0)?.has_established_to(&relay)? && c.report(2)?.has_established_to(&relay)?)
        })
        .context("0-1 and 2-1 never established")?;
        let p = pods(c, &[0, 2])?;
        ping_both_ways(&p[0], &p[1], PINGS, REACH)?;
        transfer(&p[0], &p[1], MEDIUM)?;
        // Each hop's sender counts what it sealed for its next hop.
        let name =
            |i: usize| -> Result<String> { Ok(c.report(i)?.router()?["Name"].as_str().unwrap_or_default().to_owned()) };
        let sent = |i: usize, to: usize| -> Result<f64> {
            let labels = [format!("peer=\"{}\"", name(to)?), "direction=\"out\"".to_owned()];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            Ok(metric_sum_labels(&c.metrics(i)?, "weft_bytes_total", &labels))
        };
        let (first_hop, second_hop) = (sent(0, 1)?, sent(1, 2)?);
        ensure!(
            first_hop >= MEDIUM as f64 && second_hop >= MEDIUM as f64,
            "node0 sent {first_hop} bytes to node1 and node1 {second_hop} to node2, want >= {MEDIUM} each"
        );
        for i in 0..3 {
            let m = c.metrics(i)?;
            ensure!(metric_sum(&m, "weft_auth_failures_total", "") == 0.0, "node{i} saw authentication failures");
        }
        Ok(())
    });
}

/// Captures the underlay bridge (every node's traffic) from before the
/// routers start until after a [`CAPTURED`]-byte transfer pod0 -> pod1:
/// handshakes, control traffic, heartbeats and the transfer. Routers get
/// `args` (the same on every node). Returns the capture and the bytes the
/// transfer sent.
fn capture_cluster_life(c: &Cluster, args: &[String]) -> Result<(CaptureOutput, Vec<u8>)> {
    let capture = Capture::start(c.wire(), WIRE_BRIDGE, CaptureLimits::default())?;
    start(c, 0, args, &[])?;
    start(c, 1, args, &[0])?;
    start(c, 2, args, &[0])?;
    c.wait_mesh(&[0, 1, 2], CONVERGE)?;
    let p = pods(c, &[0, 1])?;
    ping_both_ways(&p[0], &p[1], PINGS, REACH)?;
    transfer(&p[0], &p[1], CAPTURED)?;
    std::thread::sleep(Duration::from_millis(500));
    let out = capture.finish()?;
    eprintln!("underlay capture: {}", out.summary());
    Ok((out, payload(transfer_seed(CAPTURED), CAPTURED as usize)))
}

/// The sleeve must have carried the transfer for the capture to mean
/// anything, and the capture must not have lost much of it.
fn ensure_capture_saw_the_transfer(out: &CaptureOutput) -> Result<()> {
    let sleeve = out.payload_bytes(Proto::Udp, DEFAULT_PORT);
    ensure!(
        sleeve >= CAPTURED,
        "the capture saw {sleeve} bytes of UDP {DEFAULT_PORT} payload during a {CAPTURED}-byte transfer \
         (want >= {CAPTURED}): it missed the sleeve traffic; {}",
        out.summary()
    );
    let control = out.on_port(Proto::Tcp, DEFAULT_PORT).filter(|p| !p.payload.is_empty()).count();
    ensure!(control >= 6, "the capture saw only {control} TCP {DEFAULT_PORT} segments with data; {}", out.summary());
    Ok(())
}

fn describe(p: &Captured) -> String {
    format!("{:?} {} -> {} ({} bytes)", p.proto, p.src, p.dst, p.payload.len())
}

#[test]
fn underlay_capture_has_no_plaintext() {
    with_cluster(3, |c| {
        let args = password_args(c, "password", PASSWORD)?;
        let (out, pattern) = capture_cluster_life(c, &args)?;
        ensure_capture_saw_the_transfer(&out)?;

        // Every sleeve datagram is sealed: none goes out in the clear, not
        // even a heartbeat.
        let sleeve: Vec<&Captured> = out.on_port(Proto::Udp, DEFAULT_PORT).collect();
        let plain: Vec<&&Captured> =
            sleeve.iter().filter(|p| !matches!(sealed_header(&p.payload), Ok(Some(_)))).collect();
        ensure!(
            plain.is_empty(),
            "{} of {} UDP {DEFAULT_PORT} datagrams are not sealed (kind {KIND_SEALED}), e.g. {} starting {:02x?}",
            plain.len(),
            sleeve.len(),
            describe(plain[0]),
            &plain[0].payload[..plain[0].payload.len().min(24)]
        );
        let fastdp = out.payload_bytes(Proto::Udp, FASTDP_PORT);
        ensure!(fastdp == 0, "{fastdp} bytes went over the fast path's UDP {FASTDP_PORT} in an encrypted cluster");

        let index = PatternIndex::new(&pattern);
        if let Some(m) = index.find_in(out.packets.iter().map(|p| p.payload.as_slice())) {
            let p = &out.packets[m.payload];
            bail!(
                "plaintext on the underlay: {} bytes of the transfer (from its offset {}) at offset {} of {}",
                m.len,
                m.pattern_offset,
                m.offset,
                describe(p)
            );
        }
        Ok(())
    });
}

/// The positive control for [`underlay_capture_has_no_plaintext`]: the same
/// capture of an unencrypted cluster (sleeve only, like an encrypted one)
/// does find the transfer's bytes, so the check can fail.
#[test]
fn underlay_capture_sees_plaintext_without_password() {
    with_cluster(3, |c| {
        let (out, pattern) = capture_cluster_life(c, &["--no-fastdp".to_owned()])?;
        ensure_capture_saw_the_transfer(&out)?;
        let sleeve = out.on_port(Proto::Udp, DEFAULT_PORT).map(|p| p.payload.as_slice());
        let m = PatternIndex::new(&pattern)
            .find_in(sleeve)
            .context("the transfer's plaintext was not found in an unencrypted sleeve: the search is broken")?;
        eprintln!("positive control: {} plaintext bytes found in a sleeve datagram", m.len);
        Ok(())
    });
}

#[test]
fn wrong_or_missing_password_is_refused() {
    with_cluster(3, |c| {
        let a = password_args(c, "password-a", PASSWORD)?;
        let b = password_args(c, "password-b", OTHER_PASSWORD)?;
        start(c, 0, &a, &[])?;
        start(c, 1, &a, &[0])?;
        // Node 2 dials both others.
        start(c, 2, &b, &[0, 1])?;
        c.wait_mesh(&[0, 1], CONVERGE).context("nodes 0 and 1 (same password) did not connect")?;

        let on2 = wait_refused(c, 2, PASSWORD_DIFFERS, Some(2))?;
        let on0 = wait_refused(c, 0, PASSWORD_DIFFERS, Some(2))?;
        eprintln!("password differs: node2 {on2:?}; node0 {on0:?}");
        ensure_isolated(c, 2)?;
        let peers = c.report(2)?.peers()?.len();
        ensure!(peers == 1, "node2 (wrong password) learned {peers} peers, want only itself");
        c.wait_mesh(&[0, 1], Duration::ZERO).context("the refusal disturbed nodes 0 and 1")?;
        let differs = "reason=\"password_differs\"";
        for i in [0, 2] {
            wait_metric(c, i, "weft_handshake_failures_total", &[differs], 1.0)?;
        }
        let p = pods(c, &[0, 1])?;
        ping_both_ways(&p[0], &p[1], PINGS, REACH)?;

        // Node 2 again, now without a password.
        let mismatch = "reason=\"encryption_mismatch\"";
        let before: Vec<f64> = [0, 1]
            .iter()
            .map(|&i| metric(c, i, "weft_handshake_failures_total", &[mismatch]))
            .collect::<Result<_>>()?;
        c.stop_router(2)?;
        let restarted = Instant::now();
        start(c, 2, &[], &[0, 1])?;
        let st = status(c, 2)?;
        ensure!(st.contains("Encryption: disabled"), "node2 without a password: `weft status` says\n{st}");
        wait_refused(c, 2, PEER_REQUIRES_PASSWORD, Some(2))?;
        for i in [0, 1] {
            wait_refused(c, i, PEER_HAS_NO_PASSWORD, Some(2))?;
            wait_metric(c, i, "weft_handshake_failures_total", &[mismatch], before[i] + 1.0)?;
        }
        let first = wait_metric(c, 2, "weft_handshake_failures_total", &[mismatch], 1.0)?;

        // It keeps trying, with a backoff (1 s doubling, jittered, per
        // target): a few more failures over the next seconds, but not a hot
        // loop. Loose bounds only: exact timing is the backoff's unit tests'.
        const WATCH: Duration = Duration::from_secs(16);
        let mut total = first;
        wait_until(WATCH + Duration::from_secs(2), Duration::from_millis(500), || {
            ensure_isolated(c, 2)?;
            total = metric(c, 2, "weft_handshake_failures_total", &[mismatch])?;
            Ok(restarted.elapsed() >= WATCH)
        })?;
        let age = restarted.elapsed();
        eprintln!("node2 without a password: {first} handshake failures at first, {total} {age:.1?} after its start");
        ensure!(
            total >= first + 2.0,
            "node2 stopped retrying: {first} handshake failures at first, still {total} {age:.1?} after its start"
        );
        let limit = 10.0 + 2.0 * age.as_secs_f64();
        ensure!(
            total <= limit,
            "node2 counted {total} handshake failures within {age:.1?} of starting (want <= {limit}): \
             no backoff between attempts?"
        );
        ensure_isolated(c, 2)?;
        ping_both_ways(&p[0], &p[1], PINGS, REACH)
    });
}

/// `--password-file` beats `WEFT_PASSWORD`, which beats `WEAVE_PASSWORD`:
/// with both variables set cluster-wide, node 0 (no file) and node 1 (a
/// file with `WEFT_PASSWORD`'s password) connect; node 2 (a file with
/// `WEAVE_PASSWORD`'s) is refused.
#[test]
fn password_sources_take_precedence() {
    let builder =
        Cluster::builder().nodes(3).router_env("WEFT_PASSWORD", PASSWORD).router_env("WEAVE_PASSWORD", OTHER_PASSWORD);
    with_built_cluster(builder, |c| {
        start(c, 0, &[], &[])?;
        start(c, 1, &password_args(c, "password-weft", PASSWORD)?, &[0])?;
        start(c, 2, &password_args(c, "password-weave", OTHER_PASSWORD)?, &[0, 1])?;
        c.wait_mesh(&[0, 1], CONVERGE).context("WEFT_PASSWORD did not take precedence over WEAVE_PASSWORD")?;
        wait_refused(c, 2, PASSWORD_DIFFERS, Some(2)).context("--password-file did not take precedence")?;
        for i in [0, 1] {
            check_encrypted_node(c, i, auto_ciphers()?, 1)?;
        }
        Ok(())
    });
}

/// A captured sealed datagram: its sender's epoch and counter.
fn sealed_nonce(p: &Captured) -> Option<Nonce> {
    match sealed_header(&p.payload) {
        Ok(Some(h)) if p.payload.len() > SEAL_OVERHEAD => Some(h.nonce),
        _ => None,
    }
}

#[test]
fn replayed_and_tampered_datagrams_are_dropped() {
    const N: usize = 20;
    with_built_cluster(Cluster::builder().nodes(2).router_env("WEFT_PASSWORD", PASSWORD), |c| {
        start_routers(c, &[&[], &[0]], &[])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let p = pods(c, &[0, 1])?;
        ping_both_ways(&p[0], &p[1], PINGS, REACH)?;
        let terminations: Vec<u64> = (0..2).map(|i| c.report(i)?.termination_count()).collect::<Result<_>>()?;
        let bg = BackgroundPing::start(c, &p[0], p[1].ip(), BG_INTERVAL, Duration::from_secs(60))?;

        // Sealed datagrams node0 -> node1, from a small transfer. The wire
        // must carry them one by one: a veth passes a UDP GSO run whole,
        // so node 0's kernel segments before sending.
        c.node_ns(0).run_ok("ethtool", &["-K", "eth0", "tx-udp-segmentation", "off", "gso", "off"])?;
        let (from, to) = (SocketAddrV4::new(c.node_ip(0), DEFAULT_PORT), SocketAddrV4::new(c.node_ip(1), DEFAULT_PORT));
        let capture = Capture::start(c.node_ns(0), "eth0", CaptureLimits::default())?;
        transfer(&p[0], &p[1], 1_000_000)?;
        let out = capture.finish()?;
        let sealed: Vec<(&Captured, Nonce)> = out
            .packets
            .iter()
            .filter(|x| x.proto == Proto::Udp && x.src == from && x.dst == to)
            .filter_map(|x| sealed_nonce(x).map(|n| (x, n)))
            .collect();
        ensure!(sealed.len() >= 2 * N, "only {} sealed datagrams {from} -> {to}; {}", sealed.len(), out.summary());
        let highest = sealed.iter().map(|(_, n)| n.counter).max().unwrap_or(0);
        let epoch = sealed.last().map(|(_, n)| n.epoch).unwrap_or(0);

        // 1. Replays of the latest ones: rejected by the replay window.
        let replays: Vec<Vec<u8>> = sealed[sealed.len() - N..].iter().map(|(x, _)| x.payload.clone()).collect();
        let m1 = c.metrics(1)?;
        let replays0 = metric_sum(&m1, "weft_replays_total", "");
        let replay_drops0 = metric_sum(&m1, "weft_drops_total", "reason=\"replay\"");
        let auth0 = metric_sum(&m1, "weft_auth_failures_total", "");
        send_udp_all_from(c.node_ns(0), to, &replays)?;
        let replays1 = wait_metric(c, 1, "weft_replays_total", &[], replays0 + N as f64)?;
        wait_metric(c, 1, "weft_drops_total", &["reason=\"replay\""], replay_drops0 + N as f64)?;

        // 2. Forgeries: a fresh counter far ahead (so the replay window lets
        // them through) and one bit flipped in the ciphertext: only the
        // authentication tag can reject them, and the far-ahead counters
        // must not be committed.
        let auth_drops0 = metric(c, 1, "weft_drops_total", &["reason=\"auth_failed\""])?;
        let forged: Vec<Vec<u8>> = sealed[..N]
            .iter()
            .enumerate()
            .map(|(k, (x, _))| {
                let mut d = x.payload.clone();
                let nonce = Nonce { epoch, counter: highest + 1_000_000 + k as u64 };
                d[SEALED_HEADER_LEN - NONCE_LEN..SEALED_HEADER_LEN].copy_from_slice(&nonce.to_bytes());
                d[SEALED_HEADER_LEN + 3] ^= 0x10;
                d
            })
            .collect();
        send_udp_all_from(c.node_ns(0), to, &forged)?;
        wait_metric(c, 1, "weft_auth_failures_total", &[], auth0 + N as f64)?;
        wait_metric(c, 1, "weft_drops_total", &["reason=\"auth_failed\""], auth_drops0 + N as f64)?;
        let replays2 = metric(c, 1, "weft_replays_total", &[])?;
        ensure!(
            replays2 == replays1,
            "forged datagrams with fresh counters were counted as replays ({replays1} -> {replays2})"
        );

        // The genuine traffic carried on throughout.
        std::thread::sleep(Duration::from_secs(2));
        let run = bg.finish()?;
        eprintln!("background ping across replays and forgeries: {}", run.summary());
        ensure!(run.stats.duplicates == 0, "duplicate ICMP replies: {}", run.summary());
        ensure!(
            run.lost <= 2,
            "pings lost while datagrams were replayed and forged: {}\n{}",
            run.summary(),
            run.output
        );
        c.wait_mesh(&[0, 1], Duration::ZERO).context("the connection did not survive")?;
        for (i, &before) in terminations.iter().enumerate() {
            let t = c.report(i)?.termination_count()?;
            ensure!(t == before, "node{i}: connection terminations {before} -> {t}");
            check_encrypted_node(c, i, auto_ciphers()?, 1)?;
        }
        ping_both_ways(&p[0], &p[1], PINGS, REACH)
    });
}

#[test]
fn rekeys_many_times_during_transfer() {
    with_built_cluster(Cluster::builder().nodes(2).router_env("WEFT_PASSWORD", PASSWORD), |c| {
        start_routers(c, &[&[], &[0]], &[(0, &REKEY_ARGS), (1, &REKEY_ARGS)])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        let p = pods(c, &[0, 1])?;
        ping_both_ways(&p[0], &p[1], PINGS, REACH)?;
        let terminations: Vec<u64> = (0..2).map(|i| c.report(i)?.termination_count()).collect::<Result<_>>()?;
        let (tx, rx) = ("direction=\"tx\"", "direction=\"rx\"");
        let tx0 = metric(c, 0, "weft_rekeys_total", &[tx])?;
        let rx1 = metric(c, 1, "weft_rekeys_total", &[rx])?;
        let auth = [metric(c, 0, "weft_auth_failures_total", &[])?, metric(c, 1, "weft_auth_failures_total", &[])?];

        transfer(&p[0], &p[1], BIG)?;
        let tx_grew = metric(c, 0, "weft_rekeys_total", &[tx])? - tx0;
        let rx_grew = metric(c, 1, "weft_rekeys_total", &[rx])? - rx1;
        eprintln!("during the transfer: {tx_grew} tx rekeys on node0, {rx_grew} rx rekeys on node1");
        for (node, label, grew) in [(0, tx, tx_grew), (1, rx, rx_grew)] {
            ensure!(
                grew >= EPOCHS_ON_THE_WIRE,
                "weft_rekeys_total{{{label}}} on node{node} grew by {grew} during a {BIG}-byte transfer with \
                 {REKEY_ARGS:?}, want >= {EPOCHS_ON_THE_WIRE} (so that the epoch byte wraps)"
            );
        }

        // Light traffic (20 pings in 4 s, far below 200 messages): keys
        // still rotate, by time.
        let tx1 = metric(c, 0, "weft_rekeys_total", &[tx])?;
        let rx2 = metric(c, 1, "weft_rekeys_total", &[rx])?;
        let stats = p[0].ping(p[1].ip(), 20)?;
        ensure!(stats.all_received(), "pings across time-based rekeys: {stats:?}");
        let tx_timed = metric(c, 0, "weft_rekeys_total", &[tx])? - tx1;
        let rx_timed = metric(c, 1, "weft_rekeys_total", &[rx])? - rx2;
        ensure!(
            tx_timed >= 2.0 && rx_timed >= 2.0,
            "with --test-rekey-after-secs 1, 4 s of pings gave {tx_timed} tx rekeys on node0 and {rx_timed} rx \
             rekeys on node1, want >= 2 each"
        );

        c.wait_mesh(&[0, 1], Duration::ZERO).context("the connection did not survive the rekeys")?;
        for (i, (&before, &auth_before)) in terminations.iter().zip(&auth).enumerate() {
            let t = c.report(i)?.termination_count()?;
            ensure!(t == before, "node{i}: connection terminations {before} -> {t} across rekeys");
            let a = metric(c, i, "weft_auth_failures_total", &[])?;
            ensure!(a == auth_before, "node{i}: weft_auth_failures_total {auth_before} -> {a} across genuine rekeys");
            check_encrypted_node(c, i, auto_ciphers()?, 1)?;
        }
        Ok(())
    });
}

/// Whether this CPU has the instructions the router requires for
/// AES-256-GCM (x86_64: AES-NI and PCLMULQDQ; aarch64: the AES extension).
fn cpu_has_aes() -> Result<bool> {
    let info = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
    let flags: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .filter_map(|l| l.split_once(':').map(|(_, f)| f))
        .flat_map(str::split_whitespace)
        .collect();
    let has = |f: &str| flags.contains(&f);
    Ok(if cfg!(target_arch = "x86_64") { has("aes") && has("pclmulqdq") } else { has("aes") })
}

#[test]
fn aes_256_gcm_cluster() {
    with_built_cluster(Cluster::builder().nodes(3).router_env("WEFT_PASSWORD", PASSWORD), |c| {
        let aes = vec!["--cipher".to_owned(), AES.to_owned()];
        if !cpu_has_aes()? {
            // The router must refuse AES rather than run it slowly in software.
            c.start_router(0, &["--cipher", AES], &[])?;
            let mut why = String::new();
            wait_until(Duration::from_secs(20), Duration::from_millis(100), || match c.check_alive(0) {
                Ok(()) => Ok(false),
                Err(e) => {
                    why = format!("{e:#}");
                    Ok(true)
                }
            })
            .context("without AES instructions, `--cipher aes-256-gcm` should make the router exit")?;
            let said: String =
                c.log_tail(0, 40).lines().filter(|l| !l.starts_with("===== harness")).collect::<Vec<_>>().join("\n");
            ensure!(
                said.to_ascii_lowercase().contains("aes"),
                "the router exited ({why}) without an error mentioning AES:\n{said}"
            );
            return Ok(());
        }

        start(c, 0, &aes, &[])?;
        start(c, 1, &aes, &[0])?;
        // Node 2 is fixed to the other cipher: refused by both.
        start(c, 2, &["--cipher".to_owned(), CHACHA.to_owned()], &[0, 1])?;
        c.wait_mesh(&[0, 1], CONVERGE)?;
        for i in [0, 1] {
            check_encrypted_node(c, i, FIXED_AES, 1)?;
        }
        let p = pods(c, &[0, 1])?;
        ping_both_ways(&p[0], &p[1], PINGS, REACH)?;
        transfer(&p[0], &p[1], MEDIUM)?;

        let st = status(c, 2)?;
        let want = format!("Encryption: enabled ({})\n", FIXED_CHACHA.status);
        ensure!(st.contains(&want), "node2 `weft status` lacks {want:?}:\n{st}");
        wait_refused(c, 2, CIPHER_MISMATCH, Some(2))?;
        wait_refused(c, 0, CIPHER_MISMATCH, Some(2))?;
        for i in [0, 2] {
            wait_metric(c, i, "weft_handshake_failures_total", &["reason=\"cipher_mismatch\""], 1.0)?;
        }
        ensure_isolated(c, 2)?;
        c.wait_mesh(&[0, 1], Duration::ZERO).context("the refusal disturbed nodes 0 and 1")?;
        ping_both_ways(&p[0], &p[1], PINGS, REACH)
    });
}

/// Without `--cipher` (auto) each connection negotiates its cipher: the
/// two auto routers (nodes 0 and 1) use AES-256-GCM with each other on this
/// machine (ChaCha20-Poly1305 on one without AES instructions), and
/// ChaCha20-Poly1305 with node 2, which is fixed to it. With the underlay
/// between nodes 1 and 2 blocked, their pods talk through node 0, which
/// opens each frame with one cipher and re-seals it with the other.
#[test]
fn auto_cipher_is_negotiated_per_connection() {
    with_built_cluster(Cluster::builder().nodes(3).router_env("WEFT_PASSWORD", PASSWORD), |c| {
        let auto = auto_ciphers()?;
        c.block_underlay(1, 2)?;
        start(c, 0, &[], &[])?;
        start(c, 1, &[], &[0])?;
        start(c, 2, &["--cipher".to_owned(), CHACHA.to_owned()], &[0])?;
        let links = [(0, 1, auto.conn), (1, 0, auto.conn), (0, 2, CHACHA), (2, 0, CHACHA)];
        let mut seen = Vec::new();
        wait_until(CONVERGE, Duration::from_millis(200), || {
            seen =
                links.iter().map(|&(i, peer, _)| Ok((i, peer, cipher_to(c, i, peer)?))).collect::<Result<Vec<_>>>()?;
            Ok(seen.iter().all(|(_, _, cipher)| cipher.is_some()))
        })
        .with_context(|| format!("the links 0-1 and 0-2 never all established with a cipher: {seen:?}"))?;
        for ((i, peer, cipher), (_, _, want)) in seen.iter().zip(links) {
            ensure!(cipher.as_deref() == Some(want), "node{i}'s connection to node{peer} uses {cipher:?}, want {want}");
        }
        for (i, shown) in [(0, auto.status), (1, auto.status), (2, FIXED_CHACHA.status)] {
            let st = status(c, i)?;
            let want = format!("Encryption: enabled ({shown})\n");
            ensure!(st.contains(&want), "node{i} `weft status` lacks {want:?}:\n{st}");
        }
        let (_, text) = connections(c, 0)?;
        for want in [format!("encrypted ({})", auto.conn), format!("encrypted ({CHACHA})")] {
            ensure!(text.contains(&want), "node0 `weft status connections` lacks {want:?}:\n{text}");
        }

        let p = pods(c, &[0, 1, 2])?;
        ping_all_pairs(&p.iter().collect::<Vec<_>>(), PINGS, REACH)?;
        transfer(&p[1], &p[2], MEDIUM).context("relayed from an AES link onto a ChaCha one")?;
        transfer(&p[2], &p[1], MEDIUM).context("relayed from a ChaCha link onto an AES one")?;
        for i in 0..3 {
            let m = c.metrics(i)?;
            for reason in ["auth_failed", "no_session", "unencrypted", "unknown_epoch", "replay"] {
                let n = metric_sum(&m, "weft_drops_total", &format!("reason=\"{reason}\""));
                ensure!(n == 0.0, "node{i} dropped {n} genuine datagrams as {reason}");
            }
        }
        Ok(())
    });
}

#[test]
fn simultaneous_dials_never_cost_a_genuine_datagram() {
    // Both routers dial each other at once: each ends up with two
    // connections, keeps one by the shared tie-break and closes the other,
    // whose keys may have sealed a heartbeat or frame still in flight.
    with_cluster(2, |c| {
        let args = password_args(c, "race", "correct horse")?;
        for round in 0..6 {
            start(c, 0, &args, &[1])?;
            start(c, 1, &args, &[0])?;
            c.wait_mesh(&[0, 1], REACH)?;
            let p = pods(c, &[0, 1])?;
            p[0].ping_ok(p[1].ip(), 3, REACH)?;
            for i in 0..2 {
                let m = c.metrics(i)?;
                for reason in ["auth_failed", "no_session", "unknown_epoch", "replay"] {
                    let n = metric_sum(&m, "weft_drops_total", &format!("reason=\"{reason}\""));
                    ensure!(n == 0.0, "round {round}: node{i} dropped {n} genuine datagrams as {reason}");
                }
            }
            drop(p);
            c.stop_router(0)?;
            c.stop_router(1)?;
        }
        Ok(())
    });
}
