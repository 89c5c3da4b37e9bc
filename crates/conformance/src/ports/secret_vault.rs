//! Contract cases, fault catalog, `Faulty` wrapper and disruption cases for `SecretVault`.

use super::identity_store::{at, disruption_case, expect_fault, new_org_id, tenant};
use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{self, BoxFut, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::sql::{
    connect_sqlite, migrate_postgres, migrate_sqlite, MasterKeys, PgSecretVault, SqliteSecretVault,
};
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::ErrorClass;
use switchboard_fakes::secret_vault::InMemorySecretVault;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::identity::{CredentialMeta, SealedSecret, SecretVault, SecretVaultError};
use switchboard_ports::{PortId, SecretString};

/// A fresh vault (empty, with its own sealing key).
pub struct Fixture {
    pub vault: Arc<dyn SecretVault>,
    /// The scratch database the vault lives in, kept alive for the whole case (None for the fake).
    pub scratch: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

fn secret(s: &str) -> SecretString {
    SecretString::new(s)
}

/// Opens a key and compares it in constant time with the expected value.
async fn opens_to(
    vault: &dyn SecretVault,
    t: &TenantContext,
    provider: &str,
    want: &str,
) -> CaseResult {
    let got = ok!(vault.open(t, provider).await);
    ensure!(
        got.ct_eq(&secret(want)),
        "{provider} opened to a different value than was stored"
    );
    Ok(())
}

/// One case per `# Contract` bullet of `SecretVault`.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "put_then_open",
            run: |f| Box::pin(put_then_open(f)),
        },
        Case {
            name: "list_shows_last4_only",
            run: |f| Box::pin(list_shows_last4_only(f)),
        },
        Case {
            name: "overwrite_replaces",
            run: |f| Box::pin(overwrite_replaces(f)),
        },
        Case {
            name: "delete_removes",
            run: |f| Box::pin(delete_removes(f)),
        },
        Case {
            name: "tenant_isolation",
            run: |f| Box::pin(tenant_isolation(f)),
        },
        Case {
            name: "cross_tenant_blob_refused",
            run: |f| Box::pin(cross_tenant_blob_refused(f)),
        },
        Case {
            name: "invalid_provider_refused",
            run: |f| Box::pin(invalid_provider_refused(f)),
        },
    ]
}

async fn put_then_open(f: Fixture) -> CaseResult {
    let t = tenant(&new_org_id());
    let meta = ok!(f
        .vault
        .put(
            &t,
            "anthropic",
            &secret("sk-ant-api03-abcdefghijklmnop-WXYZ")
        )
        .await);
    ensure_eq!(
        (meta.provider.as_str(), meta.last4.as_str()),
        ("anthropic", "WXYZ")
    );
    ok!(f
        .vault
        .put(&t, "openai", &secret("sk-proj-0123456789-ünïcødé"))
        .await);
    opens_to(
        &*f.vault,
        &t,
        "anthropic",
        "sk-ant-api03-abcdefghijklmnop-WXYZ",
    )
    .await?;
    opens_to(&*f.vault, &t, "openai", "sk-proj-0123456789-ünïcødé").await?;
    expect_class!(f.vault.open(&t, "mistral").await, ErrorClass::NotFound);
    Ok(())
}

async fn list_shows_last4_only(f: Fixture) -> CaseResult {
    let t = tenant(&new_org_id());
    let key = "sk-live-very-secret-value-9876";
    let put = ok!(f.vault.put(&t, "openai", &secret(key)).await);
    let listed: Vec<CredentialMeta> = ok!(f.vault.list(&t).await);
    ensure_eq!(
        listed,
        vec![put.clone()],
        "the listing is the metadata put returned"
    );
    ensure_eq!(listed[0].last4, "9876");
    ensure_eq!(listed[0].provider, "openai");
    let json = serde_json::to_string(&listed).map_err(|e| e.to_string())?;
    ensure!(
        !json.contains("very-secret"),
        "the listing carries the key: {json}"
    );
    Ok(())
}

