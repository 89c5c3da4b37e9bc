//! `EmbeddedPriceBook`: model prices from a table compiled into the binary, or from a price file in
//! LiteLLM's `model_prices_and_context_window.json` format.

use async_trait::async_trait;
use std::collections::HashMap;
use switchboard_core::run::Price;
use switchboard_core::ModelRef;
use switchboard_ports::{PriceBook, PriceBookError};

/// The embedded table: `(provider/model, input $/Mtok in micro-dollars, output $/Mtok in
/// micro-dollars)`.
///
/// These are the providers' public list prices for standard (non-cached, non-batch, shortest
/// context tier) input and output tokens, as known when this table was written (2026-11-24),
/// cross-checked against LiteLLM's price file of August 2026. Prices change: an operator who needs
/// current figures loads a fresh LiteLLM price file with [`EmbeddedPriceBook::from_litellm_json`].
/// A model that is not listed prices as `None` (and its runs cost 0 with no price); a price is never
/// guessed from a similar name or from another provider.
pub const EMBEDDED_PRICES: &[(&str, u64, u64)] = &[
    // OpenAI
    ("openai/gpt-5", 1_250_000, 10_000_000),
    ("openai/gpt-5-mini", 250_000, 2_000_000),
    ("openai/gpt-4.1", 2_000_000, 8_000_000),
    ("openai/gpt-4.1-mini", 400_000, 1_600_000),
    ("openai/gpt-4.1-nano", 100_000, 400_000),
    ("openai/gpt-4o", 2_500_000, 10_000_000),
    ("openai/gpt-4o-mini", 150_000, 600_000),
    ("openai/o4-mini", 1_100_000, 4_400_000),
    // Anthropic
    ("anthropic/claude-opus-4-1", 15_000_000, 75_000_000),
    ("anthropic/claude-opus-4-5", 5_000_000, 25_000_000),
    ("anthropic/claude-sonnet-4-5", 3_000_000, 15_000_000),
    ("anthropic/claude-haiku-4-5", 1_000_000, 5_000_000),
    // Google (Gemini API; prompts up to 200k tokens)
    ("google/gemini-2.5-pro", 1_250_000, 10_000_000),
    ("google/gemini-2.5-flash", 300_000, 2_500_000),
    // DeepSeek, xAI
    ("deepseek/deepseek-chat", 280_000, 420_000),
    ("xai/grok-4", 3_000_000, 15_000_000),
    // The same open-weight model under two hosts, at each host's own price.
    ("groq/openai/gpt-oss-120b", 150_000, 600_000),
    ("openrouter/openai/gpt-oss-120b", 180_000, 800_000),
    // OpenRouter's pass-through prices of hosted frontier models.
    (
        "openrouter/anthropic/claude-sonnet-4.5",
        3_000_000,
        15_000_000,
    ),
    ("openrouter/openai/gpt-5", 1_250_000, 10_000_000),
];

/// A price book backed by an in-memory table: the embedded one, or one parsed from a LiteLLM price
/// file. Lookups are by the whole `provider/model`, so the same model name under two providers has
/// two independent prices.
#[derive(Debug, Clone)]
pub struct EmbeddedPriceBook {
    prices: HashMap<ModelRef, Price>,
}

impl Default for EmbeddedPriceBook {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedPriceBook {
    /// The book of [`EMBEDDED_PRICES`].
    pub fn new() -> Self {
        let prices = EMBEDDED_PRICES
            .iter()
            .map(|&(model, input, output)| {
                let model = ModelRef::parse(model)
                    .expect("every embedded price names a valid provider/model");
                (
                    model,
                    Price {
                        input_per_mtok_micros: input,
                        output_per_mtok_micros: output,
                    },
                )
            })
            .collect();
        EmbeddedPriceBook { prices }
    }

    /// Parses a LiteLLM price file: a JSON object of `"<key>": {"input_cost_per_token": <$>,
    /// "output_cost_per_token": <$>, "litellm_provider": "<provider>", ...}`.
    ///
    /// The model ref of an entry is `<litellm_provider>/<key>`, with a leading `<litellm_provider>/`
    /// of the key removed (so `"claude-sonnet-4-5"` under `anthropic` and
    /// `"openrouter/openai/gpt-4o"` under `openrouter` become `anthropic/claude-sonnet-4-5` and
    /// `openrouter/openai/gpt-4o`). Dollars per token become micro-dollars per million tokens
    /// (× 10¹², rounded to the nearest micro-dollar). Entries without both token costs (images,
    /// audio, the `sample_spec` entry), with a negative or non-numeric cost, or whose provider or key
    /// is not a valid model ref are skipped, never given an invented price. When two keys name the
    /// same model ref, the first one met is kept.
    ///
    /// A text that is not a JSON object is `Corrupt`.
    pub fn from_litellm_json(json: &str) -> Result<Self, PriceBookError> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| PriceBookError::Corrupt(format!("LiteLLM price file is not JSON: {e}")))?;
        let entries = value.as_object().ok_or_else(|| {
            PriceBookError::Corrupt("LiteLLM price file is not a JSON object".to_string())
        })?;
        let mut prices = HashMap::new();
        for (key, entry) in entries {
            let Some(provider) = entry.get("litellm_provider").and_then(|p| p.as_str()) else {
                continue;
            };
            let (Some(input), Some(output)) = (
                per_mtok_micros(entry.get("input_cost_per_token")),
                per_mtok_micros(entry.get("output_cost_per_token")),
            ) else {
                continue;
            };
            let name = key
                .strip_prefix(provider)
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(key);
            let Ok(model) = ModelRef::parse(&format!("{provider}/{name}")) else {
                continue;
            };
            prices.entry(model).or_insert(Price {
                input_per_mtok_micros: input,
                output_per_mtok_micros: output,
            });
        }
        Ok(EmbeddedPriceBook { prices })
    }

    /// How many models the book prices.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether the book prices no model at all.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The priced models, in no particular order.
    pub fn models(&self) -> impl Iterator<Item = &ModelRef> {
        self.prices.keys()
    }
}

