//! The agent side of the bridge: one worker task that owns the agent session and runs the
//! server's jobs (`run`, `restore`) one at a time through the `AgentDriver` port, turning the
//! agent's updates into [`Outgoing`] messages for the connection to number and send.
//!
//! The connection never waits on the agent: it queues jobs, flags cancellations and forwards
//! permission decisions while a turn is running.

use futures::channel::mpsc as updates;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::protocol::{
    ErrorBody, Event, GatewayConfig, PermissionDecision, TerminalStatus, Turn, TurnRole, Usage,
};
use switchboard_core::{ModelRef, RequestId, RunId};
use switchboard_ports::agent::{AgentSessionId, AgentStart, AgentUpdate};
use switchboard_ports::AgentDriver;
use tokio::sync::{mpsc, Notify};

use crate::fit::{split_text, DELTA_CHUNK};

/// A `run` from the server.
#[derive(Debug, Clone)]
pub(crate) struct RunJob {
    pub run_id: RunId,
    pub text: String,
    pub model: ModelRef,
    pub gateway: GatewayConfig,
}

/// Work for the agent, in the order the server sent it.
#[derive(Debug)]
pub(crate) enum Job {
    Run(RunJob),
    /// The conversation so far, for a replacement sandbox: given to the agent before its next run.
    Restore(Vec<Turn>),
}

/// Something for the server, not yet numbered.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Event {
        run_id: RunId,
        event: Event,
    },
    Permission {
        run_id: RunId,
        request_id: RequestId,
        tool: String,
        input: serde_json::Value,
    },
    Finished {
        run_id: RunId,
        status: TerminalStatus,
        stop_reason: Option<String>,
        usage: Usage,
        error: Option<ErrorBody>,
    },
}

impl Outgoing {
    /// A run that ended without reaching the agent.
    pub(crate) fn cancelled(run_id: RunId) -> Self {
        Outgoing::Finished {
            run_id,
            status: TerminalStatus::Cancelled,
            stop_reason: Some("cancelled".into()),
            usage: Usage::default(),
            error: None,
        }
    }

    fn failed(run_id: RunId, error: ErrorBody) -> Self {
        Outgoing::Finished {
            run_id,
            status: TerminalStatus::Failed,
            stop_reason: None,
            usage: Usage::default(),
            error: Some(error),
        }
    }
}

/// What a `cancel` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// The run was still queued and is dropped: it never reaches the agent.
    Queued,
    /// The run is the current one: its turn is being cancelled.
    Running,
    /// No such run is queued or running (it finished, or never came).
    Unknown,
}

/// The run the worker is on.
struct Current {
    run_id: RunId,
    cancelled: bool,
    /// Wakes the worker to cancel the turn; fresh per run, so a stale cancel never leaks.
    cancel: Arc<Notify>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    session: Option<AgentSessionId>,
    current: Option<Current>,
    /// Set once at exit: the worker stops taking jobs and stops any session it still starts.
    closing: bool,
}

/// The agent, shared by the connection (which submits and cancels) and the worker (which runs).
pub(crate) struct Agent {
    driver: Arc<dyn AgentDriver>,
    workspace: String,
    state: Mutex<State>,
    wake: Notify,
}

/// What the worker keeps between jobs.
#[derive(Default)]
struct Memory {
    /// The model and gateway the live session was started with.
    started_with: Option<(ModelRef, GatewayConfig)>,
    /// The conversation as the bridge saw it (restored turns, then each prompt and reply), given
    /// to a replacement agent session.
    conversation: Vec<Turn>,
    /// The conversation must be given to the agent before its next prompt.
    restore_pending: bool,
}