async fn overwrite_replaces(f: Fixture) -> CaseResult {
    let t = tenant(&new_org_id());
    ok!(f
        .vault
        .put(&t, "openai", &secret("sk-first-key-1111"))
        .await);
    ok!(f
        .vault
        .put(&t, "openai", &secret("sk-second-key-2222"))
        .await);
    opens_to(&*f.vault, &t, "openai", "sk-second-key-2222").await?;
    let listed = ok!(f.vault.list(&t).await);
    ensure_eq!(listed.len(), 1, "one entry per provider");
    ensure_eq!(listed[0].last4, "2222");
    Ok(())
}

async fn delete_removes(f: Fixture) -> CaseResult {
    let t = tenant(&new_org_id());
    ok!(f
        .vault
        .put(&t, "openai", &secret("sk-to-delete-0000"))
        .await);
    ok!(f
        .vault
        .put(&t, "anthropic", &secret("sk-to-keep-1111"))
        .await);
    ok!(f.vault.delete(&t, "openai").await);
    expect_class!(f.vault.open(&t, "openai").await, ErrorClass::NotFound);
    expect_class!(f.vault.delete(&t, "openai").await, ErrorClass::NotFound);
    expect_class!(
        f.vault.delete(&t, "never-stored").await,
        ErrorClass::NotFound
    );
    opens_to(&*f.vault, &t, "anthropic", "sk-to-keep-1111").await?;
    let listed = ok!(f.vault.list(&t).await);
    ensure_eq!(
        listed
            .iter()
            .map(|m| m.provider.as_str())
            .collect::<Vec<_>>(),
        vec!["anthropic"]
    );
    Ok(())
}

async fn tenant_isolation(f: Fixture) -> CaseResult {
    let (a, b) = (tenant(&new_org_id()), tenant(&new_org_id()));
    ok!(f
        .vault
        .put(&a, "openai", &secret("sk-org-a-key-aaaa"))
        .await);
    expect_class!(f.vault.open(&b, "openai").await, ErrorClass::NotFound);
    expect_class!(
        f.vault.export_sealed(&b, "openai").await,
        ErrorClass::NotFound
    );
    expect_class!(f.vault.delete(&b, "openai").await, ErrorClass::NotFound);
    ensure!(
        ok!(f.vault.list(&b).await).is_empty(),
        "another tenant lists nothing"
    );

    ok!(f
        .vault
        .put(&b, "openai", &secret("sk-org-b-key-bbbb"))
        .await);
    opens_to(&*f.vault, &a, "openai", "sk-org-a-key-aaaa").await?;
    opens_to(&*f.vault, &b, "openai", "sk-org-b-key-bbbb").await?;
    Ok(())
}

async fn cross_tenant_blob_refused(f: Fixture) -> CaseResult {
    let (a, b) = (tenant(&new_org_id()), tenant(&new_org_id()));
    ok!(f
        .vault
        .put(&a, "anthropic", &secret("sk-ant-org-a-secret-4242"))
        .await);
    ok!(f
        .vault
        .put(&b, "openai", &secret("sk-openai-org-b-7777"))
        .await);
    let sealed: SealedSecret = ok!(f.vault.export_sealed(&a, "anthropic").await);
    ensure!(
        !sealed
            .blob
            .windows(b"org-a-secret".len())
            .any(|w| w == b"org-a-secret"),
        "the sealed blob holds the key in clear"
    );

    ok!(f.vault.import_sealed(&b, &sealed).await);
    expect_class!(f.vault.open(&b, "anthropic").await, ErrorClass::Corrupt);
    opens_to(&*f.vault, &b, "openai", "sk-openai-org-b-7777").await?;
    opens_to(&*f.vault, &a, "anthropic", "sk-ant-org-a-secret-4242").await?;

    // The same blob restored into its own org opens (export/import is a backup path).
    ok!(f.vault.delete(&a, "anthropic").await);
    ok!(f.vault.import_sealed(&a, &sealed).await);
    opens_to(&*f.vault, &a, "anthropic", "sk-ant-org-a-secret-4242").await?;
    Ok(())
}