/// Dollars per token → micro-dollars per million tokens, `None` unless a finite, non-negative number.
fn per_mtok_micros(cost: Option<&serde_json::Value>) -> Option<u64> {
    let dollars_per_token = cost?.as_f64()?;
    let micros = (dollars_per_token * 1e12).round();
    (micros.is_finite() && micros >= 0.0 && micros <= u64::MAX as f64).then_some(micros as u64)
}

#[async_trait]
impl PriceBook for EmbeddedPriceBook {
    async fn price(&self, model: &ModelRef) -> Result<Option<Price>, PriceBookError> {
        Ok(self.prices.get(model).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::Usage;
    use switchboard_ports::error::ErrorClass;
    use switchboard_ports::Classify;

    fn m(s: &str) -> ModelRef {
        ModelRef::parse(s).unwrap()
    }

    #[tokio::test]
    async fn embedded_table_prices_listed_models_only() {
        let book = EmbeddedPriceBook::new();
        assert_eq!(
            book.len(),
            EMBEDDED_PRICES.len(),
            "every entry is a distinct, valid model ref"
        );
        let sonnet = book
            .price(&m("anthropic/claude-sonnet-4-5"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            sonnet,
            Price {
                input_per_mtok_micros: 3_000_000,
                output_per_mtok_micros: 15_000_000
            }
        );
        assert_eq!(
            sonnet.cost_micros(Usage {
                input_tokens: 1_000,
                output_tokens: 100
            }),
            4_500
        );
        assert_eq!(
            book.price(&m("anthropic/claude-unknown-9")).await.unwrap(),
            None
        );
        assert_eq!(
            book.price(&m("nosuchhost/claude-sonnet-4-5"))
                .await
                .unwrap(),
            None
        );
        let groq = book
            .price(&m("groq/openai/gpt-oss-120b"))
            .await
            .unwrap()
            .unwrap();
        let openrouter = book
            .price(&m("openrouter/openai/gpt-oss-120b"))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            groq, openrouter,
            "the same model name is priced per provider"
        );
    }

    #[tokio::test]
    async fn parses_litellm_price_files() {
        let json = r#"{
            "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
            "claude-sonnet-4-5": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "litellm_provider": "anthropic", "mode": "chat"},
            "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07, "litellm_provider": "openai"},
            "openrouter/openai/gpt-oss-120b": {"input_cost_per_token": 1.8e-07, "output_cost_per_token": 8e-07, "litellm_provider": "openrouter"},
            "groq/openai/gpt-oss-120b": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07, "litellm_provider": "groq"},
            "gemini/gemini-2.5-flash": {"input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06, "litellm_provider": "gemini"},
            "dall-e-3": {"output_cost_per_image": 0.04, "litellm_provider": "openai", "mode": "image_generation"},
            "negative": {"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06, "litellm_provider": "openai"},
            "textual": {"input_cost_per_token": "1e-06", "output_cost_per_token": 1e-06, "litellm_provider": "openai"}
        }"#;
        let book = EmbeddedPriceBook::from_litellm_json(json).unwrap();
        assert_eq!(
            book.len(),
            5,
            "sample_spec, images, negative and textual costs are skipped"
        );
        assert_eq!(
            book.price(&m("anthropic/claude-sonnet-4-5")).await.unwrap(),
            Some(Price {
                input_per_mtok_micros: 3_000_000,
                output_per_mtok_micros: 15_000_000
            })
        );
        assert_eq!(
            book.price(&m("openai/gpt-4o-mini")).await.unwrap(),
            Some(Price {
                input_per_mtok_micros: 150_000,
                output_per_mtok_micros: 600_000
            })
        );
        assert_eq!(
            book.price(&m("openrouter/openai/gpt-oss-120b"))
                .await
                .unwrap(),
            Some(Price {
                input_per_mtok_micros: 180_000,
                output_per_mtok_micros: 800_000
            })
        );
        assert_eq!(
            book.price(&m("groq/openai/gpt-oss-120b")).await.unwrap(),
            Some(Price {
                input_per_mtok_micros: 150_000,
                output_per_mtok_micros: 600_000
            })
        );
        assert_eq!(
            book.price(&m("gemini/gemini-2.5-flash")).await.unwrap(),
            Some(Price {
                input_per_mtok_micros: 300_000,
                output_per_mtok_micros: 2_500_000
            })
        );
        assert_eq!(book.price(&m("openai/dall-e-3")).await.unwrap(), None);
        assert_eq!(book.price(&m("openai/negative")).await.unwrap(), None);

        for bad in ["not json", "[1, 2]", "\"a string\""] {
            let err = EmbeddedPriceBook::from_litellm_json(bad).unwrap_err();
            assert_eq!(err.class(), ErrorClass::Corrupt, "{bad}");
        }
    }
}
