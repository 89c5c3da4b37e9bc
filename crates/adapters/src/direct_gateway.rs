//! `DirectModelGateway`: the bring-your-own-key `ModelGateway`. A run's agent talks straight to its
//! provider's API with the tenant's own key, opened from the `SecretVault` only when that run is
//! dispatched and never kept.
//!
//! Routing: `provider = model.provider()`; the base URL comes from a table that starts with
//! [`default_providers`] and takes extra providers from a builder ([`DirectModelGateway::with_provider`])
//! or from the environment ([`DirectModelGateway::with_env_providers`]):
//!
//! ```text
//! SWITCHBOARD_PROVIDER_<NAME>_BASE_URL=http://127.0.0.1:4000/v1
//! ```
//!
//! routes provider `<name>` (lowercased; `_` stays `_`) to that URL, replacing a default of the same
//! name. Providers whose names hold `-` or `.` can only be added with the builder. There is no
//! default provider and no default model: an unrouted provider is `Invalid`, a routed one for which
//! the tenant stored no key is `NotFound`, naming the provider.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use switchboard_core::protocol::GatewayConfig;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ModelRef, RunId};
use switchboard_ports::agent::default_providers;
use switchboard_ports::error::ErrorClass;
use switchboard_ports::{Classify, FromClass, ModelGateway, ModelGatewayError, SecretVault};

/// The environment variables that add a provider: `SWITCHBOARD_PROVIDER_<NAME>_BASE_URL`.
pub const ENV_PREFIX: &str = "SWITCHBOARD_PROVIDER_";
/// See [`ENV_PREFIX`].
pub const ENV_SUFFIX: &str = "_BASE_URL";

/// The direct BYOK gateway over a tenant-scoped [`SecretVault`].
#[derive(Clone)]
pub struct DirectModelGateway {
    vault: Arc<dyn SecretVault>,
    routes: HashMap<String, String>,
}

impl std::fmt::Debug for DirectModelGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut providers: Vec<_> = self.routes.keys().collect();
        providers.sort();
        f.debug_struct("DirectModelGateway")
            .field("providers", &providers)
            .finish_non_exhaustive()
    }
}

