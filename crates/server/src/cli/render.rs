//! How the terminal client shows what the server sends: one readable line per event (sequence
//! number, type, run, text) and one per session. Works on JSON values rather than the typed frames
//! so that an event type this client does not know yet (PROTOCOL.md grows) still prints.

use serde_json::Value;

/// `text` cut to at most `max` characters (an ellipsis marks the cut), on one line.
pub fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace('\r', "").replace('\n', "\\n");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn s<'a>(data: &'a Value, field: &str) -> &'a str {
    data.get(field).and_then(Value::as_str).unwrap_or("")
}

fn compact(value: Option<&Value>, max: usize) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => clip(text, max),
        Some(other) => clip(&other.to_string(), max),
    }
}

/// The text part of an event line, by event type.
pub fn event_text(kind: &str, data: &Value) -> String {
    match kind {
        "session.status" => s(data, "status").to_string(),
        "sandbox.status" => match data.get("reason").and_then(Value::as_str) {
            Some(reason) => format!("{} ({})", s(data, "status"), clip(reason, 200)),
            None => s(data, "status").to_string(),
        },
        "run.queued" => format!(
            "position {}: {}",
            data.get("position").and_then(Value::as_u64).unwrap_or(0),
            clip(s(data, "text"), 200)
        ),
        "run.started" => String::new(),
        "message.delta" | "thought.delta" => clip(s(data, "text"), 2000),
        "tool_call" => format!("{} {}", s(data, "name"), compact(data.get("input"), 200)),
        "tool_result" => format!("{} {}", s(data, "status"), compact(data.get("output"), 200)),
        "plan" => {
            let entries = data
                .get("entries")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            entries
                .iter()
                .map(|e| format!("[{}] {}", s(e, "status"), clip(s(e, "content"), 80)))
                .collect::<Vec<_>>()
                .join("; ")
        }
        "permission.request" => format!(
            "{} {} (deadline {})",
            s(data, "tool"),
            compact(data.get("input"), 200),
            s(data, "deadline")
        ),
        "permission.resolved" => format!("{} by {}", s(data, "decision"), s(data, "by")),
        "context.restored" => format!(
            "from seq {}, {} turns",
            data.get("from_seq").and_then(Value::as_u64).unwrap_or(0),
            data.get("turns").and_then(Value::as_u64).unwrap_or(0)
        ),
        "environment.detected" => format!(
            "{} ({} files): {}",
            s(data, "package_manager"),
            data.get("file_count").and_then(Value::as_u64).unwrap_or(0),
            data.get("install")
                .and_then(Value::as_array)
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" && "))
                .unwrap_or_default()
        ),
        "execution_complete" => {
            let usage = data.get("usage");
            let tokens = |f: &str| {
                usage
                    .and_then(|u| u.get(f))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let mut text = format!(
                "{}{}, {} in / {} out tokens, cost {} µ$",
                s(data, "status"),
                data.get("stop_reason")
                    .and_then(Value::as_str)
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                tokens("input_tokens"),
                tokens("output_tokens"),
                data.get("cost_micros").and_then(Value::as_u64).unwrap_or(0)
            );
            if let Some(error) = data.get("error").filter(|e| !e.is_null()) {
                text.push_str(&format!(
                    " — {}: {}",
                    s(error, "code"),
                    clip(s(error, "message"), 200)
                ));
            }
            text
        }
        "error" => format!("{}: {}", s(data, "code"), clip(s(data, "message"), 300)),
        _ => compact(Some(data), 300),
    }
}

/// One event envelope as a line: `#<seq> <type> <run or -> <text>`.
pub fn event_line(envelope: &Value) -> String {
    let seq = envelope.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let kind = s(envelope, "type");
    let run = envelope
        .get("run_id")
        .and_then(Value::as_str)
        .unwrap_or("-");
    let null = Value::Null;
    let text = event_text(kind, envelope.get("data").unwrap_or(&null));
    let line = format!("#{seq:<4} {kind:<20} {run} {text}");
    line.trim_end().to_string()
}

/// One session of `GET /v1/sessions` as a line: id, status, model, creation time.
pub fn session_line(session: &Value) -> String {
    format!(
        "{}  {:<12}  {}  {}",
        s(session, "id"),
        s(session, "status"),
        s(session, "model"),
        s(session, "created_at")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_print_as_one_readable_line() {
        let line = event_line(
            &json!({"seq": 7, "type": "message.delta", "run_id": "run_1", "at": "t", "critical": false, "data": {"text": "Hello\nworld"}}),
        );
        assert_eq!(line, "#7    message.delta        run_1 Hello\\nworld");
        let line = event_line(
            &json!({"seq": 1, "type": "session.status", "at": "t", "critical": false, "data": {"status": "provisioning"}}),
        );
        assert_eq!(line, "#1    session.status       - provisioning");
        let line = event_line(
            &json!({"seq": 9, "type": "execution_complete", "run_id": "run_1", "critical": true,
            "data": {"status": "failed", "usage": {"input_tokens": 3, "output_tokens": 4}, "cost_micros": 12, "error": {"code": "sandbox_lost", "message": "gone"}}}),
        );
        assert_eq!(line, "#9    execution_complete   run_1 failed, 3 in / 4 out tokens, cost 12 µ$ — sandbox_lost: gone");
        let line = event_line(
            &json!({"seq": 3, "type": "tool_call", "run_id": "r", "data": {"call_id": "c", "name": "read", "input": {"path": "a"}}}),
        );
        assert_eq!(line, "#3    tool_call            r read {\"path\":\"a\"}");
    }

    #[test]
    fn an_unknown_event_type_still_prints_its_data() {
        let line = event_line(&json!({"seq": 2, "type": "from.the.future", "data": {"x": 1}}));
        assert_eq!(line, "#2    from.the.future      - {\"x\":1}");
    }

    #[test]
    fn clipping_counts_characters_not_bytes() {
        assert_eq!(clip("ééééé", 3), "éé…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn sessions_print_id_status_model_created() {
        let line = session_line(
            &json!({"id": "ses_1", "status": "ready", "model": "anthropic/x", "created_at": "2025-01-01T00:00:00Z"}),
        );
        assert!(line.starts_with("ses_1  ready"), "{line}");
        assert!(
            line.contains("anthropic/x") && line.ends_with("2025-01-01T00:00:00Z"),
            "{line}"
        );
    }
}
