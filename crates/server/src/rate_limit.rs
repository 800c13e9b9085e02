//! Optional per-sender rate limits (ours: `docs/compatibility.md` §10): a token bucket of events
//! per sender.
//!
//! Each sender (named by [`Source::rate_limit_key`](crate::Source::rate_limit_key)) has a
//! bucket that holds up to `burst` tokens and refills at `events_per_second`. A payload of `n`
//! events takes `n` tokens or is refused whole, taking none; the refusal says when enough
//! tokens will be there.
//!
//! A payload larger than the burst could never fit, so it passes when the bucket is full and
//! leaves the bucket in debt (below zero): the sender gets its payload through, then waits until
//! the debt is paid back, and over time still sends no more than the rate.
//!
//! Memory stays bounded however many senders there are: a full bucket behaves exactly like no
//! bucket, so full buckets are forgotten (swept when a new sender arrives, at most once per
//! refill time), and at most `max_senders` buckets are kept; beyond that the fullest are
//! forgotten first, which forgives the least.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::ServerError;

/// How many senders' buckets are kept at most, by default: 20 MB at the very most.
pub const DEFAULT_MAX_SENDERS: usize = 100_000;

/// The shortest retry hint given: a refused sender has to open a new stream (and prove who it
/// is again), which is not worth doing sooner.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Full buckets are swept at most this often, even when they refill faster.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A rate: events per second, and how many may come at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    events_per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl RateLimit {
    /// `events_per_second` on average, at most `burst` at once.
    pub fn new(events_per_second: NonZeroU32, burst: NonZeroU32) -> RateLimit {
        RateLimit {
            events_per_second,
            burst,
        }
    }

    /// The sustained rate.
    pub fn events_per_second(&self) -> u32 {
        self.events_per_second.get()
    }

    /// The bucket's size.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    fn rate(&self) -> f64 {
        f64::from(self.events_per_second.get())
    }

    fn capacity(&self) -> f64 {
        f64::from(self.burst.get())
    }

    /// How long an empty bucket takes to fill.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.capacity() / self.rate())
    }
}

/// One sender's tokens as of `updated`.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn full(limit: &RateLimit, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: limit.capacity(),
            updated: now,
        }
    }

    /// The tokens at `now`, refilled since the last update and capped at the burst.
    fn level(&self, limit: &RateLimit, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated);
        (self.tokens + elapsed.as_secs_f64() * limit.rate()).min(limit.capacity())
    }

    fn is_full(&self, limit: &RateLimit, now: Instant) -> bool {
        self.level(limit, now) >= limit.capacity()
    }

    /// Takes `events` tokens, or says how long until there are enough. More than the burst
    /// needs only a full bucket and leaves it in debt.
    fn take(&mut self, events: usize, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        let level = self.level(limit, now);
        let cost = events as f64;
        let needed = cost.min(limit.capacity());
        if level < needed {
            let wait = (needed - level) / limit.rate();
            return Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX));
        }
        self.tokens = level - cost;
        // Concurrent callers may arrive with slightly older clocks; time never runs back.
        self.updated = self.updated.max(now);
        Ok(())
    }
}

/// Per-sender token buckets, shared by every stream and call of the gateway.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    max_senders: usize,
    senders: Arc<Mutex<Senders>>,
}

#[derive(Debug)]
struct Senders {
    buckets: HashMap<String, TokenBucket>,
    next_sweep: Option<Instant>,
}

