//! When a node may trust its own copy of an id instead of reading Redis.
//!
//! A slot's value is current once it was read from Redis (or came in a hint) while the hint
//! subscription was live: every later change reaches the slot as a hint, in order. Two things
//! end that. Hints may have been lost (a new or lost subscription, a gap in their numbers, an
//! unreadable message): [`Trust::break_off`] moves the continuity on, and every mark taken
//! before it stops holding. And the id may have expired, the one change no hint tells: a mark
//! holds for half the idle TTL only, while the read or notify that made it kept the id for a
//! whole one.
//!
//! A mark is one `u64`, so a slot keeps it in one atomic: the continuity's low 32 bits over
//! the tenths of a second since the node started, plus one (0 is "never"). Four billion
//! breaks within one trust window cannot happen (each costs a resync of every local id).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The continuity of one node's hint stream, and the window a mark holds for.
#[derive(Debug)]
pub struct Trust {
    continuity: AtomicU64,
    started: Instant,
    /// How long a mark holds, in tenths of a second.
    window: u64,
}

const LOW: u64 = u32::MAX as u64;

impl Trust {
    /// Marks hold for half of `idle_ttl` (rounded down to a tenth of a second).
    pub fn new(idle_ttl: Duration) -> Self {
        Self {
            continuity: AtomicU64::new(0),
            started: Instant::now(),
            window: u64::try_from(idle_ttl.as_millis() / 200).unwrap_or(u64::MAX),
        }
    }

    /// Hints may have been lost: no mark taken until now holds any more.
    pub fn break_off(&self) {
        self.continuity.fetch_add(1, Ordering::AcqRel);
    }

    /// A mark for a value Redis held `age` ago.
    pub fn mark(&self, age: Duration) -> u64 {
        self.mark_at(self.started.elapsed().saturating_sub(age))
    }

    /// Whether a value marked `mark` is still current.
    pub fn holds(&self, mark: u64) -> bool {
        self.holds_at(mark, self.started.elapsed())
    }

    fn mark_at(&self, since_start: Duration) -> u64 {
        let continuity = self.continuity.load(Ordering::Acquire) & LOW;
        let tenths = u64::try_from(since_start.as_millis() / 100)
            .unwrap_or(LOW)
            .min(LOW - 1);
        continuity << 32 | (tenths + 1)
    }

    fn holds_at(&self, mark: u64, since_start: Duration) -> bool {
        let now = self.mark_at(since_start);
        mark != 0 && mark >> 32 == now >> 32 && (now & LOW).saturating_sub(mark & LOW) < self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_mark_holds_for_half_the_idle_ttl() {
        let trust = Trust::new(10 * SEC);
        let mark = trust.mark_at(3 * SEC);
        assert!(trust.holds_at(mark, 3 * SEC));
        assert!(trust.holds_at(mark, 7 * SEC + Duration::from_millis(900)));
        assert!(!trust.holds_at(mark, 8 * SEC));
        assert!(!trust.holds_at(mark, 3600 * SEC));
    }

    #[tokio::test]
    async fn a_break_ends_every_mark_taken_before_it_and_none_taken_after() {
        let trust = Trust::new(10 * SEC);
        let before = trust.mark_at(SEC);
        trust.break_off();
        let after = trust.mark_at(SEC);
        assert!(!trust.holds_at(before, SEC));
        assert!(trust.holds_at(after, SEC));
        trust.break_off();
        assert!(!trust.holds_at(after, SEC));
    }

    #[tokio::test]
    async fn a_value_redis_held_a_while_ago_is_trusted_for_that_much_less() {
        let trust = Trust::new(10 * SEC);
        let now = trust.mark(Duration::ZERO);
        let old = trust.mark(3 * SEC);
        assert!(trust.holds(now) && trust.holds(old));
        // Both taken at the node's start: the age cannot reach before it.
        assert_eq!(now, old);
        let later = trust.mark_at(10 * SEC);
        let aged = trust.mark_at(7 * SEC);
        assert!(trust.holds_at(later, 14 * SEC) && trust.holds_at(aged, 11 * SEC));
        assert!(!trust.holds_at(aged, 12 * SEC));
    }

    #[tokio::test]
    async fn never_is_never_trusted_and_a_short_ttl_trusts_nothing() {
        let trust = Trust::new(10 * SEC);
        assert!(!trust.holds_at(0, Duration::ZERO));
        // Even a mark taken in the node's first tenth of a second is not 0.
        assert_ne!(trust.mark_at(Duration::ZERO), 0);
        let tiny = Trust::new(Duration::from_millis(150));
        let mark = tiny.mark_at(SEC);
        assert!(!tiny.holds_at(mark, SEC));
    }
}
