//! `PgEventBus`: the org event bus over Postgres `LISTEN`/`NOTIFY`, so every server process on one
//! database sees every org's session status changes.
//!
//! Channel: one channel for every org, [`CHANNEL`]. A per-org channel would need a hashed name
//! (channel names are identifiers of at most 63 bytes, org ids up to 128 characters) and one
//! `LISTEN` per org; with one channel, each process listens once and filters by org itself. The
//! payload is a small JSON [`Notice`] (well under Postgres's 8,000-byte limit for an `OrgEvent`).
//!
//! Subscribing: a bus holds at most one listening connection (a dedicated one-connection pool with
//! the connect options and acquire timeout of the bus's pool, so it never starves the shared pool), opened by the first
//! subscription and closed when the last one is dropped. A tokio task reads its notifications and
//! forwards each event to the subscriptions of the event's org, each through its own unbounded
//! queue (a slow dashboard never blocks publishers or other dashboards).
//!
//! "Events published after it subscribed": a new subscription is registered by a marker
//! notification it sends itself once the listener is listening. Postgres delivers notifications in
//! commit order, so the listener registers it exactly between the events committed before
//! `subscribe` returned and those committed after it: it gets every later event and no earlier one.
//!
//! Lost connection: the listener reconnects (sqlx's `PgListener` re-issues `LISTEN`; failed
//! attempts are retried with a capped backoff while subscriptions exist). Notifications sent while
//! it was disconnected are lost, and subscriptions still waiting for their marker are registered at
//! once. The stream itself stays open. That is acceptable because the bus serves dashboards only:
//! the session's own event stream is the record, and dashboards re-read session state when they
//! need certainty.

use super::errors::to_port;
use async_trait::async_trait;
use futures::channel::mpsc;
use futures::stream::{BoxStream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPoolOptions};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use switchboard_core::session::OrgEvent;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::OrgId;
use switchboard_ports::record::{EventBus, EventBusError};
use tokio::sync::Notify;

/// The notification channel every `PgEventBus` publishes to and listens on.
pub const CHANNEL: &str = "switchboard_org_events";

/// Retry delays of a listener whose reconnection fails.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A notification's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A status change, for the subscribers of `event.org_id`.
    Event { event: OrgEvent },
    /// A subscription of the bus instance that sent it is live from here on.
    Subscribed { token: String },
}

struct Subscriber {
    org: OrgId,
    tx: mpsc::UnboundedSender<OrgEvent>,
}

#[derive(Default)]
struct HubState {
    /// Whether a listener task is running (it clears this, under the lock, when it stops).
    running: bool,
    next_id: u64,
    /// Subscriptions whose marker has not come back through the listener yet.
    pending: HashMap<u64, Subscriber>,
    live: HashMap<u64, Subscriber>,
}

/// What the listener task and the subscriptions share.
struct Hub {
    /// Prefix of this bus's marker tokens, unique per bus instance.
    instance: String,
    state: Mutex<HubState>,
    /// Woken when a subscription is dropped, so an idle listener can stop.
    left: Notify,
}

impl Hub {
    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn token(&self, id: u64) -> String {
        format!("{}:{id}", self.instance)
    }

    /// Stops the task (clearing `running`) when nobody is subscribed: true if it must stop.
    fn stop_if_idle(&self) -> bool {
        let mut st = self.state();
        if st.pending.is_empty() && st.live.is_empty() {
            st.running = false;
            return true;
        }
        false
    }

    fn dispatch(&self, payload: &str) {
        match serde_json::from_str::<Notice>(payload) {
            Ok(Notice::Event { event }) => {
                let st = self.state();
                for sub in st.live.values().filter(|s| s.org == event.org_id) {
                    // A dropped subscription's queue is closed; its guard removes it.
                    let _ = sub.tx.unbounded_send(event.clone());
                }
            }
            Ok(Notice::Subscribed { token }) => {
                let id = token
                    .strip_prefix(&self.instance)
                    .and_then(|t| t.strip_prefix(':'))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(id) = id {
                    let mut st = self.state();
                    if let Some(sub) = st.pending.remove(&id) {
                        st.live.insert(id, sub);
                    }
                }
                // Another process's (or bus's) marker: not ours.
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a notification on {CHANNEL} that is not an org event notice")
            }
        }
    }

