//! `InMemorySandboxProvider`: dev boxes that exist only as records, so a test can play the sandbox.
//!
//! Every spawn is recorded with its [`SpawnSpec`]; a test reads [`InMemorySandboxProvider::spawned`]
//! to learn the callback URL and token, dials back with them, and moves the sandbox along with
//! [`InMemorySandboxProvider::mark_running`] and [`InMemorySandboxProvider::mark_exited`].

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;
use switchboard_core::protocol::SpawnSpec;
use switchboard_core::SandboxId;
use switchboard_ports::sandbox::SandboxState;
use switchboard_ports::{SandboxProvider, SandboxProviderError};

/// The reason recorded when a sandbox is ended through [`SandboxProvider::terminate`].
pub const TERMINATED: &str = "terminated";

struct Sandbox {
    spec: SpawnSpec,
    state: SandboxState,
    snapshots: u64,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Spawn order, for [`InMemorySandboxProvider::spawned`].
    order: Vec<SandboxId>,
    boxes: BTreeMap<SandboxId, Sandbox>,
}

/// An in-memory [`SandboxProvider`]. Ids are `sbx-1`, `sbx-2`… in spawn order.
#[derive(Default)]
pub struct InMemorySandboxProvider {
    state: Mutex<State>,
}

impl InMemorySandboxProvider {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every sandbox spawned so far, in order, with the spec it was given (token in clear, as the
    /// sandbox itself would receive it).
    pub fn spawned(&self) -> Vec<(SandboxId, SpawnSpec)> {
        let st = self.state.lock().unwrap();
        st.order
            .iter()
            .map(|id| (id.clone(), st.boxes[id].spec.clone()))
            .collect()
    }

    /// The spec sandbox `id` was spawned with.
    pub fn spec(&self, id: &SandboxId) -> Option<SpawnSpec> {
        self.state
            .lock()
            .unwrap()
            .boxes
            .get(id)
            .map(|b| b.spec.clone())
    }

    /// The sandbox finished booting. `NotFound` for an unknown id, `Conflict` once it has exited
    /// (an exited sandbox never comes back).
    pub fn mark_running(&self, id: &SandboxId) -> Result<(), SandboxProviderError> {
        let mut st = self.state.lock().unwrap();
        let sandbox = st.boxes.get_mut(id).ok_or_else(|| not_found(id))?;
        match sandbox.state {
            SandboxState::Exited { .. } => Err(SandboxProviderError::Conflict(format!(
                "sandbox {id} has exited"
            ))),
            _ => {
                sandbox.state = SandboxState::Running;
                Ok(())
            }
        }
    }

    /// The sandbox went away on its own (crash, provider timeout). Idempotent: the first reason
    /// stays. `NotFound` for an unknown id.
    pub fn mark_exited(&self, id: &SandboxId, reason: &str) -> Result<(), SandboxProviderError> {
        let mut st = self.state.lock().unwrap();
        let sandbox = st.boxes.get_mut(id).ok_or_else(|| not_found(id))?;
        if !matches!(sandbox.state, SandboxState::Exited { .. }) {
            sandbox.state = SandboxState::Exited {
                reason: reason.to_string(),
            };
        }
        Ok(())
    }

    /// Sandboxes that have not exited.
    pub fn live(&self) -> Vec<SandboxId> {
        let st = self.state.lock().unwrap();
        st.order
            .iter()
            .filter(|id| !matches!(st.boxes[*id].state, SandboxState::Exited { .. }))
            .cloned()
            .collect()
    }
}

fn not_found(id: &SandboxId) -> SandboxProviderError {
    SandboxProviderError::NotFound(format!("no sandbox {id}"))
}

#[async_trait]
impl SandboxProvider for InMemorySandboxProvider {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<SandboxId, SandboxProviderError> {
        if spec.callback_url.is_empty() || spec.token.is_empty() {
            return Err(SandboxProviderError::Invalid(
                "a spawn spec needs a callback URL and a token".into(),
            ));
        }
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let id =
            SandboxId::parse(format!("sbx-{}", st.next_id)).expect("sbx-N is a valid sandbox id");
        st.order.push(id.clone());
        st.boxes.insert(
            id.clone(),
            Sandbox {
                spec: spec.clone(),
                state: SandboxState::Starting,
                snapshots: 0,
            },
        );
        Ok(id)
    }

    async fn status(&self, id: &SandboxId) -> Result<SandboxState, SandboxProviderError> {
        let st = self.state.lock().unwrap();
        st.boxes
            .get(id)
            .map(|b| b.state.clone())
            .ok_or_else(|| not_found(id))
    }

    async fn terminate(&self, id: &SandboxId) -> Result<(), SandboxProviderError> {
        self.mark_exited(id, TERMINATED)
    }

    async fn snapshot(&self, id: &SandboxId) -> Result<String, SandboxProviderError> {
        let mut st = self.state.lock().unwrap();
        let sandbox = st.boxes.get_mut(id).ok_or_else(|| not_found(id))?;
        match sandbox.state {
            SandboxState::Running => {
                sandbox.snapshots += 1;
                Ok(format!("snap-{id}-{}", sandbox.snapshots))
            }
            SandboxState::Starting => Err(SandboxProviderError::Conflict(format!(
                "sandbox {id} is still starting"
            ))),
            SandboxState::Exited { .. } => Err(SandboxProviderError::Conflict(format!(
                "sandbox {id} has exited"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::SpawnTimeouts;

    fn spec(token: &str) -> SpawnSpec {
        SpawnSpec {
            session_key: "o1:s1".into(),
            callback_url: "ws://127.0.0.1:1/v1/sandbox/o1/s1".into(),
            token: token.into(),
            agent: "opencode".into(),
            repo: None,
            env: Default::default(),
            timeouts: SpawnTimeouts {
                idle_s: 60,
                max_s: 600,
            },
        }
    }

    #[test]
    fn lifecycle() {
        futures::FutureExt::now_or_never(async {
            let p = InMemorySandboxProvider::new();
            let a = p.spawn(&spec("t1")).await.unwrap();
            let b = p.spawn(&spec("t2")).await.unwrap();
            assert_ne!(a, b);
            assert_eq!(
                p.spawned()
                    .iter()
                    .map(|(_, s)| s.token.as_str())
                    .collect::<Vec<_>>(),
                ["t1", "t2"]
            );
            assert!(matches!(
                p.snapshot(&a).await,
                Err(SandboxProviderError::Conflict(_))
            ));
            p.mark_running(&a).unwrap();
            assert_eq!(p.snapshot(&a).await.unwrap(), "snap-sbx-1-1");
            p.mark_exited(&a, "crashed").unwrap();
            p.terminate(&a).await.unwrap();
            assert_eq!(
                p.status(&a).await.unwrap(),
                SandboxState::Exited {
                    reason: "crashed".into()
                }
            );
            assert!(matches!(
                p.mark_running(&a),
                Err(SandboxProviderError::Conflict(_))
            ));
            assert_eq!(p.live(), vec![b]);
            assert!(matches!(
                p.spawn(&spec("")).await,
                Err(SandboxProviderError::Invalid(_))
            ));
        })
        .expect("in-memory fakes never wait");
    }
}
