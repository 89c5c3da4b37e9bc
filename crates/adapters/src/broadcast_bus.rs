//! `TokioBroadcastEventBus`: the in-process org event bus on `tokio::sync::broadcast`, one channel
//! per org.
//!
//! Lagging subscribers: each org's channel holds the last `capacity` events. A subscriber that falls
//! further behind than that does not block publishers; it skips the events it missed (a warning is
//! logged with the count) and continues with the oldest event still held. Dashboards are expected to
//! re-read session state when they need certainty; the session's own event stream is the record.

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::HashMap;
use std::sync::Mutex;
use switchboard_core::session::OrgEvent;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::OrgId;
use switchboard_ports::record::{EventBus, EventBusError};
use tokio::sync::broadcast;

/// Events held per org for subscribers that are behind, unless set with [`TokioBroadcastEventBus::with_capacity`].
pub const DEFAULT_CAPACITY: usize = 1024;

/// An in-process event bus: publishing never waits for subscribers.
pub struct TokioBroadcastEventBus {
    capacity: usize,
    channels: Mutex<HashMap<OrgId, broadcast::Sender<OrgEvent>>>,
}

impl Default for TokioBroadcastEventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl TokioBroadcastEventBus {
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus holding `capacity` events per org for lagging subscribers (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        TokioBroadcastEventBus {
            capacity: capacity.max(1),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<OrgId, broadcast::Sender<OrgEvent>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventBus for TokioBroadcastEventBus {
    async fn publish(&self, event: &OrgEvent) -> Result<(), EventBusError> {
        let mut channels = self.channels();
        if let Some(tx) = channels.get(&event.org_id) {
            if tx.receiver_count() == 0 {
                // Nobody is listening: forget the channel (a later subscribe makes a new one).
                channels.remove(&event.org_id);
            } else {
                // Fails only when every receiver went away in between; nobody is owed the event.
                let _ = tx.send(event.clone());
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        tenant: &TenantContext,
    ) -> Result<BoxStream<'static, OrgEvent>, EventBusError> {
        let rx = {
            let mut channels = self.channels();
            let capacity = self.capacity;
            channels
                .entry(tenant.org().clone())
                .or_insert_with(|| broadcast::channel(capacity).0)
                .subscribe()
        };
        let org = tenant.org().clone();
        Ok(stream::unfold((rx, org), |(mut rx, org)| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, (rx, org))),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(org = %org, missed, "org event subscriber lagged; skipping the events it missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed())
    }
}
