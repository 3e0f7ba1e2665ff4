//! The time refresh rotation judges by. PostgreSQL's clock is the only one in production, so
//! replicas whose clocks drift still agree on when a grace window closes or a session ends;
//! a test moves the clock forward to see that happen without waiting for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// PostgreSQL's `now()`, moved forward by an advance that only tests set (zero otherwise).
#[derive(Debug, Default)]
pub struct Clock {
    ahead_ms: AtomicU64,
}

impl Clock {
    /// Moves this clock forward by `by`, as if that much time had passed.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// How far this clock is ahead of the real one, in seconds (what SQL statements add to
    /// `now()`).
    pub fn ahead_secs(&self) -> f64 {
        Duration::from_millis(self.ahead_ms.load(Ordering::Relaxed)).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_is_the_real_one_until_advanced() {
        let clock = Clock::default();
        assert_eq!(clock.ahead_secs(), 0.0);
        clock.advance(Duration::from_millis(1500));
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.ahead_secs(), 3.5);
    }
}
