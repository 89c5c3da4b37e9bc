//! Runs inside the session machine: prompts and their de-duplication, the FIFO queue, dispatch,
//! cancel, terminal transitions with their run records, the ledger outbox, and the permission
//! broker.

use super::machine::{later, rejection, OutboxEntry, Session};
use super::state::{Link, PendingAsk, RememberedPrompt, Run, REMEMBERED_CLIENT_MSG_IDS};
use super::types::*;
use crate::error::ErrorClass;
use crate::ids::{ClientMsgId, ConnId, RequestId, RunId};
use crate::protocol::events::{
    DecidedBy, ErrorBody, Event, PermissionDecision, TerminalStatus, Usage,
};
use crate::protocol::sandbox::{ServerToSandbox, Turn, TurnRole};
use crate::run::{Price, RunRecord, RunState};
use crate::tenancy::Attribution;
use crate::time::Timestamp;
use serde_json::Value;
use std::time::Duration;

/// How a run ended, as reported by the sandbox or decided by the machine.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub status: TerminalStatus,
    pub stop_reason: Option<String>,
    pub usage: Usage,
    pub error: Option<ErrorBody>,
}

impl Outcome {
    /// Ended by the machine, with no usage reported.
    pub(super) fn ended(status: TerminalStatus, error: Option<ErrorBody>) -> Outcome {
        Outcome {
            status,
            stop_reason: None,
            usage: Usage::default(),
            error,
        }
    }
}

impl Session {
    // ----- prompts ---------------------------------------------------------------------------

    pub(super) fn prompt(
        &mut self,
        now: Timestamp,
        run_id: RunId,
        by: Attribution,
        text: String,
        client_msg_id: Option<ClientMsgId>,
    ) -> Result<Accepted, Rejection> {
        if let Some(id) = client_msg_id.as_ref() {
            let original = self
                .state
                .recent_prompts
                .iter()
                .find(|p| &p.client_msg_id == id)
                .map(|p| p.run_id.clone());
            if let Some(original) = original {
                let position = self.position_of(&original);
                return Ok(Accepted::Queued {
                    run_id: original,
                    position,
                    duplicate: true,
                });
            }
        }
        if !self.state.phase.accepts_work() {
            return Err(rejection(
                ErrorClass::Conflict,
                "session_closed",
                "the session is closed and takes no more prompts",
            ));
        }
        if text.trim().is_empty() {
            return Err(rejection(
                ErrorClass::Invalid,
                "empty_prompt",
                "a prompt needs some text",
            ));
        }
        if text.len() > self.config.max_prompt_bytes {
            return Err(rejection(
                ErrorClass::Invalid,
                "prompt_too_large",
                format!(
                    "a prompt may hold at most {} bytes; this one has {}",
                    self.config.max_prompt_bytes,
                    text.len()
                ),
            ));
        }
        if self.state.queue.len() >= self.config.max_queue {
            return Err(rejection(
                ErrorClass::RateLimited,
                "queue_full",
                format!(
                    "{} runs are already queued; wait for one to finish",
                    self.state.queue.len()
                ),
            ));
        }
        let known = self
            .state
            .in_flight
            .iter()
            .chain(self.state.queue.iter())
            .any(|run| run.run_id == run_id);
        if known {
            return Err(rejection(
                ErrorClass::Conflict,
                "duplicate_run_id",
                format!("run {run_id} already exists"),
            ));
        }

        let position =
            u32::try_from(self.state.queue.len() + usize::from(self.state.in_flight.is_some()))
                .unwrap_or(u32::MAX);
        let queued = self
            .emit(
                now,
                Some(run_id.clone()),
                Event::RunQueued {
                    position,
                    text: text.clone(),
                    client_msg_id: client_msg_id.clone(),
                },
            )
            .clone();
        self.state.queue.push_back(Run {
            run_id: run_id.clone(),
            by,
            text,
            client_msg_id: client_msg_id.clone(),
            queued_at: now,
            queued_seq: queued.seq,
            queued_position: position,
            state: RunState::Queued,
            dispatched_at: None,
            started_at: None,
            price: None,
            cancel_requested_at: None,
            events: vec![queued],
            reply: String::new(),
            last_life: now,
        });
        if let Some(client_msg_id) = client_msg_id {
            if self.state.recent_prompts.len() >= REMEMBERED_CLIENT_MSG_IDS {
                self.state.recent_prompts.pop_front();
            }
            self.state.recent_prompts.push_back(RememberedPrompt {
                client_msg_id,
                run_id: run_id.clone(),
            });
        }
        Ok(Accepted::Queued {
            run_id,
            position,
            duplicate: false,
        })
    }

