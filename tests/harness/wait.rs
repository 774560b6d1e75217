//! Bounded polling: every wait in the harness ends, by time and by count.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

/// Returned from a polled closure to end the wait at once (e.g. the process
/// being waited on has died): the condition can no longer become true.
#[derive(Debug)]
pub struct StopWaiting(pub String);

impl std::fmt::Display for StopWaiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StopWaiting {}

/// An error that makes [`wait_until`] / [`wait_for`] give up immediately.
pub fn stop_waiting(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(StopWaiting(msg.into()))
}

fn is_stop(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StopWaiting>())
}

/// Polls `f` every `interval` until it returns `Ok(true)`, for at most
/// `timeout`. `Err`s from `f` are retried (the last one is reported on
/// timeout) unless they carry [`StopWaiting`], which ends the wait at once.
pub fn wait_until<F>(timeout: Duration, interval: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Result<bool>,
{
    wait_for(timeout, interval, || Ok(f()?.then_some(())))
}

/// Polls `f` every `interval` until it returns `Ok(Some(value))`, for at most
/// `timeout`, and returns the value.
pub fn wait_for<T, F>(timeout: Duration, interval: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Result<Option<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let interval = interval.max(Duration::from_millis(1));
    // The count bound backs up the time bound should `f` itself be fast and
    // the clock misbehave.
    let max_attempts = (timeout.as_millis() / interval.as_millis()).saturating_add(10) as u64 * 2;
    let mut last_err = None;
    let mut attempts = 0u64;
    while attempts < max_attempts {
        attempts += 1;
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last_err = None,
            Err(e) if is_stop(&e) => return Err(e),
            Err(e) => last_err = Some(e),
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        thread::sleep(interval.min(deadline - now));
    }
    let waited = start.elapsed();
    Err(match last_err {
        Some(e) => {
            e.context(format!("condition not met after {waited:.1?} ({attempts} attempts); last attempt failed"))
        }
        None => anyhow!("condition not met after {waited:.1?} ({attempts} attempts)"),
    })
}
