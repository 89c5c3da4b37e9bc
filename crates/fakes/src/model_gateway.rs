//! `InMemoryModelGateway`: routes a model to its provider's base URL with the tenant's own key from
//! a `SecretVault` (bring-your-own-key, direct to the provider).

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use switchboard_core::protocol::GatewayConfig;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ModelRef, RunId};
use switchboard_ports::error::ErrorClass;
use switchboard_ports::{Classify, FromClass, ModelGateway, ModelGatewayError, SecretVault};

/// The providers every `InMemoryModelGateway` can route, with their OpenAI- or provider-native
/// API base URLs (the table shared with the real direct gateway).
pub const DEFAULT_PROVIDERS: &[(&str, &str)] = switchboard_ports::agent::default_providers();

/// A direct BYOK gateway: `provider = model.provider()`, base URL from a routing table, key from the
/// tenant's vault. There is no default provider: an unrouted provider is `Invalid`, a routed one
/// with no stored key is `NotFound`, naming the provider.
#[derive(Clone)]
pub struct InMemoryModelGateway {
    vault: Arc<dyn SecretVault>,
    routes: HashMap<String, String>,
}

impl InMemoryModelGateway {
    /// A gateway over `vault` routing the [`DEFAULT_PROVIDERS`].
    pub fn new(vault: Arc<dyn SecretVault>) -> Self {
        let routes = DEFAULT_PROVIDERS
            .iter()
            .map(|(p, url)| (p.to_string(), url.to_string()))
            .collect();
        InMemoryModelGateway { vault, routes }
    }

    /// A gateway over `vault` that routes no provider until [`with_provider`](Self::with_provider).
    pub fn without_providers(vault: Arc<dyn SecretVault>) -> Self {
        InMemoryModelGateway {
            vault,
            routes: HashMap::new(),
        }
    }

    /// Routes `provider` to `base_url` (replacing an earlier route).
    pub fn with_provider(
        mut self,
        provider: impl Into<String>,
        base_url: impl Into<String>,
    ) -> Self {
        self.routes.insert(provider.into(), base_url.into());
        self
    }

    /// Whether `provider` is routed.
    pub fn routes(&self, provider: &str) -> bool {
        self.routes.contains_key(provider)
    }
}

