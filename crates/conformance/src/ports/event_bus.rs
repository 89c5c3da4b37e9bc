//! Contract cases, fault catalog and `Faulty` wrapper for `EventBus`. Its disruption cases live in
//! the session lifecycle (status publishing), not here.

use super::identity_store::{at, new_org_id, tenant, unique, within};
use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure_eq, ok};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use std::future::Future;
use std::sync::Arc;
use switchboard_adapters::broadcast_bus::TokioBroadcastEventBus;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchPostgres};
use switchboard_adapters::sql::PgEventBus;
use switchboard_core::protocol::events::{SandboxStatus, SessionStatus};
use switchboard_core::session::OrgEvent;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, SessionId};
use switchboard_fakes::event_bus::InMemoryEventBus;
use switchboard_ports::record::{EventBus, EventBusError};
use switchboard_ports::PortId;

/// A fresh bus.
pub struct Fixture {
    pub bus: Arc<dyn EventBus>,
    /// The scratch database the bus notifies through, kept alive for the whole case (None otherwise).
    pub scratch: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// A status change of a fresh session of `org`, at second `n`.
fn event(org: &OrgId, n: u64) -> OrgEvent {
    let status = [
        SessionStatus::Provisioning,
        SessionStatus::Ready,
        SessionStatus::Running,
        SessionStatus::Closed,
    ][n as usize % 4];
    OrgEvent {
        org_id: org.clone(),
        session_id: SessionId::parse(unique("session")).expect("a valid session id"),
        status,
        sandbox: SandboxStatus::Connected,
        at: at(n),
    }
}

/// The next event of a subscription, failing if the stream ends or stays silent.
async fn next(sub: &mut BoxStream<'static, OrgEvent>, who: &str) -> Result<OrgEvent, String> {
    within(&format!("{who}'s next event"), sub.next())
        .await?
        .ok_or_else(|| format!("{who}'s stream ended"))
}

/// One case per `# Contract` bullet of `EventBus`.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "subscriber_receives_published",
            run: |f| Box::pin(subscriber_receives_published(f)),
        },
        Case {
            name: "tenant_isolation",
            run: |f| Box::pin(tenant_isolation(f)),
        },
        Case {
            name: "many_subscribers",
            run: |f| Box::pin(many_subscribers(f)),
        },
    ]
}

async fn subscriber_receives_published(f: Fixture) -> CaseResult {
    let org = new_org_id();
    ok!(f.bus.publish(&event(&org, 0)).await);
    let mut sub = ok!(f.bus.subscribe(&tenant(&org)).await);
    let published: Vec<OrgEvent> = (1..=5).map(|n| event(&org, n)).collect();
    for e in &published {
        ok!(f.bus.publish(e).await);
    }
    for (i, want) in published.iter().enumerate() {
        // The first one received is the first published after subscribing, not the earlier one.
        ensure_eq!(
            next(&mut sub, "the subscriber").await?,
            *want,
            "event {i} in publish order"
        );
    }
    Ok(())
}

async fn tenant_isolation(f: Fixture) -> CaseResult {
    let (a, b) = (new_org_id(), new_org_id());
    let mut sub_a = ok!(f.bus.subscribe(&tenant(&a)).await);
    let mut sub_b = ok!(f.bus.subscribe(&tenant(&b)).await);
    let (b1, b2, a1) = (event(&b, 1), event(&b, 2), event(&a, 3));
    for e in [&b1, &b2, &a1] {
        ok!(f.bus.publish(e).await);
    }
    // A's first event is its own: B's two, published earlier, never reached it.
    ensure_eq!(next(&mut sub_a, "org A").await?, a1);
    ensure_eq!(next(&mut sub_b, "org B").await?, b1);
    ensure_eq!(next(&mut sub_b, "org B").await?, b2);
    // And nothing of A's slipped into B's stream before B's next own event.
    let (a2, b3) = (event(&a, 4), event(&b, 5));
    ok!(f.bus.publish(&a2).await);
    ok!(f.bus.publish(&b3).await);
    ensure_eq!(next(&mut sub_b, "org B").await?, b3);
    ensure_eq!(next(&mut sub_a, "org A").await?, a2);
    Ok(())
}

