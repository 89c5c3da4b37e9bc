//! `InMemoryClock`: virtual time that moves only when a test advances it.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::Timestamp;
use switchboard_ports::Clock;
use tokio::sync::oneshot;

#[derive(Default)]
struct State {
    now: Timestamp,
    next_sleeper: u64,
    sleepers: BTreeMap<(Timestamp, u64), oneshot::Sender<()>>,
}

/// A clock whose time is set by the test. `sleep_until` returns once `advance` moves time past the
/// deadline. Cloning shares the same time.
#[derive(Clone, Default)]
pub struct InMemoryClock(Arc<Mutex<State>>);

impl InMemoryClock {
    /// A clock starting at `start`.
    pub fn at(start: Timestamp) -> Self {
        let c = InMemoryClock::default();
        c.0.lock().unwrap().now = start;
        c
    }

    /// A clock starting at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::at(Timestamp::from_millis(1_767_225_600_000))
    }

    /// Moves time forward and wakes every sleeper whose deadline has passed.
    pub fn advance(&self, by: Duration) {
        let mut st = self.0.lock().unwrap();
        st.now = st.now.add(by);
        let now = st.now;
        let due: Vec<_> = st
            .sleepers
            .keys()
            .take_while(|(t, _)| *t <= now)
            .copied()
            .collect();
        for k in due {
            if let Some(tx) = st.sleepers.remove(&k) {
                let _ = tx.send(());
            }
        }
    }

    /// Moves time forward to `t` (no-op if `t` is not later).
    pub fn advance_to(&self, t: Timestamp) {
        let now = self.now();
        if t > now {
            self.advance(t.since(now));
        }
    }

    /// The earliest deadline anyone is sleeping until.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.0
            .lock()
            .unwrap()
            .sleepers
            .keys()
            .next()
            .map(|(t, _)| *t)
    }

    /// How many tasks are sleeping.
    pub fn sleepers(&self) -> usize {
        self.0.lock().unwrap().sleepers.len()
    }
}

#[async_trait]
impl Clock for InMemoryClock {
    fn now(&self) -> Timestamp {
        self.0.lock().unwrap().now
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let rx = {
            let mut st = self.0.lock().unwrap();
            if deadline <= st.now {
                return;
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_sleeper;
            st.next_sleeper += 1;
            st.sleepers.insert((deadline, id), tx);
            rx
        };
        // A dropped sender means the clock itself was dropped: nobody can advance time any more.
        let _ = rx.await;
    }
}
