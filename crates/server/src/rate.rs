//! The per-key request rate limit (token buckets).

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
}
