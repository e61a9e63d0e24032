//! Content is never a reason to fail a compaction: tool output with ANSI colour, OSC sequences,
//! CRLF, NUL and BEL, right-to-left text, emoji and a 1 MB single line all compact with the
//! embedded summarizer, again and again; a focus with control characters is cleaned, not refused;
//! a summarizer's reply is cleaned the same way (only an empty reply is refused); and the
//! summary stays within `compaction.max_summary_bytes` whatever the input.
//! The OpenAI-compatible summarizer gets the same cases in `openai_summarizer.rs`.

mod backends;
mod common;
mod content_common;

use std::sync::Arc;

use backends::Store;
use common::{FnSummarizer, snapshot, turn};
use content_common::{EMOJI, RTL, cases, clean_summary, is_clean, turn_with};
use palimpsest::{CompactionOutcome, CompactionRequest, Config, Error, ExtractiveSummarizer, Session};

async fn compact_all(s: &Session, focus: Option<&str>) -> Result<CompactionOutcome, Error> {
    let head = s.head().await.expect("head").expect("the session exists");
    let mut request = CompactionRequest::upto(head.last_seq());
    request.focus = focus.map(str::to_string);
    s.compact(request).await
}

fn spliced(outcome: Result<CompactionOutcome, Error>, case: &str) {
    match outcome {
        Ok(CompactionOutcome::Spliced { .. }) => {}
        other => panic!("{case}: expected a splice, got {other:?}"),
    }
}

/// The words each case's summary must still show once the escape sequences are gone.
fn visible_words(case: &str) -> &'static [&'static str] {
    match case {
        "cargo ANSI log" => &["Compiling palimpsest v0.1.0"],
        "pytest ANSI log" => &["test session starts"],
        "CRLF" => &["line one"],
        "NUL, BEL and other controls" => &["header", "payload"],
        "right-to-left text" => &[RTL],
        "emoji" => &[EMOJI],
        _ => &[],
    }
}

async fn every_kind_of_tool_output_compacts_with_the_embedded_summarizer_again_and_again(store: Store) {
    let max_bytes = Config::default().compaction.max_summary_bytes as usize;
    let engine = store.open_with_summarizer(Arc::new(ExtractiveSummarizer), |_| {}).await;
    for (n, (case, content)) in cases().into_iter().enumerate() {
        let s = engine.session(format!("content:{n}")).expect("id");
        s.append_many(turn_with(0, &content)).await.expect("append");
        s.append_many(turn(1)).await.expect("append");
        spliced(compact_all(&s, None).await, case);
        let first = clean_summary(&s, max_bytes).await;
        for word in visible_words(case) {
            assert!(first.contains(word), "{case}: {word:?} missing from {first:?}");
        }
        // The next compaction carries the first summary over: it must not fail either.
        s.append_many(turn_with(2, &content)).await.expect("append");
        spliced(compact_all(&s, None).await, case);
        clean_summary(&s, max_bytes).await;
    }
}

async fn a_one_megabyte_line_keeps_the_smallest_summary_within_its_bound(store: Store) {
    let engine = store
        .open_with_summarizer(Arc::new(ExtractiveSummarizer), |c| {
            c.compaction.max_summary_bytes = 256;
            c.compaction.chunk_bytes = 1 << 10;
        })
        .await;
    let s = engine.session("big").expect("id");
    let line = content_common::one_megabyte_line();
    for i in 0..3 {
        s.append_many(turn_with(i, &line)).await.expect("append");
    }
    spliced(compact_all(&s, Some("\x1b[1mk1\x1b[0m")).await, "1 MB line, chunked");
    clean_summary(&s, 256).await;
}

