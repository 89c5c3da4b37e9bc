//! The runner's vocabulary: contract cases, implementations under test, trials and reports.
//!
//! One contract case is one async function checking one `# Contract` bullet of a port. Every case
//! gets a fresh fixture (a fresh namespace: new in-memory state, database, schema or temp dir) from
//! the implementation's factory, and runs on its own current-thread tokio runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use switchboard_ports::PortId;

/// A boxed, sendable future.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a case returns: `Err` carries a failure message naming what was expected and what was seen.
pub type CaseResult = Result<(), String>;

/// One contract case for fixtures of type `F`.
pub struct Case<F> {
    /// The bullet name from the port's `# Contract` doc.
    pub name: &'static str,
    pub run: fn(F) -> BoxFut<'static, CaseResult>,
}

impl<F> Clone for Case<F> {
    fn clone(&self) -> Self {
        Case {
            name: self.name,
            run: self.run,
        }
    }
}

/// Makes a fresh fixture for one case.
pub type Factory<F> = Arc<dyn Fn() -> BoxFut<'static, Result<F, String>> + Send + Sync>;

/// Whether an implementation is an in-memory fake or a real adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImplKind {
    Fake,
    Adapter,
}

/// An implementation of a port, as the runner sees it.
pub struct Implementation<F> {
    /// snake_case name used in trial names (`in_memory`, `sqlite`, `postgres`, …).
    pub name: &'static str,
    pub kind: ImplKind,
    /// `Err(reason)` when the backend is absent here (e.g. no `DATABASE_URL`): the trials are
    /// reported as ignored with that reason, except under `CI=true`, where they fail.
    pub gate: fn() -> Result<(), String>,
    pub factory: Factory<F>,
}

impl<F> Clone for Implementation<F> {
    fn clone(&self) -> Self {
        Implementation {
            name: self.name,
            kind: self.kind,
            gate: self.gate,
            factory: self.factory.clone(),
        }
    }
}

impl<F: 'static> Implementation<F> {
    /// An implementation that is always available.
    pub fn new<Fut>(
        name: &'static str,
        kind: ImplKind,
        make: impl Fn() -> Fut + Send + Sync + 'static,
    ) -> Self
    where
        Fut: Future<Output = Result<F, String>> + Send + 'static,
    {
        Implementation {
            name,
            kind,
            gate: always_available,
            factory: Arc::new(move || Box::pin(make())),
        }
    }

    /// Sets the availability gate.
    pub fn gated(mut self, gate: fn() -> Result<(), String>) -> Self {
        self.gate = gate;
        self
    }
}

/// The gate of implementations that need nothing outside the process.
pub fn always_available() -> Result<(), String> {
    Ok(())
}

/// How one trial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Ignored(String),
}

/// One runnable `port::implementation::case`.
pub struct Trial {
    pub port: PortId,
    pub implementation: &'static str,
    pub kind: ImplKind,
    pub case: &'static str,
    /// `Some(reason)` when the implementation's gate is closed.
    pub unavailable: Option<String>,
    pub run: Box<dyn FnOnce() -> Outcome + Send>,
}

impl Trial {
    /// `port::implementation::case`.
    pub fn name(&self) -> String {
        format!(
            "{}::{}::{}",
            self.port.name(),
            self.implementation,
            self.case
        )
    }
}

/// The longest a single case may take before it counts as failed (a hang is a failure).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a future to completion on a fresh current-thread runtime with time and IO enabled (the
/// database adapters need the IO driver).
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(fut)
}

