//! Summary statistics of one metric's samples.
//!
//! Percentiles use the nearest-rank method: the p-th percentile of `n` sorted
//! samples is the sample at rank `ceil(p / 100 * n)` (1-based). It always
//! returns a measured value (no interpolation), which is what a latency table
//! should show with small sample counts: with 10 samples p95 and p99 are the
//! maximum.

use serde::Serialize;

/// count, p50, p95, p99 and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` for an empty set (there is nothing to
    /// report, and zeros would look like measurements). NaN samples are
    /// ignored.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            count: v.len(),
            p50: nearest_rank(&v, 50.0),
            p95: nearest_rank(&v, 95.0),
            p99: nearest_rank(&v, 99.0),
            max: v[v.len() - 1],
        })
    }
}

/// The `p`-th percentile (0 < p <= 100) of non-empty, ascending `sorted`.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // Rank is 1-based; clamp guards p outside (0, 100] and rounding.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn empty_set_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!(s.count, 1);
        assert_eq!((s.p50, s.p95, s.p99, s.max), (7.5, 7.5, 7.5, 7.5));
    }

    #[test]
    fn one_to_hundred() {
        // Unsorted input on purpose.
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p95, 95.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
    }

    #[test]
    fn small_sets_use_nearest_rank() {
        // n = 10: p50 = rank 5, p95 = rank 10, p99 = rank 10.
        let v: Vec<f64> = (1..=10).map(|x| f64::from(x) * 10.0).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p95, 100.0);
        assert_eq!(s.p99, 100.0);
        // n = 4: p50 = rank 2.
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.p50, 2.0);
        assert_eq!(s.max, 4.0);
        // n = 200: p99 = rank 198.
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(Summary::of(&v).unwrap().p99, 198.0);
    }

    #[test]
    fn nan_is_ignored() {
        let s = Summary::of(&[f64::NAN, 2.0, 1.0]).unwrap();
        assert_eq!(s.count, 2);
        assert_eq!(s.max, 2.0);
    }
}
