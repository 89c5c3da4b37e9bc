//! The session's link to its sandbox: spawn attempts and their timeouts, the dial-back token
//! check, reconnection, message de-duplication by `n`, loss, idle shutdown, and handing the
//! conversation to a replacement sandbox.

use super::machine::Session;
use super::state::{Link, Phase};
use super::types::*;
use crate::audit::{AuditAction, AuditEntry, AuditOutcome};
use crate::crypto::TokenHash;
use crate::ids::{ConnId, SandboxId};
use crate::protocol::events::{ErrorBody, Event, SandboxStatus, TerminalStatus};
use crate::protocol::sandbox::{SandboxMessage, ServerToSandbox};
use crate::time::Timestamp;

use super::runs::Outcome;

impl Session {
    // ----- spawning --------------------------------------------------------------------------

    /// First attempt of a new spawn cycle.
    pub(super) fn begin_spawn_cycle(&mut self, now: Timestamp) {
        self.state.sandbox.attempts = 0;
        self.spawn_attempt(now);
    }

    /// Asks the shell for a sandbox under a new spawn number; its token arrives separately.
    fn spawn_attempt(&mut self, now: Timestamp) {
        let restore_pending = !self.state.conversation.is_empty();
        let sandbox = &mut self.state.sandbox;
        sandbox.spawn += 1;
        sandbox.attempts += 1;
        sandbox.token_hash = None;
        sandbox.sandbox_id = None;
        sandbox.last_n = 0;
        sandbox.link = Link::Spawning { since: now };
        sandbox.outgoing.clear();
        sandbox.restore_pending = restore_pending;
        let spawn = sandbox.spawn;
        if self.state.phase == Phase::Created {
            self.state.phase = Phase::Provisioning;
        }
        self.set_sandbox_status(now, SandboxStatus::Provisioning, None);
        let request = SpawnRequest {
            agent: self.state.agent.clone(),
            repo: self.state.repo.clone(),
            idle_s: self.config.sandbox_idle_s,
            max_s: self.config.sandbox_max_s,
        };
        self.effect(Effect::SpawnSandbox { spawn, request });
    }

    /// Whether `spawn` is the attempt the machine is still working with.
    fn is_current_spawn(&self, spawn: u32) -> bool {
        spawn == self.state.sandbox.spawn && self.state.sandbox.link != Link::Absent
    }

    pub(super) fn token_issued(&mut self, spawn: u32, token_hash: TokenHash) {
        if self.is_current_spawn(spawn) {
            self.state.sandbox.token_hash = Some(token_hash);
        }
    }

    pub(super) fn spawn_result(
        &mut self,
        now: Timestamp,
        spawn: u32,
        result: Result<SandboxId, PortFailure>,
    ) {
        let current = self.is_current_spawn(spawn);
        match result {
            Ok(sandbox_id) if current => self.state.sandbox.sandbox_id = Some(sandbox_id),
            // A box created for an attempt nobody waits for any more: do not leak it.
            Ok(sandbox_id) => self.effect(Effect::TerminateSandbox { sandbox_id }),
            Err(failure) if current && matches!(self.state.sandbox.link, Link::Spawning { .. }) => {
                let message = format!("the sandbox provider failed: {}", failure.message);
                self.spawn_attempt_failed(now, "sandbox_spawn_failed", &message);
            }
            Err(_) => {}
        }
    }

