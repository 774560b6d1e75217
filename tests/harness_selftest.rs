//! Tests of the namespace harness itself; none of them needs the `weft` binary
//! (the router is faked by a shell script where one is needed).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_tests::http::parse_response;
use weft_tests::metrics::samples;
use weft_tests::*;

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn cluster_namespaces(c: &Cluster) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(c.prefix()))
        .collect()
}

// ----- pure parsing ------------------------------------------------------

#[test]
fn ping_output_parsing() {
    let out = "PING 10.32.0.2 (10.32.0.2) 56(84) bytes of data.\n\
               64 bytes from 10.32.0.2: icmp_seq=1 ttl=64 time=0.05 ms\n\
               64 bytes from 10.32.0.2: icmp_seq=1 ttl=64 time=0.06 ms (DUP!)\n\
               64 bytes from 10.32.0.2: icmp_seq=2 ttl=64 time=0.05 ms\n\n\
               --- 10.32.0.2 ping statistics ---\n\
               3 packets transmitted, 2 received, +1 duplicates, 33.3333% packet loss, time 401ms\n";
    let s = PingStats::parse(out).unwrap();
    assert_eq!(s, PingStats { transmitted: 3, received: 2, duplicates: 1 });
    assert!(!s.all_received());
    let lost = "--- x ping statistics ---\n2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1ms\n";
    assert_eq!(PingStats::parse(lost).unwrap(), PingStats { transmitted: 2, received: 0, duplicates: 0 });
    assert!(PingStats::parse("ping: connect: Network is unreachable").is_err());
}

#[test]
fn metrics_parsing() {
    let text = "# HELP weft_drops_total Dropped things\n# TYPE weft_drops_total counter\n\
                weft_drops_total{reason=\"malformed_datagram\"} 7\n\
                weft_drops_total{reason=\"unknown_peer\",proto=\"udp\"} 3\n\
                weft_connection_failures_total{reason=\"bad_magic\"} 2\n\
                weft_peers 3\nweft_x_total{a=\"b\"} +Inf\n";
    assert_eq!(metric_sum(text, "weft_drops_total", ""), 10.0);
    assert_eq!(metric_sum(text, "weft_drops_total", "reason=\"malformed_datagram\""), 7.0);
    assert_eq!(metric_sum(text, "weft_peers", ""), 3.0);
    assert_eq!(metric_sum(text, "weft_drop", ""), 0.0, "family names match exactly");
    assert_eq!(metric_sum_matching(text, "fail", ""), 2.0);
    assert_eq!(samples(text).len(), 5);
}

#[test]
fn payload_is_position_addressable() {
    let whole = payload(42, 1000);
    for (off, len) in [(0usize, 1000usize), (3, 17), (8, 8), (13, 500), (999, 1)] {
        let mut part = vec![0u8; len];
        payload_fill(42, off as u64, &mut part);
        assert_eq!(part, whole[off..off + len], "offset {off} len {len}");
    }
    assert_ne!(payload(1, 64), payload(2, 64));
}

#[test]
fn http_response_parsing() {
    let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nnot r";
    assert_eq!(parse_response(plain).unwrap(), (503, "not r".to_owned()));
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n";
    assert_eq!(parse_response(chunked).unwrap(), (200, "Wikipedia ".to_owned()));
    assert!(parse_response(b"garbage").is_err());
}

#[test]
fn report_accessors() {
    let r = Report(serde_json::json!({"Router": {
        "Name": "aa:bb:cc:dd:ee:01", "NickName": "node0",
        "Peers": [{"Name": "aa:bb:cc:dd:ee:01", "NickName": "node0"}, {"Name": "aa:bb:cc:dd:ee:02", "NickName": "node1"}],
        "Connections": [
            {"Address": "172.31.0.2:6783", "Outbound": true, "State": "established", "Info": "", "Attrs": {}},
            {"Address": "172.31.0.3:6783", "Outbound": true, "State": "failed", "Info": "no route"}],
        "UnicastRoutes": [{"Dest": "aa:bb:cc:dd:ee:02", "Via": "aa:bb:cc:dd:ee:02"}],
        "Targets": ["172.31.0.2", "172.31.0.3:6783"],
        "TerminationCount": 1
    }}));
    assert_eq!(r.name().unwrap(), "aa:bb:cc:dd:ee:01");
    assert_eq!(r.peer_nicknames().unwrap(), ["node0", "node1"]);
    assert_eq!(r.established_count().unwrap(), 1);
    assert!(r.has_established_to("172.31.0.2").unwrap());
    assert!(!r.has_established_to("172.31.0.3").unwrap());
    assert_eq!(r.unicast_dests().unwrap(), ["aa:bb:cc:dd:ee:02"]);
    assert_eq!(r.targets().unwrap().len(), 2);
    assert_eq!(r.termination_count().unwrap(), 1);
    assert!(Report(serde_json::json!({})).peers().is_err());
}

