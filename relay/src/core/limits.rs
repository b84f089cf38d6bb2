//! Rate limits as token buckets, keyed (per source address, per tenant). Pure: callers pass
//! `now`, so limits are tested with a fake clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate: `per_minute` on average, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained allowance per minute.
    pub per_minute: u32,
    /// Most allowed at once after a quiet spell.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key. Buckets that have refilled completely are forgotten, so memory
/// follows the number of recently active keys, not every key ever seen.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: Rate,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter allowing `rate` per key.
    pub fn new(rate: Rate) -> Limiter<K> {
        Limiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * f64::from(self.rate.per_minute) / 60.0)
            .min(f64::from(self.rate.burst))
    }

    /// Takes one token for `key` if there is one.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        let full = Bucket {
            tokens: f64::from(self.rate.burst),
            at: now,
        };
        let current = self.buckets.get(key).copied().unwrap_or(full);
        let tokens = self.refilled(current, now);
        if tokens < 1.0 {
            self.buckets.insert(key.clone(), Bucket { tokens, at: now });
            return false;
        }
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: tokens - 1.0,
                at: now,
            },
        );
        true
    }

    /// Forgets keys whose buckets are full again.
    pub fn prune(&mut self, now: Instant) {
        let burst = f64::from(self.rate.burst);
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * f64::from(rate.per_minute) / 60.0 < burst
        });
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// How long, at most, `rate` allows `attempts` to take (for documentation of guess odds).
pub fn attempts_within(rate: Rate, window: Duration) -> f64 {
    f64::from(rate.burst) + window.as_secs_f64() * f64::from(rate.per_minute) / 60.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let mut limiter = Limiter::new(Rate {
            per_minute: 60,
            burst: 3,
        });
        let t0 = Instant::now();
        assert!((0..3).all(|_| limiter.allow(&"a", t0)));
        assert!(!limiter.allow(&"a", t0), "burst spent");
        assert!(limiter.allow(&"b", t0), "other keys are independent");
        assert!(!limiter.allow(&"a", t0 + Duration::from_millis(500)));
        assert!(
            limiter.allow(&"a", t0 + Duration::from_secs(1)),
            "one per second refills"
        );
        assert!(!limiter.allow(&"a", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn refused_attempts_do_not_earn_tokens_and_full_buckets_are_forgotten() {
        let mut limiter = Limiter::new(Rate {
            per_minute: 60,
            burst: 1,
        });
        let t0 = Instant::now();
        assert!(limiter.allow(&1, t0));
        for ms in [100, 200, 300] {
            assert!(!limiter.allow(&1, t0 + Duration::from_millis(ms)));
        }
        assert!(limiter.allow(&1, t0 + Duration::from_millis(1000)));
        assert_eq!(limiter.len(), 1);
        limiter.prune(t0 + Duration::from_secs(10));
        assert!(limiter.is_empty());
    }

    #[test]
    fn the_guess_odds_over_a_codes_lifetime_stay_below_one_in_a_million() {
        // Defaults: 3,000 join attempts per tenant per minute (burst 300), codes live 10 min.
        let per_tenant = Rate {
            per_minute: 3_000,
            burst: 300,
        };
        let attempts = attempts_within(per_tenant, Duration::from_secs(600));
        let odds = attempts / 2f64.powi(40);
        assert!(odds < 1e-6, "{odds}");
    }
}