    /// How many runs are ahead of `run_id` (0 once it is in flight or over).
    fn position_of(&self, run_id: &RunId) -> u32 {
        let ahead = self
            .state
            .queue
            .iter()
            .position(|run| &run.run_id == run_id)
            .map(|index| index + usize::from(self.state.in_flight.is_some()))
            .unwrap_or(0);
        u32::try_from(ahead).unwrap_or(u32::MAX)
    }

    // ----- dispatch --------------------------------------------------------------------------

    pub(super) fn dispatch_head(&mut self, now: Timestamp, conn: ConnId) {
        let Some(mut run) = self.state.queue.pop_front() else {
            return;
        };
        run.state = RunState::Dispatched;
        run.dispatched_at = Some(now);
        run.last_life = now;
        self.effect(Effect::DispatchRun {
            conn,
            run_id: run.run_id.clone(),
            text: run.text.clone(),
            model: self.state.model.clone(),
        });
        self.state.in_flight = Some(run);
    }

    /// The run in flight shows it has started (dispatch confirmed, or the sandbox reports on it).
    pub(super) fn mark_started(&mut self, now: Timestamp) {
        let Some(run) = self.state.in_flight.as_mut() else {
            return;
        };
        if run.state != RunState::Dispatched {
            return;
        }
        run.state = RunState::Running;
        run.started_at = Some(now);
        let run_id = run.run_id.clone();
        self.emit(now, Some(run_id), Event::RunStarted {});
    }

    pub(super) fn dispatch_result(
        &mut self,
        now: Timestamp,
        run_id: RunId,
        result: Result<Option<Price>, PortFailure>,
    ) {
        let Some(run) = self
            .state
            .in_flight
            .as_mut()
            .filter(|run| run.run_id == run_id)
        else {
            return;
        };
        match result {
            Ok(price) => {
                run.price = price;
                self.mark_started(now);
            }
            Err(failure) if run.state == RunState::Dispatched => {
                let error = ErrorBody::new(
                    "dispatch_failed",
                    format!("the run could not be sent: {}", failure.message),
                );
                self.finish_in_flight(now, Outcome::ended(TerminalStatus::Failed, Some(error)));
            }
            // The sandbox already reports on the run, so it did get it.
            Err(_) => {}
        }
    }

    /// Whether `run_id` names the run in flight.
    pub(super) fn is_in_flight(&self, run_id: &RunId) -> bool {
        self.state
            .in_flight
            .as_ref()
            .is_some_and(|run| &run.run_id == run_id)
    }

    /// Applies an agent update for the run in flight. Only agent event types are taken.
    pub(super) fn agent_event(&mut self, now: Timestamp, run_id: RunId, event: Event) {
        let from_agent = matches!(
            event,
            Event::MessageDelta { .. }
                | Event::ThoughtDelta { .. }
                | Event::ToolCall { .. }
                | Event::ToolResult { .. }
                | Event::Plan { .. }
        );
        if !from_agent || !self.is_in_flight(&run_id) {
            return;
        }
        self.mark_started(now);
        if let (Event::MessageDelta { text }, Some(run)) = (&event, self.state.in_flight.as_mut()) {
            run.reply.push_str(text);
        }
        self.emit(now, Some(run_id), event);
    }

    // ----- cancel ----------------------------------------------------------------------------