async fn invalid_provider_refused(f: Fixture) -> CaseResult {
    let t = tenant(&new_org_id());
    let long = "p".repeat(65);
    for provider in [
        "",
        "Open AI",
        "OpenAI",
        "a/b",
        "../etc",
        "openai\n",
        long.as_str(),
    ] {
        let shown: String = provider.chars().take(16).collect();
        match f.vault.put(&t, provider, &secret("sk-some-key-1234")).await {
            Ok(m) => return Err(format!("put under provider {shown:?} succeeded with {m:?}")),
            Err(e) => ensure_eq!(
                switchboard_ports::Classify::class(&e),
                ErrorClass::Invalid,
                "put under {shown:?}"
            ),
        }
        expect_class!(f.vault.open(&t, provider).await, ErrorClass::Invalid);
        expect_class!(f.vault.delete(&t, provider).await, ErrorClass::Invalid);
    }
    ensure!(ok!(f.vault.list(&t).await).is_empty(), "nothing was stored");
    ok!(f
        .vault
        .put(&t, "open-router_2.x", &secret("sk-valid-name-5678"))
        .await);
    Ok(())
}

fn in_memory_vault() -> InMemorySecretVault {
    InMemorySecretVault::new(Arc::new(InMemoryClock::at(at(0))))
}

/// A fresh random master key for one fixture's vault.
fn fresh_master_keys() -> Result<Arc<MasterKeys>, String> {
    MasterKeys::generate()
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Every implementation of `SecretVault`: the fake, and the AES-256-GCM vault on SQLite and on
/// Postgres (each fixture on its own scratch database, with its own random master key).
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                vault: Arc::new(in_memory_vault()),
                scratch: None,
            })
        }),
        Implementation::new("sqlite", ImplKind::Adapter, || async {
            let dir = ScratchDir::create("sb-vault")?;
            let pool = connect_sqlite(&dir.join("app.db"), 4)
                .await
                .map_err(|e| e.to_string())?;
            migrate_sqlite(&pool).await.map_err(|e| e.to_string())?;
            let vault =
                SqliteSecretVault::new(pool, fresh_master_keys()?, Arc::new(SystemClock::new()));
            Ok(Fixture {
                vault: Arc::new(vault),
                scratch: Some(Arc::new(dir)),
            })
        }),
        Implementation::new("postgres", ImplKind::Adapter, || async {
            let db = ScratchPostgres::create().await?;
            let pool = db.pool(4).await?;
            migrate_postgres(&pool).await.map_err(|e| e.to_string())?;
            let vault =
                PgSecretVault::new(pool, fresh_master_keys()?, Arc::new(SystemClock::new()));
            Ok(Fixture {
                vault: Arc::new(vault),
                scratch: Some(Arc::new(db)),
            })
        })
        .gated(postgres_gate),
    ]
}

/// The fault catalog of `SecretVault`.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry { fault: Fault::Unavailable, op: "put", outcome: "the credential write fails with 503 and the provider's previous key still opens unchanged" },
    CatalogEntry { fault: Fault::Timeout, op: "put", outcome: "the credential write fails with a timeout and the provider's previous key still opens unchanged" },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "put",
        outcome: "the key is sealed once; a retry leaves exactly one key for the provider, opening to the new value",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "open",
        outcome: "the run cannot get its key and fails Unavailable; no other key is substituted and nothing is changed",
    },
    CatalogEntry { fault: Fault::Timeout, op: "open", outcome: "the run cannot get its key and fails with a timeout; nothing is changed" },
    CatalogEntry { fault: Fault::Corrupt, op: "open", outcome: "open fails Corrupt and never returns a secret; the sealed blob is left as it was" },
    CatalogEntry { fault: Fault::Unavailable, op: "delete", outcome: "the delete fails and the key stays usable; a retry after healing removes it" },
    CatalogEntry { fault: Fault::LostAnswer, op: "delete", outcome: "the key is removed once; the retry answers NotFound and the key stays gone" },
    CatalogEntry { fault: Fault::Unavailable, op: "list", outcome: "GET /v1/credentials answers 503 and nothing is changed" },
];

