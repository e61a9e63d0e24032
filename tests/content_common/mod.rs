//! Real-world content for the compaction tests: what build tools, test runners and terminals put
//! into tool results (ANSI colour, OSC hyperlinks and titles, carriage-return progress bars, CRLF
//! line ends, NUL and BEL), text that is unusual but fine (right-to-left scripts, emoji), and a
//! 1 MB single line. Shared by the embedded and the OpenAI-compatible summarizer tests.
#![allow(dead_code)]

use palimpsest::{Message, Session, ToolCall, WorkingMemory};

/// `cargo build` as a terminal shows it: bold green status words, a yellow warning with an OSC 8
/// hyperlink, an erase-line progress bar drawn with carriage returns.
pub const CARGO_LOG: &str = "\x1b[1m\x1b[32m   Compiling\x1b[0m palimpsest v0.1.0 (/work)\n\
\x1b[0m\x1b[1m\x1b[33mwarning\x1b[0m\x1b[0m\x1b[1m: unused variable: `x`\x1b[0m\n\
  \x1b[0m\x1b[0m\x1b[1m\x1b[38;5;12m--> \x1b[0m\x1b[0m\x1b]8;;file:///work/src/lib.rs\x1b\\src/lib.rs:3:9\x1b]8;;\x1b\\\n\
\x1b[1m\x1b[36m    Building\x1b[0m [=====>   ] 40/97: fjall\r\x1b[K\
\x1b[1m\x1b[36m    Building\x1b[0m [=========> ] 96/97: palimpsest\r\x1b[K\
\x1b[1m\x1b[32m    Finished\x1b[0m `dev` profile [unoptimized + debuginfo] target(s) in 4.21s\n";

/// A coloured pytest run, with a window-title OSC (terminated by BEL) and CRLF line ends.
pub const PYTEST_LOG: &str = "\x1b]0;pytest\x07\x1b[1m============ test session starts ============\x1b[0m\r\n\
collected 3 items\r\n\
\r\n\
tests/test_api.py \x1b[32m.\x1b[0m\x1b[31mF\x1b[0m\x1b[32m.\x1b[0m\x1b[32m                                   [100%]\x1b[0m\r\n\
\x1b[31mFAILED\x1b[0m tests/test_api.py::test_refund - AssertionError: 402 != 200\r\n\
\x1b[31m======= \x1b[1m1 failed\x1b[0m, \x1b[32m2 passed\x1b[0m\x1b[31m in 0.12s =======\x1b[0m\r\n";

/// Windows line ends everywhere.
pub const CRLF: &str = "line one\r\nline two\r\nthe deploy finished\r\n";

/// Binary-ish output: NUL bytes, a BEL, a backspace, DEL and a C1 control (U+0085, NEL).
pub const CONTROL_BYTES: &str = "header\0\0\0 payload\x07 ring\x08\x08 back\x7f del\u{85}nel end";

/// Right-to-left scripts (Hebrew, Arabic) mixed with left-to-right text.
pub const RTL: &str = "שלום עולם: the deploy to staging passed; مرحبا بالعالم";

/// Emoji, including a ZWJ sequence and a flag.
pub const EMOJI: &str = "build 🚀 passed ✅ by 👩‍💻 in 🇳🇱";

/// Every case: (name, content of a tool result).
pub fn cases() -> Vec<(&'static str, String)> {
    vec![
        ("cargo ANSI log", CARGO_LOG.to_string()),
        ("pytest ANSI log", PYTEST_LOG.to_string()),
        ("CRLF", CRLF.to_string()),
        ("NUL, BEL and other controls", CONTROL_BYTES.to_string()),
        ("right-to-left text", RTL.to_string()),
        ("emoji", EMOJI.to_string()),
        ("1 MB single line", one_megabyte_line()),
    ]
}

/// One line of about 1 MB (well within the default 1 MiB message limit) with colour codes
/// sprinkled through it, as a minified JSON dump piped through a colouriser would be.
pub fn one_megabyte_line() -> String {
    let mut line = String::with_capacity(1_000_100);
    let mut i = 0u64;
    while line.len() < 1_000_000 {
        line.push_str(&format!("\x1b[3{}m{{\"k{i}\":{i}}}\x1b[0m,", i % 8));
        i += 1;
    }
    line
}

/// One turn whose tool result is `content`; the user asks with `content` in the ask, too, so the
/// content reaches every section of an extractive summary.
pub fn turn_with(i: usize, content: &str) -> Vec<Message> {
    let id = format!("call-{i}");
    let short: String = content.chars().take(400).collect();
    vec![
        Message::user(format!("step {i}: look at this output: {short}")),
        Message::assistant_tool_calls("", vec![ToolCall::new(&id, "run", format!(r#"{{"cmd":"make {i}"}}"#))]),
        Message::tool_result(&id, content),
        Message::assistant(format!("step {i} read: {short}")),
    ]
}

/// True when `text` holds no control character but newline and tab, and no escape sequence
/// remnant (the ESC byte itself).
pub fn is_clean(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// The session's summary text after a compaction, checked to be clean and within `max_bytes`.
pub async fn clean_summary(s: &Session, max_bytes: usize) -> String {
    let wm: WorkingMemory = s.working_memory(10).await.expect("working memory");
    let text = wm.summary.expect("the session was compacted").text;
    assert!(is_clean(&text), "summary holds control characters: {text:?}");
    assert!(text.len() <= max_bytes, "summary is {} bytes, over {max_bytes}", text.len());
    palimpsest::check_summary(&text, max_bytes).expect("a stored summary passes check_summary");
    text
}
