//! Fault injection: the kinds of fault, per-port catalogs with their documented outcomes, plans
//! (scripted or seeded) and the `Faulty<P>` wrapper that injects them in front of any port.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use switchboard_ports::error::ErrorClass;
use switchboard_ports::FromClass;

/// A fault a wrapper can inject into one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The backend refuses: the call fails `Unavailable` and does nothing.
    Unavailable,
    /// The call fails `Timeout` without reaching the backend.
    Timeout,
    /// The call fails `RateLimited` and does nothing.
    RateLimited,
    /// The backend answers with data that fails its integrity check: `Corrupt`.
    Corrupt,
    /// The call reaches the backend and takes effect, but the caller sees `Timeout` (the answer was
    /// lost). Idempotent retries must not duplicate.
    LostAnswer,
    /// The call succeeds after yielding to the scheduler many times (a slow success).
    Slow,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Unavailable,
        Fault::Timeout,
        Fault::RateLimited,
        Fault::Corrupt,
        Fault::LostAnswer,
        Fault::Slow,
    ];

    /// The class the caller sees, `None` for a slow success.
    pub fn class(self) -> Option<ErrorClass> {
        match self {
            Fault::Unavailable => Some(ErrorClass::Unavailable),
            Fault::Timeout | Fault::LostAnswer => Some(ErrorClass::Timeout),
            Fault::RateLimited => Some(ErrorClass::RateLimited),
            Fault::Corrupt => Some(ErrorClass::Corrupt),
            Fault::Slow => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Unavailable => "unavailable",
            Fault::Timeout => "timeout",
            Fault::RateLimited => "rate_limited",
            Fault::Corrupt => "corrupt",
            Fault::LostAnswer => "lost_answer",
            Fault::Slow => "slow",
        }
    }

    /// The port error for this fault.
    pub fn error<E: FromClass>(self, op: &str) -> E {
        E::from_class(
            self.class().unwrap_or(ErrorClass::Timeout),
            format!("injected {} fault in {op}", self.name()),
        )
    }
}

/// One entry of a port's fault catalog: what is injected where, and the documented outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CatalogEntry {
    pub fault: Fault,
    /// The port method it is injected into (`"*"` for every method).
    pub op: &'static str,
    /// The fail-closed outcome the system promises, in one sentence.
    pub outcome: &'static str,
}

impl CatalogEntry {
    /// `fault@op`, the name used by the disruption suite and the tripwire.
    pub fn name(&self) -> String {
        format!("{}@{}", self.fault.name(), self.op)
    }
}

/// A plan deciding which calls fail.
#[derive(Debug)]
enum Mode {
    Off,
    /// Faults for the next matching calls, in order.
    Scripted(VecDeque<(String, Fault)>),
    /// Every matching call gets the fault, `remaining` times (`None`: forever).
    Always {
        op: String,
        fault: Fault,
        remaining: Option<u32>,
    },
    /// Each call fails with probability `per_mille`/1000, drawing from the listed faults.
    Seeded {
        seed: u64,
        state: u64,
        per_mille: u32,
        faults: Vec<Fault>,
    },
}

#[derive(Debug)]
struct PlanState {
    mode: Mode,
    injected: Vec<(String, Fault)>,
    calls: u64,
}

/// A shared, cloneable fault plan. The seed of a seeded plan is printed on failure by its users.
#[derive(Debug, Clone)]
pub struct FaultPlan(Arc<Mutex<PlanState>>);

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan::off()
    }
}

impl FaultPlan {
    fn with(mode: Mode) -> Self {
        FaultPlan(Arc::new(Mutex::new(PlanState {
            mode,
            injected: Vec::new(),
            calls: 0,
        })))
    }

    /// Injects nothing.
    pub fn off() -> Self {
        Self::with(Mode::Off)
    }

    /// Injects `fault` into every call of `op` (`"*"`: any op), forever.
    pub fn always(op: &str, fault: Fault) -> Self {
        Self::with(Mode::Always {
            op: op.to_string(),
            fault,
            remaining: None,
        })
    }

    /// Injects `fault` into the next `times` calls of `op`, then heals.
    pub fn times(op: &str, fault: Fault, times: u32) -> Self {
        Self::with(Mode::Always {
            op: op.to_string(),
            fault,
            remaining: Some(times),
        })
    }

