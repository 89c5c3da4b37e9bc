//! `InMemoryEventBus`: per-org fan-out of session status changes over in-memory channels.

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::stream::{BoxStream, StreamExt};
use std::collections::HashMap;
use std::sync::Mutex;
use switchboard_core::session::OrgEvent;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::OrgId;
use switchboard_ports::record::{EventBus, EventBusError};

/// An event bus in memory. Each subscriber has its own unbounded queue, so a slow subscriber never
/// loses an event nor blocks a publisher (memory is the bound, which is fine in tests). Dropped
/// subscriptions are forgotten at the next publish to their org.
#[derive(Default)]
pub struct InMemoryEventBus {
    subscribers: Mutex<HashMap<OrgId, Vec<mpsc::UnboundedSender<OrgEvent>>>>,
}

impl InMemoryEventBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Live subscriptions of an org.
    pub fn subscriber_count(&self, org: &OrgId) -> usize {
        let subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.get(org)
            .map_or(0, |v| v.iter().filter(|tx| !tx.is_closed()).count())
    }
}

#[async_trait]
impl EventBus for InMemoryEventBus {
    async fn publish(&self, event: &OrgEvent) -> Result<(), EventBusError> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = subs.get_mut(&event.org_id) {
            list.retain(|tx| tx.unbounded_send(event.clone()).is_ok());
            if list.is_empty() {
                subs.remove(&event.org_id);
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        tenant: &TenantContext,
    ) -> Result<BoxStream<'static, OrgEvent>, EventBusError> {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.org().clone())
            .or_default()
            .push(tx);
        Ok(rx.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::events::{SandboxStatus, SessionStatus};
    use switchboard_core::tenancy::Principal;
    use switchboard_core::{SessionId, Timestamp, UserId};

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::FutureExt::now_or_never(f).expect("in-memory fakes never wait")
    }

    #[test]
    fn dropped_subscribers_are_forgotten() {
        let bus = InMemoryEventBus::new();
        let org = OrgId::parse("o1").unwrap();
        let tenant = Principal::from_verified_credential(
            org.clone(),
            UserId::parse("u").unwrap(),
            None,
            vec![],
        )
        .tenant();
        let mut kept = block_on(bus.subscribe(&tenant)).unwrap();
        let dropped = block_on(bus.subscribe(&tenant)).unwrap();
        assert_eq!(bus.subscriber_count(&org), 2);
        drop(dropped);
        let event = OrgEvent {
            org_id: org.clone(),
            session_id: SessionId::parse("s1").unwrap(),
            status: SessionStatus::Ready,
            sandbox: SandboxStatus::Connected,
            at: Timestamp::EPOCH,
        };
        block_on(bus.publish(&event)).unwrap();
        assert_eq!(bus.subscriber_count(&org), 1);
        assert_eq!(block_on(kept.next()), Some(event));
    }
}
