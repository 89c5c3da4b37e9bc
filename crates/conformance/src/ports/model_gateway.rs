//! Contract cases, fault catalog and `Faulty` wrapper for `ModelGateway`.
//!
//! A gateway reads the tenant's keys from a `SecretVault`, so the fixture carries the vault the
//! cases store keys in, and names the providers the gateway routes and one it does not.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_adapters::direct_gateway::DirectModelGateway;
use switchboard_adapters::sql::scratch::ScratchDir;
use switchboard_adapters::sql::{connect_sqlite, migrate_sqlite, MasterKeys, SqliteSecretVault};
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::protocol::GatewayConfig;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ModelRef, OrgId, Principal, RunId, Scope, UserId};
use switchboard_fakes::model_gateway::InMemoryModelGateway;
use switchboard_fakes::secret_vault::InMemorySecretVault;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::error::ErrorClass;
use switchboard_ports::{ModelGateway, ModelGatewayError, PortId, SecretString, SecretVault};

/// What every `ModelGateway` case gets.
pub struct Fixture {
    pub gateway: Arc<dyn ModelGateway>,
    /// The vault the gateway reads keys from; the cases store keys in it.
    pub vault: Arc<dyn SecretVault>,
    /// Two distinct providers the gateway routes.
    pub routed: [String; 2],
    /// A valid provider name the gateway cannot route.
    pub unrouted: String,
    /// Whatever the vault lives in (a scratch database), kept for the whole case; None for the fake.
    pub scratch: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Every contract case of `ModelGateway`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "resolves_tenant_key",
            run: |f| Box::pin(resolves_tenant_key(f)),
        },
        Case {
            name: "missing_key_not_found",
            run: |f| Box::pin(missing_key_not_found(f)),
        },
        Case {
            name: "unknown_provider_invalid",
            run: |f| Box::pin(unknown_provider_invalid(f)),
        },
        Case {
            name: "tenant_isolation",
            run: |f| Box::pin(tenant_isolation(f)),
        },
    ]
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique(what: &str) -> String {
    format!("conf-{what}-{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// A fresh tenant (its own org).
fn tenant() -> Result<TenantContext, String> {
    let org = OrgId::parse(unique("org")).map_err(|e| e.to_string())?;
    let user = UserId::parse(unique("user")).map_err(|e| e.to_string())?;
    Ok(Principal::from_verified_credential(org, user, None, Scope::ALL.to_vec()).tenant())
}

fn run() -> Result<RunId, String> {
    RunId::parse(unique("run")).map_err(|e| e.to_string())
}

fn model(provider: &str) -> Result<ModelRef, String> {
    ModelRef::parse(&format!("{provider}/conformance-model")).map_err(|e| e.to_string())
}

/// A fresh key that names its purpose (never a real key).
fn key(what: &str) -> SecretString {
    SecretString::new(format!("sk-{}", unique(what)))
}

fn carries(cfg: &GatewayConfig, key: &SecretString) -> bool {
    cfg.api_key.as_deref() == Some(key.expose())
}

async fn resolves_tenant_key(f: Fixture) -> CaseResult {
    let t = tenant()?;
    let [p0, p1] = &f.routed;
    let (k0, k1) = (key("first"), key("second"));
    ok!(f.vault.put(&t, p0, &k0).await);
    ok!(f.vault.put(&t, p1, &k1).await);
    let cfg = ok!(f.gateway.resolve(&t, &run()?, &model(p0)?).await);
    ensure!(
        carries(&cfg, &k0),
        "resolving {p0} did not carry the stored {p0} key"
    );
    ensure!(!cfg.base_url.is_empty(), "resolving {p0} gave no base URL");
    let other = ok!(f.gateway.resolve(&t, &run()?, &model(p1)?).await);
    ensure!(
        carries(&other, &k1),
        "resolving {p1} did not carry the stored {p1} key"
    );
    // The key carried is the one stored now, not one remembered from before.
    let replaced = key("replacement");
    ok!(f.vault.put(&t, p0, &replaced).await);
    let cfg = ok!(f.gateway.resolve(&t, &run()?, &model(p0)?).await);
    ensure!(
        carries(&cfg, &replaced),
        "after the {p0} key was replaced, the gateway still carried the old one"
    );
    Ok(())
}

async fn missing_key_not_found(f: Fixture) -> CaseResult {
    let t = tenant()?;
    let [p0, p1] = &f.routed;
    expect_class!(
        f.gateway.resolve(&t, &run()?, &model(p0)?).await,
        ErrorClass::NotFound
    );
    ok!(f.vault.put(&t, p0, &key("only")).await);
    let missing = f.gateway.resolve(&t, &run()?, &model(p1)?).await;
    // The bullet requires the error to name the provider, so the user knows which key to add.
    if let Err(e) = &missing {
        ensure!(
            e.message().contains(p1.as_str()),
            "the NotFound for {p1} does not name the provider: {e}"
        );
    }
    expect_class!(missing, ErrorClass::NotFound);
    Ok(())
}

async fn unknown_provider_invalid(f: Fixture) -> CaseResult {
    let t = tenant()?;
    // Even with a key stored for it, a provider the gateway cannot route is refused as Invalid.
    ok!(f.vault.put(&t, &f.unrouted, &key("unrouted")).await);
    expect_class!(
        f.gateway.resolve(&t, &run()?, &model(&f.unrouted)?).await,
        ErrorClass::Invalid
    );
    let other = tenant()?;
    expect_class!(
        f.gateway
            .resolve(&other, &run()?, &model(&f.unrouted)?)
            .await,
        ErrorClass::Invalid
    );
    Ok(())
}

async fn tenant_isolation(f: Fixture) -> CaseResult {
    let (a, b) = (tenant()?, tenant()?);
    let p0 = &f.routed[0];
    let ka = key("tenant-a");
    ok!(f.vault.put(&a, p0, &ka).await);
    let for_a = ok!(f.gateway.resolve(&a, &run()?, &model(p0)?).await);
    ensure!(carries(&for_a, &ka), "tenant A did not get its own key");
    // Right after A's key was used, B (with no key of its own) gets nothing.
    expect_class!(
        f.gateway.resolve(&b, &run()?, &model(p0)?).await,
        ErrorClass::NotFound
    );
    let kb = key("tenant-b");
    ok!(f.vault.put(&b, p0, &kb).await);
    let for_b = ok!(f.gateway.resolve(&b, &run()?, &model(p0)?).await);
    ensure!(carries(&for_b, &kb), "tenant B did not get its own key");
    let for_a = ok!(f.gateway.resolve(&a, &run()?, &model(p0)?).await);
    ensure!(
        carries(&for_a, &ka),
        "tenant A's key changed when tenant B stored one"
    );
    ensure_eq!(for_a.base_url, for_b.base_url, "one provider, one route");
    Ok(())
}

/// The in-memory gateway over the in-memory vault.
fn in_memory_fixture() -> Fixture {
    let vault: Arc<dyn SecretVault> =
        Arc::new(InMemorySecretVault::new(Arc::new(InMemoryClock::new())));
    let gateway = InMemoryModelGateway::new(vault.clone())
        .with_provider("conformance-local", "http://127.0.0.1:9/v1");
    Fixture {
        gateway: Arc::new(gateway),
        vault,
        routed: ["anthropic".to_string(), "conformance-local".to_string()],
        unrouted: "conformance-unrouted".to_string(),
        scratch: None,
    }
}

/// The direct BYOK gateway over the sealed SQLite vault (a scratch database with its own random
/// master key), with a local provider added through the `SWITCHBOARD_PROVIDER_*` variables.
async fn direct_fixture() -> Result<Fixture, String> {
    let dir = ScratchDir::create("sb-gateway")?;
    let pool = connect_sqlite(&dir.join("app.db"), 4)
        .await
        .map_err(|e| e.to_string())?;
    migrate_sqlite(&pool).await.map_err(|e| e.to_string())?;
    let keys = MasterKeys::generate().map_err(|e| e.to_string())?;
    let vault: Arc<dyn SecretVault> = Arc::new(SqliteSecretVault::new(
        pool,
        Arc::new(keys),
        Arc::new(SystemClock::new()),
    ));
    let gateway = DirectModelGateway::new(vault.clone()).with_env_providers([(
        "SWITCHBOARD_PROVIDER_CONFORMANCE_LOCAL_BASE_URL".to_string(),
        "http://127.0.0.1:9/v1".to_string(),
    )])?;
    Ok(Fixture {
        gateway: Arc::new(gateway),
        vault,
        routed: ["anthropic".to_string(), "conformance_local".to_string()],
        unrouted: "conformance-unrouted".to_string(),
        scratch: Some(Arc::new(dir)),
    })
}

/// The fake and every real `ModelGateway`: the direct BYOK gateway over the SQLite vault.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(in_memory_fixture())
        }),
        Implementation::new("direct", ImplKind::Adapter, direct_fixture),
    ]
}