    /// The current attempt failed: retry with a new spawn number and token, or give up after
    /// `spawn_attempts` and fail every waiting run with `code`.
    pub(super) fn spawn_attempt_failed(&mut self, now: Timestamp, code: &str, message: &str) {
        if let Some(sandbox_id) = self.state.sandbox.sandbox_id.take() {
            self.effect(Effect::TerminateSandbox { sandbox_id });
        }
        if self.state.sandbox.attempts < self.config.spawn_attempts.max(1) {
            self.spawn_attempt(now);
            return;
        }
        let sandbox = &mut self.state.sandbox;
        sandbox.link = Link::Absent;
        sandbox.token_hash = None;
        sandbox.attempts = 0;
        self.set_sandbox_status(now, SandboxStatus::Terminated, Some(code));
        if self.state.phase == Phase::Provisioning {
            self.state.phase = Phase::Ready;
        }
        let error = ErrorBody::new(code, message);
        while let Some(run) = self.state.queue.pop_front() {
            self.finish_run(
                now,
                run,
                Outcome::ended(TerminalStatus::Failed, Some(error.clone())),
            );
        }
    }

    // ----- connection ------------------------------------------------------------------------

    /// A sandbox dialed back. Only the current spawn's token is accepted, compared in constant
    /// time; a newer socket with the right token replaces an older one.
    pub(super) fn sandbox_connect(&mut self, now: Timestamp, conn: ConnId, token_hash: TokenHash) {
        let valid = self.state.phase.accepts_work()
            && self.state.sandbox.link != Link::Absent
            && self
                .state
                .sandbox
                .token_hash
                .as_ref()
                .is_some_and(|expected| expected.matches(&token_hash));
        if !valid {
            self.effect(Effect::RejectSandbox { conn });
            self.effect(Effect::Audit(AuditEntry {
                at: now,
                org: Some(self.state.org_id.clone()),
                actor: None,
                action: AuditAction::SandboxTokenRejected,
                target: self.key.to_string(),
                outcome: AuditOutcome::Denied,
            }));
            return;
        }
        let first_connection = matches!(self.state.sandbox.link, Link::Spawning { .. });
        if let Link::Connected { conn: old } = self.state.sandbox.link {
            if old != conn {
                self.effect(Effect::CloseSandbox { conn: old });
            }
        }
        self.effect(Effect::AcceptSandbox { conn });
        self.state.sandbox.link = Link::Connected { conn };
        self.state.sandbox.attempts = 0;
        self.set_sandbox_status(now, SandboxStatus::Connected, None);
        if self.state.phase == Phase::Provisioning {
            self.state.phase = Phase::Ready;
        }
        if first_connection && self.state.sandbox.restore_pending {
            self.state.sandbox.restore_pending = false;
            let turns = self.state.conversation.clone();
            let count = u32::try_from(turns.len()).unwrap_or(u32::MAX);
            self.effect(Effect::SendToSandbox {
                conn,
                message: ServerToSandbox::Restore { turns },
            });
            let from_seq = self.state.conversation_from_seq.unwrap_or(1);
            self.emit(
                now,
                None,
                Event::ContextRestored {
                    from_seq,
                    turns: count,
                },
            );
        }
        for message in std::mem::take(&mut self.state.sandbox.outgoing) {
            self.effect(Effect::SendToSandbox { conn, message });
        }
        if let Some(run) = self.state.in_flight.as_mut() {
            run.last_life = now;
        }
    }

    pub(super) fn sandbox_disconnected(&mut self, now: Timestamp, conn: ConnId) {
        if self.state.sandbox.link == (Link::Connected { conn }) {
            self.state.sandbox.link = Link::Reconnecting { since: now };
        }
    }

