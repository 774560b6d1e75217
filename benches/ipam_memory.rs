//! Figure for the CNI issue: heap memory the IPAM state machine uses per
//! 10,000 allocations, measured with a counting global allocator (bytes
//! live after the allocations minus before). Run:
//!   cargo bench -p weft-tests --bench ipam_memory

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;
use weft_proto::ipam::Ipam;
use weft_proto::PeerName;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let now = Instant::now();
    let me = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
    let mut ipam = Ipam::new(me, "10.32.0.0/12".parse().expect("range"), 1, now);
    // A single-peer cluster (consensus of 1) agrees at once and owns the range.
    let mut ready = false;
    for _ in 0..100 {
        ipam.handle_timeout(now);
        if ipam.allocate(now, "warmup", "eth0").is_ok() {
            ready = true;
            break;
        }
    }
    assert!(ready, "a one-peer IPAM never became ready");
    for round in 1..=3 {
        let before = LIVE.load(Ordering::Relaxed);
        let t = Instant::now();
        for i in 0..10_000 {
            // Container ids as runtimes make them: 64 hex characters.
            let id = format!("{:064x}", (round as u128) << 64 | i as u128);
            ipam.allocate(now, &id, "eth0").expect("allocation");
        }
        let took = t.elapsed();
        let after = LIVE.load(Ordering::Relaxed);
        println!(
            "10k allocations (round {round}, {} total): {:.1} KiB of heap ({:.0} bytes each), {:.1?} ({:.2?} per allocation)",
            ipam.allocations().count(),
            (after - before) as f64 / 1024.0,
            (after - before) as f64 / 10_000.0,
            took,
            took / 10_000
        );
    }
}
