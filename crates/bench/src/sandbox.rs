//! The instant bridge (`switchboard-bench sandbox`): what a sandbox must do at the least. It reads
//! the callback URL, token and ids the sandbox provider hands every bridge
//! (`SWITCHBOARD_CALLBACK_URL`, `SWITCHBOARD_SANDBOX_TOKEN`, `SWITCHBOARD_SANDBOX_ID`,
//! `SWITCHBOARD_SESSION_KEY`), dials back, says hello, prints one timing line and then holds the
//! socket open until the server closes it. It starts no agent, so a session start measured with it
//! is the control plane's own share plus process creation.

use crate::wire;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The timing line a bench sandbox prints (to its log): wall-clock nanoseconds at `main` and
/// right after its hello went out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SandboxTiming {
    pub session_key: String,
    pub main_ns: u128,
    pub hello_ns: u128,
}

/// Runs the instant bridge; `main_ns` is the wall-clock time `main` began.
pub async fn run(main_ns: u128) -> Result<(), String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let url = var("SWITCHBOARD_CALLBACK_URL")?;
    let token = var("SWITCHBOARD_SANDBOX_TOKEN")?;
    let sandbox_id = var("SWITCHBOARD_SANDBOX_ID").unwrap_or_else(|_| "bench".into());
    let session_key = var("SWITCHBOARD_SESSION_KEY").unwrap_or_default();
    let ws = wire::dial(&url, Some(&token)).await?;
    let (mut sink, mut stream) = ws.split();
    let hello = serde_json::json!({
        "type": "hello", "sandbox_id": sandbox_id, "agent": "bench", "agent_version": "1",
    });
    sink.send(Message::text(hello.to_string()))
        .await
        .map_err(|e| format!("hello: {e}"))?;
    let timing = SandboxTiming {
        session_key,
        main_ns,
        hello_ns: crate::sys::unix_nanos(),
    };
    println!("{}", serde_json::json!({ "bench_sandbox": timing }));
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = &message {
            if text.as_str().contains("\"shutdown\"") {
                break;
            }
        }
    }
    Ok(())
}
