//! The whole session lifecycle in one function: authenticate, store a BYOK key, create a session,
//! let the sandbox dial back, prompt twice (the second waits in the queue), stream the agent's work
//! (a tool call and a reply), reconnect a client with `after`, and read both runs from the ledger.
//!
//! The walking skeleton asserts on its [`Transcript`]; `switchboard demo` prints it as it happens.

use crate::app::{App, CreateSessionBody, CreatedOrg, PromptBody};
use crate::scripted::{Script, ScriptedSandbox};
use crate::stack::InMemoryStack;
use futures::StreamExt;
use std::time::Duration;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{ClientMessage, Event, ServerFrame, ServerToSandbox};
use switchboard_core::run::RunRecord;
use switchboard_core::session::SessionInfo;
use switchboard_core::Principal;
use switchboard_ports::session::{ClientLink, Queued};

/// The BYOK key the journey stores, so a test can check it reached the sandbox and nothing else.
pub const BYOK_KEY: &str = "sk-byok-journey-0000000000001234";
/// The model the journey's session uses.
pub const MODEL: &str = "openai/gpt-4.1-mini";
/// How long any single wait may take before the journey fails (a hang is a failure, not a pass).
const WAIT: Duration = Duration::from_secs(10);

/// Everything the journey saw.
pub struct Transcript {
    pub org: CreatedOrg,
    pub principal: Principal,
    pub session: SessionInfo,
    pub queued: Vec<Queued>,
    /// The `run` frames the sandbox received, in order.
    pub run_frames: Vec<ServerToSandbox>,
    /// Every frame the first client received, in order.
    pub first_client: Vec<ServerFrame>,
    /// The `after` the second client attached with, and every frame it received.
    pub resumed_after: u64,
    pub resumed_client: Vec<ServerFrame>,
    /// Both runs as the ledger holds them, with their events.
    pub runs: Vec<RunRecord>,
}

/// Waits for `cond` to hold, yielding to the runtime between looks (no sleeps); fails after `WAIT`.
async fn until<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::task::yield_now().await;
    }
}

/// Reads client frames until `stop` says so, handing each to `on_frame`.
async fn read_until(
    link: &mut ClientLink,
    seen: &mut Vec<ServerFrame>,
    on_frame: &mut impl FnMut(&ServerFrame),
    stop: impl Fn(&[ServerFrame]) -> bool,
) -> Result<(), String> {
    while !stop(seen) {
        let frame = tokio::time::timeout(WAIT, link.frames.next())
            .await
            .map_err(|_| format!("no frame within {WAIT:?} after {} frames", seen.len()))?
            .ok_or("the server closed the client stream")?;
        on_frame(&frame);
        seen.push(frame);
    }
    Ok(())
}

fn completions(frames: &[ServerFrame]) -> usize {
    frames.iter().filter(|f| matches!(f, ServerFrame::Event(e) if matches!(e.event, Event::ExecutionComplete { .. }))).count()
}

fn last_seq(frames: &[ServerFrame]) -> u64 {
    frames
        .iter()
        .filter_map(|f| {
            if let ServerFrame::Event(e) = f {
                Some(e.seq)
            } else {
                None
            }
        })
        .max()
        .unwrap_or(0)
}