impl Agent {
    pub(crate) fn new(driver: Arc<dyn AgentDriver>, workspace: String) -> Self {
        Agent {
            driver,
            workspace,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere never leaves the state half-written (every update is one assignment).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn submit(&self, job: Job) {
        self.state().jobs.push_back(job);
        self.wake.notify_one();
    }

    /// Cancels `run_id`: a queued run is dropped (the caller reports it cancelled), the current
    /// run's turn is cancelled by the worker.
    pub(crate) fn cancel(&self, run_id: &RunId) -> Cancelled {
        let mut state = self.state();
        if let Some(current) = state.current.as_mut().filter(|c| &c.run_id == run_id) {
            current.cancelled = true;
            current.cancel.notify_one();
            return Cancelled::Running;
        }
        let queued = state
            .jobs
            .iter()
            .position(|job| matches!(job, Job::Run(run) if &run.run_id == run_id));
        match queued {
            Some(i) => {
                state.jobs.remove(i);
                Cancelled::Queued
            }
            None => Cancelled::Unknown,
        }
    }

    /// Hands a permission decision to the agent session.
    pub(crate) async fn decide(&self, request_id: RequestId, decision: PermissionDecision) {
        let session = self.state().session.clone();
        let Some(session) = session else {
            tracing::warn!(%request_id, "a permission decision arrived with no agent session");
            return;
        };
        if let Err(e) = self.driver.decide(&session, &request_id, decision).await {
            tracing::warn!(%request_id, error = %e, "the agent did not take the permission decision");
        }
    }

    /// Stops taking jobs and stops the agent session (which ends a turn in progress). A session
    /// the worker is still starting is stopped by the worker itself.
    pub(crate) async fn close(&self, grace: Duration) {
        let session = {
            let mut state = self.state();
            state.closing = true;
            state.jobs.clear();
            state.session.take()
        };
        self.wake.notify_one();
        if let Some(session) = session {
            stop(self.driver.as_ref(), &session, grace).await;
        }
    }

    /// The worker: runs jobs until [`Agent::close`], sending what the agent does to `out`.
    pub(crate) async fn work(self: Arc<Self>, out: mpsc::UnboundedSender<Outgoing>) {
        let mut memory = Memory::default();
        loop {
            let job = {
                let mut state = self.state();
                if state.closing {
                    return;
                }
                let job = state.jobs.pop_front();
                if let Some(Job::Run(run)) = &job {
                    state.current = Some(Current {
                        run_id: run.run_id.clone(),
                        cancelled: false,
                        cancel: Arc::new(Notify::new()),
                    });
                }
                job
            };
            match job {
                None => self.wake.notified().await,
                Some(Job::Restore(turns)) => self.restore(&mut memory, turns).await,
                Some(Job::Run(run)) => {
                    let run_id = run.run_id.clone();
                    let finished = self.run(&mut memory, run, &out).await;
                    self.state().current = None;
                    match finished {
                        Some(finished) => {
                            // The connection only goes away at exit.
                            let _ = out.send(finished);
                        }
                        None => tracing::debug!(%run_id, "the bridge is closing; run abandoned"),
                    }
                }
            }
        }
    }

    async fn restore(&self, memory: &mut Memory, turns: Vec<Turn>) {
        memory.conversation = turns;
        memory.restore_pending = true;
        let session = self.state().session.clone();
        if let Some(session) = session {
            self.give_history(memory, &session).await;
        }
    }

    /// Gives the agent the conversation if it is owed it. A failure is logged and not retried:
    /// the run goes on without the earlier context rather than not at all.
    async fn give_history(&self, memory: &mut Memory, session: &AgentSessionId) {
        if !memory.restore_pending {
            return;
        }
        memory.restore_pending = false;
        match self.driver.restore(session, &memory.conversation).await {
            Ok(mode) => tracing::info!(
                turns = memory.conversation.len(),
                ?mode,
                "conversation restored"
            ),
            Err(e) => tracing::warn!(error = %e, "the agent could not take the conversation"),
        }
    }

    /// The run's agent session: the live one when it was started for this model and gateway,
    /// else a new one (which is given the conversation so far). `Err` carries the `run_finished`
    /// to send, `Ok(None)` means the bridge is closing.
    async fn session_for(
        &self,
        memory: &mut Memory,
        run: &RunJob,
    ) -> Result<Option<AgentSessionId>, Outgoing> {
        let wanted = (run.model.clone(), run.gateway.clone());
        let live = self.state().session.clone();
        if let Some(session) = live {
            if memory.started_with.as_ref() == Some(&wanted) {
                return Ok(Some(session));
            }
            // The agent reads its model configuration at start: a new gateway needs a new agent.
            tracing::info!(run_id = %run.run_id, "the model or gateway changed; restarting the agent");
            {
                let mut state = self.state();
                if state.session.as_ref() == Some(&session) {
                    state.session = None;
                }
            }
            memory.started_with = None;
            if let Err(e) = self.driver.stop(&session).await {
                tracing::warn!(error = %e, "stopping the previous agent session failed");
            }
            memory.restore_pending = !memory.conversation.is_empty();
        }
        let start = AgentStart {
            workspace: self.workspace.clone(),
            model: run.model.clone(),
            gateway: run.gateway.clone(),
        };
        let session = self.driver.start(&start).await.map_err(|e| {
            Outgoing::failed(
                run.run_id.clone(),
                ErrorBody::new(
                    "agent_start_failed",
                    format!("the agent did not start: {e}"),
                ),
            )
        })?;
        {
            let mut state = self.state();
            if !state.closing {
                state.session = Some(session.clone());
                memory.started_with = Some(wanted);
                return Ok(Some(session));
            }
        }
        if let Err(e) = self.driver.stop(&session).await {
            tracing::warn!(error = %e, "stopping the agent session started during exit failed");
        }
        Ok(None)
    }

    /// Runs one prompt; the `run_finished` to send, `None` when the bridge is closing.
    async fn run(
        &self,
        memory: &mut Memory,
        run: RunJob,
        out: &mpsc::UnboundedSender<Outgoing>,
    ) -> Option<Outgoing> {
        let session = match self.session_for(memory, &run).await {
            Ok(Some(session)) => session,
            Ok(None) => return None,
            Err(finished) => return Some(finished),
        };
        self.give_history(memory, &session).await;
        let cancel = {
            let state = self.state();
            let current = state.current.as_ref()?;
            if current.cancelled {
                return Some(Outgoing::cancelled(run.run_id));
            }
            current.cancel.clone()
        };

        let (tx, mut rx) = updates::unbounded();
        let mut reply = String::new();
        let mut forward = |update: AgentUpdate| {
            let events = match update {
                AgentUpdate::Event(Event::MessageDelta { text }) => {
                    reply.push_str(&text);
                    split_text(&text, DELTA_CHUNK)
                        .into_iter()
                        .map(|text| Event::MessageDelta { text })
                        .collect()
                }
                AgentUpdate::Event(Event::ThoughtDelta { text }) => split_text(&text, DELTA_CHUNK)
                    .into_iter()
                    .map(|text| Event::ThoughtDelta { text })
                    .collect(),
                AgentUpdate::Event(event) => vec![event],
                AgentUpdate::Permission {
                    request_id,
                    tool,
                    input,
                } => {
                    let _ = out.send(Outgoing::Permission {
                        run_id: run.run_id.clone(),
                        request_id,
                        tool,
                        input,
                    });
                    Vec::new()
                }
            };
            for event in events {
                let _ = out.send(Outgoing::Event {
                    run_id: run.run_id.clone(),
                    event,
                });
            }
        };
        let mut cancel_sent = false;
        let mut updates_open = true;
        let outcome = {
            let prompt = self.driver.prompt(&session, &run.run_id, &run.text, tx);
            tokio::pin!(prompt);
            loop {
                tokio::select! {
                    // The prompt is polled first, so the driver has begun the turn before a cancel
                    // that was already waiting reaches it.
                    biased;
                    outcome = &mut prompt => break outcome,
                    update = rx.next(), if updates_open => match update {
                        Some(update) => forward(update),
                        None => updates_open = false,
                    },
                    () = cancel.notified(), if !cancel_sent => {
                        cancel_sent = true;
                        if let Err(e) = self.driver.cancel(&session).await {
                            tracing::warn!(run_id = %run.run_id, error = %e, "cancelling the turn failed");
                        }
                    }
                }
            }
        };
        // Updates the agent sent just before the turn ended.
        while let Ok(update) = rx.try_recv() {
            forward(update);
        }

        memory.conversation.push(Turn {
            role: TurnRole::User,
            text: run.text.clone(),
        });
        if !reply.is_empty() {
            memory.conversation.push(Turn {
                role: TurnRole::Assistant,
                text: reply,
            });
        }
        Some(match outcome {
            Ok(outcome) => Outgoing::Finished {
                run_id: run.run_id,
                status: outcome.status,
                stop_reason: outcome.stop_reason,
                usage: outcome.usage,
                error: outcome.error,
            },
            Err(e) => Outgoing::failed(
                run.run_id,
                ErrorBody::new("agent_error", format!("the agent's turn failed: {e}")),
            ),
        })
    }
}

/// Stops an agent session within `grace`, logging what went wrong.
async fn stop(driver: &dyn AgentDriver, session: &AgentSessionId, grace: Duration) {
    match tokio::time::timeout(grace, driver.stop(session)).await {
        Ok(Ok(())) => tracing::info!(session = %session.0, "agent stopped"),
        Ok(Err(e)) => tracing::warn!(session = %session.0, error = %e, "stopping the agent failed"),
        Err(_) => tracing::warn!(session = %session.0, ?grace, "stopping the agent timed out"),
    }
}
