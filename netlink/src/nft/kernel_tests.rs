//! The nftables layer against the running kernel, each test in a fresh
//! network namespace, read back both through this module and through
//! Debian's `nft -j` / `iptables -S` (test-only tools, installed by
//! scripts/setup). Needs root; fails, never skips, without it or the tools.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::Command;

use serde_json::Value;

use super::*;
use crate::NetnsFile;

/// Runs `work` on a thread inside a new network namespace; commands it
/// spawns run there too (a child starts in its forking thread's namespace).
fn in_fresh_netns<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let netns = NetnsFile::create().expect("creating a network namespace (these tests must run as root)");
    netns.run(|_rtnetlink| async move { work() }).unwrap()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (installed by scripts/setup): {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let json: Value = serde_json::from_str(&run("nft", &all)).unwrap();
    json["nftables"].as_array().unwrap().clone()
}

fn interval(first: [u8; 4], last: [u8; 4]) -> Ipv4Interval {
    Ipv4Interval { first: Ipv4Addr::from(first), last: Ipv4Addr::from(last) }
}

fn range() -> Ipv4Prefix {
    Ipv4Prefix::new(Ipv4Addr::new(10, 32, 0, 0), 12)
}

/// A table shaped like the router's, with every kind of expression.
fn sample(elements: Vec<Ipv4Interval>) -> Table {
    let mut table = Table::new(Family::Ipv4, "wefttest");
    table.sets.push(Set { name: "local".into(), interval: true, elements });
    let mut nat = vec![
        Rule::new([mark_has_bits(0x4000), vec![Expr::Verdict(Verdict::Return)]].concat()),
        Rule::new([ipv4_in_set(Ipv4Field::Daddr, "local", false), vec![Expr::Verdict(Verdict::Return)]].concat()),
        Rule::new(
            [
                ipv4_in(Ipv4Field::Saddr, range(), true),
                ipv4_in(Ipv4Field::Daddr, range(), false),
                vec![Expr::Masquerade { fully_random: true }],
            ]
            .concat(),
        ),
    ];
    nat[2].comment = Some("host to pods".into());
    table.chains.push(Chain {
        name: "postrouting".into(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: priority::SRCNAT,
            policy: Policy::Accept,
        }),
        rules: nat,
    });
    let guard = [
        iif_is(LOOPBACK_IFINDEX, true),
        ipv4_in(Ipv4Field::Daddr, Ipv4Prefix::new(Ipv4Addr::new(127, 0, 0, 0), 8), false),
        tcp_dport(6784),
        vec![Expr::Counter, Expr::Verdict(Verdict::Drop)],
    ];
    table.chains.push(Chain {
        name: "input".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority: priority::FILTER,
            policy: Policy::Accept,
        }),
        rules: vec![Rule::new(guard.concat())],
    });
    table
}

fn replace(sock: &mut NftSocket, table: &Table) {
    let mut batch = Batch::new();
    batch.replace_table(table);
    sock.commit(&batch).unwrap();
}

#[test]
fn a_table_applied_reads_back_the_same_here_and_in_nft() {
    in_fresh_netns(|| {
        let mut sock = NftSocket::open().unwrap();
        assert_eq!(sock.read_table(Family::Ipv4, "wefttest").unwrap(), None);
        let want =
            sample(vec![interval([10, 32, 0, 0], [10, 33, 255, 255]), interval([10, 40, 0, 0], [10, 40, 0, 127])]);
        replace(&mut sock, &want);
        let got = sock.read_table(Family::Ipv4, "wefttest").unwrap().expect("table after commit");
        assert_eq!(want.difference(&got), None, "read back: {got:#?}");

        let text = run("nft", &["list", "table", "ip", "wefttest"]);
        for line in [
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x00004000 == 0x00004000 return",
            "ip daddr @local return",
            "ip saddr != 10.32.0.0/12 ip daddr 10.32.0.0/12 masquerade fully-random comment \"host to pods\"",
            "type filter hook input priority filter; policy accept;",
            "iif != \"lo\" ip daddr 127.0.0.0/8 tcp dport 6784 counter packets 0 bytes 0 drop",
            "flags interval",
        ] {
            assert!(text.contains(line), "no {line:?} in nft's listing:\n{text}");
        }
        let objects = nft_json(&["list", "set", "ip", "wefttest", "local"]);
        let set = objects.iter().find_map(|o| o.get("set")).unwrap();
        assert_eq!(set["type"], "ipv4_addr");
        let prefixes: Vec<(String, u64)> = set["elem"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["prefix"]["addr"].as_str().unwrap().to_owned(), e["prefix"]["len"].as_u64().unwrap()))
            .collect();
        assert_eq!(prefixes, [("10.32.0.0".to_owned(), 15), ("10.40.0.0".to_owned(), 25)]);
    });
}

