//! Contract cases, fault catalog and `Faulty` wrapper for `PriceBook`.
//!
//! A price book's data is its own, so the fixture names what the cases may rely on: one model it
//! prices, one it does not, and (when it has one) the same model name priced differently under two
//! providers.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, ok};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use switchboard_adapters::price_table::EmbeddedPriceBook;
use switchboard_core::protocol::Usage;
use switchboard_core::run::Price;
use switchboard_core::ModelRef;
use switchboard_fakes::price_book::InMemoryPriceBook;
use switchboard_ports::{PortId, PriceBook, PriceBookError};

/// What every `PriceBook` case gets.
pub struct Fixture {
    pub book: Arc<dyn PriceBook>,
    /// A model the book lists, at a non-zero price.
    pub known: ModelRef,
    /// A model the book does not list.
    pub unknown: ModelRef,
    /// The same model name under two providers, both listed, at different prices (`None` when the
    /// book has no such pair; the provider-swap check of `price_is_per_provider` still runs).
    pub same_name_pair: Option<(ModelRef, ModelRef)>,
}

/// Every contract case of `PriceBook`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "known_model_priced",
            run: |f| Box::pin(known_model_priced(f)),
        },
        Case {
            name: "unknown_model_none",
            run: |f| Box::pin(unknown_model_none(f)),
        },
        Case {
            name: "price_is_per_provider",
            run: |f| Box::pin(price_is_per_provider(f)),
        },
    ]
}

fn model(s: &str) -> Result<ModelRef, String> {
    ModelRef::parse(s).map_err(|e| format!("{s:?} is not a model ref: {e}"))
}

async fn known_model_priced(f: Fixture) -> CaseResult {
    let Some(price) = ok!(f.book.price(&f.known).await) else {
        return Err(format!(
            "{} is listed by the fixture but priced as None",
            f.known
        ));
    };
    ensure!(
        price.input_per_mtok_micros > 0 || price.output_per_mtok_micros > 0,
        "{} is priced at zero: {price:?}",
        f.known
    );
    let again = ok!(f.book.price(&f.known).await);
    ensure_eq!(
        again,
        Some(price),
        "a second lookup of {} gives the same price",
        f.known
    );
    // The cost of usage follows from the price: a million tokens of each kind cost the listed
    // figure, and no usage costs nothing.
    let mtok = 1_000_000;
    ensure_eq!(
        price.cost_micros(Usage {
            input_tokens: mtok,
            output_tokens: 0
        }),
        price.input_per_mtok_micros,
        "cost of 1M input tokens"
    );
    ensure_eq!(
        price.cost_micros(Usage {
            input_tokens: 0,
            output_tokens: mtok
        }),
        price.output_per_mtok_micros,
        "cost of 1M output tokens"
    );
    ensure_eq!(price.cost_micros(Usage::default()), 0, "cost of no usage");
    let both = price.cost_micros(Usage {
        input_tokens: 3 * mtok,
        output_tokens: 2 * mtok,
    });
    ensure_eq!(
        both,
        3 * price.input_per_mtok_micros + 2 * price.output_per_mtok_micros,
        "cost of 3M input and 2M output tokens"
    );
    Ok(())
}

async fn unknown_model_none(f: Fixture) -> CaseResult {
    ensure_eq!(
        ok!(f.book.price(&f.unknown).await),
        None,
        "the unlisted {} is priced",
        f.unknown
    );
    let invented = model("conformance-provider/conformance-model-that-does-not-exist")?;
    ensure_eq!(
        ok!(f.book.price(&invented).await),
        None,
        "the made-up {invented} is priced"
    );
    // A listed model's name with a suffix is another model, not a near match.
    let near = model(&format!("{}-conformance-variant", f.known))?;
    ensure_eq!(
        ok!(f.book.price(&near).await),
        None,
        "{near} is priced like {}",
        f.known
    );
    Ok(())
}

async fn price_is_per_provider(f: Fixture) -> CaseResult {
    // The listed model's name under a provider the book does not know is not priced by name alone.
    let elsewhere = model(&format!("conformance-unlisted-host/{}", f.known.model()))?;
    ensure_eq!(
        ok!(f.book.price(&elsewhere).await),
        None,
        "{elsewhere} borrowed the price of {}",
        f.known
    );
    if let Some((a, b)) = &f.same_name_pair {
        ensure!(
            a.model() == b.model() && a.provider() != b.provider(),
            "the fixture's pair {a} / {b} is not one name under two providers"
        );
        let pa = ok!(f.book.price(a).await);
        let pb = ok!(f.book.price(b).await);
        ensure!(
            pa.is_some() && pb.is_some(),
            "both {a} ({pa:?}) and {b} ({pb:?}) should be priced"
        );
        ensure!(
            pa != pb,
            "{a} and {b} are listed at different prices but the book gives both {pa:?}"
        );
    }
    Ok(())
}

