//! Contract cases, fault catalog and `Faulty` wrapper for `SandboxProvider`.
//!
//! A fixture can "be the sandbox": its `boot` hook waits for a spawned sandbox to come up and
//! returns the spec the sandbox received. The disruption cases of this port are part of the
//! session lifecycle, so [`disruptions`] is empty here.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, BoxFut, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_core::protocol::{SpawnSpec, SpawnTimeouts};
use switchboard_core::SandboxId;
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_ports::error::ErrorClass;
use switchboard_ports::sandbox::SandboxState;
use switchboard_ports::{PortId, SandboxProvider, SandboxProviderError};

/// Plays the sandbox side: makes sandbox `id` finish booting (so it reports `Running`) and returns
/// the spec it received, as the sandbox itself sees it.
pub type Boot = Arc<dyn Fn(SandboxId) -> BoxFut<'static, Result<SpawnSpec, String>> + Send + Sync>;

/// What every `SandboxProvider` case gets.
pub struct Fixture {
    pub provider: Arc<dyn SandboxProvider>,
    pub boot: Boot,
}

/// Every contract case of `SandboxProvider`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "spawn_returns_distinct_ids",
            run: |f| Box::pin(spawn_returns_distinct_ids(f)),
        },
        Case {
            name: "terminate_is_idempotent",
            run: |f| Box::pin(terminate_is_idempotent(f)),
        },
        Case {
            name: "unknown_sandbox_not_found",
            run: |f| Box::pin(unknown_sandbox_not_found(f)),
        },
        Case {
            name: "spec_reaches_sandbox",
            run: |f| Box::pin(spec_reaches_sandbox(f)),
        },
        Case {
            name: "snapshot_running",
            run: |f| Box::pin(snapshot_running(f)),
        },
    ]
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A spec with a callback URL and token no other case uses.
fn spec() -> SpawnSpec {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}-{n}", std::process::id());
    SpawnSpec {
        session_key: format!("org-sp-{tag}:session-{tag}"),
        callback_url: format!("ws://127.0.0.1:9/sandbox/v1/sessions/org-sp-{tag}/session-{tag}/ws"),
        token: format!("sbt_{tag}_0123456789abcdef"),
        agent: "opencode".into(),
        repo: None,
        env: BTreeMap::from([("SWITCHBOARD_CASE".to_string(), tag)]),
        timeouts: SpawnTimeouts {
            idle_s: 60,
            max_s: 600,
        },
    }
}

fn is_live(state: &SandboxState) -> bool {
    matches!(state, SandboxState::Starting | SandboxState::Running)
}

async fn spawn_returns_distinct_ids(f: Fixture) -> CaseResult {
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let id = ok!(f.provider.spawn(&spec()).await);
        ensure!(ids.insert(id.clone()), "spawn returned {id} twice");
        let state = ok!(f.provider.status(&id).await);
        ensure!(is_live(&state), "a fresh sandbox {id} reports {state:?}");
    }
    for id in &ids {
        ok!(f.provider.terminate(id).await);
    }
    Ok(())
}

async fn terminate_is_idempotent(f: Fixture) -> CaseResult {
    let id = ok!(f.provider.spawn(&spec()).await);
    let other = ok!(f.provider.spawn(&spec()).await);
    ok!(f.provider.terminate(&id).await);
    let state = ok!(f.provider.status(&id).await);
    ensure!(
        matches!(state, SandboxState::Exited { .. }),
        "after terminate the status is {state:?}"
    );
    ok!(f.provider.terminate(&id).await);
    let again = ok!(f.provider.status(&id).await);
    ensure!(
        matches!(again, SandboxState::Exited { .. }),
        "after a second terminate the status is {again:?}"
    );
    let untouched = ok!(f.provider.status(&other).await);
    ensure!(
        is_live(&untouched),
        "terminating {id} ended {other} too: {untouched:?}"
    );
    ok!(f.provider.terminate(&other).await);
    Ok(())
}

async fn unknown_sandbox_not_found(f: Fixture) -> CaseResult {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let unknown = SandboxId::parse(format!("never-spawned-{}-{n}", std::process::id()))
        .expect("a valid sandbox id");
    expect_class!(f.provider.status(&unknown).await, ErrorClass::NotFound);
    expect_class!(f.provider.terminate(&unknown).await, ErrorClass::NotFound);
    expect_class!(f.provider.snapshot(&unknown).await, ErrorClass::NotFound);
    Ok(())
}