#[async_trait]
impl SecretVault for Faulty<dyn SecretVault> {
    async fn put(
        &self,
        tenant: &TenantContext,
        provider: &str,
        secret: &SecretString,
    ) -> Result<CredentialMeta, SecretVaultError> {
        self.call("put", || self.inner.put(tenant, provider, secret))
            .await
    }
    async fn open(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SecretString, SecretVaultError> {
        self.call("open", || self.inner.open(tenant, provider))
            .await
    }
    async fn list(&self, tenant: &TenantContext) -> Result<Vec<CredentialMeta>, SecretVaultError> {
        self.call("list", || self.inner.list(tenant)).await
    }
    async fn delete(&self, tenant: &TenantContext, provider: &str) -> Result<(), SecretVaultError> {
        self.call("delete", || self.inner.delete(tenant, provider))
            .await
    }
    async fn export_sealed(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SealedSecret, SecretVaultError> {
        self.call("export_sealed", || {
            self.inner.export_sealed(tenant, provider)
        })
        .await
    }
    async fn import_sealed(
        &self,
        tenant: &TenantContext,
        sealed: &SealedSecret,
    ) -> Result<(), SecretVaultError> {
        self.call("import_sealed", || self.inner.import_sealed(tenant, sealed))
            .await
    }
}

/// The suite of `SecretVault`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::SecretVault, cases(), implementations(), CATALOG)
}

/// Runs every contract case against an implementation: the adapter author's entry point.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::SecretVault, name, make, &cases())
}

/// One disruption case per catalog entry.
pub fn disruptions() -> Vec<DisruptionCase> {
    CATALOG
        .iter()
        .map(|e| disruption_case(PortId::SecretVault, e, disruption_flow))
        .collect()
}

