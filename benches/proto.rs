//! Data-path micro-benchmarks for weft-proto: sleeve datagram build/parse,
//! sealing and opening (both AEADs) and MAC table lookups, the per-frame
//! work of the forwarding loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_proto::crypto::{Chain, Cipher, Opener, Psk, RekeyPolicy, Sealer};
use weft_proto::ethernet::MacAddr;
use weft_proto::mac_table::{MacTable, Owner};
use weft_proto::sleeve::{self, Datagram, DatagramBuilder};
use weft_proto::PeerName;

const FRAME_LEN: usize = 1400;
/// The largest UDP payload over IPv4: room for 46 1400-byte frames.
const BUF_LEN: usize = 65_507;

fn peer(n: u8) -> PeerName {
    PeerName::from_bytes([0x02, 0, 0, 0, 0, n])
}

fn build(buf: &mut [u8], frame: &[u8], n: usize) -> usize {
    let mut b = DatagramBuilder::new(buf, peer(1)).expect("buffer holds a header");
    for _ in 0..n {
        b.push_frame(peer(1), peer(2), frame).expect("frames fit");
    }
    b.finish()
}

fn sleeve_datagrams(c: &mut Criterion) {
    let frame = vec![0x5a; FRAME_LEN];
    let mut buf = vec![0u8; BUF_LEN];
    let mut group = c.benchmark_group("sleeve");
    for n in [1usize, 8, 32] {
        group.throughput(Throughput::Bytes((n * FRAME_LEN) as u64));
        group.bench_with_input(BenchmarkId::new("build", n), &n, |bench, &n| {
            bench.iter(|| build(black_box(&mut buf), black_box(&frame), n));
        });
        let len = build(&mut buf, &frame, n);
        let datagram = &buf[..len];
        // Parsing is zero-copy: its cost scales with frames, not bytes.
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("parse", n), &n, |bench, _| {
            bench.iter(|| {
                let Ok(Datagram::Frames { frames, .. }) = sleeve::parse(black_box(datagram)) else {
                    panic!("benchmark datagram does not parse");
                };
                frames.map(|f| f.map_or(0, |f| f.frame.len())).sum::<usize>()
            });
        });
    }
    group.finish();
}

/// One pod-MTU frame per datagram, as bulk TCP sends them: seal on one
/// node, open on the other (with the replay window), per cipher.
fn sealed_datagrams(c: &mut Criterion) {
    let frame = vec![0x5a; FRAME_LEN];
    let mut group = c.benchmark_group("sealed");
    group.throughput(Throughput::Bytes(FRAME_LEN as u64));
    for cipher in Cipher::ALL {
        let now = Instant::now();
        let mut sealer = Sealer::new(cipher, Chain::from_bytes([7; 32]), RekeyPolicy::default(), now);
        let mut opener = Opener::new(cipher, Chain::from_bytes([7; 32]));
        let mut buf = vec![0u8; 2048];
        let plain = build(&mut buf[sleeve::SEALED_HEADER_LEN..], &frame, 1);
        let mut sealed = buf.clone();
        group.bench_function(BenchmarkId::new("seal", cipher.name()), |bench| {
            bench.iter(|| sleeve::seal(black_box(&mut sealed), plain, peer(1), &mut sealer, now).expect("fits"))
        });
        // Each round seals a fresh copy of the plain datagram (a 1.4 kB
        // copy, a few percent of the work) and opens it on the other side.
        let pristine = buf.clone();
        group.bench_function(BenchmarkId::new("seal_open", cipher.name()), |bench| {
            bench.iter(|| {
                buf.copy_from_slice(&pristine);
                let len = sleeve::seal(&mut buf, plain, peer(1), &mut sealer, now).expect("fits");
                sleeve::open(black_box(&mut buf[..len]), &mut opener).map(<[u8]>::len).expect("opens")
            })
        });
    }
    group.finish();
}

/// The password KDF at its real cost: what one offline guess costs.
fn password_kdf(c: &mut Criterion) {
    let mut group = c.benchmark_group("psk");
    group.sample_size(10);
    group.bench_function("argon2id_64MiB_t3", |bench| {
        bench.iter(|| Psk::derive(black_box(b"correct horse battery staple")))
    });
    group.finish();
}

fn mac(n: u32) -> MacAddr {
    let [a, b, c, d] = n.to_be_bytes();
    MacAddr([0x02, 0x42, a, b, c, d])
}

fn mac_table(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("mac_table");
    for size in [1_000u32, 65_536] {
        let mut table = MacTable::with_max_entries(Duration::from_secs(300), size as usize);
        for n in 0..size {
            table.learn(now, mac(n), Owner::Peer(peer((n % 200) as u8 + 1)));
        }
        group.throughput(Throughput::Elements(1));
        let mut n = 0u32;
        group.bench_with_input(BenchmarkId::new("lookup_hit", size), &size, |bench, &size| {
            bench.iter(|| {
                n = (n + 7919) % size;
                table.lookup(now, black_box(mac(n)))
            });
        });
        group.bench_with_input(BenchmarkId::new("lookup_miss", size), &size, |bench, &size| {
            bench.iter(|| {
                n = (n + 7919) % size;
                table.lookup(now, black_box(mac(size + n)))
            });
        });
        group.bench_with_input(BenchmarkId::new("learn_refresh", size), &size, |bench, &size| {
            bench.iter(|| {
                n = (n + 7919) % size;
                table.learn(now, black_box(mac(n)), Owner::Peer(peer((n % 200) as u8 + 1)))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, sleeve_datagrams, sealed_datagrams, password_kdf, mac_table);
criterion_main!(benches);
