//! A data-path worker: one thread that serves both directions of one TAP
//! queue and its UDP sockets, waking on whichever has something.
//!
//! One thread for both directions, because a request and its reply cross
//! a node in opposite directions: a worker that has just passed a request
//! on stays awake for a short while (`spin`), polling both sides without
//! sleeping, so the reply is picked up without another wake-up. A ping
//! then costs two thread wake-ups per round trip instead of four, which
//! on a VM is most of the sleeve's latency. The spin yields the CPU on
//! every empty poll, ends after `spin` of idleness, and never takes more
//! than its budget (`spin_budget`), so an idle node spends nothing and
//! steady traffic can't keep a worker spinning.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::spin_budget::SpinBudget;
use super::tap_to_udp::TapToUdp;
use super::udp_to_tap::UdpToTap;
use super::Queue;

/// How long an idle wait blocks before looking around again (so the
/// thread is never stuck in a syscall for long).
const BLOCK_MS: libc::c_int = 1000;

pub(super) struct Worker {
    pub to_udp: TapToUdp,
    pub to_tap: UdpToTap,
    pub spin: Duration,
}

impl Worker {
    pub fn run(mut self, queue: Queue) {
        let Queue { tap, recv, send } = &queue;
        let mut fds = [
            libc::pollfd { fd: tap.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: recv.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let mut last_work: Option<Instant> = None;
        let mut budget = SpinBudget::new(Instant::now());
        loop {
            let now = Instant::now();
            let spinning = last_work.is_some_and(|t| now.duration_since(t) < self.spin) && budget.allows(now);
            let timeout = if spinning { 0 } else { BLOCK_MS };
            // SAFETY: two valid pollfds for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready <= 0 {
                if spinning {
                    // Let whatever else wants this CPU (a pod, the other
                    // node's worker) run before looking again.
                    std::thread::yield_now();
                    budget.spend(now.elapsed());
                }
                continue;
            }
            let mut worked = false;
            if fds[0].revents != 0 {
                match self.to_udp.step(tap, send) {
                    Ok(n) => worked |= n > 0,
                    Err(err) => {
                        tracing::error!("reading the TAP device failed, data path stopped: {err}");
                        return;
                    }
                }
            }
            if fds[1].revents != 0 {
                worked |= self.to_tap.step(tap, recv, send) > 0;
            }
            if worked {
                last_work = Some(Instant::now());
            }
        }
    }
}
