//! Turning arbitrary content into summary text. Tool output is full of terminal codes (every
//! build and test runner colours its output), and a model may echo them back; none of that is a
//! reason to fail a compaction, so every text that can reach a summary goes through [`sanitize`]
//! first: the focus, each message the embedded summarizer excerpts, each transcript line sent to a
//! model, and each summarizer reply. [`super::check_summary`] stays as the final guard; a
//! sanitized text always passes its control-character rule.
//!
//! Escape sequences are recognised by `vte`, the parser of the Alacritty terminal, which follows
//! the DEC VT state machine: CSI (colours, cursor moves, erase), OSC (titles, hyperlinks), DCS,
//! SOS/PM/APC strings and two-byte ESC sequences are removed whole.

use std::borrow::Cow;

use vte::{Parser, Perform};

/// What a control character other than newline and tab becomes. A space is one byte, and a
/// control character is one byte (C0, DEL) or two (C1), so replacing never lengthens the text.
const REPLACEMENT: char = ' ';

/// True for the characters [`sanitize`] removes or replaces: control characters (Unicode Cc)
/// other than newline and tab.
pub(crate) fn is_unwanted(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// Cleans `text` for use in a summary or a prompt:
///
/// - `\r\n` becomes `\n`, and so does a lone `\r` (a progress bar's redraw starts a new line);
/// - ANSI escape sequences (CSI, OSC, DCS, SOS/PM/APC and other ESC sequences) are removed;
/// - every other control character (NUL, BEL, backspace, DEL, C1 controls) becomes a space;
/// - everything else, right-to-left scripts, emoji and other non-ASCII text included, is kept
///   byte for byte.
///
/// The result holds no control character but `\n` and `\t`, and is never longer than `text`, so a
/// size bound checked before cleaning still holds after it. Text with nothing to clean is
/// returned borrowed. Each line is parsed on its own, so an escape sequence left unterminated
/// (a log cut mid-sequence) swallows at most the rest of its line.
pub(crate) fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unwanted) {
        return Cow::Borrowed(text);
    }
    let crlf_free = if text.contains("\r\n") { Cow::Owned(text.replace("\r\n", "\n")) } else { Cow::Borrowed(text) };
    let mut cleaner = Cleaner { out: String::with_capacity(crlf_free.len()) };
    for (index, line) in crlf_free.split('\n').enumerate() {
        if index > 0 {
            cleaner.out.push('\n');
        }
        Parser::new().advance(&mut cleaner, line.as_bytes());
    }
    let out = cleaner.out;
    // vte emits U+FFFD (three bytes) where it meets invalid UTF-8, which valid input reaches only
    // when a C1 string terminator (0x9C) ends a DCS string in the middle of a character. The
    // bytes of the sequence consumed before it make up for that in every case we know of, but
    // the bound is a promise, so it is checked rather than assumed: should the parse ever come
    // out longer, control characters are replaced without parsing sequences.
    if out.len() > text.len() {
        return Cow::Owned(text.chars().map(|c| if is_unwanted(c) { REPLACEMENT } else { c }).collect());
    }
    Cow::Owned(out)
}

/// Receives what the parser finds outside escape sequences; sequences themselves are dropped by
/// the trait's default methods.
struct Cleaner {
    out: String,
}

impl Perform for Cleaner {
    fn print(&mut self, c: char) {
        // DEL arrives as a printable character.
        self.out.push(if is_unwanted(c) { REPLACEMENT } else { c });
    }