/// Builds the trials of every case against one implementation.
pub fn trials<F: Send + 'static>(
    port: PortId,
    implementation: &Implementation<F>,
    cases: &[Case<F>],
) -> Vec<Trial> {
    let unavailable = (implementation.gate)().err();
    cases
        .iter()
        .map(|case| {
            let factory = implementation.factory.clone();
            let case = case.clone();
            let gate_closed = unavailable.clone();
            Trial {
                port,
                implementation: implementation.name,
                kind: implementation.kind,
                case: case.name,
                unavailable: unavailable.clone(),
                run: Box::new(move || {
                    if let Some(reason) = gate_closed {
                        return Outcome::Ignored(reason);
                    }
                    block_on(async move {
                        let fixture = match factory().await {
                            Ok(f) => f,
                            Err(e) => {
                                return Outcome::Failed(format!("could not build a fixture: {e}"))
                            }
                        };
                        match tokio::time::timeout(CASE_TIMEOUT, (case.run)(fixture)).await {
                            Ok(Ok(())) => Outcome::Passed,
                            Ok(Err(msg)) => Outcome::Failed(msg),
                            Err(_) => Outcome::Failed(format!(
                                "case did not finish within {CASE_TIMEOUT:?}"
                            )),
                        }
                    })
                }),
            }
        })
        .collect()
}

/// Runs every case of a port against an adapter author's implementation, one after another: the
/// body of each port module's `check`.
pub fn check<F, Fut>(
    port: PortId,
    name: &'static str,
    make: impl Fn() -> Fut + Send + Sync + 'static,
    cases: &[Case<F>],
) -> Report
where
    F: Send + 'static,
    Fut: Future<Output = Result<F, String>> + Send + 'static,
{
    Report::run(trials(
        port,
        &Implementation::new(name, ImplKind::Adapter, make),
        cases,
    ))
}

/// The result of running a set of trials in-process (what an adapter author gets from `check`).
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<(String, Outcome)>,
}

impl Report {
    /// Runs the trials one after another.
    pub fn run(trials: Vec<Trial>) -> Report {
        let results = trials
            .into_iter()
            .map(|t| {
                let name = t.name();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(t.run))
                    .unwrap_or_else(|p| Outcome::Failed(panic_message(&p)));
                (name, outcome)
            })
            .collect();
        Report { results }
    }

    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|(_, o)| *o == Outcome::Passed)
            .count()
    }

    pub fn failures(&self) -> Vec<(&str, &str)> {
        self.results
            .iter()
            .filter_map(|(n, o)| match o {
                Outcome::Failed(m) => Some((n.as_str(), m.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Panics with every failure listed unless every trial passed.
    pub fn assert_all_passed(&self) {
        let failures = self.failures();
        let ignored: Vec<_> = self
            .results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Ignored(_)))
            .collect();
        assert!(
            failures.is_empty() && ignored.is_empty() && !self.results.is_empty(),
            "conformance: {} passed, {} failed, {} ignored\n{}",
            self.passed(),
            failures.len(),
            ignored.len(),
            failures
                .iter()
                .map(|(n, m)| format!("  {n}: {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}

/// Fails a case with a message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Fails a case unless the two values are equal.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(format!("{} != {}: {:?} vs {:?} (at {}:{})", stringify!($left), stringify!($right), l, r, file!(), line!()));
        }
    }};
    ($left:expr, $right:expr, $($fmt:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(format!("{}: {:?} vs {:?}", format!($($fmt)+), l, r));
        }
    }};
}

/// Unwraps an `Ok` in a case, failing it with context otherwise.
#[macro_export]
macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                return Err(format!(
                    "{} failed: {:?} (at {}:{})",
                    stringify!($e),
                    e,
                    file!(),
                    line!()
                ))
            }
        }
    };
}

/// Expects an error of a given class in a case.
#[macro_export]
macro_rules! expect_class {
    ($e:expr, $class:expr) => {
        match $e {
            Ok(v) => {
                return Err(format!(
                    "{} succeeded with {:?}; expected a {:?} error (at {}:{})",
                    stringify!($e),
                    v,
                    $class,
                    file!(),
                    line!()
                ))
            }
            Err(err) => {
                let got = switchboard_ports::Classify::class(&err);
                if got != $class {
                    return Err(format!(
                        "{} failed as {:?} ({}); expected {:?} (at {}:{})",
                        stringify!($e),
                        got,
                        err,
                        $class,
                        file!(),
                        line!()
                    ));
                }
            }
        }
    };
}