/// Runs the lifecycle on `stack`, calling `on_frame` for every frame either client receives.
pub async fn journey(
    stack: &InMemoryStack,
    mut on_frame: impl FnMut(&ServerFrame),
) -> Result<Transcript, String> {
    let app: &App = &stack.app;
    let e = |e: crate::ApiError| e.to_string();
    let org = app
        .create_org("Acme", Some("dev@acme.test"))
        .await
        .map_err(e)?;
    let principal = app
        .authenticate(Some(&format!("Bearer {}", org.api_key)))
        .await
        .map_err(e)?;
    app.put_credential(&principal, "openai", BYOK_KEY)
        .await
        .map_err(e)?;
    let session = app
        .create_session(
            &principal,
            CreateSessionBody {
                model: Some(MODEL.into()),
                ..Default::default()
            },
        )
        .await
        .map_err(e)?;
    let sid = session.id.to_string();
    let mut client = app.attach(&principal, &sid, None).await.map_err(e)?;

    let (sandbox_id, spec) = until("the sandbox spawn", || {
        stack.sandboxes.spawned().into_iter().next()
    })
    .await?;
    let mut sandbox = ScriptedSandbox::dial_back(stack.host.as_ref(), &spec, &sandbox_id)
        .await
        .map_err(|e| e.to_string())?;

    let q1 = app
        .prompt(
            &principal,
            &sid,
            PromptBody {
                text: "List the files, then say hello.".into(),
                client_msg_id: None,
            },
        )
        .await
        .map_err(e)?;
    let q2 = app
        .prompt(
            &principal,
            &sid,
            PromptBody {
                text: "Now say goodbye.".into(),
                client_msg_id: None,
            },
        )
        .await
        .map_err(e)?;

    let scripts = [
        Script::reply_with_tool(
            "Hello! The workspace holds README.md and src/.",
            "ls",
            "README.md\nsrc\n",
        ),
        Script::reply_with_tool("Goodbye, and thanks for the chat.", "echo bye", "bye\n"),
    ];
    for script in &scripts {
        let (run_id, _text) = tokio::time::timeout(WAIT, sandbox.next_run())
            .await
            .map_err(|_| "the sandbox got no run")?
            .ok_or("the sandbox socket closed")?;
        sandbox
            .play(&run_id, script)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut first_client = Vec::new();
    read_until(&mut client, &mut first_client, &mut on_frame, |seen| {
        completions(seen) == 2
    })
    .await?;
    client
        .handle
        .send(ClientMessage::Ack {
            seq: last_seq(&first_client),
        })
        .await
        .map_err(|e| e.to_string())?;

    // A second client resumes from just after the first run's completion.
    let resumed_after = first_client
        .iter()
        .find_map(|f| match f {
            ServerFrame::Event(ev) if matches!(ev.event, Event::ExecutionComplete { .. }) => {
                Some(ev.seq)
            }
            _ => None,
        })
        .ok_or("no execution_complete")?;
    let mut resumed = app
        .attach(&principal, &sid, Some(resumed_after))
        .await
        .map_err(e)?;
    let mut resumed_client = Vec::new();
    read_until(&mut resumed, &mut resumed_client, &mut on_frame, |seen| {
        !seen.is_empty()
    })
    .await?;
    let target = match &resumed_client[0] {
        ServerFrame::Control(ControlFrame::Hello { last_seq, .. }) => *last_seq,
        other => return Err(format!("the first frame was not hello: {other:?}")),
    };
    // Both clients read up to the session's last seq at the time of the reconnect.
    read_until(&mut resumed, &mut resumed_client, &mut on_frame, |seen| {
        last_seq(seen) >= target
    })
    .await?;
    read_until(&mut client, &mut first_client, &mut on_frame, |seen| {
        last_seq(seen) >= target
    })
    .await?;
    resumed.handle.detach().await;
    client.handle.detach().await;

    let run_ids = [q1.run_id.clone(), q2.run_id.clone()];
    until("both runs in the ledger", || {
        (stack.ledger.len() >= 2).then_some(())
    })
    .await?;
    let mut runs = Vec::new();
    for id in &run_ids {
        runs.push(app.run(&principal, id.as_str()).await.map_err(e)?);
    }
    let run_frames = sandbox
        .received
        .iter()
        .filter(|f| matches!(f, ServerToSandbox::Run { .. }))
        .cloned()
        .collect();
    Ok(Transcript {
        org,
        principal,
        session,
        queued: vec![q1, q2],
        run_frames,
        first_client,
        resumed_after,
        resumed_client,
        runs,
    })
}
