//! The per-key request rate limit (token buckets) and the throttle of
//! failed authentications per source address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token buckets, one per key name: `per_sec` tokens per second, burst
/// `2 * per_sec`; `per_sec == 0` disables limiting.
#[derive(Debug)]
pub struct RateLimiter {
    pub(crate) per_sec: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_sec` requests per second per key.
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long to wait for one.
    pub fn acquire(&self, key: &str) -> Result<(), Duration> {
        if self.per_sec == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_sec);
        let burst = rate * 2.0;
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// Failed authentications per source address: once a source has failed
/// `per_min` times within a minute, every request from it is refused
/// until that minute is over (its key is not even checked), which makes
/// guessing keys slow. `per_min == 0` disables it.
#[derive(Debug)]
pub struct AuthFailures {
    per_min: u32,
    window: Duration,
    sources: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Sources remembered before stale ones are dropped.
const MAX_TRACKED_SOURCES: usize = 10_000;

impl AuthFailures {
    /// `per_min` failures allowed per source and minute.
    pub fn new(per_min: u32) -> Self {
        Self::with_window(per_min, Duration::from_secs(60))
    }

    fn with_window(per_min: u32, window: Duration) -> Self {
        Self {
            per_min,
            window,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// How long `source` is still refused, if it is.
    pub fn blocked(&self, source: &str) -> Option<Duration> {
        if self.per_min == 0 {
            return None;
        }
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, count) = sources.get(source)?;
        let left = self.window.checked_sub(start.elapsed())?;
        (*count >= self.per_min).then_some(left.max(Duration::from_secs(1)))
    }

    /// Counts one failed authentication of `source`.
    pub fn failed(&self, source: &str) {
        if self.per_min == 0 {
            return;
        }
        let now = Instant::now();
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.len() >= MAX_TRACKED_SOURCES {
            let window = self.window;
            sources.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = sources.entry(source.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let rl = RateLimiter::new(2);
        for _ in 0..4 {
            assert!(rl.acquire("a").is_ok());
        }
        let wait = rl.acquire("a").unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        // Other keys have their own bucket.
        assert!(rl.acquire("b").is_ok());
        assert!(RateLimiter::new(0).acquire("a").is_ok());
    }

    #[test]
    fn failures_block_a_source_until_its_window_ends() {
        let f = AuthFailures::with_window(3, Duration::from_millis(300));
        for _ in 0..2 {
            f.failed("10.0.0.1");
        }
        assert_eq!(f.blocked("10.0.0.1"), None, "under the limit");
        f.failed("10.0.0.1");
        let left = f.blocked("10.0.0.1").expect("blocked at the limit");
        assert!(
            left >= Duration::from_secs(1),
            "retry-after is at least 1 s"
        );
        assert_eq!(f.blocked("10.0.0.2"), None, "other sources are not");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(f.blocked("10.0.0.1"), None, "the window ended");
        f.failed("10.0.0.1");
        assert_eq!(f.blocked("10.0.0.1"), None, "a new window counts anew");
        let off = AuthFailures::new(0);
        for _ in 0..100 {
            off.failed("x");
        }
        assert_eq!(off.blocked("x"), None);
    }
}
