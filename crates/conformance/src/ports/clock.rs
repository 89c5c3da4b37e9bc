//! Contract cases, fault catalog and `Faulty` wrapper for `Clock`.
//!
//! A fixture carries an `advance` hook: the in-memory clock moves virtual time with it, the system
//! clock ignores it and the cases wait a little real time (never more than a few tens of ms).

use crate::disruption::DisruptionCase;
use crate::ensure;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use async_trait::async_trait;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::Timestamp;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::{Clock, ClockError, PortId};

/// What every `Clock` case gets.
pub struct Fixture {
    pub clock: Arc<dyn Clock>,
    /// Moves the clock's time forward. Virtual clocks advance; a real clock does nothing (real time
    /// passes on its own).
    pub advance: Arc<dyn Fn(Duration) + Send + Sync>,
}

impl Fixture {
    /// A fixture over a clock whose time moves on its own.
    pub fn real(clock: Arc<dyn Clock>) -> Self {
        Fixture {
            clock,
            advance: Arc::new(|_| {}),
        }
    }

    /// A fixture over an in-memory clock, advanced by the cases.
    pub fn virtual_time(clock: InMemoryClock) -> Self {
        let handle = clock.clone();
        Fixture {
            clock: Arc::new(clock),
            advance: Arc::new(move |by| handle.advance(by)),
        }
    }
}

/// Every contract case of `Clock`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "now_is_monotonic",
            run: |f| Box::pin(now_is_monotonic(f)),
        },
        Case {
            name: "sleep_until_past_returns",
            run: |f| Box::pin(sleep_until_past_returns(f)),
        },
        Case {
            name: "sleep_until_wakes_after_deadline",
            run: |f| Box::pin(sleep_until_wakes_after_deadline(f)),
        },
    ]
}

/// Gives other tasks on this runtime a chance to run.
async fn yield_many(times: usize) {
    for _ in 0..times {
        tokio::task::yield_now().await;
    }
}

async fn now_is_monotonic(f: Fixture) -> CaseResult {
    let mut previous = f.clock.now();
    for i in 0..5_000u32 {
        if i % 500 == 0 {
            (f.advance)(Duration::from_millis(1));
        }
        let t = f.clock.now();
        ensure!(
            t >= previous,
            "now() went backwards at read {i}: {previous} then {t}"
        );
        previous = t;
    }
    Ok(())
}

async fn sleep_until_past_returns(f: Fixture) -> CaseResult {
    let now = f.clock.now();
    let past = [
        Timestamp::EPOCH,
        Timestamp::from_millis(now.as_millis().saturating_sub(1_000)),
        now,
    ];
    for deadline in past {
        // "At once": within a bounded number of polls, with no time passing for a virtual clock and
        // no timer a real clock would have to wait for.
        let returned = tokio::select! {
            biased;
            _ = f.clock.sleep_until(deadline) => true,
            _ = yield_many(100) => false,
        };
        ensure!(
            returned,
            "sleep_until({deadline}) with now() = {now} did not return at once"
        );
    }
    Ok(())
}

async fn sleep_until_wakes_after_deadline(f: Fixture) -> CaseResult {
    let step = Duration::from_millis(5);
    let deadline = f.clock.now().add(step * 4);
    let woke_at: Arc<Mutex<Option<Timestamp>>> = Arc::new(Mutex::new(None));
    let sleeper = {
        let (clock, woke_at) = (f.clock.clone(), woke_at.clone());
        tokio::spawn(async move {
            clock.sleep_until(deadline).await;
            *woke_at.lock().unwrap() = Some(clock.now());
        })
    };
    for _ in 0..3 {
        yield_many(50).await;
        // Read the sleeper's state before the clock: if it woke, now() read afterwards is at least
        // its wake time, which must be at or past the deadline.
        let woke = *woke_at.lock().unwrap();
        let now = f.clock.now();
        ensure!(
            woke.is_none() || now >= deadline,
            "the sleeper woke at {woke:?} while now() = {now} < deadline {deadline}"
        );
        (f.advance)(step);
    }
    (f.advance)(step);
    match tokio::time::timeout(Duration::from_secs(5), sleeper).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("the sleeper task failed: {e}")),
        Err(_) => {
            return Err(format!(
                "the sleeper did not wake within 5 s of its deadline {deadline}"
            ))
        }
    }
    let woke = *woke_at.lock().unwrap();
    let Some(woke) = woke else {
        return Err("the sleeper finished without recording its wake time".into());
    };
    ensure!(
        woke >= deadline,
        "the sleeper woke at {woke}, before its deadline {deadline}"
    );
    let now = f.clock.now();
    ensure!(
        now >= deadline,
        "now() = {now} after the wake, before the deadline {deadline}"
    );
    Ok(())
}