    /// Injects the listed faults into the next matching calls, in order, then heals.
    pub fn scripted(steps: impl IntoIterator<Item = (&'static str, Fault)>) -> Self {
        Self::with(Mode::Scripted(
            steps
                .into_iter()
                .map(|(op, f)| (op.to_string(), f))
                .collect(),
        ))
    }

    /// Fails each call with probability `per_mille / 1000`, with a fault drawn from `faults`, by a
    /// deterministic generator seeded with `seed`.
    pub fn seeded(seed: u64, per_mille: u32, faults: &[Fault]) -> Self {
        Self::with(Mode::Seeded {
            seed,
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            per_mille,
            faults: faults.to_vec(),
        })
    }

    /// Stops injecting (the backend heals).
    pub fn heal(&self) {
        self.0.lock().unwrap().mode = Mode::Off;
    }

    /// Replaces the plan's mode with another plan's (e.g. to start failing mid-test).
    pub fn set(&self, other: FaultPlan) {
        let mode = std::mem::replace(&mut other.0.lock().unwrap().mode, Mode::Off);
        self.0.lock().unwrap().mode = mode;
    }

    /// The seed of a seeded plan.
    pub fn seed(&self) -> Option<u64> {
        match &self.0.lock().unwrap().mode {
            Mode::Seeded { seed, .. } => Some(*seed),
            _ => None,
        }
    }

    /// Every fault injected so far, with its op.
    pub fn injected(&self) -> Vec<(String, Fault)> {
        self.0.lock().unwrap().injected.clone()
    }

    /// Calls seen so far.
    pub fn calls(&self) -> u64 {
        self.0.lock().unwrap().calls
    }

    /// Decides the fate of one call of `op`.
    pub fn next(&self, op: &str) -> Option<Fault> {
        let mut st = self.0.lock().unwrap();
        st.calls += 1;
        let matches = |want: &str| want == "*" || want == op;
        let fault = match &mut st.mode {
            Mode::Off => None,
            Mode::Scripted(steps) => match steps.front() {
                Some((want, f)) if matches(want) => {
                    let f = *f;
                    steps.pop_front();
                    Some(f)
                }
                _ => None,
            },
            Mode::Always {
                op: want,
                fault,
                remaining,
            } => {
                if matches(want) {
                    match remaining {
                        None => Some(*fault),
                        Some(0) => None,
                        Some(n) => {
                            *n -= 1;
                            Some(*fault)
                        }
                    }
                } else {
                    None
                }
            }
            Mode::Seeded {
                state,
                per_mille,
                faults,
                ..
            } => {
                // splitmix64
                *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                if faults.is_empty() || (z % 1000) as u32 >= *per_mille {
                    None
                } else {
                    Some(faults[((z >> 32) as usize) % faults.len()])
                }
            }
        };
        if let Some(f) = fault {
            st.injected.push((op.to_string(), f));
        }
        fault
    }
}

/// Wraps a port and injects faults by plan. `P` is a port trait object (`Faulty<dyn RunLedger>`);
/// each port module implements the port trait for its `Faulty`.
pub struct Faulty<P: ?Sized> {
    pub inner: Arc<P>,
    pub plan: FaultPlan,
}

impl<P: ?Sized> Faulty<P> {
    pub fn new(inner: Arc<P>, plan: FaultPlan) -> Self {
        Faulty { inner, plan }
    }

    /// Runs `call` under the plan: a failing fault returns its error without calling (or, for
    /// `LostAnswer`, after calling); `Slow` yields first.
    pub async fn call<T, E, Fut>(&self, op: &str, call: impl FnOnce() -> Fut) -> Result<T, E>
    where
        E: FromClass,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        match self.plan.next(op) {
            None => call().await,
            Some(Fault::Slow) => {
                for _ in 0..64 {
                    tokio::task::yield_now().await;
                }
                call().await
            }
            Some(Fault::LostAnswer) => {
                let _ = call().await;
                Err(Fault::LostAnswer.error(op))
            }
            Some(f) => Err(f.error(op)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_plans_fire_in_order_then_heal() {
        let p = FaultPlan::scripted([("record", Fault::Unavailable), ("get", Fault::Timeout)]);
        assert_eq!(p.next("get"), None, "a step waits for its op");
        assert_eq!(p.next("record"), Some(Fault::Unavailable));
        assert_eq!(p.next("get"), Some(Fault::Timeout));
        assert_eq!(p.next("record"), None);
        assert_eq!(p.injected().len(), 2);
        assert_eq!(p.calls(), 4);
    }

    #[test]
    fn times_heals_after_count() {
        let p = FaultPlan::times("*", Fault::RateLimited, 2);
        assert_eq!(p.next("a"), Some(Fault::RateLimited));
        assert_eq!(p.next("b"), Some(Fault::RateLimited));
        assert_eq!(p.next("c"), None);
    }

    #[test]
    fn seeded_plans_are_deterministic() {
        let draw = |seed| {
            let p = FaultPlan::seeded(seed, 300, &[Fault::Unavailable, Fault::Timeout]);
            (0..200).map(|_| p.next("x")).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let hits = draw(7).iter().filter(|f| f.is_some()).count();
        assert!(
            (30..=100).contains(&hits),
            "about 30% should fail, got {hits}/200"
        );
    }
}
