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

/// What the fake bridges of a local-process fixture report: each sends its exact initial
/// environment (`/proc/$$/environ`) over TCP, as the real bridge dials back. A std thread accepts;
/// dropping this wakes it so that it ends.
struct EnvReports {
    port: u16,
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// The incoming reports, and those that arrived before their sandbox was asked for.
    received: tokio::sync::Mutex<(ReportStream, BTreeMap<String, SandboxEnv>)>,
}

/// Raw reports, one per connection.
type ReportStream = tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>;
/// One sandbox's environment.
type SandboxEnv = BTreeMap<String, String>;

impl EnvReports {
    fn start() -> Result<EnvReports, String> {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = closing.clone();
        std::thread::Builder::new()
            .name("fake-bridge-reports".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let mut bytes = Vec::new();
                    if conn.read_to_end(&mut bytes).is_ok() && tx.send(bytes).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(EnvReports {
            port,
            closing,
            received: tokio::sync::Mutex::new((rx, BTreeMap::new())),
        })
    }

    /// The environment sandbox `id` reported (others that arrive first are kept for later).
    async fn env_of(&self, id: &SandboxId) -> Result<BTreeMap<String, String>, String> {
        use switchboard_adapters::local_sandbox::ENV_SANDBOX_ID;
        let mut guard = self.received.lock().await;
        let (rx, seen) = &mut *guard;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(env) = seen.remove(id.as_str()) {
                return Ok(env);
            }
            let bytes = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| format!("sandbox {id} did not report within 30 s"))?
                .ok_or("the report listener ended")?;
            let env: BTreeMap<String, String> = bytes
                .split(|b| *b == 0)
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            let reporter = env
                .get(ENV_SANDBOX_ID)
                .cloned()
                .ok_or("a sandbox reported no SWITCHBOARD_SANDBOX_ID")?;
            seen.insert(reporter, env);
        }
    }
}

impl Drop for EnvReports {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The spec as a local sandbox sees it, from the environment its bridge was started with.
fn spec_from_env(env: &BTreeMap<String, String>) -> Result<SpawnSpec, String> {
    use switchboard_adapters::local_sandbox::*;
    let get = |name: &str| {
        env.get(name)
            .cloned()
            .ok_or_else(|| format!("the sandbox got no {name}"))
    };
    let number = |name: &str| -> Result<u64, String> {
        get(name)?
            .parse()
            .map_err(|e| format!("{name} is not a number: {e}"))
    };
    let reserved = [
        "PATH",
        "HOME",
        "LANG",
        ENV_CALLBACK_URL,
        ENV_SANDBOX_TOKEN,
        ENV_SANDBOX_ID,
        ENV_SESSION_KEY,
        ENV_WORKSPACE,
        ENV_IDLE_TIMEOUT_S,
        ENV_MAX_LIFETIME_S,
        ENV_AGENT,
        ENV_AGENT_COMMAND,
    ];
    Ok(SpawnSpec {
        session_key: get(ENV_SESSION_KEY)?,
        callback_url: get(ENV_CALLBACK_URL)?,
        token: get(ENV_SANDBOX_TOKEN)?,
        agent: get(ENV_AGENT)?,
        repo: None,
        env: env
            .iter()
            .filter(|(k, _)| !reserved.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeouts: SpawnTimeouts {
            idle_s: number(ENV_IDLE_TIMEOUT_S)?,
            max_s: number(ENV_MAX_LIFETIME_S)?,
        },
    })
}

/// The local-process provider under a scratch root, whose "bridge" is a bash script that reports
/// its environment to the fixture and then waits; `boot` waits for that report.
async fn local_process_fixture() -> Result<Fixture, String> {
    use switchboard_adapters::local_sandbox::{LocalProcessSandboxProvider, LocalSandboxConfig};
    let dir = Arc::new(switchboard_adapters::sql::scratch::ScratchDir::create(
        "sb-sandboxes",
    )?);
    let reports = Arc::new(EnvReports::start()?);
    let script = "cat /proc/$$/environ > /dev/tcp/127.0.0.1/$1 && exec sleep 600";
    let config = LocalSandboxConfig::new(dir.join("sandboxes"))
        .with_bridge(
            "bash",
            vec![
                "-c".into(),
                script.into(),
                "fake-bridge".into(),
                reports.port.to_string(),
            ],
        )
        .with_terminate_grace(std::time::Duration::from_secs(2));
    let provider = Arc::new(LocalProcessSandboxProvider::new(config)?);
    let boot: Boot = Arc::new(move |id| {
        let (reports, _scratch) = (reports.clone(), dir.clone());
        Box::pin(async move { spec_from_env(&reports.env_of(&id).await?) })
    });
    Ok(Fixture { provider, boot })
}

/// The fake and every real `SandboxProvider`: the local-process provider.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(in_memory_fixture())
        }),
        Implementation::new("local_process", ImplKind::Adapter, local_process_fixture),
    ]
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