#[test]
fn wait_until_is_bounded_and_stops_early() {
    let start = Instant::now();
    let err = wait_until(Duration::from_millis(300), Duration::from_millis(50), || Ok(false)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2), "{err:#}");
    let start = Instant::now();
    let err = wait_until(Duration::from_secs(30), Duration::from_millis(10), || Err(stop_waiting("dead"))).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(format!("{err:#}").contains("dead"));
    let mut n = 0;
    wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
        n += 1;
        Ok(n == 3)
    })
    .unwrap();
}

// ----- namespaces --------------------------------------------------------

fn udp_passes(c: &Cluster, from: usize, to: usize, port: u16) -> bool {
    let to_ip = c.node_ip(to);
    let rx = c
        .node_ns(to)
        .enter(|| {
            let s = UdpSocket::bind((to_ip, port)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            s
        })
        .unwrap();
    c.node_ns(from)
        .enter(|| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            for _ in 0..3 {
                s.send_to(b"hello", (to_ip, port)).unwrap();
            }
        })
        .unwrap();
    let mut buf = [0u8; 16];
    matches!(rx.recv(&mut buf), Ok(5))
}

#[test]
fn underlay_connectivity_and_partitions() {
    let c = Cluster::new(3).unwrap();
    let n0 = c.node_ns(0);
    assert!(ping(n0, c.node_ip(1).into(), 2).unwrap().all_received());
    assert!(ping(n0, c.node_ip(2).into(), 2).unwrap().all_received());

    let block = c.block_underlay(0, 1).unwrap();
    assert_eq!(ping(n0, c.node_ip(1).into(), 2).unwrap().received, 0);
    assert_eq!(ping(c.node_ns(1), c.node_ip(0).into(), 1).unwrap().received, 0);
    assert!(ping(n0, c.node_ip(2).into(), 2).unwrap().all_received(), "other pairs unaffected");
    c.unblock(block).unwrap();
    assert!(ping(n0, c.node_ip(1).into(), 2).unwrap().all_received());

    let udp = c.block_underlay_udp(0, 1, Some(6784)).unwrap();
    assert!(ping(n0, c.node_ip(1).into(), 1).unwrap().all_received(), "ICMP passes a UDP block");
    assert!(!udp_passes(&c, 0, 1, 6784));
    assert!(!udp_passes(&c, 1, 0, 6784), "both directions");
    assert!(udp_passes(&c, 0, 1, 6783), "other ports pass");
    c.unblock(udp).unwrap();
    assert!(udp_passes(&c, 0, 1, 6784));

    let host = c.add_underlay_host().unwrap();
    assert!(host.ping(c.node_ip(2), 1).unwrap().all_received());
}

#[test]
fn pods_on_hand_made_bridge() {
    let c = Cluster::new(2).unwrap();
    let n = c.node_ns(0);
    n.ip(&["link", "add", BRIDGE, "mtu", "1376", "type", "bridge"]).unwrap();
    n.ip(&["link", "set", BRIDGE, "up"]).unwrap();
    let a = c.add_pod(0, pod_ip(0, 0)).unwrap();
    let b = c.add_pod(0, pod_ip(0, 1)).unwrap();
    assert_eq!(a.mtu(), 1376);
    assert_eq!(b.netns().link_mtu("eth0").unwrap(), Some(1376));
    assert_eq!(n.link_mtu(BRIDGE).unwrap(), Some(1376), "bridge MTU unchanged by ports");
    a.ping_ok(b.ip(), 3, Duration::from_secs(5)).unwrap();
    b.ping_ok(a.ip(), 3, Duration::from_secs(5)).unwrap();
    let stats = a.tcp_transfer_to(&b, 8 << 20, Duration::from_secs(30)).unwrap();
    assert_eq!(stats.bytes, 8 << 20);
    eprintln!("8 MiB over a bridge: {:.0} Mbit/s", stats.mbit_per_sec());
}

