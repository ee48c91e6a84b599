//! When to try again something that did not work, or that keeps being undone: a
//! re-assertion of an instance that keeps coming back UP, a node that stays down. Each key
//! backs off on its own, doubling from a base up to a cap.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// When to try something again that did not work (a re-assertion, a node that stays down).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: Instant,
    delay: Duration,
}

#[derive(Debug)]
pub(super) struct Backoffs<K> {
    entries: HashMap<K, Backoff>,
}

impl<K> Default for Backoffs<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Backoffs<K> {
    pub(super) fn due(&self, key: &K, now: Instant) -> bool {
        self.entries.get(key).is_none_or(|b| b.next <= now)
    }

    /// Doubles the wait after each failure, from `base` up to `max`.
    pub(super) fn failed(&mut self, key: &K, now: Instant, base: Duration, max: Duration) {
        let delay = self
            .entries
            .get(key)
            .map_or(base, |b| (b.delay * 2).min(max));
        self.entries.insert(
            key.clone(),
            Backoff {
                next: now + delay,
                delay,
            },
        );
    }

    pub(super) fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Forgets what is no longer watched.
    pub(super) fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.entries.retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_clears() {
        let mut backoffs = Backoffs::<u8>::default();
        let now = Instant::now();
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(3);
        assert!(backoffs.due(&1, now));
        backoffs.failed(&1, now, base, max);
        assert!(!backoffs.due(&1, now));
        assert!(backoffs.due(&1, now + base));
        backoffs.failed(&1, now, base, max);
        backoffs.failed(&1, now, base, max);
        assert_eq!(backoffs.entries[&1].delay, max);
        backoffs.clear(&1);
        assert!(backoffs.due(&1, now));
    }
}
