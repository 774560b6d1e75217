//! iputils `ping` run inside a namespace, with its summary parsed.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// Interval between echo requests (root may go below 1 s).
const PING_INTERVAL: &str = "0.2";

/// Outcome of one `ping -c N` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PingStats {
    pub transmitted: u32,
    /// Distinct replies (duplicates not included).
    pub received: u32,
    /// Replies flagged `DUP!`: an overlay delivering frames twice.
    pub duplicates: u32,
}

impl PingStats {
    /// Every request answered exactly once.
    pub fn all_received(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted && self.duplicates == 0
    }

    /// Parses iputils ping output (normal, not `-q`, so `DUP!` lines show).
    pub fn parse(output: &str) -> Result<PingStats> {
        let summary = output
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no ping summary in: {output}"))?;
        let mut stats = PingStats::default();
        for part in summary.split(',') {
            let part = part.trim();
            let mut words = part.split_whitespace();
            let (Some(number), Some(word)) = (words.next(), words.next()) else { continue };
            let number = number.trim_start_matches('+');
            match word {
                "packets" => stats.transmitted = number.parse().context("transmitted")?,
                "received" => stats.received = number.parse().context("received")?,
                "duplicates" => stats.duplicates = number.parse().context("duplicates")?,
                _ => {}
            }
        }
        let dup_lines = output.lines().filter(|l| l.contains("DUP!")).count() as u32;
        stats.duplicates = stats.duplicates.max(dup_lines);
        Ok(stats)
    }
}

/// `ping -c count -i 0.2 -W 1 target` inside `ns`. Loss is not an error (the
/// stats say it); failing to run or parse is.
pub fn ping(ns: &Netns, target: IpAddr, count: u32) -> Result<PingStats> {
    if count == 0 {
        bail!("ping count must be positive");
    }
    let count_s = count.to_string();
    let target_s = target.to_string();
    // -c N sends N requests 0.2 s apart, then lingers -W for the last reply.
    let bound = Duration::from_millis(200 * u64::from(count) + 5_000);
    let out = ns.run("ping", &["-n", "-c", &count_s, "-i", PING_INTERVAL, "-W", "1", &target_s], bound)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    PingStats::parse(&stdout).with_context(|| {
        format!(
            "ping {target} in {}: status {}, stderr: {}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}