async fn spec_reaches_sandbox(f: Fixture) -> CaseResult {
    let sent = spec();
    let decoy = spec();
    let decoy_id = ok!(f.provider.spawn(&decoy).await);
    let id = ok!(f.provider.spawn(&sent).await);
    let seen = (f.boot)(id.clone()).await?;
    ensure_eq!(
        seen.callback_url,
        sent.callback_url,
        "the callback URL the sandbox got"
    );
    ensure!(
        seen.token == sent.token,
        "the sandbox got a different token than the one handed to spawn"
    );
    ensure_eq!(
        seen.session_key,
        sent.session_key,
        "the session key the sandbox got"
    );
    ensure_eq!(seen.agent, sent.agent, "the agent the sandbox got");
    ok!(f.provider.terminate(&id).await);
    ok!(f.provider.terminate(&decoy_id).await);
    Ok(())
}

async fn snapshot_running(f: Fixture) -> CaseResult {
    let id = ok!(f.provider.spawn(&spec()).await);
    (f.boot)(id.clone()).await?;
    ensure_eq!(
        ok!(f.provider.status(&id).await),
        SandboxState::Running,
        "status once booted"
    );
    let snapshot = ok!(f.provider.snapshot(&id).await);
    ensure!(!snapshot.is_empty(), "a snapshot has an empty reference");
    ok!(f.provider.terminate(&id).await);
    expect_class!(f.provider.snapshot(&id).await, ErrorClass::Conflict);
    Ok(())
}

/// The in-memory provider with its `boot` hook: read the recorded spec and mark it running.
pub fn in_memory_fixture() -> Fixture {
    let provider = Arc::new(InMemorySandboxProvider::new());
    let sandbox_side = provider.clone();
    let boot: Boot = Arc::new(move |id| {
        let provider = sandbox_side.clone();
        Box::pin(async move {
            let spec = provider
                .spec(&id)
                .ok_or_else(|| format!("no sandbox {id} was spawned"))?;
            provider
                .mark_running(&id)
                .map_err(|e| format!("sandbox {id} could not boot: {e}"))?;
            Ok(spec)
        })
    });
    Fixture { provider, boot }
}

/// The fake and every real `SandboxProvider` (the local-process provider arrives with its issue).
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![Implementation::new("in_memory", ImplKind::Fake, || async {
        Ok(in_memory_fixture())
    })]
}

/// What the session promises when its sandbox provider fails.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "spawn",
        outcome: "the spawn attempt fails; the session retries up to `spawn_attempts` with a fresh token, then fails the waiting runs with a clear error, so no run waits forever",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "spawn",
        outcome: "treated like an unavailable provider: retried with a fresh token, then the waiting runs fail with a clear error",
    },
    CatalogEntry {
        fault: Fault::RateLimited,
        op: "spawn",
        outcome: "the attempt counts as failed: retried with a fresh token, then the waiting runs fail with a clear error; no run hangs",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "spawn",
        outcome: "the sandbox was created but its id never arrived: the retry mints a new token, so the orphan's dial-back is refused, and the orphan ends by the provider's idle and maximum lifetimes",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "spawn",
        outcome: "a slow spawn within the spawn timeout still connects and the queued runs dispatch in order",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "terminate",
        outcome: "the session still closes; the sandbox's token is no longer accepted and the provider's idle and maximum lifetimes end it",
    },
];

#[async_trait]
impl SandboxProvider for Faulty<dyn SandboxProvider> {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<SandboxId, SandboxProviderError> {
        self.call("spawn", || self.inner.spawn(spec)).await
    }

    async fn status(&self, id: &SandboxId) -> Result<SandboxState, SandboxProviderError> {
        self.call("status", || self.inner.status(id)).await
    }

    async fn terminate(&self, id: &SandboxId) -> Result<(), SandboxProviderError> {
        self.call("terminate", || self.inner.terminate(id)).await
    }

    async fn snapshot(&self, id: &SandboxId) -> Result<String, SandboxProviderError> {
        self.call("snapshot", || self.inner.snapshot(id)).await
    }
}

/// The suite of `SandboxProvider`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::SandboxProvider, cases(), implementations(), CATALOG)
}

/// Runs every `SandboxProvider` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::SandboxProvider, name, make, &cases())
}

/// Provider faults are exercised inside the session lifecycle, not here.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}
