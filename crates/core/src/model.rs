//! Model references: `provider/model`, parsed strictly. There is no default model anywhere.

use serde::{Deserialize, Serialize};

/// A model named as `provider/model`, e.g. `anthropic/claude-sonnet-4` or
/// `openrouter/meta-llama/llama-3-70b` (everything after the first `/` is the model).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelRef {
    provider: String,
    model: String,
}

/// Why a model string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRefError {
    /// The string was empty: a model is required and none is assumed.
    #[error("a model is required (as \"provider/model\"); there is no default model")]
    Missing,
    /// No `/`: the provider cannot be inferred.
    #[error("model {0:?} has no provider prefix; write it as \"provider/model\"")]
    MissingProvider(String),
    /// `provider/` with nothing after it.
    #[error("model {0:?} names a provider but no model")]
    EmptyModel(String),
    /// The provider part holds characters other than `[a-z0-9_.-]`.
    #[error("model {0:?} has an invalid provider: use lowercase letters, digits, '_', '.', '-'")]
    InvalidProvider(String),
}

impl ModelRef {
    /// Parses `provider/model`.
    pub fn parse(s: &str) -> Result<Self, ModelRefError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ModelRefError::Missing);
        }
        let Some((provider, model)) = s.split_once('/') else {
            return Err(ModelRefError::MissingProvider(s.to_string()));
        };
        if provider.is_empty()
            || !provider
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        {
            return Err(ModelRefError::InvalidProvider(s.to_string()));
        }
        if model.trim().is_empty() {
            return Err(ModelRefError::EmptyModel(s.to_string()));
        }
        Ok(ModelRef {
            provider: provider.to_string(),
            model: model.to_string(),
        })
    }

    /// The provider: everything before the first `/`.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The model name within the provider.
    pub fn model(&self) -> &str {
        &self.model
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

impl TryFrom<String> for ModelRef {
    type Error = ModelRefError;
    fn try_from(s: String) -> Result<Self, ModelRefError> {
        ModelRef::parse(&s)
    }
}

impl From<ModelRef> for String {
    fn from(m: ModelRef) -> String {
        m.to_string()
    }
}

impl std::str::FromStr for ModelRef {
    type Err = ModelRefError;
    fn from_str(s: &str) -> Result<Self, ModelRefError> {
        ModelRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_first_slash() {
        let m = ModelRef::parse("openrouter/meta-llama/llama-3").unwrap();
        assert_eq!(m.provider(), "openrouter");
        assert_eq!(m.model(), "meta-llama/llama-3");
        assert_eq!(m.to_string(), "openrouter/meta-llama/llama-3");
    }

    #[test]
    fn refuses_what_it_cannot_route() {
        assert_eq!(ModelRef::parse(""), Err(ModelRefError::Missing));
        assert!(matches!(
            ModelRef::parse("gpt-4o"),
            Err(ModelRefError::MissingProvider(_))
        ));
        assert!(matches!(
            ModelRef::parse("openai/"),
            Err(ModelRefError::EmptyModel(_))
        ));
        assert!(matches!(
            ModelRef::parse("/gpt"),
            Err(ModelRefError::InvalidProvider(_))
        ));
        assert!(matches!(
            ModelRef::parse("Open AI/gpt"),
            Err(ModelRefError::InvalidProvider(_))
        ));
        assert!(serde_json::from_str::<ModelRef>("\"gpt-4o\"").is_err());
    }
}