#[async_trait]
impl ModelGateway for InMemoryModelGateway {
    async fn resolve(
        &self,
        tenant: &TenantContext,
        _run: &RunId,
        model: &ModelRef,
    ) -> Result<GatewayConfig, ModelGatewayError> {
        let provider = model.provider();
        let Some(base_url) = self.routes.get(provider) else {
            return Err(ModelGatewayError::Invalid(format!(
                "no route for provider {provider:?} (model {model})"
            )));
        };
        let key = match self.vault.open(tenant, provider).await {
            Ok(key) => key,
            Err(e) if e.class() == ErrorClass::NotFound => {
                return Err(ModelGatewayError::NotFound(format!("no key stored for provider {provider:?}; add one with PUT /v1/credentials/{provider}")));
            }
            // The vault's class carries over (Unavailable, Timeout, Corrupt...), never as a success.
            Err(e) => {
                return Err(ModelGatewayError::from_class(
                    e.class(),
                    format!("opening the key for provider {provider:?}: {}", e.message()),
                ))
            }
        };
        Ok(GatewayConfig {
            base_url: base_url.clone(),
            api_key: Some(key.expose().to_string()),
            headers: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use switchboard_core::{OrgId, Principal, Scope, Timestamp, UserId};
    use switchboard_ports::identity::{CredentialMeta, SealedSecret};
    use switchboard_ports::{SecretString, SecretVaultError};

    /// Polls a future to completion on this thread (the fakes crate has no runtime).
    fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    /// The smallest vault that keeps keys per (org, provider); the conformance suite uses the real
    /// `InMemorySecretVault`.
    #[derive(Default)]
    struct MapVault(Mutex<HashMap<(String, String), SecretString>>);

    #[async_trait]
    impl SecretVault for MapVault {
        async fn put(
            &self,
            t: &TenantContext,
            p: &str,
            s: &SecretString,
        ) -> Result<CredentialMeta, SecretVaultError> {
            self.0
                .lock()
                .unwrap()
                .insert((t.org().to_string(), p.to_string()), s.clone());
            Ok(CredentialMeta {
                provider: p.to_string(),
                last4: s.last4(),
                updated_at: Timestamp::from_millis(0),
            })
        }
        async fn open(&self, t: &TenantContext, p: &str) -> Result<SecretString, SecretVaultError> {
            let keys = self.0.lock().unwrap();
            keys.get(&(t.org().to_string(), p.to_string()))
                .cloned()
                .ok_or_else(|| SecretVaultError::NotFound(p.to_string()))
        }
        async fn list(&self, _: &TenantContext) -> Result<Vec<CredentialMeta>, SecretVaultError> {
            Err(SecretVaultError::Unavailable("not used here".into()))
        }
        async fn delete(&self, _: &TenantContext, _: &str) -> Result<(), SecretVaultError> {
            Err(SecretVaultError::Unavailable("not used here".into()))
        }
        async fn export_sealed(
            &self,
            _: &TenantContext,
            _: &str,
        ) -> Result<SealedSecret, SecretVaultError> {
            Err(SecretVaultError::Unavailable("not used here".into()))
        }
        async fn import_sealed(
            &self,
            _: &TenantContext,
            _: &SealedSecret,
        ) -> Result<(), SecretVaultError> {
            Err(SecretVaultError::Unavailable("not used here".into()))
        }
    }

    fn tenant(org: &str) -> TenantContext {
        Principal::from_verified_credential(
            OrgId::parse(org).unwrap(),
            UserId::parse("u1").unwrap(),
            None,
            vec![Scope::Sessions],
        )
        .tenant()
    }

    #[test]
    fn resolves_routes_and_refuses_by_class() {
        let vault = Arc::new(MapVault::default());
        let gw = InMemoryModelGateway::new(vault.clone())
            .with_provider("local", "http://127.0.0.1:9/v1");
        let run = RunId::parse("r1").unwrap();
        let (a, b) = (tenant("org-a"), tenant("org-b"));
        block_on(async {
            vault
                .put(&a, "anthropic", &SecretString::new("sk-ant-a"))
                .await
                .unwrap();
            vault
                .put(&a, "local", &SecretString::new("sk-local"))
                .await
                .unwrap();

            let cfg = gw
                .resolve(
                    &a,
                    &run,
                    &ModelRef::parse("anthropic/claude-sonnet-4-5").unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(cfg.base_url, "https://api.anthropic.com/v1");
            assert_eq!(cfg.api_key.as_deref(), Some("sk-ant-a"));
            let local = gw
                .resolve(&a, &run, &ModelRef::parse("local/tiny").unwrap())
                .await
                .unwrap();
            assert_eq!(local.base_url, "http://127.0.0.1:9/v1");

            let other = gw
                .resolve(
                    &b,
                    &run,
                    &ModelRef::parse("anthropic/claude-sonnet-4-5").unwrap(),
                )
                .await
                .unwrap_err();
            assert_eq!(other.class(), ErrorClass::NotFound);
            assert!(
                other.message().contains("anthropic"),
                "names the provider: {other}"
            );
            let missing = gw
                .resolve(&a, &run, &ModelRef::parse("openai/gpt-5").unwrap())
                .await
                .unwrap_err();
            assert_eq!(missing.class(), ErrorClass::NotFound);
            let unrouted = gw
                .resolve(&a, &run, &ModelRef::parse("nowhere/x").unwrap())
                .await
                .unwrap_err();
            assert_eq!(unrouted.class(), ErrorClass::Invalid);
        });
    }
}
