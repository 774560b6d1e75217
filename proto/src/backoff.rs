//! Delays between attempts to dial a peer that keeps failing.

use std::time::Duration;

/// Jittered exponential backoff: the un-jittered delay starts at `base`
/// and doubles per failure up to `cap`; each returned delay is drawn from
/// `[d/2, d]` so that peers which all lost a connection at once (a
/// cluster-wide restart) don't redial in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failures so far; stops growing once the cap is reached.
    attempts: u32,
}

impl Backoff {
    pub const DEFAULT_BASE: Duration = Duration::from_secs(1);
    pub const DEFAULT_CAP: Duration = Duration::from_secs(180);

    /// One second doubling up to three minutes.
    pub fn new() -> Self {
        Self::with_limits(Self::DEFAULT_BASE, Self::DEFAULT_CAP)
    }

    pub fn with_limits(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, attempts: 0 }
    }

    /// The delay before the next attempt. `jitter` is a sample from
    /// `[0, 1]` out of the caller's RNG (out-of-range values are clamped,
    /// NaN counts as 0) so this stays deterministic under test.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let full = self.unjittered();
        if full < self.cap {
            self.attempts = self.attempts.saturating_add(1);
        }
        let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
        let half = full / 2;
        half + (full - half).mul_f64(jitter)
    }

    /// Call after a successful connection: the next failure starts over.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    fn unjittered(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempts);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_from_one_second_up_to_three_minutes() {
        let mut b = Backoff::new();
        let full: Vec<u64> = (0..12).map(|_| b.next_delay(1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 32, 64, 128, 180, 180, 180, 180]);
    }

    #[test]
    fn jitter_spans_half_to_full() {
        let mut low = Backoff::new();
        let mut high = Backoff::new();
        for _ in 0..4 {
            low.next_delay(0.0);
            high.next_delay(1.0);
        }
        assert_eq!(low.next_delay(0.0), 8 * SEC);
        assert_eq!(high.next_delay(1.0), 16 * SEC);
        assert_eq!(Backoff::new().next_delay(0.5), Duration::from_millis(750));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new();
        for _ in 0..20 {
            b.next_delay(1.0);
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), SEC);
    }

    #[test]
    fn survives_many_failures_and_odd_jitter() {
        let mut b = Backoff::new();
        for _ in 0..10_000 {
            b.next_delay(0.3);
        }
        assert_eq!(b.next_delay(f64::NAN), 90 * SEC);
        assert_eq!(b.next_delay(-3.0), 90 * SEC);
        assert_eq!(b.next_delay(f64::INFINITY), 180 * SEC);
    }

    proptest! {
        #[test]
        fn delays_stay_in_bounds(jitters in proptest::collection::vec(any::<f64>(), 1..40)) {
            let mut b = Backoff::new();
            let mut previous_full = Duration::ZERO;
            for jitter in jitters {
                let full = b.unjittered();
                prop_assert!(full >= previous_full);
                let d = b.next_delay(jitter);
                prop_assert!(d >= full / 2 && d <= full, "{d:?} outside [{:?}, {full:?}]", full / 2);
                prop_assert!(d <= Backoff::DEFAULT_CAP);
                previous_full = full;
            }
        }
    }
}