/// A gateway is resolved when a run is dispatched; a run never starts without its own key.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "resolve",
        outcome: "the run ends Failed with `dispatch_failed` before any `run` frame (or key) reaches the sandbox; the session stays usable and the next run resolves again",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "resolve",
        outcome: "as for unavailable: the run ends Failed with `dispatch_failed`, no key reaches the sandbox, and the next run resolves again",
    },
    CatalogEntry {
        fault: Fault::RateLimited,
        op: "resolve",
        outcome: "a rate-limited gateway fails the run with `dispatch_failed` rather than sending it without a route; later runs resolve once the limit clears",
    },
    CatalogEntry {
        fault: Fault::Corrupt,
        op: "resolve",
        outcome: "a key that fails its integrity check is never sent: the run ends Failed with `dispatch_failed` and the sandbox receives no key",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "resolve",
        outcome: "a slow resolution only delays the dispatch: the run starts once it answers, carrying the tenant's key",
    },
];

/// Every call goes through the plan.
#[async_trait]
impl ModelGateway for Faulty<dyn ModelGateway> {
    async fn resolve(
        &self,
        tenant: &TenantContext,
        run: &RunId,
        model: &ModelRef,
    ) -> Result<GatewayConfig, ModelGatewayError> {
        self.call("resolve", || self.inner.resolve(tenant, run, model))
            .await
    }
}