    /// Cancels `run_id`, or by default the run in flight (or, while a sandbox is on its way, the
    /// run first in line).
    pub(super) fn cancel(
        &mut self,
        now: Timestamp,
        run_id: Option<RunId>,
    ) -> Result<(), Rejection> {
        let target = match run_id {
            Some(id) => id,
            None => match self.state.in_flight.as_ref().or(self.state.queue.front()) {
                Some(run) => run.run_id.clone(),
                None => {
                    return Err(rejection(
                        ErrorClass::NotFound,
                        "no_running_run",
                        "no run is running",
                    ))
                }
            },
        };
        if self.is_in_flight(&target) {
            self.cancel_in_flight(now);
            return Ok(());
        }
        match self.state.queue.iter().position(|run| run.run_id == target) {
            Some(index) => {
                let run = self.state.queue.remove(index).expect("index from position");
                self.finish_run(now, run, Outcome::ended(TerminalStatus::Cancelled, None));
                Ok(())
            }
            None => Err(rejection(
                ErrorClass::NotFound,
                "unknown_run",
                format!("run {target} is not queued or running"),
            )),
        }
    }

    /// Asks the agent to stop the run in flight; it ends `cancelled` when the sandbox reports, or
    /// after the cancel grace at the latest.
    fn cancel_in_flight(&mut self, now: Timestamp) {
        let Some(run) = self.state.in_flight.as_mut() else {
            return;
        };
        if run.cancel_requested_at.is_some() {
            return;
        }
        run.cancel_requested_at = Some(now);
        let run_id = run.run_id.clone();
        self.send_to_sandbox(ServerToSandbox::Cancel { run_id });
    }

    /// Ends the run in flight and every queued run (close, store failure).
    pub(super) fn end_all_runs(
        &mut self,
        now: Timestamp,
        status: TerminalStatus,
        error: Option<ErrorBody>,
    ) {
        if let Some(run_id) = self.state.in_flight.as_ref().map(|run| run.run_id.clone()) {
            self.send_to_sandbox(ServerToSandbox::Cancel { run_id });
            self.finish_in_flight(now, Outcome::ended(status, error.clone()));
        }
        while let Some(run) = self.state.queue.pop_front() {
            self.finish_run(now, run, Outcome::ended(status, error.clone()));
        }
    }

    // ----- terminal transitions --------------------------------------------------------------

    pub(super) fn finish_in_flight(&mut self, now: Timestamp, outcome: Outcome) {
        if let Some(run) = self.state.in_flight.take() {
            self.finish_run(now, run, outcome);
        }
    }

    /// The one terminal transition of a run: `execution_complete`, the conversation, the run
    /// record into the outbox (same commit) and out to the ledger.
    pub(super) fn finish_run(&mut self, now: Timestamp, mut run: Run, outcome: Outcome) {
        let (status, error) = if run.cancel_requested_at.is_some() {
            (TerminalStatus::Cancelled, None)
        } else {
            (outcome.status, outcome.error)
        };
        run.state = RunState::from(status);
        self.state
            .permission_asks
            .retain(|ask| ask.run_id != run.run_id);
        let cost_micros = run
            .price
            .map(|price| price.cost_micros(outcome.usage))
            .unwrap_or(0);
        let complete = self
            .emit(
                now,
                Some(run.run_id.clone()),
                Event::ExecutionComplete {
                    status,
                    stop_reason: outcome.stop_reason,
                    usage: outcome.usage,
                    cost_micros,
                    error: error.clone(),
                },
            )
            .clone();
        run.events.push(complete);

        if status == TerminalStatus::Completed {
            self.state
                .conversation_from_seq
                .get_or_insert(run.queued_seq);
            self.state.conversation.push(Turn {
                role: TurnRole::User,
                text: run.text.clone(),
            });
            self.state.conversation.push(Turn {
                role: TurnRole::Assistant,
                text: std::mem::take(&mut run.reply),
            });
        }

        let record = RunRecord {
            run_id: run.run_id,
            session_id: self.state.session_id.clone(),
            org_id: self.state.org_id.clone(),
            user_id: run.by.user_id,
            api_key_id: run.by.api_key_id,
            model: self.state.model.clone(),
            provider: self.state.model.provider().to_string(),
            status,
            queued_at: run.queued_at,
            started_at: run.started_at,
            ended_at: now,
            usage: outcome.usage,
            cost_micros,
            error,
            event_count: run.events.len() as u64,
            events: run.events,
        };
        self.live.step.outbox_put.push(record.clone());
        self.send_to_ledger(now, record, self.config.ledger_retry_initial);
    }