    /// A frame from a sandbox socket. Only the current sandbox is heard; numbered messages are
    /// applied once and ACKed every time.
    pub(super) fn sandbox_message(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        message: SandboxMessage,
    ) {
        if self.state.sandbox.link != (Link::Connected { conn }) {
            return;
        }
        if let Some(run) = self.state.in_flight.as_mut() {
            run.last_life = now;
        }
        let number = message.n();
        if let Some(n) = number {
            if n <= self.state.sandbox.last_n {
                self.effect(Effect::SendToSandbox {
                    conn,
                    message: ServerToSandbox::Ack { n },
                });
                return;
            }
            self.state.sandbox.last_n = n;
        }
        match message {
            SandboxMessage::Hello { sandbox_id, .. } => {
                self.state.sandbox.sandbox_id.get_or_insert(sandbox_id);
            }
            SandboxMessage::Heartbeat => {}
            SandboxMessage::Event { run_id, event, .. } => self.agent_event(now, run_id, event),
            SandboxMessage::RunFinished {
                run_id,
                status,
                stop_reason,
                usage,
                error,
                ..
            } => {
                if self.is_in_flight(&run_id) {
                    self.mark_started(now);
                    self.finish_in_flight(
                        now,
                        Outcome {
                            status,
                            stop_reason,
                            usage,
                            error,
                        },
                    );
                }
            }
            SandboxMessage::PermissionRequest {
                run_id,
                request_id,
                tool,
                input,
                ..
            } => self.permission_request(now, run_id, request_id, tool, input),
            SandboxMessage::Workspace { files, .. } => {
                if let Some(environment) = crate::environment::detect(&files) {
                    self.emit(
                        now,
                        None,
                        Event::EnvironmentDetected {
                            package_manager: environment.package_manager,
                            file_count: environment.file_count,
                            install: environment.install,
                        },
                    );
                }
            }
        }
        if let Some(n) = number {
            self.effect(Effect::SendToSandbox {
                conn,
                message: ServerToSandbox::Ack { n },
            });
        }
    }

    // ----- loss and shutdown -----------------------------------------------------------------

    /// The provider says a sandbox is gone. Only the current one matters.
    pub(super) fn sandbox_exited(&mut self, now: Timestamp, sandbox_id: SandboxId, reason: String) {
        if self.state.sandbox.sandbox_id.as_ref() != Some(&sandbox_id) {
            return;
        }
        match self.state.sandbox.link {
            Link::Spawning { .. } => {
                let message = format!("the sandbox exited before dialing back: {reason}");
                self.spawn_attempt_failed(now, "sandbox_spawn_failed", &message);
            }
            Link::Connected { .. } | Link::Reconnecting { .. } => self.sandbox_lost(now, &reason),
            Link::Absent => {}
        }
    }

    /// The sandbox is gone for good: the run in flight fails, the box is terminated, and queued
    /// runs will get a new sandbox (with the conversation restored).
    pub(super) fn sandbox_lost(&mut self, now: Timestamp, reason: &str) {
        if let Link::Connected { conn } = self.state.sandbox.link {
            self.effect(Effect::CloseSandbox { conn });
        }
        if let Some(sandbox_id) = self.state.sandbox.sandbox_id.take() {
            self.effect(Effect::TerminateSandbox { sandbox_id });
        }
        let sandbox = &mut self.state.sandbox;
        sandbox.link = Link::Absent;
        sandbox.token_hash = None;
        sandbox.outgoing.clear();
        self.set_sandbox_status(now, SandboxStatus::Lost, Some(reason));
        let error = ErrorBody::new("sandbox_lost", format!("the sandbox was lost: {reason}"));
        self.finish_in_flight(now, Outcome::ended(TerminalStatus::Failed, Some(error)));
    }

    /// Shuts down and terminates the sandbox, whatever state it is in (idle, close, failure).
    pub(super) fn shut_down_sandbox(&mut self, now: Timestamp, reason: &str) {
        match self.state.sandbox.link {
            Link::Absent => return,
            Link::Connected { conn } => self.effect(Effect::SendToSandbox {
                conn,
                message: ServerToSandbox::Shutdown,
            }),
            Link::Spawning { .. } | Link::Reconnecting { .. } => {}
        }
        if let Some(sandbox_id) = self.state.sandbox.sandbox_id.take() {
            self.effect(Effect::TerminateSandbox { sandbox_id });
        }
        let sandbox = &mut self.state.sandbox;
        sandbox.link = Link::Absent;
        sandbox.token_hash = None;
        sandbox.outgoing.clear();
        sandbox.attempts = 0;
        self.set_sandbox_status(now, SandboxStatus::Terminated, Some(reason));
    }
}
