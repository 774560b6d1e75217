//! Data-path micro-benchmarks for weft-proto: sleeve datagram build/parse,
//! sealing and opening (both AEADs), MAC table lookups, and TAP offload
//! (checksums, segmenting super-frames, coalescing segments), the
//! per-frame work of the forwarding loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weft_proto::crypto::{Chain, Cipher, Opener, Psk, RekeyPolicy, Sealer};
use weft_proto::ethernet::MacAddr;
use weft_proto::mac_table::{MacTable, Owner};
use weft_proto::offload::{checksum, Coalescer, Segmenter, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};
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

/// A TSO super-frame as the TAP hands it over: Ethernet, IPv4, TCP with
/// timestamps (32 bytes), `payload` bytes, the TCP checksum field holding
/// the pseudo-header sum (NEEDS_CSUM).
fn tcp4_super_frame(payload: usize, gso_size: u16) -> (VnetHdr, Vec<u8>) {
    let (src, dst) = ([10, 32, 0, 1], [10, 40, 0, 7]);
    let ip_len = 20 + 32 + payload;
    let mut f = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let c = checksum::finish(checksum::sum(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 1, 0, 0, 0, 0, 77, 0x80, 0x10, 0x01, 0xf5, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    let pseudo = checksum::fold(checksum::pseudo_header_v4(src, dst, 6, (32 + payload) as u32));
    f[50..52].copy_from_slice(&pseudo.to_be_bytes());
    f.extend((0..payload).map(|i| (i * 31 + 7) as u8));
    let vnet =
        VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len: 66, gso_size, csum_start: 34, csum_offset: 16 };
    (vnet, f)
}

fn offload(c: &mut Criterion) {
    let mut group = c.benchmark_group("offload");
    for len in [1500usize, 65_536] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let mut out = vec![0u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("checksum_sum", len), &data, |bench, data| {
            bench.iter(|| checksum::sum(black_box(data), 0))
        });
        group.bench_with_input(BenchmarkId::new("copy_and_sum", len), &data, |bench, data| {
            bench.iter(|| checksum::copy_and_sum(black_box(&mut out), black_box(data), 0))
        });
    }
    // The largest super-frame: a 65535-byte IP datagram cut at the MSS of
    // a 1376-byte pod MTU with timestamps: 50 segments.
    let (vnet, frame) = tcp4_super_frame(65_535 - 52, 1324);
    let seg = Segmenter::new(&vnet, &frame).expect("benchmark super-frame is valid");
    let mut bufs: Vec<Vec<u8>> = (0..seg.count()).map(|_| vec![0u8; seg.max_len()]).collect();
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("segment_64k_tcp4", |bench| {
        bench.iter(|| {
            let s = Segmenter::new(black_box(&vnet), black_box(&frame)).expect("valid");
            bufs.iter_mut().enumerate().map(|(i, b)| s.write(i, b).expect("fits")).sum::<usize>()
        })
    });
    let segments: Vec<Vec<u8>> = bufs.iter().enumerate().map(|(i, b)| b[..seg.len(i)].to_vec()).collect();
    let mut coalescer = Coalescer::new(false);
    group.throughput(Throughput::Bytes(segments.iter().map(|s| s.len() as u64).sum()));
    group.bench_function(BenchmarkId::new("coalesce_tcp4_segments", segments.len()), |bench| {
        bench.iter(|| {
            coalescer.clear();
            for (i, s) in segments.iter().enumerate() {
                coalescer.push(i, black_box(s));
            }
            coalescer.outputs().count()
        })
    });
    group.finish();
}

criterion_group!(benches, sleeve_datagrams, sealed_datagrams, password_kdf, mac_table, offload);
criterion_main!(benches);