fn disruption_flow(entry: CatalogEntry) -> BoxFut<'static, CaseResult> {
    Box::pin(async move {
        let inner: Arc<dyn SecretVault> = Arc::new(in_memory_vault());
        let plan = FaultPlan::off();
        let faulty = Faulty::new(inner.clone(), plan.clone());
        let t = tenant(&new_org_id());
        let (old, new) = ("sk-old-key-0000", "sk-new-key-1111");
        ok!(inner.put(&t, "openai", &secret(old)).await);
        ok!(inner
            .put(&t, "anthropic", &secret("sk-other-key-2222"))
            .await);
        let before = ok!(inner.list(&t).await);
        let sealed_before = ok!(inner.export_sealed(&t, "openai").await);
        let fault = entry.fault;

        match entry.op {
            "put" if fault == Fault::LostAnswer => {
                plan.set(FaultPlan::times("put", fault, 1));
                expect_fault("put", faulty.put(&t, "openai", &secret(new)).await, fault)?;
                opens_to(&*inner, &t, "openai", new).await?;
                ok!(faulty.put(&t, "openai", &secret(new)).await);
                let openai: Vec<_> = ok!(inner.list(&t).await)
                    .into_iter()
                    .filter(|m| m.provider == "openai")
                    .collect();
                ensure_eq!(openai.len(), 1, "exactly one openai key after the retry");
                ensure_eq!(openai[0].last4, "1111");
                opens_to(&*inner, &t, "openai", new).await?;
            }
            "put" => {
                plan.set(FaultPlan::always("put", fault));
                expect_fault("put", faulty.put(&t, "openai", &secret(new)).await, fault)?;
                expect_fault(
                    "put of a new provider",
                    faulty.put(&t, "mistral", &secret(new)).await,
                    fault,
                )?;
                ensure_eq!(ok!(inner.list(&t).await), before, "nothing was written");
                opens_to(&*inner, &t, "openai", old).await?;
                plan.heal();
                ok!(faulty.put(&t, "openai", &secret(new)).await);
                opens_to(&*inner, &t, "openai", new).await?;
            }
            "open" => {
                plan.set(FaultPlan::always("open", fault));
                expect_fault("open", faulty.open(&t, "openai").await, fault)?;
                expect_fault(
                    "open of another provider",
                    faulty.open(&t, "anthropic").await,
                    fault,
                )?;
                ensure_eq!(
                    ok!(inner.export_sealed(&t, "openai").await),
                    sealed_before,
                    "the sealed blob is untouched"
                );
                if fault == Fault::Corrupt {
                    // Real damage, not only the injected kind: a flipped byte never opens.
                    let mut damaged = sealed_before.clone();
                    let mid = damaged.blob.len() / 2;
                    damaged.blob[mid] ^= 0x01;
                    ok!(inner.import_sealed(&t, &damaged).await);
                    expect_class!(inner.open(&t, "openai").await, ErrorClass::Corrupt);
                    ok!(inner.import_sealed(&t, &sealed_before).await);
                }
                plan.heal();
                opens_to(&faulty, &t, "openai", old).await?;
            }
            "delete" if fault == Fault::LostAnswer => {
                plan.set(FaultPlan::times("delete", fault, 1));
                expect_fault("delete", faulty.delete(&t, "openai").await, fault)?;
                expect_class!(inner.open(&t, "openai").await, ErrorClass::NotFound);
                expect_class!(faulty.delete(&t, "openai").await, ErrorClass::NotFound);
                expect_class!(inner.open(&t, "openai").await, ErrorClass::NotFound);
                opens_to(&*inner, &t, "anthropic", "sk-other-key-2222").await?;
            }
            "delete" => {
                plan.set(FaultPlan::always("delete", fault));
                expect_fault("delete", faulty.delete(&t, "openai").await, fault)?;
                opens_to(&*inner, &t, "openai", old).await?;
                plan.heal();
                ok!(faulty.delete(&t, "openai").await);
                expect_class!(inner.open(&t, "openai").await, ErrorClass::NotFound);
            }
            "list" => {
                plan.set(FaultPlan::always("list", fault));
                expect_fault("list", faulty.list(&t).await, fault)?;
                ensure_eq!(ok!(inner.list(&t).await), before, "nothing changed");
                plan.heal();
                ensure_eq!(ok!(faulty.list(&t).await), before);
            }
            _ => return Err(format!("no disruption flow written for {}", entry.name())),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vault that keeps every tenant's keys in one shared org.
    struct SharedVault(InMemorySecretVault, TenantContext);

    #[async_trait]
    impl SecretVault for SharedVault {
        async fn put(
            &self,
            _: &TenantContext,
            provider: &str,
            secret: &SecretString,
        ) -> Result<CredentialMeta, SecretVaultError> {
            self.0.put(&self.1, provider, secret).await
        }
        async fn open(
            &self,
            _: &TenantContext,
            provider: &str,
        ) -> Result<SecretString, SecretVaultError> {
            self.0.open(&self.1, provider).await
        }
        async fn list(&self, _: &TenantContext) -> Result<Vec<CredentialMeta>, SecretVaultError> {
            self.0.list(&self.1).await
        }
        async fn delete(&self, _: &TenantContext, provider: &str) -> Result<(), SecretVaultError> {
            self.0.delete(&self.1, provider).await
        }
        async fn export_sealed(
            &self,
            _: &TenantContext,
            provider: &str,
        ) -> Result<SealedSecret, SecretVaultError> {
            self.0.export_sealed(&self.1, provider).await
        }
        async fn import_sealed(
            &self,
            _: &TenantContext,
            sealed: &SealedSecret,
        ) -> Result<(), SecretVaultError> {
            self.0.import_sealed(&self.1, sealed).await
        }
    }

    #[test]
    fn check_reports_a_vault_that_shares_keys_across_tenants() {
        let report = check("shared", || async {
            Ok(Fixture {
                vault: Arc::new(SharedVault(in_memory_vault(), tenant(&new_org_id()))),
                scratch: None,
            })
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert!(
            failed.contains(&"secret_vault::shared::tenant_isolation"),
            "{failed:?}"
        );
        assert!(
            failed.contains(&"secret_vault::shared::cross_tenant_blob_refused"),
            "{failed:?}"
        );
        assert!(
            !failed.contains(&"secret_vault::shared::put_then_open"),
            "{failed:?}"
        );
    }
}
