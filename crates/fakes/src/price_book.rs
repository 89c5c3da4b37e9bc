//! `InMemoryPriceBook`: a price per `provider/model`, set by the test; unlisted models price as `None`.

use async_trait::async_trait;
use std::collections::HashMap;
use switchboard_core::run::Price;
use switchboard_core::ModelRef;
use switchboard_ports::{PriceBook, PriceBookError};

/// A price book holding exactly the prices it was given. The key is the whole model ref, so the
/// same model name under two providers has two independent prices.
#[derive(Debug, Clone, Default)]
pub struct InMemoryPriceBook {
    prices: HashMap<ModelRef, Price>,
}

impl InMemoryPriceBook {
    /// An empty book: every model prices as `None`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists `model` at `price` (replacing an earlier price of the same model).
    pub fn with_price(mut self, model: ModelRef, price: Price) -> Self {
        self.prices.insert(model, price);
        self
    }
}

#[async_trait]
impl PriceBook for InMemoryPriceBook {
    async fn price(&self, model: &ModelRef) -> Result<Option<Price>, PriceBookError> {
        Ok(self.prices.get(model).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls a future to completion on this thread (the fakes crate has no runtime).
    fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    fn m(s: &str) -> ModelRef {
        ModelRef::parse(s).unwrap()
    }

    #[test]
    fn prices_only_what_it_was_given_per_provider() {
        let a = Price {
            input_per_mtok_micros: 1_000_000,
            output_per_mtok_micros: 2_000_000,
        };
        let b = Price {
            input_per_mtok_micros: 3_000_000,
            output_per_mtok_micros: 4_000_000,
        };
        let book = InMemoryPriceBook::new()
            .with_price(m("groq/llama-3"), a)
            .with_price(m("together/llama-3"), b);
        block_on(async {
            assert_eq!(book.price(&m("groq/llama-3")).await.unwrap(), Some(a));
            assert_eq!(book.price(&m("together/llama-3")).await.unwrap(), Some(b));
            assert_eq!(book.price(&m("other/llama-3")).await.unwrap(), None);
        });
    }
}