async fn many_subscribers(f: Fixture) -> CaseResult {
    let org = new_org_id();
    let mut subs = Vec::new();
    for _ in 0..4 {
        subs.push(ok!(f.bus.subscribe(&tenant(&org)).await));
    }
    let (e1, e2) = (event(&org, 1), event(&org, 2));
    ok!(f.bus.publish(&e1).await);
    ok!(f.bus.publish(&e2).await);
    for (i, sub) in subs.iter_mut().enumerate() {
        ensure_eq!(next(sub, &format!("subscriber {i}")).await?, e1);
        ensure_eq!(next(sub, &format!("subscriber {i}")).await?, e2);
    }
    // A subscriber leaving does not stop the others.
    drop(subs.pop());
    let e3 = event(&org, 3);
    ok!(f.bus.publish(&e3).await);
    for (i, sub) in subs.iter_mut().enumerate() {
        ensure_eq!(next(sub, &format!("subscriber {i}")).await?, e3);
    }
    Ok(())
}

/// Every implementation of `EventBus`.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                bus: Arc::new(InMemoryEventBus::new()),
                scratch: None,
            })
        }),
        Implementation::new("tokio_broadcast", ImplKind::Adapter, || async {
            Ok(Fixture {
                bus: Arc::new(TokioBroadcastEventBus::new()),
                scratch: None,
            })
        }),
        Implementation::new("postgres", ImplKind::Adapter, || async {
            let db = ScratchPostgres::create().await?;
            let pool = db.pool(4).await?;
            Ok(Fixture {
                bus: Arc::new(PgEventBus::new(pool)),
                scratch: Some(Arc::new(db)),
            })
        })
        .gated(postgres_gate),
    ]
}

/// The fault catalog of `EventBus`.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "publish",
        outcome: "the status change misses the dashboard stream only; the session goes on and its own event stream still carries it",
    },
    CatalogEntry { fault: Fault::Timeout, op: "publish", outcome: "the session is not held up: the status change is dropped from the dashboard stream and the session goes on" },
    CatalogEntry { fault: Fault::Slow, op: "publish", outcome: "the session's stream is not blocked while the publish completes, and subscribers still get the event" },
    CatalogEntry { fault: Fault::Unavailable, op: "subscribe", outcome: "the dashboard stream request fails with 503 and no partial stream is opened" },
];

#[async_trait]
impl EventBus for Faulty<dyn EventBus> {
    async fn publish(&self, event: &OrgEvent) -> Result<(), EventBusError> {
        self.call("publish", || self.inner.publish(event)).await
    }
    async fn subscribe(
        &self,
        tenant: &TenantContext,
    ) -> Result<BoxStream<'static, OrgEvent>, EventBusError> {
        self.call("subscribe", || self.inner.subscribe(tenant))
            .await
    }
}

/// The suite of `EventBus`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::EventBus, cases(), implementations(), CATALOG)
}

/// Runs every contract case against an implementation: the adapter author's entry point.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    Report::run(harness::trials(
        PortId::EventBus,
        &Implementation::new(name, ImplKind::Adapter, make),
        &cases(),
    ))
}

/// None here: the bus's faults are exercised through the session lifecycle, by the disruption suite.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bus that forgets which org a subscriber belongs to.
    struct Everyone(InMemoryEventBus, TenantContext);

    #[async_trait]
    impl EventBus for Everyone {
        async fn publish(&self, event: &OrgEvent) -> Result<(), EventBusError> {
            self.0
                .publish(&OrgEvent {
                    org_id: self.1.org().clone(),
                    ..event.clone()
                })
                .await
        }
        async fn subscribe(
            &self,
            _: &TenantContext,
        ) -> Result<BoxStream<'static, OrgEvent>, EventBusError> {
            self.0.subscribe(&self.1).await
        }
    }

    #[test]
    fn check_reports_a_bus_that_leaks_across_orgs() {
        let report = check("everyone", || async {
            Ok(Fixture {
                bus: Arc::new(Everyone(InMemoryEventBus::new(), tenant(&new_org_id()))),
                scratch: None,
            })
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert!(
            failed.contains(&"event_bus::everyone::tenant_isolation"),
            "{failed:?}"
        );
    }
}
