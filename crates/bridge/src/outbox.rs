//! The outbox: numbers the bridge's messages (`n`, from 1, across reconnects) and keeps each one
//! until the server ACKs exactly that `n`, so a dropped connection loses nothing.
//!
//! The server de-duplicates by high-water mark (a message with `n` at or below the highest it has
//! applied is dropped and ACKed again), so the bridge must never let a higher `n` overtake a lower
//! one: messages are numbered in the order they are sent, and after a reconnect every un-ACKed
//! message is re-sent in `n` order before anything new. ACKs are taken by exact `n`, which is right
//! whether or not the server ACKs in order.

use std::collections::VecDeque;
use switchboard_core::protocol::SandboxMessage;

/// Numbered messages not yet ACKed, in `n` order, as the JSON text sent on the wire.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    last: u64,
    unacked: VecDeque<(u64, String)>,
}

impl Outbox {
    /// Numbers a message with the next `n`, keeps it, and returns its JSON text for sending (made
    /// to fit one frame, see [`crate::fit`]).
    pub(crate) fn push(&mut self, make: impl FnOnce(u64) -> SandboxMessage) -> String {
        self.last += 1;
        let n = self.last;
        let message = make(n);
        debug_assert_eq!(message.n(), Some(n), "a numbered message carries its n");
        let text = crate::fit::fit(message);
        self.unacked.push_back((n, text.clone()));
        text
    }

    /// Forgets message `n`; `false` when it was not waiting (a repeated or unknown ACK).
    pub(crate) fn ack(&mut self, n: u64) -> bool {
        match self.unacked.binary_search_by_key(&n, |(m, _)| *m) {
            Ok(i) => {
                self.unacked.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Every un-ACKed message, lowest `n` first.
    pub(crate) fn unacked(&self) -> impl Iterator<Item = (u64, &str)> {
        self.unacked.iter().map(|(n, text)| (*n, text.as_str()))
    }

    pub(crate) fn len(&self) -> usize {
        self.unacked.len()
    }
}

/// The JSON text of a message. Sandbox messages hold only strings, numbers and JSON values, which
/// always serialise.
pub(crate) fn encode(message: &SandboxMessage) -> String {
    serde_json::to_string(message).expect("a sandbox message serialises to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(n: u64) -> SandboxMessage {
        SandboxMessage::Workspace {
            n,
            files: vec![format!("f{n}")],
        }
    }

    #[test]
    fn numbers_from_one_and_forgets_by_exact_ack() {
        let mut o = Outbox::default();
        for _ in 0..4 {
            o.push(workspace);
        }
        let ns = |o: &Outbox| o.unacked().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(ns(&o), vec![1, 2, 3, 4]);
        assert!(o.ack(3));
        assert!(!o.ack(3), "a repeated ack changes nothing");
        assert!(!o.ack(9));
        assert!(o.ack(1));
        assert_eq!(ns(&o), vec![2, 4], "an ack is not cumulative");
        let text = o.push(workspace);
        assert!(text.contains("\"n\":5"), "{text}");
        assert_eq!(o.len(), 3);
    }
}