#[test]
fn a_replace_swaps_everything_at_once_and_elements_change_in_place() {
    in_fresh_netns(|| {
        let mut sock = NftSocket::open().unwrap();
        let first = sample(vec![interval([10, 32, 0, 0], [10, 32, 255, 255])]);
        replace(&mut sock, &first);
        // Someone else's chain in our table, and a rule gone: a replace
        // puts back exactly what was asked for.
        run("nft", &["add", "chain", "ip", "wefttest", "intruder"]);
        run("nft", &["flush", "chain", "ip", "wefttest", "input"]);
        let before = sock.read_table(Family::Ipv4, "wefttest").unwrap().unwrap();
        assert!(first.difference(&before).is_some());
        let gen = sock.generation().unwrap();
        let mut second = sample(vec![interval([10, 32, 0, 0], [10, 32, 255, 255])]);
        second.chains[0].rules.truncate(1);
        replace(&mut sock, &second);
        assert_ne!(sock.generation().unwrap(), gen, "a commit moves the generation");
        let got = sock.read_table(Family::Ipv4, "wefttest").unwrap().unwrap();
        assert_eq!(second.difference(&got), None, "{got:#?}");
        assert!(!run("nft", &["list", "table", "ip", "wefttest"]).contains("intruder"));

        // The set grows and shrinks by element changes; rules stay.
        let old = second.sets[0].elements.clone();
        let new = vec![interval([10, 32, 0, 0], [10, 35, 255, 255]), interval([10, 47, 255, 0], [10, 47, 255, 255])];
        let mut batch = Batch::new();
        batch.change_elements(Family::Ipv4, "wefttest", "local", true, &old, &new);
        sock.commit(&batch).unwrap();
        let got = sock.read_table(Family::Ipv4, "wefttest").unwrap().unwrap();
        assert_eq!(got.set("local").unwrap().elements, new);
        assert_eq!(got.chains.iter().map(|c| c.rules.len()).sum::<usize>(), 2);
        let listed = run("nft", &["list", "set", "ip", "wefttest", "local"]);
        assert!(listed.contains("10.32.0.0/14") && listed.contains("10.47.255.0/24"), "{listed}");
        let mut batch = Batch::new();
        batch.change_elements(Family::Ipv4, "wefttest", "local", true, &new, &[]);
        sock.commit(&batch).unwrap();
        assert!(sock.read_table(Family::Ipv4, "wefttest").unwrap().unwrap().set("local").unwrap().elements.is_empty());
    });
}

#[test]
fn a_refused_batch_changes_nothing_and_names_the_refused_step() {
    in_fresh_netns(|| {
        let mut sock = NftSocket::open().unwrap();
        let mut batch = Batch::new();
        batch.replace_table(&sample(Vec::new()));
        batch.add_rule(Family::Ipv4, "wefttest", "nonexistent", &Rule::new(vec![Expr::Counter]), Position::Append);
        let err = sock.commit(&batch).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
        assert!(err.to_string().contains("add rule to ip wefttest nonexistent"), "{err}");
        assert_eq!(sock.read_table(Family::Ipv4, "wefttest").unwrap(), None, "a failed batch left a table behind");
    });
}