    /// The next deadline of the run in flight: cancel grace, idle timeout, or the sandbox's
    /// maximum lifetime (no run outlives the box it runs in).
    pub(super) fn run_deadline(&self, run: &Run) -> Option<Timestamp> {
        if !run.is_in_flight() {
            return None;
        }
        let config = &self.config;
        let idle = later(run.last_life, config.run_idle_timeout);
        let cancel = run
            .cancel_requested_at
            .map(|at| later(at, config.cancel_grace));
        let lifetime = run
            .dispatched_at
            .map(|at| later(at, Duration::from_secs(config.sandbox_max_s)));
        [Some(idle), cancel, lifetime].into_iter().flatten().min()
    }

    /// Ends the run in flight when its deadline has passed.
    pub(super) fn run_watchdog(&mut self, now: Timestamp) {
        let Some(run) = self.state.in_flight.as_ref() else {
            return;
        };
        if self.run_deadline(run).is_none_or(|deadline| now < deadline) {
            return;
        }
        let run_id = run.run_id.clone();
        let error = if run.cancel_requested_at.is_some() {
            None
        } else if now >= later(run.last_life, self.config.run_idle_timeout) {
            Some(ErrorBody::new(
                "run_idle_timeout",
                format!(
                    "the agent showed no sign of life for {:?}",
                    self.config.run_idle_timeout
                ),
            ))
        } else {
            Some(ErrorBody::new(
                "run_max_duration",
                format!(
                    "the run outlived the sandbox's maximum lifetime of {}s",
                    self.config.sandbox_max_s
                ),
            ))
        };
        if error.is_some() {
            self.send_to_sandbox(ServerToSandbox::Cancel { run_id });
        }
        self.finish_in_flight(now, Outcome::ended(TerminalStatus::TimedOut, error));
    }

    // ----- ledger outbox ---------------------------------------------------------------------

    /// Sends a record to the ledger now; it stays in the outbox until the ledger acknowledges it.
    pub(super) fn send_to_ledger(
        &mut self,
        now: Timestamp,
        record: RunRecord,
        retry_delay: Duration,
    ) {
        self.live
            .outbox
            .retain(|entry| entry.record.run_id != record.run_id);
        self.live.outbox.push(OutboxEntry {
            record: record.clone(),
            awaiting_answer: true,
            next_attempt_at: later(now, self.config.ledger_retry_max),
            retry_delay,
        });
        self.effect(Effect::RecordRun(record));
    }

    pub(super) fn run_recorded(
        &mut self,
        now: Timestamp,
        run_id: RunId,
        result: Result<(), PortFailure>,
    ) {
        let Some(index) = self
            .live
            .outbox
            .iter()
            .position(|entry| entry.record.run_id == run_id)
        else {
            return;
        };
        match result {
            Ok(()) => {
                self.live.outbox.remove(index);
                self.live.step.outbox_remove.push(run_id);
            }
            Err(_) => {
                let max = self.config.ledger_retry_max;
                let entry = &mut self.live.outbox[index];
                entry.awaiting_answer = false;
                entry.next_attempt_at = later(now, entry.retry_delay);
                entry.retry_delay = entry.retry_delay.saturating_mul(2).min(max);
            }
        }
    }

