//! Sampling of identical messages, as Sourcegraph's log library does it: each second, the first
//! `initial` lines with the same level and text are written, then one in `thereafter`.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Distinct messages tracked in one second; past it, new messages are written unsampled (a
/// bound on memory, not a case that happens with the gateway's fixed set of messages).
const MAX_TRACKED: usize = 10_000;

/// A per-layer filter that samples identical messages.
#[derive(Debug)]
pub struct Sampler {
    initial: u64,
    thereafter: u64,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    second: u64,
    counts: HashMap<u64, u64>,
}

impl Sampler {
    /// Samples after `initial` identical messages a second, keeping one in `thereafter`.
    pub fn new(initial: u64, thereafter: u64) -> Sampler {
        Sampler {
            initial,
            thereafter,
            state: Mutex::new(Window::default()),
        }
    }

    /// Whether the `count`-th (1-based) identical message of this second is written.
    fn keeps(&self, count: u64) -> bool {
        if count <= self.initial {
            return true;
        }
        self.thereafter != 0 && (count - self.initial).is_multiple_of(self.thereafter)
    }

    /// Counts one message with this key at `second` and says whether it is written.
    fn admit(&self, key: u64, second: u64) -> bool {
        let Ok(mut window) = self.state.lock() else {
            return true;
        };
        if window.second != second {
            window.second = second;
            window.counts.clear();
        }
        if window.counts.len() >= MAX_TRACKED && !window.counts.contains_key(&key) {
            return true;
        }
        let count = window.counts.entry(key).or_insert(0);
        *count += 1;
        let count = *count;
        drop(window);
        self.keeps(count)
    }
}

impl<S> Filter<S> for Sampler {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let mut hasher = DefaultHasher::new();
        event.metadata().level().hash(&mut hasher);
        event.record(&mut MessageHasher(&mut hasher));
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.admit(hasher.finish(), second)
    }
}

/// Feeds an event's message into a hasher.
struct MessageHasher<'a>(&'a mut DefaultHasher);

impl Visit for MessageHasher<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.hash(self.0);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            format!("{value:?}").hash(self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lines_pass_then_one_in_thereafter() {
        let sampler = Sampler::new(3, 5);
        let kept: Vec<u64> = (1..=20).filter(|_| sampler.admit(7, 100)).collect();
        assert_eq!(kept.len(), 3 + 3, "3 initial, then the 8th, 13th and 18th");
        let kept_at: Vec<bool> = (1..=20).map(|n| sampler.keeps(n)).collect();
        assert!(kept_at[..3].iter().all(|k| *k));
        assert!(kept_at[7] && kept_at[12] && kept_at[17] && !kept_at[8]);
    }

    #[test]
    fn each_second_and_each_message_count_on_their_own() {
        let sampler = Sampler::new(1, 0);
        assert!(sampler.admit(1, 10));
        assert!(!sampler.admit(1, 10), "thereafter 0 drops the rest");
        assert!(sampler.admit(2, 10), "another message");
        assert!(sampler.admit(1, 11), "a new second");
    }
}