/// The suite of `ModelGateway`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::ModelGateway, cases(), implementations(), CATALOG)
}

/// Runs every `ModelGateway` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::ModelGateway, name, make, &cases())
}

/// Model gateway faults are exercised inside the session lifecycle (at dispatch), not here.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultPlan;
    use switchboard_ports::Classify;

    #[test]
    fn check_reports_a_gateway_that_shares_keys_across_tenants() {
        /// Remembers the last key it resolved and hands it to anyone: the contract must catch it.
        struct Leaky(
            Arc<dyn ModelGateway>,
            std::sync::Mutex<Option<GatewayConfig>>,
        );
        #[async_trait]
        impl ModelGateway for Leaky {
            async fn resolve(
                &self,
                t: &TenantContext,
                r: &RunId,
                m: &ModelRef,
            ) -> Result<GatewayConfig, ModelGatewayError> {
                match self.0.resolve(t, r, m).await {
                    Ok(cfg) => {
                        *self.1.lock().unwrap() = Some(cfg.clone());
                        Ok(cfg)
                    }
                    Err(e) => self.1.lock().unwrap().clone().ok_or(e),
                }
            }
        }
        let report = check("leaky", || async {
            let mut f = in_memory_fixture();
            f.gateway = Arc::new(Leaky(f.gateway.clone(), Default::default()));
            Ok(f)
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert!(
            failed.contains(&"model_gateway::leaky::tenant_isolation"),
            "{failed:?}"
        );
    }

    #[test]
    fn faulty_gateway_fails_by_class_then_heals() {
        harness::block_on(async {
            let f = in_memory_fixture();
            let t = tenant().unwrap();
            f.vault
                .put(&t, "anthropic", &SecretString::new("sk-faulty"))
                .await
                .unwrap();
            let faulty = Faulty::new(
                f.gateway.clone(),
                FaultPlan::times("resolve", Fault::RateLimited, 1),
            );
            let m = model("anthropic").unwrap();
            let r = run().unwrap();
            assert_eq!(
                faulty.resolve(&t, &r, &m).await.unwrap_err().class(),
                ErrorClass::RateLimited
            );
            assert_eq!(
                faulty.resolve(&t, &r, &m).await.unwrap().api_key.as_deref(),
                Some("sk-faulty")
            );
        });
    }
}
