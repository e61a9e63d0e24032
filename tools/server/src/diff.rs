//! What a PUT's messages mean against the stored ones: an append of the new messages, or a
//! replacement. Pure: ids and messages in, a [`Plan`] out.
//!
//! The client's append (`append_messages_to_working_memory`) GETs the session and PUTs the stored
//! messages plus new ones, matched here by message id:
//! - the body's known messages (ids stored in the live window) must be the stored ones from the
//!   first, in order and unchanged (role, content, and `created_at` when the body gives one), with
//!   every new message after them: then only the new ones are appended;
//! - stored messages after the last known one that the body lacks were written after the client's
//!   GET (another client's append): they are kept, and the new messages go after them, so
//!   concurrent GET+PUT appends lose nothing. A body with no new message that lacks them is a
//!   truncation: a replacement;
//! - unknown messages before the first known one are taken as messages compacted since the
//!   client's GET when they are the last ones compacted (the caller checks, [`Plan::Append`]'s
//!   `leading`); otherwise the PUT is a replacement;
//! - a body none of whose messages is stored appends them all (the client read the session empty,
//!   or before everything now stored): to replace a session wholesale, PUT `messages: []` first
//!   (a truncation) or DELETE it;
//! - anything else (an earlier message dropped, edited or reordered, a new one between known
//!   ones) is a replacement: recorded as a reset plus the body's messages, the old ones kept in
//!   the log.

use std::collections::HashMap;

use palimpsest::Message;

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Append the body's messages at these indices (in order). The first `leading` body messages
    /// are unknown and must be the last `leading` compacted messages, else the PUT is a
    /// replacement.
    Append {
        /// Unknown messages before the first known one.
        leading: usize,
        /// Indices of the body's messages to append.
        new: Vec<usize>,
    },
    /// Reset, then write every body message.
    Replace,
}

/// Compares the body's messages with the stored live ones (both with their AMS ids, oldest
/// first).
pub fn plan(stored: &[(&str, &Message)], body: &[(String, Message)]) -> Plan {
    let index: HashMap<&str, usize> = stored.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
    let Some(first_known) = body.iter().position(|(id, _)| index.contains_key(id.as_str())) else {
        // Nothing the body names is stored: the client read the session empty (or before
        // everything now stored was written) and brings new messages, which go after what others
        // wrote meanwhile; an empty body truncates.
        return if body.is_empty() && !stored.is_empty() {
            Plan::Replace
        } else {
            Plan::Append { leading: 0, new: (0..body.len()).collect() }
        };
    };
    let mut expected = 0usize;
    let mut new = Vec::new();
    for (i, (id, message)) in body.iter().enumerate().skip(first_known) {
        match index.get(id.as_str()) {
            Some(&at) => {
                let unchanged = crate::model::same_message(message, stored[at].1);
                if at != expected || !new.is_empty() || !unchanged {
                    return Plan::Replace;
                }
                expected += 1;
            }
            None => new.push(i),
        }
    }
    // Stored messages after the last known one are kept only when the body brings new ones.
    if expected < stored.len() && new.is_empty() {
        return Plan::Replace;
    }
    Plan::Append { leading: first_known, new }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, text: &str) -> (String, Message) {
        (id.to_string(), Message::user(text).with_created_at_ms(1))
    }

    fn run(stored: &[(String, Message)], body: &[(String, Message)]) -> Plan {
        let s: Vec<(&str, &Message)> = stored.iter().map(|(i, m)| (i.as_str(), m)).collect();
        plan(&s, body)
    }

    #[test]
    fn resending_the_stored_messages_plus_new_ones_appends_the_new_ones() {
        let stored = [m("a", "1"), m("b", "2")];
        assert_eq!(run(&stored, &[m("a", "1"), m("b", "2"), m("c", "3")]), Plan::Append { leading: 0, new: vec![2] });
        assert_eq!(run(&stored, &[m("a", "1"), m("b", "2")]), Plan::Append { leading: 0, new: vec![] });
        assert_eq!(run(&[], &[m("a", "1")]), Plan::Append { leading: 0, new: vec![0] });
    }

    #[test]
    fn a_stale_snapshot_plus_new_ones_keeps_what_others_appended() {
        let stored = [m("a", "1"), m("b", "2"), m("x", "other client")];
        assert_eq!(run(&stored, &[m("a", "1"), m("b", "2"), m("c", "3")]), Plan::Append { leading: 0, new: vec![2] });
        // Without new messages, dropping the tail is a truncation.
        assert_eq!(run(&stored, &[m("a", "1"), m("b", "2")]), Plan::Replace);
    }

    #[test]
    fn drops_edits_reorders_and_insertions_are_replacements() {
        let stored = [m("a", "1"), m("b", "2"), m("c", "3")];
        assert_eq!(run(&stored, &[m("b", "2"), m("c", "3"), m("d", "4")]), Plan::Replace);
        assert_eq!(run(&stored, &[m("a", "1"), m("c", "3"), m("d", "4")]), Plan::Replace);
        assert_eq!(run(&stored, &[m("a", "1"), m("b", "edited"), m("c", "3")]), Plan::Replace);
        assert_eq!(run(&stored, &[m("b", "2"), m("a", "1"), m("c", "3")]), Plan::Replace);
        assert_eq!(run(&stored, &[m("a", "1"), m("n", "new"), m("b", "2"), m("c", "3")]), Plan::Replace);
        assert_eq!(run(&stored, &[m("z", "all new")]), Plan::Append { leading: 0, new: vec![0] }, "a stale empty read");
        assert_eq!(run(&stored, &[]), Plan::Replace);
    }

    #[test]
    fn unknown_messages_before_the_first_known_one_are_left_to_the_compaction_check() {
        let stored = [m("c", "3"), m("d", "4")];
        assert_eq!(
            run(&stored, &[m("a", "1"), m("b", "2"), m("c", "3"), m("d", "4"), m("e", "5")]),
            Plan::Append { leading: 2, new: vec![4] }
        );
    }
}