#[test]
fn deleting_a_table_removes_it_and_a_second_delete_is_enoent() {
    in_fresh_netns(|| {
        let mut sock = NftSocket::open().unwrap();
        replace(&mut sock, &sample(Vec::new()));
        let mut batch = Batch::new();
        batch.delete_table(Family::Ipv4, "wefttest");
        sock.commit(&batch).unwrap();
        assert_eq!(sock.read_table(Family::Ipv4, "wefttest").unwrap(), None);
        let listed = run("nft", &["list", "tables"]);
        assert!(!listed.contains("wefttest"), "{listed}");
        assert_eq!(sock.commit(&batch).unwrap_err().errno(), Some(libc::ENOENT));
    });
}

#[test]
fn rules_in_iptables_form_list_as_iptables_rules_and_go_by_handle() {
    in_fresh_netns(|| {
        run("iptables", &["-P", "FORWARD", "DROP"]);
        run("iptables", &["-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"]);
        let mut sock = NftSocket::open().unwrap();
        let chain = sock.read_chain(Family::Ipv4, "filter", "FORWARD").unwrap().expect("iptables made the chain");
        assert_eq!(
            chain.base,
            Some(BaseChain { kind: ChainType::Filter, hook: Hook::Forward, priority: 0, policy: Policy::Drop })
        );
        assert_eq!(chain.rules.len(), 1);
        // iptables' own rule reads as the same expressions ours are made of.
        let docker = [iptables_ifname(Direction::In, "docker0"), vec![Expr::Counter, Expr::Verdict(Verdict::Accept)]];
        assert_eq!(chain.rules[0].rule, Rule::new(docker.concat()));

        let mut batch = Batch::new();
        for direction in [Direction::In, Direction::Out] {
            let exprs = [iptables_ifname(direction, "weft"), vec![Expr::Counter, Expr::Verdict(Verdict::Accept)]];
            let rule = Rule::new(exprs.concat()).with_comment("weft: pod traffic");
            batch.add_rule(Family::Ipv4, "filter", "FORWARD", &rule, Position::Append);
        }
        sock.commit(&batch).unwrap();
        let listed = run("iptables", &["-S", "FORWARD"]);
        let want = "-P FORWARD DROP\n-A FORWARD -i docker0 -j ACCEPT\n\
                    -A FORWARD -i weft -m comment --comment \"weft: pod traffic\" -j ACCEPT\n\
                    -A FORWARD -o weft -m comment --comment \"weft: pod traffic\" -j ACCEPT\n";
        assert_eq!(listed, want);

        let chain = sock.read_chain(Family::Ipv4, "filter", "FORWARD").unwrap().unwrap();
        let ours: Vec<u64> = chain
            .rules
            .iter()
            .filter(|r| r.rule.comment.as_deref() == Some("weft: pod traffic"))
            .map(|r| r.handle)
            .collect();
        assert_eq!(ours.len(), 2);
        let mut batch = Batch::new();
        for handle in ours {
            batch.delete_rule(Family::Ipv4, "filter", "FORWARD", handle);
        }
        sock.commit(&batch).unwrap();
        assert_eq!(run("iptables", &["-S", "FORWARD"]), "-P FORWARD DROP\n-A FORWARD -i docker0 -j ACCEPT\n");
        assert_eq!(sock.read_chain(Family::Ipv4, "filter", "nonexistent").unwrap(), None);
        assert_eq!(sock.read_chain(Family::Ipv4, "nonexistent", "FORWARD").unwrap(), None);
    });
}

#[test]
fn the_generation_moves_with_anyone_elses_commit() {
    in_fresh_netns(|| {
        let mut sock = NftSocket::open().unwrap();
        let gen = sock.generation().unwrap();
        assert_eq!(sock.generation().unwrap(), gen, "reading does not move it");
        run("nft", &["add", "table", "ip", "other"]);
        assert_ne!(sock.generation().unwrap(), gen);
    });
}
