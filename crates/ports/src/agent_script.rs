//! The scripted agents' prompt language: one parser for `InMemoryAgentDriver` (the fake) and
//! `scripted-acp-agent` (the real ACP process), so the two agents follow the same script and a
//! journey runs unchanged against either.
//!
//! A prompt is matched against these rules, first match wins (each agent documents what it does
//! for each [`Step`]):
//!
//! 1. **`hang`** (a whitespace-separated word) → [`Step::Hang`];
//! 2. **`permission:<tool>`** (a word) → [`Step::Permission`];
//! 3. **`tool:<cmd>`** (`<cmd>` is the rest of the prompt after the marker) → [`Step::Tool`];
//! 4. **`what did I say first`** (anywhere, any case) → [`Step::Recall`];
//! 5. anything else → [`Step::Echo`].

/// A prompt that waits until cancelled.
pub const HANG: &str = "hang";
/// A prompt whose reply quotes the first user turn of the conversation.
pub const RECALL: &str = "what did I say first?";

/// A prompt that runs `cmd` as a bash tool call.
pub fn tool(cmd: &str) -> String {
    format!("tool:{cmd}")
}

/// A prompt that asks permission to use `tool` and waits for the decision.
pub fn permission(tool: &str) -> String {
    format!("permission:{tool}")
}

/// What a script rule asks of the turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Wait until cancelled.
    Hang,
    /// Ask permission to use this tool, then act on the decision.
    Permission(String),
    /// Run this command as a bash tool call.
    Tool(String),
    /// Quote the first user turn of the conversation.
    Recall,
    /// Reply `echo: <prompt>`.
    Echo,
}

/// The rule `text` matches.
pub fn parse(text: &str) -> Step {
    let words = || text.split_whitespace();
    if words().any(|w| w == HANG) {
        return Step::Hang;
    }
    if let Some(tool) = words()
        .find_map(|w| w.strip_prefix("permission:"))
        .filter(|t| !t.is_empty())
    {
        return Step::Permission(tool.to_string());
    }
    if let Some((_, cmd)) = text.split_once("tool:") {
        if !cmd.trim().is_empty() {
            return Step::Tool(cmd.trim().to_string());
        }
    }
    if text.to_lowercase().contains("what did i say first") {
        return Step::Recall;
    }
    Step::Echo
}

/// Words in `text`: the scripted agents' token count.
pub fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits `reply` into at most three non-empty chunks, on character boundaries: how the scripted
/// agents stream a reply.
pub fn chunks(reply: &str) -> Vec<String> {
    let chars: Vec<char> = reply.chars().collect();
    let size = chars.len().div_ceil(3).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_wins() {
        assert_eq!(parse("please hang tool:ls"), Step::Hang);
        assert_eq!(
            parse("permission:edit tool:ls"),
            Step::Permission("edit".into())
        );
        assert_eq!(parse("run tool: ls -la "), Step::Tool("ls -la".into()));
        assert_eq!(parse("tool:   "), Step::Echo);
        assert_eq!(parse("So, WHAT did I say first?"), Step::Recall);
        assert_eq!(parse("hanging on"), Step::Echo);
        assert_eq!(parse(&tool("pwd")), Step::Tool("pwd".into()));
        assert_eq!(parse(&permission("bash")), Step::Permission("bash".into()));
        assert_eq!(parse(RECALL), Step::Recall);
        assert_eq!(parse(HANG), Step::Hang);
    }

    #[test]
    fn chunks_rejoin_to_the_reply_on_char_boundaries() {
        for reply in ["", "a", "héllo wörld", "echo: a longer reply than three"] {
            let parts = chunks(reply);
            assert!(parts.len() <= 3, "{parts:?}");
            assert_eq!(parts.concat(), reply);
            assert!(parts.iter().all(|p| !p.is_empty()) || reply.is_empty());
        }
        assert_eq!(words("  two   words "), 2);
    }
}
