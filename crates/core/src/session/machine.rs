//! The session state machine itself. (Skeleton: being filled in; the public API is fixed.)

use super::types::*;
use crate::tenancy::SessionKey;
use crate::time::Timestamp;
use std::collections::VecDeque;

/// One session's state machine. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Session {
    key: SessionKey,
    effects: VecDeque<Effect>,
}

impl Session {
    /// A brand-new session. Call `handle(now, Input::Start)` next.
    pub fn new(_now: Timestamp, _config: SessionConfig, init: SessionInit) -> Session {
        Session { key: init.key, effects: VecDeque::new() }
    }

    /// Rebuilds a machine from what the store persisted. A snapshot it cannot read is `Corrupt`.
    pub fn restore(_now: Timestamp, _config: SessionConfig, _persisted: Persisted) -> Result<Session, Rejection> {
        Err(Rejection { class: crate::ErrorClass::Corrupt, code: "unreadable_snapshot", message: "not yet".into() })
    }

    /// Which run was in flight in `snapshot`, and the seq of its first event, so the store can
    /// load that run's events for [`Persisted::active_run_events`].
    pub fn active_run_first_seq(_snapshot: &SessionSnapshot) -> Option<(crate::ids::RunId, u64)> {
        None
    }

    pub fn handle(&mut self, _now: Timestamp, _input: Input) -> Result<Accepted, Rejection> {
        Ok(Accepted::Done)
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn poll_deadline(&self) -> Option<Timestamp> {
        None
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }
}