#[test]
fn transfer_detects_missing_listener_in_time() {
    let c = Cluster::new(2).unwrap();
    let start = Instant::now();
    // Port/ip not bound in the target namespace: the receiver binds to an
    // address that namespace does not have, so both sides fail quickly.
    let err =
        tcp_transfer(c.node_ns(0), c.node_ns(1), Ipv4Addr::new(172, 31, 0, 99).into(), 1000, Duration::from_secs(5))
            .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10), "{err:#}");
    let stats =
        tcp_transfer(c.node_ns(0), c.node_ns(1), c.node_ip(1).into(), 1 << 20, Duration::from_secs(10)).unwrap();
    assert_eq!(stats.bytes, 1 << 20);
}

#[test]
fn http_client_against_fake_api() {
    let c = Cluster::new(1).unwrap();
    let listener = c.node_ns(0).enter(|| TcpListener::bind("127.0.0.1:6784").unwrap()).unwrap();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut served = Vec::new();
        while served.len() < 3 && Instant::now() < deadline {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the declared body is complete.
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map(|v| v.parse::<usize>().unwrap())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let response = if text.starts_with("GET /status ") {
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nready".to_owned()
            } else if text.starts_with("GET /report ") {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{\"Router\":1\r\n1\r\n}\r\n0\r\n\r\n"
                    .to_owned()
            } else {
                let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
                format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            };
            s.write_all(response.as_bytes()).unwrap();
            served.push(text);
        }
        served
    });
    assert_eq!(c.http(0, "GET", "/status", None).unwrap(), (200, "ready".to_owned()));
    assert_eq!(c.get(0, "/report").unwrap(), "{\"Router\":1}");
    let (status, body) = c.http(0, "POST", "/connect", Some(&[("peer", "172.31.0.9:6783"), ("x", "a b&c")])).unwrap();
    assert_eq!(status, 404);
    assert_eq!(body, "peer=172.31.0.9%3A6783&x=a+b%26c");
    let served = server.join().unwrap();
    assert_eq!(served.len(), 3);
    assert!(served[2].contains("Content-Type: application/x-www-form-urlencoded"));
}

/// A temp dir holding a fake `weft`, removed on drop.
struct FakeBin {
    dir: PathBuf,
}

impl FakeBin {
    fn new(tag: &str, script: &str) -> FakeBin {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wtfake{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("weft");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeBin { dir }
    }
    fn path(&self) -> PathBuf {
        self.dir.join("weft")
    }
}

impl Drop for FakeBin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn router_lifecycle_with_fake_binary() {
    let fake = FakeBin::new(
        "ok",
        "#!/bin/sh\necho \"fake weft $*\" >&2\n\
         ip link show weft >/dev/null 2>&1 || ip link add weft mtu 1410 type bridge\n\
         ip link set weft up\nexec sleep 1000\n",
    );
    let c = Cluster::builder().nodes(2).weft_bin(fake.path()).build().unwrap();
    c.start_router(0, &["--mtu", "1410"], &[1]).unwrap();
    assert!(c.start_router(0, &[], &[]).is_err(), "double start refused");
    let pid = c.router_pid(0).unwrap();
    let pod = c.add_pod(0, pod_ip(0, 0)).unwrap();
    assert_eq!(pod.mtu(), 1410);
    let log = c.log_tail(0, 10);
    assert!(log.contains("fake weft router --nickname node0 --data-dir"), "{log}");
    assert!(log.contains("--mtu 1410 172.31.0.2"), "{log}");

    let killed_at = c.kill_router(0).unwrap();
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    assert!(c.router_pid(0).is_none());
    c.restart_router(0).unwrap();
    let pid2 = c.router_pid(0).unwrap();
    assert_ne!(pid, pid2);
    c.stop_router(0).unwrap();
    c.restart_router(0).unwrap();
    let pid3 = c.router_pid(0).unwrap();
    c.start_router(1, &[], &[]).unwrap();
    let pid4 = c.router_pid(1).unwrap();
    assert!(c.log_tail(0, 20).matches("harness: starting").count() >= 3);
    let names = cluster_namespaces(&c);
    assert_eq!(names.len(), 4, "wire + 2 nodes + 1 pod: {names:?}");
    drop(c);
    assert!(!pid_alive(pid3) && !pid_alive(pid4), "routers stopped on drop");
    drop(pod);
    assert!(names.iter().all(|n| !netns_exists(n)), "{names:?}");
}

#[test]
fn early_router_exit_ends_waits_quickly() {
    let fake = FakeBin::new("dies", "#!/bin/sh\necho 'fatal: cannot frobnicate' >&2\nexit 3\n");
    let c = Cluster::builder().nodes(1).weft_bin(fake.path()).build().unwrap();
    c.start_router(0, &[], &[]).unwrap();
    let start = Instant::now();
    let err = format!("{:#}", c.wait_ready(0).unwrap_err());
    assert!(start.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.contains("exit code 3") && err.contains("cannot frobnicate"), "{err}");
    assert!(c.add_pod(0, pod_ip(0, 0)).is_err());
}

#[test]
fn namespaces_removed_even_on_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let c = Cluster::new(2).unwrap();
        n0_bridge(&c);
        let pod = c.add_pod(0, pod_ip(0, 0)).unwrap();
        let host = c.add_underlay_host().unwrap();
        let mut names = cluster_namespaces(&c);
        names.sort();
        tx.send((names, c.dir().to_owned())).unwrap();
        let _keep = (pod, host);
        panic!("deliberate panic to test cleanup");
    })
    .join();
    assert!(result.is_err());
    let (names, dir) = rx.recv().unwrap();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names.iter().all(|n| !netns_exists(n)), "left behind: {names:?}");
    assert!(dir.exists(), "a failed cluster keeps its logs");
    std::fs::remove_dir_all(dir).unwrap();
}