    /// Sends again every record whose retry time (or answer timeout) has come.
    pub(super) fn retry_ledger(&mut self, now: Timestamp) {
        let due: Vec<usize> = (0..self.live.outbox.len())
            .filter(|&i| self.live.outbox[i].next_attempt_at <= now)
            .collect();
        for index in due {
            let answer_timeout = later(now, self.config.ledger_retry_max);
            let entry = &mut self.live.outbox[index];
            entry.awaiting_answer = true;
            entry.next_attempt_at = answer_timeout;
            let record = entry.record.clone();
            self.effect(Effect::RecordRun(record));
        }
    }

    // ----- permission broker -----------------------------------------------------------------

    /// Decides an agent's permission request by the session policy, or asks the clients.
    pub(super) fn permission_request(
        &mut self,
        now: Timestamp,
        run_id: RunId,
        request_id: RequestId,
        tool: String,
        input: Value,
    ) {
        if !self.is_in_flight(&run_id) {
            return;
        }
        self.mark_started(now);
        match self.permission_policy().mode_for(&tool) {
            PermissionMode::Auto => self.resolve_permission(
                now,
                run_id,
                request_id,
                PermissionDecision::AllowOnce,
                DecidedBy::Policy,
            ),
            PermissionMode::Deny => self.resolve_permission(
                now,
                run_id,
                request_id,
                PermissionDecision::Deny,
                DecidedBy::Policy,
            ),
            PermissionMode::Ask => {
                let deadline = later(now, self.config.permission_timeout);
                self.state
                    .permission_asks
                    .retain(|ask| ask.request_id != request_id);
                self.state.permission_asks.push(PendingAsk {
                    request_id: request_id.clone(),
                    run_id: run_id.clone(),
                    deadline,
                });
                self.emit(
                    now,
                    Some(run_id),
                    Event::PermissionRequest {
                        request_id,
                        tool,
                        input,
                        options: PermissionDecision::ALL.to_vec(),
                        deadline,
                    },
                );
            }
        }
    }

    /// A client answered a pending ask. False when no such ask is waiting.
    pub(super) fn answer_permission(
        &mut self,
        now: Timestamp,
        request_id: &RequestId,
        decision: PermissionDecision,
    ) -> bool {
        let Some(index) = self
            .state
            .permission_asks
            .iter()
            .position(|ask| &ask.request_id == request_id)
        else {
            return false;
        };
        let ask = self.state.permission_asks.remove(index);
        self.resolve_permission(now, ask.run_id, ask.request_id, decision, DecidedBy::Client);
        true
    }

    /// Applies the policy's default to every ask whose deadline has passed.
    pub(super) fn expire_permission_asks(&mut self, now: Timestamp) {
        let (due, waiting): (Vec<PendingAsk>, Vec<PendingAsk>) =
            std::mem::take(&mut self.state.permission_asks)
                .into_iter()
                .partition(|ask| ask.deadline <= now);
        self.state.permission_asks = waiting;
        let decision = self.permission_policy().ask_default;
        for ask in due {
            self.resolve_permission(
                now,
                ask.run_id,
                ask.request_id,
                decision,
                DecidedBy::Timeout,
            );
        }
    }

    fn resolve_permission(
        &mut self,
        now: Timestamp,
        run_id: RunId,
        request_id: RequestId,
        decision: PermissionDecision,
        by: DecidedBy,
    ) {
        self.emit(
            now,
            Some(run_id),
            Event::PermissionResolved {
                request_id: request_id.clone(),
                decision,
                by,
            },
        );
        self.send_to_sandbox(ServerToSandbox::Permission {
            request_id,
            decision,
        });
    }

    /// Sends a frame to the sandbox, or holds it while the sandbox reconnects.
    pub(super) fn send_to_sandbox(&mut self, message: ServerToSandbox) {
        match self.state.sandbox.link {
            Link::Connected { conn } => self.effect(Effect::SendToSandbox { conn, message }),
            Link::Reconnecting { .. } => self.state.sandbox.outgoing.push(message),
            Link::Absent | Link::Spawning { .. } => {}
        }
    }
}