    fn execute(&mut self, byte: u8) {
        self.out.push(match byte {
            b'\t' => '\t',
            // Newlines never reach the parser (lines are split before); a CR here was alone.
            b'\r' | b'\n' => '\n',
            _ => REPLACEMENT,
        });
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    use super::*;
    use crate::summarizer::check_summary;

    #[test]
    fn escape_sequences_are_removed_and_controls_replaced() {
        let cases = [
            ("\x1b[32mok\x1b[0m", "ok"),
            ("\x1b[1m\x1b[38;5;12m--> \x1b[0msrc/lib.rs", "--> src/lib.rs"),
            ("\x1b]8;;file:///a\x1b\\link\x1b]8;;\x1b\\", "link"),
            ("\x1b]0;title\x07text", "text"),
            ("\x1bP1$r0m\x1b\\after dcs", "after dcs"),
            ("\x1b_apc string\x1b\\after apc", "after apc"),
            ("\x1b7saved\x1b8", "saved"),
            ("a\r\nb\r\n", "a\nb\n"),
            ("40%\r\x1b[K90%\rdone", "40%\n90%\ndone"),
            ("nul\0bel\x07bs\x08del\x7fnel\u{85}csi\u{9b}", "nul bel bs del nel csi "),
            ("tab\tkept\nnewline kept", "tab\tkept\nnewline kept"),
            ("שלום مرحبا 🚀 👩‍💻 🇳🇱", "שלום مرحبا 🚀 👩‍💻 🇳🇱"),
            // An unterminated OSC swallows the rest of its line only.
            ("cut \x1b]8;;http://x\nnext line", "cut \nnext line"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "input {input:?}");
        }
        assert!(matches!(sanitize("plain text\twith tab\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_dcs_string_cut_by_c1_st_inside_a_character_never_lengthens_the_text() {
        // U+273F is E2 9C BF and U+1CFFF is F0 9C BF BF: to the parser, 0x9C is the C1 string
        // terminator, and the bytes after it are invalid UTF-8.
        for input in ["\x1bPq\u{273f}tail", "\x1bPq\u{1cfff}\x1bPq\u{1cfff}\u{1cfff}"] {
            let out = sanitize(input);
            assert!(out.len() <= input.len(), "{input:?} became {out:?}");
            assert!(!out.chars().any(is_unwanted), "{out:?}");
        }
    }

    /// Strings drawn mostly from the characters escape sequences and controls are made of.
    #[derive(Clone, Debug)]
    struct Messy(String);

    impl Arbitrary for Messy {
        fn arbitrary(g: &mut Gen) -> Self {
            const PIECES: &[&str] = &[
                "\x1b",
                "[",
                "]",
                "P",
                "X",
                "^",
                "_",
                "\\",
                "\x07",
                "\u{9b}",
                "\u{9c}",
                ";",
                "0",
                "1",
                "38",
                "m",
                "K",
                "H",
                "\r",
                "\n",
                "\r\n",
                "\t",
                "\0",
                "\x08",
                "\x7f",
                "\u{85}",
                "\u{71c}",
                "\u{273f}",
                "\u{1cfff}",
                "é",
                "🚀",
                "ש",
                "a",
                "q",
                " ",
                "\u{fffd}",
                "\x18",
                "\x1a",
            ];
            let n = usize::arbitrary(g) % 64;
            let mut s = String::new();
            for _ in 0..n {
                if bool::arbitrary(g) {
                    s.push_str(g.choose(PIECES).expect("PIECES is not empty"));
                } else {
                    s.push(char::arbitrary(g));
                }
            }
            Messy(s)
        }

        fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
            Box::new(self.0.shrink().map(Messy))
        }
    }

    fn prop_sanitized_text_passes_check_summary(input: Messy) -> bool {
        let clean = sanitize(&input.0);
        // A leading letter keeps an all-blank result from failing as empty, which is a
        // different rule: this property is about control characters.
        let checked = check_summary(&format!("x{clean}"), usize::MAX);
        checked.is_ok() && clean.len() <= input.0.len() && !clean.chars().any(is_unwanted)
    }

    #[test]
    fn sanitized_text_always_passes_check_summary_and_is_never_longer() {
        QuickCheck::new().quickcheck(prop_sanitized_text_passes_check_summary as fn(Messy) -> bool);
        QuickCheck::new()
            .quickcheck((|s: String| prop_sanitized_text_passes_check_summary(Messy(s))) as fn(String) -> bool);
    }

    #[test]
    fn sanitizing_is_idempotent() {
        let once = sanitize("\x1b[31mred\x1b[0m\r\nnul\0 \u{85}");
        assert_eq!(sanitize(&once), once);
    }
}