fn n0_bridge(c: &Cluster) {
    c.node_ns(0).ip(&["link", "add", BRIDGE, "type", "bridge"]).unwrap();
    c.node_ns(0).ip(&["link", "set", BRIDGE, "up"]).unwrap();
}

#[test]
fn in_netns_isolates_threads() {
    let c = Cluster::new(1).unwrap();
    let inside =
        in_netns(c.node_ns(0).name(), || std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()).unwrap();
    assert!(inside.contains("eth0"));
    // Binding the node's address works only inside its namespace.
    let ip = c.node_ip(0);
    assert!(in_netns(c.node_ns(0).name(), || UdpSocket::bind(SocketAddr::from((ip, 0))).is_ok()).unwrap());
    assert!(UdpSocket::bind(SocketAddr::from((ip, 0))).is_err());
}

#[test]
fn commands_get_stdin_and_time_bounds() {
    let c = Cluster::new(1).unwrap();
    let ns = c.create_netns("cni").unwrap();
    assert!(ns.path().exists());
    let out =
        run_bounded_input(ns.command("cat", &[]), Some(b"{\"cniVersion\":\"1.0.0\"}"), Duration::from_secs(5)).unwrap();
    assert_eq!(out.stdout, b"{\"cniVersion\":\"1.0.0\"}");
    let start = Instant::now();
    let err = run_bounded(ns.command("sleep", &["30"]), Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "{err:#}");
    let name = ns.name().to_owned();
    drop(ns);
    assert!(!netns_exists(&name));
}

// ----- capture and known plaintext ---------------------------------------

#[test]
fn pattern_index_finds_stretches_of_16_bytes_or_more() {
    let pattern = payload(7, 100_000);
    let noise = payload(8, 4_000);
    for (off, len) in [(0usize, 16usize), (3, 16), (12_345, 17), (99_984, 16), (50_001, 1400), (7, 15)] {
        for at in [0usize, 1, 5, 999] {
            let mut data = noise.clone();
            data[at..at + len].copy_from_slice(&pattern[off..off + len]);
            let found = PatternIndex::new(&pattern).find(&data);
            if len >= MIN_MATCH {
                let (d, p, l) = found.unwrap_or_else(|| panic!("{len} bytes of pattern@{off} at {at} not found"));
                assert!(l >= len && d <= at && p <= off, "{d} {p} {l}");
                assert_eq!(data[d..d + l], pattern[p..p + l]);
            } else {
                assert_eq!(found, None, "a {len}-byte stretch is below MIN_MATCH");
            }
        }
    }
    assert!(!contains_pattern([noise.as_slice(), &payload(9, 70_000)[..]], &pattern));
    let hit = [&noise[..], &pattern[500..600]];
    let m = PatternIndex::new(&pattern).find_in(hit).unwrap();
    assert_eq!((m.payload, m.offset, m.pattern_offset, m.len), (1, 0, 500, 100));
    // A repetitive pattern works too.
    let ascii = b"weft-plaintext! ".repeat(1000);
    assert!(contains_pattern([&b"xx weft-plaintext! weft-pl yy"[..]], &ascii));
    assert!(!contains_pattern([&b"xx weft-plaintext yy"[..]], &ascii));
}

