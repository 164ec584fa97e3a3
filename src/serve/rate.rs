//! Requests per second over the last minute, for the autoscaler.
//!
//! One counter per second in a ring of 61: the 60 complete seconds before the current one,
//! plus the one being filled. Each bucket packs its second (upper 40 bits) and its count
//! (lower 24 bits) into one atomic, so recording is a single compare-and-swap loop with no
//! lock and no allocation, and a bucket left over from a minute ago is recognised by its
//! second and reset by the first request that lands on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The window the figure covers, in whole seconds.
pub const WINDOW_SECS: u64 = 60;
const SLOTS: usize = WINDOW_SECS as usize + 1;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

#[derive(Debug)]
pub(crate) struct RateWindow {
    start: Instant,
    buckets: [AtomicU64; SLOTS],
}

impl RateWindow {
    pub(crate) fn new() -> Self {
        RateWindow {
            start: Instant::now(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Seconds since the window was made, counted from 1 so that 0 in a bucket means "never
    /// used" and no bucket is mistaken for second 0.
    fn now_sec(&self) -> u64 {
        self.start.elapsed().as_secs() + 1
    }

    pub(crate) fn record(&self) {
        self.record_at(self.now_sec());
    }

    fn record_at(&self, sec: u64) {
        let bucket = &self.buckets[(sec % SLOTS as u64) as usize];
        // The closure always returns Some, so this cannot fail.
        let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v >> COUNT_BITS == sec {
                // Saturate rather than spill into the second: 16.7 M requests in one second.
                if v & COUNT_MASK == COUNT_MASK {
                    v
                } else {
                    v + 1
                }
            } else {
                (sec << COUNT_BITS) | 1
            })
        });
    }

    /// Requests that arrived in the last 60 complete seconds (the current, partial second
    /// is left out, so the figure lags by less than a second but is exact over its window).
    pub(crate) fn last_window(&self) -> u64 {
        self.last_window_at(self.now_sec())
    }

    fn last_window_at(&self, now: u64) -> u64 {
        self.last_secs_at(now, WINDOW_SECS)
    }

    /// Requests that arrived in the last `secs` complete seconds (at most the window).
    fn last_secs_at(&self, now: u64, secs: u64) -> u64 {
        let oldest = now.saturating_sub(secs.clamp(1, WINDOW_SECS));
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|v| {
                let sec = v >> COUNT_BITS;
                sec >= oldest.max(1) && sec < now
            })
            .map(|v| v & COUNT_MASK)
            .sum()
    }

    /// Requests per second over the last 60 s, as SkyServe computes it: the count in the
    /// window divided by the window's length (also while the balancer is younger than that,
    /// so a fresh balancer does not overstate its load).
    pub(crate) fn qps(&self) -> f64 {
        self.qps_over(WINDOW_SECS)
    }

    /// Requests per second over the last `secs` complete seconds (1 to 60).
    pub(crate) fn qps_over(&self, secs: u64) -> f64 {
        let secs = secs.clamp(1, WINDOW_SECS);
        self.last_secs_at(self.now_sec(), secs) as f64 / secs as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_complete_seconds_of_the_last_minute() {
        let w = RateWindow::new();
        for sec in 1..=70 {
            for _ in 0..sec {
                w.record_at(sec);
            }
        }
        // At second 71 the window is seconds 11..=70.
        assert_eq!(w.last_window_at(71), (11..=70).sum::<u64>());
        // The current second is not counted yet.
        w.record_at(71);
        assert_eq!(w.last_window_at(71), (11..=70).sum::<u64>());
        assert_eq!(w.last_window_at(72), (12..=70).sum::<u64>() + 1);
        // A shorter window: the last 5 complete seconds.
        assert_eq!(w.last_secs_at(72, 5), (67..=70).sum::<u64>() + 1);
    }

    #[test]
    fn stale_buckets_are_reset_and_ignored() {
        let w = RateWindow::new();
        w.record_at(5);
        w.record_at(5);
        // Second 5 + 61 lands on the same bucket: the old count must not carry over.
        w.record_at(66);
        assert_eq!(w.last_window_at(67), 1);
        // Long after, nothing is counted.
        assert_eq!(w.last_window_at(500), 0);
    }

    #[test]
    fn concurrent_records_all_count() {
        let w = std::sync::Arc::new(RateWindow::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        w.record_at(3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(w.last_window_at(4), 40_000);
        assert!((w.last_window_at(4) as f64 / 60.0 - 666.66).abs() < 1.0);
    }
}
