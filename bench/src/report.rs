//! Results: percentile math and printing.
//!
//! Each result is printed as a few human lines and then exactly one JSON line. Human lines
//! never start with `{`, so `grep '^{'` (or `--json`) picks out the machine-readable part.

use std::io::{self, Write as _};

use serde::Serialize;

/// The value at percentile `p` (0..=100) of sorted `values`, nearest-rank method: the
/// smallest value with at least p% of the values at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil();
    // `rank` is within 0..=len: the float-to-int conversion cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = (rank as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// `None` for no samples.
    pub fn of(mut ms: Vec<f64>) -> Option<Self> {
        ms.sort_by(f64::total_cmp);
        Some(Self {
            p50: round3(percentile(&ms, 50.0)?),
            p90: round3(percentile(&ms, 90.0)?),
            p99: round3(percentile(&ms, 99.0)?),
            max: round3(*ms.last()?),
        })
    }
}

/// Rounds to three decimals, enough for milliseconds and percentages.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `x` as "12.3 MiB" (or KiB, B).
pub fn bytes(x: f64) -> String {
    let abs = x.abs();
    if abs >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", x / 1024.0 / 1024.0)
    } else if abs >= 1024.0 {
        format!("{:.1} KiB", x / 1024.0)
    } else {
        format!("{x:.0} B")
    }
}

/// A latency as "p50 1.2 / p90 3.4 / p99 5.6 / max 7.8 ms".
pub fn latency_line(latency: Option<&Latency>) -> String {
    latency.map_or_else(
        || "no samples".to_owned(),
        |l| {
            format!(
                "p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms",
                l.p50, l.p90, l.p99, l.max
            )
        },
    )
}

/// Prints one result: its human summary (unless `json_only`), then its JSON line.
pub fn emit<R: Serialize>(json_only: bool, human: &str, result: &R) -> io::Result<()> {
    let json = serde_json::to_string(result)?;
    let mut out = io::stdout().lock();
    if !json_only {
        for line in human.lines() {
            if line.starts_with('{') {
                writeln!(out, " {line}")?;
            } else {
                writeln!(out, "{line}")?;
            }
        }
    }
    writeln!(out, "{json}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 90.0), Some(90.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 51.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn latency_summaries_sort_first() {
        let latency = Latency::of(vec![5.0, 1.0, 4.0, 2.0, 3.0]).expect("samples");
        assert_eq!(
            latency,
            Latency {
                p50: 3.0,
                p90: 5.0,
                p99: 5.0,
                max: 5.0
            }
        );
        assert!(Latency::of(Vec::new()).is_none());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(2048.0), "2.0 KiB");
        assert_eq!(bytes(-3.0 * 1024.0 * 1024.0), "-3.0 MiB");
        assert!((round3(1.234_56) - 1.235).abs() < 1e-12);
    }
}