/// The fake and every real `Clock`.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture::virtual_time(InMemoryClock::new()))
        }),
        Implementation::new("system", ImplKind::Adapter, || async {
            Ok(Fixture::real(Arc::new(SystemClock::new())))
        }),
    ]
}

/// Reading the clock cannot fail, so a clock fault can only make a timer late, never early.
pub const CATALOG: &[CatalogEntry] = &[CatalogEntry {
    fault: Fault::Slow,
    op: "sleep_until",
    outcome: "a timer that fires late (never early) only delays what its deadline triggers: every timeout still fires, in deadline order, and nothing fires before its deadline",
}];

/// `now` passes through. `sleep_until` consults the plan: `Slow` yields many times before
/// sleeping; an error fault (which a timer cannot report) also only delays the wake-up. In every
/// case the sleeper still wakes at or after its deadline.
#[async_trait]
impl Clock for Faulty<dyn Clock> {
    fn now(&self) -> Timestamp {
        self.inner.now()
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let slept = self
            .call("sleep_until", || async {
                self.inner.sleep_until(deadline).await;
                Ok::<(), ClockError>(())
            })
            .await;
        if slept.is_err() {
            yield_many(64).await;
            self.inner.sleep_until(deadline).await;
        }
    }
}

/// The suite of `Clock`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::Clock, cases(), implementations(), CATALOG)
}

/// Runs every `Clock` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::Clock, name, make, &cases())
}

/// Clock faults are exercised inside the session lifecycle (timeouts firing late), not here.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultPlan;

    /// A clock whose timers fire at once: the wake-up case must catch it.
    struct EarlyClock(InMemoryClock);

    #[async_trait]
    impl Clock for EarlyClock {
        fn now(&self) -> Timestamp {
            self.0.now()
        }

        async fn sleep_until(&self, _deadline: Timestamp) {}
    }

    #[test]
    fn an_early_timer_fails_the_wake_case() {
        let report = check("early", || async {
            let clock = InMemoryClock::new();
            let handle = clock.clone();
            Ok(Fixture {
                clock: Arc::new(EarlyClock(clock)),
                advance: Arc::new(move |by| handle.advance(by)),
            })
        });
        let failed: Vec<&str> = report.failures().iter().map(|(name, _)| *name).collect();
        assert_eq!(
            failed,
            vec!["clock::early::sleep_until_wakes_after_deadline"]
        );
    }

    #[test]
    fn slow_timer_is_late_never_early() {
        harness::block_on(async {
            let clock = InMemoryClock::new();
            let faulty: Arc<Faulty<dyn Clock>> = Arc::new(Faulty::new(
                Arc::new(clock.clone()) as Arc<dyn Clock>,
                FaultPlan::always("sleep_until", Fault::Slow),
            ));
            let deadline = clock.now().add(Duration::from_millis(10));
            let f = faulty.clone();
            let sleeper = tokio::spawn(async move {
                f.sleep_until(deadline).await;
                f.now()
            });
            while clock.sleepers() == 0 {
                tokio::task::yield_now().await;
            }
            clock.advance(Duration::from_millis(10));
            let woke = sleeper.await.unwrap();
            assert!(woke >= deadline);
            assert_eq!(faulty.plan.injected().len(), 1);
        });
    }
}
