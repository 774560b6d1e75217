//! The NAT task's counters and gauges, rendered into `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the NAT task for `/metrics` (written by the task, read by
/// the API; relaxed atomics: each value stands alone).
#[derive(Debug, Default)]
pub struct NatMetrics {
    /// Whole-table replacements written (start, restore, reconfiguration).
    pub rules_applied: AtomicU64,
    /// Replacements because the table had been deleted or changed.
    pub restores: AtomicU64,
    /// Element swaps of the `local` set (this node's ranges changed).
    pub set_updates: AtomicU64,
    /// Transactions the kernel refused, and failed reads.
    pub apply_errors: AtomicU64,
    /// Read-backs of the table after the ruleset generation moved.
    pub checks: AtomicU64,
    /// Ranges in the `local` set.
    pub local_ranges: AtomicU64,
    /// weft's accept rules in `ip filter FORWARD`.
    pub forward_rules: AtomicU64,
    /// 1 when the table, sysctls and FORWARD rules are as wanted.
    pub ready: AtomicU64,
}

fn get(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

pub(super) fn add(v: &AtomicU64, n: u64) {
    v.fetch_add(n, Ordering::Relaxed);
}

pub(super) fn set(v: &AtomicU64, n: u64) {
    v.store(n, Ordering::Relaxed);
}

impl NatMetrics {
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 8] = [
            (
                "weft_nat_rules_applied_total",
                "counter",
                "Replacements of nftables table ip weft written.",
                &self.rules_applied,
            ),
            (
                "weft_nat_restores_total",
                "counter",
                "Replacements because table ip weft had been deleted or changed by someone else.",
                &self.restores,
            ),
            (
                "weft_nat_set_updates_total",
                "counter",
                "Element swaps of set ip weft local after this node's IP ranges changed.",
                &self.set_updates,
            ),
            (
                "weft_nat_apply_errors_total",
                "counter",
                "nftables transactions or reads that failed.",
                &self.apply_errors,
            ),
            (
                "weft_nat_checks_total",
                "counter",
                "Read-backs of table ip weft after the ruleset generation moved.",
                &self.checks,
            ),
            ("weft_nat_local_ranges", "gauge", "This node's IP ranges in set ip weft local.", &self.local_ranges),
            (
                "weft_nat_forward_rules",
                "gauge",
                "weft's accept rules in iptables' ip filter FORWARD.",
                &self.forward_rules,
            ),
            ("weft_nat_ready", "gauge", "1 when the NAT table, sysctls and FORWARD rules are in place.", &self.ready),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", get(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_rendered_with_its_type() {
        let m = NatMetrics::default();
        add(&m.restores, 2);
        set(&m.local_ranges, 3);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("# TYPE weft_nat_restores_total counter\nweft_nat_restores_total 2\n"), "{out}");
        assert!(out.contains("weft_nat_local_ranges 3\n"));
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 8);
    }
}
