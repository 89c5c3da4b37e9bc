//! Keeps every message under the server's frame limit (`MAX_FRAME_BYTES`, 1 MiB). A frame over it
//! closes the socket, and because un-ACKed messages are re-sent after a reconnect, one oversized
//! message would close every connection forever. So: long reply and reasoning text is split into
//! several deltas (nothing lost), and anything still too large (a tool's huge output, a giant
//! plan, an endless file list) is truncated with a visible marker.

use serde_json::Value;
use switchboard_core::protocol::{Event, SandboxMessage, MAX_FRAME_BYTES};

use crate::outbox::encode;

/// The most a message may take on the wire, with room to spare below the server's limit.
pub(crate) const FRAME_BUDGET: usize = MAX_FRAME_BYTES - 16 * 1024;
/// The most text one `message.delta` or `thought.delta` carries (JSON escaping can grow text up
/// to six times, which still fits the budget).
pub(crate) const DELTA_CHUNK: usize = 128 * 1024;
/// What a value too large to keep even truncated is replaced with.
const OMITTED: &str = "[omitted by switchboard-bridge: too large for one frame]";

/// Splits `text` into pieces of at most `max` bytes, on character boundaries; their concatenation
/// is `text`. An empty text is one empty piece.
pub(crate) fn split_text(text: &str, max: usize) -> Vec<String> {
    let max = max.max(4);
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut end = max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    pieces.push(rest.to_string());
    pieces
}

/// `message`'s JSON text, within [`FRAME_BUDGET`]: returned as is when it fits, else with its
/// long strings truncated (ever shorter), and as a last resort with its large values omitted.
pub(crate) fn fit(mut message: SandboxMessage) -> String {
    let mut text = encode(&message);
    let mut cap = 256 * 1024;
    while text.len() > FRAME_BUDGET {
        if cap >= 256 {
            truncate_strings(&mut message, cap);
            cap /= 4;
        } else {
            omit(&mut message);
        }
        text = encode(&message);
    }
    text
}

/// Truncates `s` to at most `cap` bytes (on a character boundary), saying how much was cut.
fn truncate_str(s: &mut String, cap: usize) {
    if s.len() <= cap {
        return;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("… [truncated {cut} bytes]"));
}

