//! How much CPU a worker may spend polling instead of sleeping.
//!
//! Spinning after traffic saves a wake-up per reply, which is most of the
//! sleeve's latency on a VM; but traffic that keeps arriving just slower
//! than the spin lasts would keep a worker spinning for ever. The budget
//! refills at a fixed share of wall-clock time and spinning spends it, so
//! polling never costs more than that share of a core, whatever the
//! traffic; latency-bound traffic (a request now and then) stays inside it.

use std::time::{Duration, Instant};

/// Spinning may use at most 1/SHARE of wall-clock time.
const SHARE: u32 = 10;
/// What may be saved up for a burst of spinning.
const CAP: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy)]
pub(super) struct SpinBudget {
    /// Nanoseconds of spinning left; below zero, a debt that time repays
    /// before spinning is allowed again (a spin can overrun what was left).
    tokens: i64,
    at: Instant,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl SpinBudget {
    pub fn new(now: Instant) -> Self {
        SpinBudget { tokens: nanos(CAP), at: now }
    }

    /// Whether spinning is allowed now (after refilling for the time since
    /// the last call).
    pub fn allows(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        self.tokens = self.tokens.saturating_add(nanos(elapsed / SHARE)).min(nanos(CAP));
        self.tokens > 0
    }

    /// Charges `spent` of spinning.
    pub fn spend(&mut self, spent: Duration) {
        self.tokens = self.tokens.saturating_sub(nanos(spent)).max(-nanos(CAP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins whenever allowed, for `step` at a time, over `total`; returns
    /// the time spent spinning.
    fn spin_greedily(step: Duration, total: Duration) -> Duration {
        let start = Instant::now();
        let mut b = SpinBudget::new(start);
        let mut now = start;
        let mut spun = Duration::ZERO;
        while now < start + total {
            if b.allows(now) {
                b.spend(step);
                spun += step;
            }
            now += step;
        }
        spun
    }

    #[test]
    fn endless_spinning_costs_at_most_the_share_plus_the_cap() {
        for step in [Duration::from_micros(1), Duration::from_micros(50), Duration::from_millis(1)] {
            let total = Duration::from_secs(10);
            let spun = spin_greedily(step, total);
            assert!(spun <= total / SHARE + CAP + step, "{step:?}: spun {spun:?} of {total:?}");
            // And it does spin that much, not nothing.
            assert!(spun >= total / SHARE - step * 2, "{step:?}: spun only {spun:?}");
        }
    }

    #[test]
    fn occasional_short_spins_are_always_allowed() {
        // A ping every 10 ms spinning 300 us: 3% of the time.
        let start = Instant::now();
        let mut b = SpinBudget::new(start);
        for k in 0..1000u32 {
            let t = start + Duration::from_millis(10) * k;
            assert!(b.allows(t), "refused at ping {k}");
            b.spend(Duration::from_micros(300));
        }
    }

    #[test]
    fn an_exhausted_budget_refuses_until_time_refills_it() {
        let start = Instant::now();
        let mut b = SpinBudget::new(start);
        b.spend(CAP);
        assert!(!b.allows(start));
        assert!(b.allows(start + Duration::from_micros(100)));
        // Time going backwards (another clock read order) refills nothing.
        b.spend(CAP);
        assert!(!b.allows(start));
    }
}