/// The in-memory book of the fixtures: two hosts of one model at different prices.
fn in_memory_fixture() -> Result<Fixture, String> {
    let known = model("conformance-llm/coder-large")?;
    let (a, b) = (
        model("host-a/open-model-70b")?,
        model("host-b/open-model-70b")?,
    );
    let book = InMemoryPriceBook::new()
        .with_price(
            known.clone(),
            Price {
                input_per_mtok_micros: 3_000_000,
                output_per_mtok_micros: 15_000_000,
            },
        )
        .with_price(
            a.clone(),
            Price {
                input_per_mtok_micros: 590_000,
                output_per_mtok_micros: 790_000,
            },
        )
        .with_price(
            b.clone(),
            Price {
                input_per_mtok_micros: 880_000,
                output_per_mtok_micros: 880_000,
            },
        );
    Ok(Fixture {
        book: Arc::new(book),
        known,
        unknown: model("conformance-llm/coder-unlisted")?,
        same_name_pair: Some((a, b)),
    })
}

/// The embedded table, relying on models it lists (see `EMBEDDED_PRICES`).
fn embedded_fixture() -> Result<Fixture, String> {
    Ok(Fixture {
        book: Arc::new(EmbeddedPriceBook::new()),
        known: model("anthropic/claude-sonnet-4-5")?,
        unknown: model("anthropic/claude-conformance-unlisted")?,
        same_name_pair: Some((
            model("groq/openai/gpt-oss-120b")?,
            model("openrouter/openai/gpt-oss-120b")?,
        )),
    })
}

/// A LiteLLM-format price file, as an operator would load one.
const LITELLM_SNIPPET: &str = r#"{
    "claude-sonnet-4-5": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "litellm_provider": "anthropic", "mode": "chat"},
    "groq/llama-3.3-70b-versatile": {"input_cost_per_token": 5.9e-07, "output_cost_per_token": 7.9e-07, "litellm_provider": "groq", "mode": "chat"},
    "openrouter/llama-3.3-70b-versatile": {"input_cost_per_token": 1.3e-07, "output_cost_per_token": 4e-07, "litellm_provider": "openrouter", "mode": "chat"},
    "dall-e-3": {"output_cost_per_image": 0.04, "litellm_provider": "openai", "mode": "image_generation"}
}"#;

/// The same adapter loaded from a LiteLLM price file instead of its embedded table.
fn litellm_fixture() -> Result<Fixture, String> {
    let book = EmbeddedPriceBook::from_litellm_json(LITELLM_SNIPPET)
        .map_err(|e| format!("the LiteLLM snippet did not load: {e}"))?;
    Ok(Fixture {
        book: Arc::new(book),
        known: model("anthropic/claude-sonnet-4-5")?,
        unknown: model("openai/dall-e-3")?,
        same_name_pair: Some((
            model("groq/llama-3.3-70b-versatile")?,
            model("openrouter/llama-3.3-70b-versatile")?,
        )),
    })
}

/// The fake and every real `PriceBook`.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            in_memory_fixture()
        }),
        Implementation::new("embedded_table", ImplKind::Adapter, || async {
            embedded_fixture()
        }),
        Implementation::new("litellm_file", ImplKind::Adapter, || async {
            litellm_fixture()
        }),
    ]
}

/// A price lookup happens when a run is dispatched; a run is never priced by a guess.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "price",
        outcome: "the run is not dispatched with a guessed price: it ends Failed with `dispatch_failed`, nothing reaches the sandbox, and the next run looks the price up again",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "price",
        outcome: "as for unavailable: the run ends Failed with `dispatch_failed` and no cost is invented; the session stays usable",
    },
    CatalogEntry {
        fault: Fault::Corrupt,
        op: "price",
        outcome: "a price that fails its integrity check is never used: the run ends Failed with `dispatch_failed` and no run record carries a cost from it",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "price",
        outcome: "a slow lookup only delays the dispatch: the run starts once it answers and its record carries the listed price",
    },
];

/// Every call goes through the plan.
#[async_trait]
impl PriceBook for Faulty<dyn PriceBook> {
    async fn price(&self, model: &ModelRef) -> Result<Option<Price>, PriceBookError> {
        self.call("price", || self.inner.price(model)).await
    }
}

/// The suite of `PriceBook`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::PriceBook, cases(), implementations(), CATALOG)
}

/// Runs every `PriceBook` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::PriceBook, name, make, &cases())
}

/// Price book faults are exercised inside the session lifecycle (at dispatch), not here.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::FaultPlan;
    use switchboard_ports::error::ErrorClass;
    use switchboard_ports::Classify;

    #[test]
    fn check_reports_a_book_that_invents_prices() {
        /// Prices everything at the same figure: the contract must catch it.
        struct Inventive;
        #[async_trait]
        impl PriceBook for Inventive {
            async fn price(&self, _: &ModelRef) -> Result<Option<Price>, PriceBookError> {
                Ok(Some(Price {
                    input_per_mtok_micros: 1,
                    output_per_mtok_micros: 1,
                }))
            }
        }
        let report = check("inventive", || async {
            let mut f = in_memory_fixture()?;
            f.book = Arc::new(Inventive);
            Ok(f)
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            failed,
            [
                "price_book::inventive::unknown_model_none",
                "price_book::inventive::price_is_per_provider"
            ]
        );
    }

    #[test]
    fn faulty_book_fails_by_class_then_heals() {
        harness::block_on(async {
            let f = in_memory_fixture().unwrap();
            let faulty = Faulty::new(f.book.clone(), FaultPlan::times("price", Fault::Corrupt, 1));
            assert_eq!(
                faulty.price(&f.known).await.unwrap_err().class(),
                ErrorClass::Corrupt
            );
            assert!(faulty.price(&f.known).await.unwrap().is_some());
        });
    }
}