    /// The listener reconnected: markers sent meanwhile are lost, so register the waiting.
    fn connection_lost(&self) {
        let mut st = self.state();
        let waiting: Vec<(u64, Subscriber)> = st.pending.drain().collect();
        st.live.extend(waiting);
        tracing::warn!("the event bus listener lost its Postgres connection; org events published meanwhile were missed");
    }
}

/// The org event bus on Postgres `LISTEN`/`NOTIFY`.
pub struct PgEventBus {
    pool: sqlx::PgPool,
    hub: Arc<Hub>,
    /// Serialises opening the listener, so concurrent first subscriptions open one.
    opening: tokio::sync::Mutex<()>,
}

impl PgEventBus {
    /// A bus publishing through `pool`; its listener connects with the same options.
    pub fn new(pool: sqlx::PgPool) -> Self {
        let instance = uuid::Uuid::now_v7().simple().to_string();
        PgEventBus {
            pool,
            hub: Arc::new(Hub {
                instance,
                state: Mutex::new(HubState::default()),
                left: Notify::new(),
            }),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a listener connection is open (for tests: it closes after the last subscription).
    pub fn is_listening(&self) -> bool {
        self.hub.state().running
    }

    async fn notify(&self, notice: &Notice) -> Result<(), EventBusError> {
        let payload = serde_json::to_string(notice)
            .map_err(|e| EventBusError::Invalid(format!("org event notice: {e}")))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(|e| to_port::<EventBusError>("publishing an org event", e))?;
        Ok(())
    }

    /// A listening connection of its own, `LISTEN`ing on [`CHANNEL`].
    async fn listen(&self) -> Result<(PgListener, sqlx::PgPool), EventBusError> {
        let fail = |e| to_port::<EventBusError>("listening for org events", e);
        let options = (*self.pool.connect_options()).clone();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_with(options)
            .await
            .map_err(fail)?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(fail)?;
        listener.ignore_pool_close_event(true);
        listener.listen(CHANNEL).await.map_err(fail)?;
        Ok((listener, pool))
    }
}

/// The listener task: forwards notifications until nobody is subscribed.
async fn forward(hub: Arc<Hub>, mut listener: PgListener, pool: sqlx::PgPool) {
    let mut retry = RETRY_MIN;
    while !hub.stop_if_idle() {
        tokio::select! {
            received = listener.try_recv() => match received {
                Ok(Some(n)) => {
                    retry = RETRY_MIN;
                    hub.dispatch(n.payload());
                }
                Ok(None) => hub.connection_lost(),
                Err(e) => {
                    // A terminated backend answers with an error first; the next receive sees
                    // the closed socket and reconnects. A failed reconnect is retried after a pause.
                    tracing::warn!(error = %e, "the event bus listener failed; retrying in {retry:?}");
                    hub.connection_lost();
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = hub.left.notified() => {}
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            },
            _ = hub.left.notified() => {}
        }
    }
    drop(listener);
    pool.close().await;
}

/// A subscription's stream; dropping it unregisters it.
struct Subscription {
    rx: mpsc::UnboundedReceiver<OrgEvent>,
    id: u64,
    hub: Arc<Hub>,
}

impl Stream for Subscription {
    type Item = OrgEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OrgEvent>> {
        self.rx.poll_next_unpin(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut st = self.hub.state();
            st.pending.remove(&self.id);
            st.live.remove(&self.id);
        }
        self.hub.left.notify_one();
    }
}

#[async_trait]
impl EventBus for PgEventBus {
    async fn publish(&self, event: &OrgEvent) -> Result<(), EventBusError> {
        self.notify(&Notice::Event {
            event: event.clone(),
        })
        .await
    }

    async fn subscribe(
        &self,
        tenant: &TenantContext,
    ) -> Result<BoxStream<'static, OrgEvent>, EventBusError> {
        let (tx, rx) = mpsc::unbounded();
        let subscriber = Subscriber {
            org: tenant.org().clone(),
            tx,
        };
        let opening = self.opening.lock().await;
        // Registered in the same critical section that sees the listener running, so the
        // listener cannot stop for idleness in between.
        let registered = {
            let mut st = self.hub.state();
            if st.running {
                let id = st.next_id;
                st.next_id += 1;
                st.pending.insert(id, subscriber);
                Ok(id)
            } else {
                Err(subscriber)
            }
        };
        let id = match registered {
            Ok(id) => id,
            Err(subscriber) => {
                let (listener, listener_pool) = self.listen().await?;
                let mut st = self.hub.state();
                let id = st.next_id;
                st.next_id += 1;
                st.pending.insert(id, subscriber);
                st.running = true;
                tokio::spawn(forward(self.hub.clone(), listener, listener_pool));
                id
            }
        };
        drop(opening);
        // From here a failure drops the subscription, which unregisters it.
        let subscription = Subscription {
            rx,
            id,
            hub: self.hub.clone(),
        };
        self.notify(&Notice::Subscribed {
            token: self.hub.token(id),
        })
        .await?;
        Ok(subscription.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::events::{SandboxStatus, SessionStatus};
    use switchboard_core::{SessionId, Timestamp};

    fn hub() -> Hub {
        Hub {
            instance: "bus1".into(),
            state: Mutex::new(HubState {
                running: true,
                ..HubState::default()
            }),
            left: Notify::new(),
        }
    }

    fn event(org: &str) -> OrgEvent {
        OrgEvent {
            org_id: OrgId::parse(org).unwrap(),
            session_id: SessionId::parse("s").unwrap(),
            status: SessionStatus::Ready,
            sandbox: SandboxStatus::Connected,
            at: Timestamp::EPOCH,
        }
    }

    fn payload(n: &Notice) -> String {
        serde_json::to_string(n).unwrap()
    }

    #[test]
    fn a_subscription_receives_only_after_its_marker_and_only_its_org() {
        let hub = hub();
        let (tx, mut rx) = mpsc::unbounded();
        hub.state().pending.insert(
            0,
            Subscriber {
                org: OrgId::parse("a").unwrap(),
                tx,
            },
        );
        hub.dispatch(&payload(&Notice::Event { event: event("a") }));
        hub.dispatch(&payload(&Notice::Subscribed {
            token: "other-bus:0".into(),
        }));
        assert!(rx.try_recv().is_err(), "nothing before its own marker");
        hub.dispatch(&payload(&Notice::Subscribed {
            token: hub.token(0),
        }));
        hub.dispatch(&payload(&Notice::Event { event: event("b") }));
        hub.dispatch("not json");
        hub.dispatch(&payload(&Notice::Event { event: event("a") }));
        assert_eq!(rx.try_recv().unwrap(), event("a"));
        assert!(
            rx.try_recv().is_err(),
            "b's event and the garbage were not delivered"
        );
    }

    #[test]
    fn a_lost_connection_registers_the_waiting_and_an_idle_hub_stops() {
        let hub = hub();
        let (tx, _rx) = mpsc::unbounded();
        hub.state().pending.insert(
            3,
            Subscriber {
                org: OrgId::parse("a").unwrap(),
                tx,
            },
        );
        assert!(!hub.stop_if_idle());
        hub.connection_lost();
        assert!(hub.state().live.contains_key(&3));
        hub.state().live.clear();
        assert!(hub.stop_if_idle());
        assert!(!hub.state().running);
    }
}