impl RateLimiter {
    /// A limiter allowing each sender `limit`, keeping at most [`DEFAULT_MAX_SENDERS`] buckets.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            max_senders: DEFAULT_MAX_SENDERS,
            senders: Arc::new(Mutex::new(Senders {
                buckets: HashMap::new(),
                next_sweep: None,
            })),
        }
    }

    /// Keeps at most `max_senders` (at least one) buckets.
    pub fn with_max_senders(mut self, max_senders: usize) -> RateLimiter {
        self.max_senders = max_senders.max(1);
        self
    }

    /// The limit applied to each sender.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes `events` tokens from `sender`'s bucket, or refuses the whole payload with
    /// [`ServerError::RateLimited`].
    pub fn check(&self, sender: &str, events: usize) -> Result<(), ServerError> {
        self.check_at(sender, events, Instant::now())
    }

    /// How many senders' buckets are held.
    pub fn tracked_senders(&self) -> usize {
        self.lock().buckets.len()
    }

    fn check_at(&self, sender: &str, events: usize, now: Instant) -> Result<(), ServerError> {
        if events == 0 {
            return Ok(());
        }
        self.lock()
            .take(sender, events, &self.limit, self.max_senders, now)
            .map_err(|wait| ServerError::RateLimited {
                sender: sender.to_string(),
                limit: self.limit.events_per_second(),
                retry_after: retry_hint(wait),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Senders> {
        // The buckets are plain numbers: a panic elsewhere cannot leave them inconsistent.
        self.senders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The wait, rounded up to whole milliseconds (the trailer's unit), and at least a second.
fn retry_hint(wait: Duration) -> Duration {
    let millis = wait.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)).max(MIN_RETRY_AFTER)
}

impl Senders {
    fn take(
        &mut self,
        sender: &str,
        events: usize,
        limit: &RateLimit,
        max_senders: usize,
        now: Instant,
    ) -> Result<(), Duration> {
        if let Some(bucket) = self.buckets.get_mut(sender) {
            return bucket.take(events, limit, now);
        }
        let mut bucket = TokenBucket::full(limit, now);
        bucket.take(events, limit, now)?;
        let sweep_due = self.next_sweep.is_none_or(|at| now >= at);
        if sweep_due || self.buckets.len() >= max_senders {
            self.sweep(limit, max_senders, now);
        }
        self.buckets.insert(sender.to_string(), bucket);
        Ok(())
    }

    /// Forgets full buckets; if that leaves no room, forgets the fullest of the rest, making
    /// room for a tenth of `max_senders` at once so a flood of new senders pays for this rarely.
    fn sweep(&mut self, limit: &RateLimit, max_senders: usize, now: Instant) {
        self.buckets.retain(|_, bucket| !bucket.is_full(limit, now));
        self.next_sweep = Some(now + limit.refill_time().max(MIN_SWEEP_INTERVAL));
        if self.buckets.len() < max_senders {
            return;
        }
        let keep = max_senders - max_senders.div_ceil(10);
        if keep == 0 {
            self.buckets.clear();
            return;
        }
        let mut levels: Vec<f64> = self
            .buckets
            .values()
            .map(|bucket| bucket.level(limit, now))
            .collect();
        let (_, &mut threshold, _) = levels.select_nth_unstable_by(keep - 1, f64::total_cmp);
        let below = levels.iter().filter(|&&level| level < threshold).count();
        let mut at_threshold = keep - below;
        self.buckets.retain(|_, bucket| {
            let level = bucket.level(limit, now);
            if level < threshold {
                return true;
            }
            if level == threshold && at_threshold > 0 {
                at_threshold -= 1;
                return true;
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(events_per_second: u32, burst: u32) -> RateLimit {
        RateLimit::new(
            NonZeroU32::new(events_per_second).expect("non-zero"),
            NonZeroU32::new(burst).expect("non-zero"),
        )
    }

    fn secs(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    fn retry_after(result: Result<(), ServerError>) -> Duration {
        match result {
            Err(ServerError::RateLimited { retry_after, .. }) => retry_after,
            other => panic!("expected a rate-limit refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_new_sender_may_send_its_burst_at_once() {
        let limiter = RateLimiter::new(limit(10, 20));
        let t0 = Instant::now();
        limiter
            .check_at("instance a", 15, t0)
            .expect("within burst");
        limiter
            .check_at("instance a", 5, t0)
            .expect("the rest of it");
        assert!(limiter.check_at("instance a", 1, t0).is_err());
    }

    #[test]
    fn tokens_refill_at_the_rate() {
        let limiter = RateLimiter::new(limit(10, 20));
        let t0 = Instant::now();
        limiter.check_at("instance a", 20, t0).expect("burst");
        assert!(limiter.check_at("instance a", 11, t0 + secs(1.0)).is_err());
        limiter
            .check_at("instance a", 10, t0 + secs(1.0))
            .expect("one second refills ten");
        assert!(limiter.check_at("instance a", 1, t0 + secs(1.0)).is_err());
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let limiter = RateLimiter::new(limit(10, 20));
        let t0 = Instant::now();
        limiter.check_at("instance a", 1, t0).expect("first");
        let later = t0 + secs(3600.0);
        limiter.check_at("instance a", 20, later).expect("full");
        assert!(limiter.check_at("instance a", 1, later).is_err());
    }

    #[test]
    fn a_refused_payload_takes_no_tokens_and_says_when_it_would_fit() {
        let limiter = RateLimiter::new(limit(10, 50));
        let t0 = Instant::now();
        limiter.check_at("instance a", 50, t0).expect("burst");
        let refused = limiter.check_at("instance a", 30, t0);
        assert_eq!(retry_after(refused), secs(3.0));
        let refused = limiter.check_at("instance a", 30, t0 + secs(1.0));
        assert_eq!(
            retry_after(refused),
            secs(2.0),
            "the refusal a second ago took nothing"
        );
        limiter
            .check_at("instance a", 30, t0 + secs(3.0))
            .expect("fits when the hint said");
    }

    #[test]
    fn the_refusal_names_the_sender_and_the_limit() {
        let limiter = RateLimiter::new(limit(10, 10));
        let t0 = Instant::now();
        limiter.check_at("service svc", 10, t0).expect("burst");
        let Err(err) = limiter.check_at("service svc", 1, t0) else {
            panic!("refused")
        };
        assert_eq!(
            err.to_string(),
            "rate limit of 10 events per second exceeded for service svc; retry in 1s"
        );
    }

    #[test]
    fn the_retry_hint_is_at_least_a_second_in_whole_milliseconds() {
        let limiter = RateLimiter::new(limit(1000, 1000));
        let t0 = Instant::now();
        limiter.check_at("instance a", 1000, t0).expect("burst");
        let refused = limiter.check_at("instance a", 1, t0);
        assert_eq!(retry_after(refused), secs(1.0), "1 ms of refill, raised");
        assert_eq!(
            retry_hint(Duration::from_micros(2_500_100)),
            Duration::from_millis(2501)
        );
    }

    #[test]
    fn a_payload_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let limiter = RateLimiter::new(limit(10, 20));
        let t0 = Instant::now();
        limiter
            .check_at("instance a", 50, t0)
            .expect("a full bucket admits any payload");
        // 50 taken from 20: 30 in debt, so 5 s until 20 tokens are back.
        let refused = limiter.check_at("instance a", 20, t0 + secs(1.0));
        assert_eq!(retry_after(refused), secs(4.0));
        limiter
            .check_at("instance a", 20, t0 + secs(5.0))
            .expect("debt paid back");
    }

    #[test]
    fn a_payload_larger_than_the_burst_waits_for_a_full_bucket() {
        let limiter = RateLimiter::new(limit(10, 20));
        let t0 = Instant::now();
        limiter.check_at("instance a", 15, t0).expect("burst");
        let refused = limiter.check_at("instance a", 100, t0);
        assert_eq!(retry_after(refused), secs(1.5), "until the bucket is full");
        limiter
            .check_at("instance a", 100, t0 + secs(1.5))
            .expect("full again");
    }

    #[test]
    fn senders_have_separate_buckets() {
        let limiter = RateLimiter::new(limit(10, 10));
        let t0 = Instant::now();
        limiter.check_at("instance a", 10, t0).expect("a's burst");
        assert!(limiter.check_at("instance a", 1, t0).is_err());
        limiter.check_at("instance b", 10, t0).expect("b's burst");
        limiter.check_at("service a", 10, t0).expect("a service");
    }

    #[test]
    fn an_empty_payload_is_free_and_tracks_nothing() {
        let limiter = RateLimiter::new(limit(1, 1));
        let t0 = Instant::now();
        limiter.check_at("instance a", 1, t0).expect("burst");
        limiter.check_at("instance a", 0, t0).expect("empty");
        limiter.check_at("instance b", 0, t0).expect("empty");
        assert_eq!(limiter.tracked_senders(), 1);
    }

    #[test]
    fn full_buckets_are_forgotten_when_new_senders_arrive() {
        let limiter = RateLimiter::new(limit(10, 20));
        let t0 = Instant::now();
        limiter.check_at("instance a", 5, t0).expect("a");
        limiter.check_at("instance b", 20, t0).expect("b");
        assert_eq!(limiter.tracked_senders(), 2);
        // After 1 s, a is full again (and forgotten); b is not. The sweep is due after the
        // refill time (2 s), so nothing is forgotten yet.
        limiter
            .check_at("instance c", 1, t0 + secs(1.0))
            .expect("c");
        assert_eq!(limiter.tracked_senders(), 3);
        limiter
            .check_at("instance d", 1, t0 + secs(2.5))
            .expect("d");
        assert_eq!(limiter.tracked_senders(), 1, "only d is not full");
    }

    #[test]
    fn a_bucket_in_debt_is_not_forgotten() {
        let limiter = RateLimiter::new(limit(10, 20));
        let t0 = Instant::now();
        limiter.check_at("instance a", 60, t0).expect("oversized");
        limiter
            .check_at("instance b", 1, t0 + secs(3.0))
            .expect("b");
        assert_eq!(limiter.tracked_senders(), 2, "a still owes 10 at 3 s");
        let refused = limiter.check_at("instance a", 20, t0 + secs(3.0));
        assert_eq!(retry_after(refused), secs(3.0));
    }

    #[test]
    fn many_senders_hold_at_most_max_senders_buckets() {
        let limiter = RateLimiter::new(limit(1, 100)).with_max_senders(100);
        let t0 = Instant::now();
        for i in 0..10_000 {
            limiter
                .check_at(&format!("instance {i}"), 100, t0)
                .expect("a new sender has a full bucket");
            assert!(limiter.tracked_senders() <= 100);
        }
    }

    #[test]
    fn over_capacity_the_fullest_buckets_are_forgotten_first() {
        let limiter = RateLimiter::new(limit(1, 100)).with_max_senders(10);
        let t0 = Instant::now();
        for i in 0..9 {
            // Sender i is left with i tokens.
            limiter
                .check_at(&format!("instance {i}"), 100 - i, t0)
                .expect("burst");
        }
        limiter.check_at("instance new", 1, t0).expect("new");
        assert_eq!(limiter.tracked_senders(), 10);
        limiter.check_at("instance newer", 100, t0).expect("newer");
        // Room for a tenth made: the 9 emptiest kept (new, with 99 tokens, was forgotten),
        // then newer added.
        assert_eq!(limiter.tracked_senders(), 10);
        assert!(
            limiter.check_at("instance 0", 1, t0).is_err(),
            "the emptiest are still limited"
        );
        assert!(limiter.check_at("instance 8", 9, t0).is_err());
        limiter
            .check_at("instance new", 100, t0)
            .expect("forgotten: a fresh bucket");
    }

    #[test]
    fn one_bucket_may_be_kept() {
        let limiter = RateLimiter::new(limit(1, 10)).with_max_senders(0);
        let t0 = Instant::now();
        limiter.check_at("instance a", 10, t0).expect("a");
        limiter.check_at("instance b", 10, t0).expect("b");
        assert_eq!(limiter.tracked_senders(), 1);
        assert!(limiter.check_at("instance b", 1, t0).is_err());
    }

    #[test]
    fn the_real_clock_works_too() {
        let limiter = RateLimiter::new(limit(1, 2));
        limiter.check("instance a", 2).expect("burst");
        assert!(limiter.check("instance a", 2).is_err());
    }
}