async fn a_focus_with_control_characters_is_cleaned_not_refused(store: Store) {
    let summarizer = FnSummarizer::constant("fine");
    let engine = store.open_with_summarizer(Arc::clone(&summarizer) as _, |_| {}).await;
    let s = engine.session("focus").expect("id");
    s.append_many(turn(0)).await.expect("append");
    spliced(compact_all(&s, Some("\x1b[1mbilling\x1b[0m\x07 refunds\0only\r\n")).await, "focus");
    let focus = summarizer.calls.lock()[0].focus.clone().expect("a focus");
    assert_eq!(focus, "billing  refunds only", "escape sequences stripped, controls become spaces, trimmed");

    // The embedded summarizer writes the focus into the summary: it must come out clean too.
    let other = store.sibling().await;
    let engine = other.open_with_summarizer(Arc::new(ExtractiveSummarizer), |_| {}).await;
    let s = engine.session("focus").expect("id");
    s.append_many(turn(0)).await.expect("append");
    spliced(compact_all(&s, Some("\x1b]0;title\x07build\x1b[K\u{9b}\0")).await, "focus");
    let summary = clean_summary(&s, 16 << 10).await;
    assert!(summary.starts_with("Focus: build"), "{summary:?}");

    // A focus that is nothing but escape sequences and controls is no focus at all.
    s.append_many(turn(1)).await.expect("append");
    spliced(compact_all(&s, Some("\x1b[0m\0\x07")).await, "empty focus");
    assert!(!clean_summary(&s, 16 << 10).await.starts_with("Focus:"));
}

async fn a_summarizers_reply_is_cleaned_and_only_an_empty_one_is_refused(store: Store) {
    let summarizer = FnSummarizer::new(|input| {
        Box::pin(async move {
            Ok(match input.focus.as_deref() {
                Some("empty") => "\x1b[0m\0\x07\r\n".to_string(),
                _ => "\x1b[1;32mok\x1b[0m\r\nsecond\0line\x07\u{85}".to_string(),
            })
        })
    });
    let engine = store.open_with_summarizer(summarizer, |_| {}).await;
    let s = engine.session("reply").expect("id");
    s.append_many(turn(0)).await.expect("append");

    let before = snapshot(&s).await;
    let err = compact_all(&s, Some("empty")).await.expect_err("nothing but controls is an empty reply");
    assert!(matches!(&err, Error::Summarizer { message, .. } if message.contains("empty")), "{err:?}");
    assert_eq!(snapshot(&s).await, before, "a refused reply changes nothing");

    spliced(compact_all(&s, None).await, "coloured reply");
    assert_eq!(clean_summary(&s, 16 << 10).await, "ok\nsecond line");
}

async fn chunk_and_merge_replies_are_cleaned_and_the_merge_fallback_is_clean(store: Store) {
    for merge_reply in ["\x1b[33mmerged\x1b[0m\0summary", "\x1b[0m\x07"] {
        let summarizer = FnSummarizer::new(move |input| {
            Box::pin(async move {
                Ok(match input.task {
                    palimpsest::SummaryTask::Merge => merge_reply.to_string(),
                    _ => format!("\x1b[36mchunk\x1b[0m of {}\r\n\x07", input.messages.len()),
                })
            })
        });
        let fresh = store.sibling().await;
        let engine =
            fresh.open_with_summarizer(Arc::clone(&summarizer) as _, |c| c.compaction.chunk_bytes = 1 << 10).await;
        let s = engine.session("chunks").expect("id");
        for i in 0..4 {
            s.append_many(turn_with(i, content_common::CARGO_LOG)).await.expect("append");
        }
        spliced(compact_all(&s, None).await, merge_reply);
        let summary = clean_summary(&s, 16 << 10).await;
        assert!(summarizer.calls.lock().len() > 2, "the span was cut into chunks");
        if merge_reply.contains("merged") {
            assert_eq!(summary, "merged summary");
        } else {
            // The merge reply was empty once cleaned: the chunk summaries, concatenated.
            assert!(summary.starts_with("chunk of"), "{summary:?}");
            assert!(is_clean(&summary));
        }
    }
}

on_both_backends!(
    every_kind_of_tool_output_compacts_with_the_embedded_summarizer_again_and_again,
    a_one_megabyte_line_keeps_the_smallest_summary_within_its_bound,
    a_focus_with_control_characters_is_cleaned_not_refused,
    a_summarizers_reply_is_cleaned_and_only_an_empty_one_is_refused,
    chunk_and_merge_replies_are_cleaned_and_the_merge_fallback_is_clean,
);