fn truncate_value(value: &mut Value, cap: usize) {
    match value {
        Value::String(s) => truncate_str(s, cap),
        Value::Array(items) => items.iter_mut().for_each(|v| truncate_value(v, cap)),
        Value::Object(map) => map.values_mut().for_each(|v| truncate_value(v, cap)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn truncate_event(event: &mut Event, cap: usize) {
    match event {
        Event::MessageDelta { text } | Event::ThoughtDelta { text } => truncate_str(text, cap),
        Event::ToolCall { input, .. } => truncate_value(input, cap),
        Event::ToolResult { output, .. } => truncate_value(output, cap),
        Event::Plan { entries } => entries
            .iter_mut()
            .for_each(|e| truncate_str(&mut e.content, cap)),
        _ => {}
    }
}

fn truncate_strings(message: &mut SandboxMessage, cap: usize) {
    match message {
        SandboxMessage::Event { event, .. } => truncate_event(event, cap),
        SandboxMessage::PermissionRequest { tool, input, .. } => {
            truncate_str(tool, cap);
            truncate_value(input, cap);
        }
        SandboxMessage::RunFinished {
            stop_reason, error, ..
        } => {
            if let Some(reason) = stop_reason {
                truncate_str(reason, cap);
            }
            if let Some(error) = error {
                truncate_str(&mut error.message, cap);
            }
        }
        // A truncated path would be a wrong path: file lists are only ever shortened.
        SandboxMessage::Workspace { .. }
        | SandboxMessage::Hello { .. }
        | SandboxMessage::Heartbeat => {}
    }
}

/// The last resort: large values go; a file list is halved (each call).
fn omit(message: &mut SandboxMessage) {
    match message {
        SandboxMessage::Event { event, .. } => match event {
            Event::ToolCall { input, .. } => *input = Value::String(OMITTED.into()),
            Event::ToolResult { output, .. } => *output = Value::String(OMITTED.into()),
            Event::Plan { entries } => {
                let keep = entries.len() / 2;
                entries.truncate(keep);
            }
            Event::MessageDelta { text } | Event::ThoughtDelta { text } => {
                truncate_str(text, DELTA_CHUNK)
            }
            _ => {}
        },
        SandboxMessage::PermissionRequest { tool, input, .. } => {
            truncate_str(tool, 256);
            *input = Value::String(OMITTED.into());
        }
        SandboxMessage::RunFinished {
            stop_reason, error, ..
        } => {
            if let Some(reason) = stop_reason {
                truncate_str(reason, 256);
            }
            if let Some(error) = error {
                truncate_str(&mut error.message, 256);
            }
        }
        SandboxMessage::Workspace { files, .. } => {
            let keep = files.len() / 2;
            files.truncate(keep);
        }
        SandboxMessage::Hello { .. } | SandboxMessage::Heartbeat => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_core::protocol::{PlanEntry, ToolStatus};
    use switchboard_core::{CallId, RunId};

    fn event(event: Event) -> SandboxMessage {
        SandboxMessage::Event {
            run_id: RunId::parse("run-1").unwrap(),
            n: 7,
            event,
        }
    }

    #[test]
    fn splits_text_on_character_boundaries_without_losing_any() {
        let text = "é".repeat(1000) + "tail";
        let pieces = split_text(&text, 301);
        assert!(pieces.iter().all(|p| p.len() <= 301 && !p.is_empty()));
        assert!(pieces.len() > 6);
        assert_eq!(pieces.concat(), text);
        assert_eq!(split_text("", 10), vec![String::new()]);
        assert_eq!(split_text("short", 10), vec!["short".to_string()]);
    }

    #[test]
    fn a_small_message_is_untouched() {
        let m = event(Event::MessageDelta { text: "hi".into() });
        assert_eq!(fit(m.clone()), encode(&m));
    }

    #[test]
    fn a_huge_tool_output_is_truncated_and_keeps_its_shape() {
        let m = event(Event::ToolResult {
            call_id: CallId::parse("call-1").unwrap(),
            status: ToolStatus::Ok,
            output: json!({"stdout": "x".repeat(3 * 1024 * 1024), "exit_code": 0}),
        });
        let text = fit(m);
        assert!(text.len() <= FRAME_BUDGET, "{}", text.len());
        let back: SandboxMessage = serde_json::from_str(&text).unwrap();
        match back {
            SandboxMessage::Event {
                n: 7,
                event: Event::ToolResult { output, .. },
                ..
            } => {
                assert_eq!(output["exit_code"], 0);
                let stdout = output["stdout"].as_str().unwrap();
                assert!(stdout.starts_with("xxxx"));
                assert!(stdout.contains("[truncated "), "the cut is said");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaping_heavy_and_wide_values_still_fit() {
        // Control characters encode as six bytes each.
        let m = event(Event::ToolCall {
            call_id: CallId::parse("call-1").unwrap(),
            name: "bash".into(),
            input: json!({"command": "\u{1}".repeat(900 * 1024)}),
        });
        assert!(fit(m).len() <= FRAME_BUDGET);
        // Many small strings: only omission helps.
        let wide: Vec<String> = (0..200_000).map(|i| format!("line {i}")).collect();
        let m = event(Event::ToolResult {
            call_id: CallId::parse("call-1").unwrap(),
            status: ToolStatus::Ok,
            output: json!(wide),
        });
        let text = fit(m);
        assert!(text.len() <= FRAME_BUDGET);
        assert!(text.contains(OMITTED));
        let plan = event(Event::Plan {
            entries: (0..100_000)
                .map(|i| PlanEntry {
                    content: format!("step {i}"),
                    status: "pending".into(),
                })
                .collect(),
        });
        assert!(fit(plan).len() <= FRAME_BUDGET);
    }

    #[test]
    fn a_giant_file_list_is_cut_to_a_prefix() {
        let files: Vec<String> = (0..10_000)
            .map(|i| format!("{}/{i}", "d".repeat(200)))
            .collect();
        let text = fit(SandboxMessage::Workspace {
            n: 1,
            files: files.clone(),
        });
        assert!(text.len() <= FRAME_BUDGET);
        match serde_json::from_str::<SandboxMessage>(&text).unwrap() {
            SandboxMessage::Workspace { n: 1, files: kept } => {
                assert!(!kept.is_empty() && kept.len() < files.len());
                assert_eq!(kept[..], files[..kept.len()]);
            }
            other => panic!("{other:?}"),
        }
    }
}
