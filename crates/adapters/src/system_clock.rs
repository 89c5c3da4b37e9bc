//! `SystemClock`: the `Clock` port on the operating system's wall clock and tokio timers.
//!
//! Wall-clock time can step backwards (NTP corrections, a VM resumed); `now()` never does: it
//! answers the largest time it has seen.

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard_core::Timestamp;
use switchboard_ports::Clock;

/// The system clock, clamped so that `now()` is monotonic for each instance.
#[derive(Debug, Default)]
pub struct SystemClock {
    /// The latest `now()` answered, in milliseconds since the epoch.
    last: AtomicU64,
}

impl SystemClock {
    pub fn new() -> Self {
        Self::default()
    }
}

fn wall_millis() -> u64 {
    // A clock set before 1970 reads as the epoch; the clamp below keeps later readings monotonic.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let wall = wall_millis();
        let previous = self.last.fetch_max(wall, Ordering::AcqRel);
        Timestamp::from_millis(previous.max(wall))
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        // tokio's timer runs on the monotonic clock while `now()` reads the wall clock; loop until
        // the two agree that the deadline has passed, so a sleeper never wakes early.
        loop {
            let now = self.now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(deadline.since(now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn never_goes_backwards() {
        let clock = SystemClock::new();
        let ahead = wall_millis() + 3_600_000;
        clock.last.store(ahead, Ordering::Release);
        assert_eq!(
            clock.now().as_millis(),
            ahead,
            "a wall clock behind the last reading is clamped"
        );
        let fresh = SystemClock::new();
        let mut previous = fresh.now();
        for _ in 0..1000 {
            let t = fresh.now();
            assert!(t >= previous);
            previous = t;
        }
    }

    #[tokio::test]
    async fn sleeps_until_the_deadline() {
        let clock = SystemClock::new();
        let deadline = clock.now().add(Duration::from_millis(15));
        clock.sleep_until(deadline).await;
        assert!(clock.now() >= deadline);
    }
}