/// Whether `name` is a provider name a [`ModelRef`] can carry.
fn valid_provider(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Whether `url` can be a provider's API base URL.
fn valid_base_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

impl DirectModelGateway {
    /// A gateway over `vault` routing the [`default_providers`].
    pub fn new(vault: Arc<dyn SecretVault>) -> Self {
        let routes = default_providers()
            .iter()
            .map(|(p, url)| (p.to_string(), url.to_string()))
            .collect();
        DirectModelGateway { vault, routes }
    }

    /// A gateway over `vault` that routes no provider until [`with_provider`](Self::with_provider).
    pub fn without_providers(vault: Arc<dyn SecretVault>) -> Self {
        DirectModelGateway {
            vault,
            routes: HashMap::new(),
        }
    }

    /// Routes `provider` to `base_url` (replacing an earlier route). `Err` names what is wrong
    /// when the provider is not a valid provider name or the URL is not `http(s)://host…`.
    pub fn with_provider(
        mut self,
        provider: impl Into<String>,
        base_url: impl Into<String>,
    ) -> Result<Self, String> {
        let (provider, base_url) = (provider.into(), base_url.into());
        if !valid_provider(&provider) {
            return Err(format!(
                "{provider:?} is not a provider name (lowercase letters, digits, '_', '.', '-')"
            ));
        }
        if !valid_base_url(&base_url) {
            return Err(format!(
                "the base URL of provider {provider:?} must start with http:// or https://, got {base_url:?}"
            ));
        }
        self.routes.insert(provider, base_url);
        Ok(self)
    }

    /// Adds every `SWITCHBOARD_PROVIDER_<NAME>_BASE_URL=<url>` among `vars` (pass
    /// `std::env::vars()`); other variables are ignored. `Err` names the first bad variable.
    pub fn with_env_providers(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        for (key, value) in vars {
            let Some(name) = key
                .strip_prefix(ENV_PREFIX)
                .and_then(|rest| rest.strip_suffix(ENV_SUFFIX))
            else {
                continue;
            };
            self = self
                .with_provider(name.to_ascii_lowercase(), value.trim())
                .map_err(|e| format!("{key}: {e}"))?;
        }
        Ok(self)
    }

    /// Whether `provider` is routed.
    pub fn routes(&self, provider: &str) -> bool {
        self.routes.contains_key(provider)
    }

    /// The base URL `provider` is routed to.
    pub fn base_url(&self, provider: &str) -> Option<&str> {
        self.routes.get(provider).map(String::as_str)
    }

    /// Every routed provider, sorted.
    pub fn providers(&self) -> Vec<&str> {
        let mut providers: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        providers.sort_unstable();
        providers
    }
}

#[async_trait]
impl ModelGateway for DirectModelGateway {
    async fn resolve(
        &self,
        tenant: &TenantContext,
        run: &RunId,
        model: &ModelRef,
    ) -> Result<GatewayConfig, ModelGatewayError> {
        let provider = model.provider();
        let Some(base_url) = self.routes.get(provider) else {
            return Err(ModelGatewayError::Invalid(format!(
                "no route for provider {provider:?} (model {model}); add one with {ENV_PREFIX}{}{ENV_SUFFIX}",
                provider.to_ascii_uppercase()
            )));
        };
        // The key is opened for this run only: nothing here keeps it after the answer is built.
        let key = match self.vault.open(tenant, provider).await {
            Ok(key) => key,
            Err(e) if e.class() == ErrorClass::NotFound => {
                return Err(ModelGatewayError::NotFound(format!(
                    "no key stored for provider {provider:?}; add one with PUT /v1/credentials/{provider}"
                )));
            }
            // The vault's class carries over (Unavailable, Timeout, Corrupt...), never as a success.
            Err(e) => {
                return Err(ModelGatewayError::from_class(
                    e.class(),
                    format!("opening the key for provider {provider:?}: {}", e.message()),
                ))
            }
        };
        tracing::debug!(run = %run, provider, base_url = %base_url, "resolved a direct gateway");
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
    use switchboard_fakes::secret_vault::InMemorySecretVault;
    use switchboard_fakes::InMemoryClock;

    fn gateway() -> DirectModelGateway {
        DirectModelGateway::new(Arc::new(InMemorySecretVault::new(Arc::new(
            InMemoryClock::new(),
        ))))
    }

    #[test]
    fn env_variables_add_and_replace_providers() {
        let gw = gateway()
            .with_env_providers([
                (
                    "SWITCHBOARD_PROVIDER_LOCAL_BASE_URL".to_string(),
                    "http://127.0.0.1:4000/v1".to_string(),
                ),
                (
                    "SWITCHBOARD_PROVIDER_OPENAI_BASE_URL".to_string(),
                    "https://proxy.example/v1".to_string(),
                ),
                ("PATH".to_string(), "/usr/bin".to_string()),
            ])
            .unwrap();
        assert_eq!(gw.base_url("local"), Some("http://127.0.0.1:4000/v1"));
        assert_eq!(gw.base_url("openai"), Some("https://proxy.example/v1"));
        assert_eq!(
            gw.base_url("anthropic"),
            Some("https://api.anthropic.com/v1")
        );
        assert!(!gw.routes("path"));
    }

    #[test]
    fn bad_configuration_is_refused_with_its_name() {
        let bad_url = gateway()
            .with_env_providers([(
                "SWITCHBOARD_PROVIDER_LOCAL_BASE_URL".to_string(),
                "127.0.0.1:4000".to_string(),
            )])
            .unwrap_err();
        assert!(
            bad_url.contains("SWITCHBOARD_PROVIDER_LOCAL_BASE_URL"),
            "{bad_url}"
        );
        let bad_name = gateway().with_provider("Bad Name", "http://x").unwrap_err();
        assert!(bad_name.contains("Bad Name"), "{bad_name}");
        assert!(gateway()
            .with_provider("ok-name.v2", "https://x/v1")
            .is_ok());
    }
}