#[test]
fn parse_frame_extracts_udp_and_tcp_payloads() {
    fn frame(proto: u8, l4: &[u8], vlan: bool) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend([0x81, 0x00, 0x00, 0x05]);
        }
        f.extend([0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        f.extend([0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend([172, 31, 0, 1, 172, 31, 0, 2]);
        f.extend(l4);
        f.extend([0u8; 6]); // Ethernet padding, beyond the IP total length
        f
    }
    let udp = [&[0x1a, 0x7f, 0x1a, 0x7f, 0, 13, 0, 0][..], b"hello"].concat();
    let p = parse_frame(&frame(17, &udp, false)).unwrap();
    assert_eq!(p.proto, Proto::Udp);
    assert_eq!(p.src, "172.31.0.1:6783".parse().unwrap());
    assert_eq!(p.dst, "172.31.0.2:6783".parse().unwrap());
    assert_eq!(p.payload, b"hello");
    assert!(p.is_udp_port(6783) && !p.is_tcp_port(6783));
    assert!(p.between(Ipv4Addr::new(172, 31, 0, 2), Ipv4Addr::new(172, 31, 0, 1)));
    let mut tcp = vec![0xc0, 0x00, 0x1a, 0x7f, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x18, 0, 0, 0, 0, 0, 0];
    tcp.extend([1, 1, 1, 1]); // 4 bytes of options: data offset 6 words
    tcp.extend(b"data");
    let p = parse_frame(&frame(6, &tcp, true)).unwrap();
    assert_eq!((p.proto, p.src.port(), p.dst.port()), (Proto::Tcp, 0xc000, 6783));
    assert_eq!(p.payload, b"data");
    assert_eq!(parse_frame(&frame(1, &udp, false)), None, "ICMP");
    assert_eq!(parse_frame(&frame(17, &udp[..5], false)), None, "truncated UDP header");
    assert_eq!(parse_frame(&[0u8; 10]), None);
    let mut fragment = frame(17, &udp, false);
    fragment[14 + 6] = 0x00;
    fragment[14 + 7] = 0x10;
    assert_eq!(parse_frame(&fragment), None, "non-first fragment");
}

/// The positive control for "no plaintext on the wire": a known payload
/// sent in the clear between two nodes is seen, both on a node's veth and
/// on the wire bridge, and found by the pattern search.
#[test]
fn capture_sees_known_udp_and_tcp_payloads() {
    let c = Cluster::new(2).unwrap();
    let limits = CaptureLimits::default();
    let on_wire = Capture::start(c.wire(), WIRE_BRIDGE, limits).unwrap();
    let on_node = Capture::start(c.node_ns(1), "eth0", limits).unwrap();
    let to = SocketAddrV4::new(c.node_ip(1), 6783);
    let secret = payload(77, 1200);
    send_udp_from(c.node_ns(0), to, &secret).unwrap();

    let tcp_secret = payload(78, 300_000);
    let rx_ip = c.node_ip(1);
    let listener = c.node_ns(1).enter(|| TcpListener::bind((rx_ip, 0)).unwrap()).unwrap();
    let port = listener.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    c.node_ns(0)
        .enter(|| {
            let mut s = std::net::TcpStream::connect((rx_ip, port)).unwrap();
            s.write_all(&tcp_secret).unwrap();
        })
        .unwrap();
    assert_eq!(reader.join().unwrap(), tcp_secret);
    std::thread::sleep(Duration::from_millis(200));

    for (what, cap) in [("wire bridge", on_wire), ("node1 eth0", on_node)] {
        let out = cap.finish().unwrap();
        let udp: Vec<&Captured> = out.packets.iter().filter(|p| p.proto == Proto::Udp && p.dst == to).collect();
        assert_eq!(udp.len(), 1, "{what}: {}", out.summary());
        assert_eq!(*udp[0].src.ip(), c.node_ip(0), "{what}: sent from node0's underlay address");
        assert_eq!(udp[0].payload, secret, "{what}");
        assert!(contains_pattern(udp.iter().map(|p| p.payload.as_slice()), &secret), "{what}");
        let tcp_bytes: usize = out.packets.iter().filter(|p| p.is_tcp_port(port)).map(|p| p.payload.len()).sum();
        assert!(tcp_bytes >= tcp_secret.len(), "{what}: {tcp_bytes} TCP payload bytes: {}", out.summary());
        let tcp = out.packets.iter().filter(|p| p.is_tcp_port(port)).map(|p| p.payload.as_slice());
        assert!(contains_pattern(tcp, &tcp_secret), "{what}");
        assert!(!contains_pattern(out.packets.iter().map(|p| p.payload.as_slice()), &payload(79, 5000)), "{what}");
        assert_eq!(out.limit_hit, None, "{what}");
    }
}
