//! The coding agent: a red CI run traced to a commit, fixed, tested, diffed, linted and sent for review.

use serde_json::json;

use super::script::{Script, call};

pub(super) struct Repo {
    name: &'static str,
    module: &'static str,
    func: &'static str,
    test: &'static str,
    lint_module: &'static str,
    author: &'static str,
    pr: u32,
}

pub(super) const REPOS: [Repo; 3] = [
    Repo {
        name: "ledger-api",
        module: "amount",
        func: "parse_amount",
        test: "fee_wider_than_amount_is_zero",
        lint_module: "report",
        author: "dana",
        pr: 412,
    },
    Repo {
        name: "img-resize",
        module: "scale",
        func: "scale_to_fit",
        test: "border_wider_than_image_is_zero",
        lint_module: "cli",
        author: "priya",
        pr: 87,
    },
    Repo {
        name: "chat-relay",
        module: "frame",
        func: "decode_frame",
        test: "header_longer_than_frame_is_empty",
        lint_module: "metrics",
        author: "tomas",
        pr: 1290,
    },
];

pub(super) fn play(s: &mut Script, r: &Repo) {
    let (name, module, func, test, lint, author) = (r.name, r.module, r.func, r.test, r.lint_module, r.author);
    let path = format!("src/{module}.rs");
    let lint_path = format!("src/{lint}.rs");
    s.system(format!(
        "You are a careful coding agent working in the `{name}` repository (Rust, edition 2024). Tools: run_tests, \
         git_log, read_file, search_code, apply_patch, git_diff, run_clippy, open_pull_request. Explain each change \
         and why. Never push or merge without being asked."
    ));

    s.user(format!(
        "CI on main has been red since this morning: `cargo test` fails in `{module}`. Can you find out why?"
    ));
    s.tools(
        "I'll run the failing tests and look at what changed recently, in parallel.",
        vec![
            call(
                "run_tests",
                json!({"filter": module}),
                format!(
                    "running 14 tests\ntest {module}::tests::{test} ... FAILED\n\nfailures:\n---- {module}::tests::{test} \
                     stdout ----\nassertion `left == right` failed\n  left: Err(Underflow)\n right: Ok(0)\n\ntest result: \
                     FAILED. 13 passed; 1 failed"
                ),
            ),
            call(
                "git_log",
                json!({"n": 3, "path": path}),
                format!(
                    "e4b91c2 {author}: Use checked arithmetic in {func} (3 hours ago)\n77d0a15 ci: cache the cargo \
                     registry (1 day ago)\n1c9e3f0 Bump serde to 1.0.228 (2 days ago)"
                ),
            ),
        ],
    );
    s.tools(
        "",
        vec![call(
            "read_file",
            json!({"path": path, "start_line": 60, "end_line": 66}),
            format!(
                "60 pub fn {func}(input: &Input) -> Result<Value, Error> {{\n61     let base = input.len();\n62     let \
                 margin = input.margin();\n63     let span = base.checked_sub(margin).ok_or(Error::Underflow)?;\n64     \
                 Ok(Value::new(span))\n65 }}"
            ),
        )],
    );
    s.tools(
        "Checking whether other callers rely on the old clamping behaviour.",
        vec![call(
            "search_code",
            json!({"query": format!("{func}("), "path": "src"}),
            format!(
                "{path}:60: pub fn {func}(input: &Input) -> Result<Value, Error> {{\n{lint_path}:118:     let v = \
                 {func}(&input)?;\n{path}:205:     assert_eq!({func}(&Input::edge()), Ok(Value::new(0)));"
            ),
        )],
    );
    s.answer(format!(
        "Found it. Commit e4b91c2 changed `{func}` from `saturating_sub` to `checked_sub(..).ok_or(Error::Underflow)?`. \
         When the margin is wider than the input, the old code clamped to 0 and the new code returns \
         `Err(Underflow)`. The test `{test}` pins the clamping, and `{lint_path}` relies on it too, so clamping is \
         the intended contract. The fix is to clamp explicitly and keep checked arithmetic where overflow is a real \
         error."
    ));

    s.user("Makes sense. Please fix it and add a regression test for that case.".to_string());
    s.tools(
        "",
        vec![call(
            "apply_patch",
            json!({"path": path, "patch": "@@ -63 +63,2 @@\n-    let span = base.checked_sub(margin).ok_or(Error::Underflow)?;\n+    // A margin wider than the input clamps to zero: callers rely on it.\n+    let span = base.saturating_sub(margin);"}),
            format!("patch applied: {path}, 1 hunk, +2 -1"),
        )],
    );
    s.tools(
        "",
        vec![call(
            "apply_patch",
            json!({"path": path, "patch": format!("@@ -212 +212,5 @@\n+    #[test]\n+    fn margin_wider_than_input_clamps_to_zero() {{\n+        assert_eq!({func}(&Input::with_margin(3, 9)), Ok(Value::new(0)));\n+    }}")}),
            format!("patch applied: {path}, 1 hunk, +5 -0"),
        )],
    );
    s.tools(
        "Running the whole suite now, not just the module.",
        vec![call("run_tests", json!({}), "test result: ok. 131 passed; 0 failed; 0 ignored; finished in 4.82s")],
    );
    s.answer(format!(
        "Fixed. `{func}` clamps again with `saturating_sub`, with a comment saying why, and the new test \
         `margin_wider_than_input_clamps_to_zero` pins the case that broke. The full suite passes: 131 tests, 0 failures."
    ));

    s.user("Show me the diff before I look at anything else.".to_string());
    s.tools(
        "",
        vec![call(
            "git_diff",
            json!({"stat": false}),
            format!(
                "diff --git a/{path} b/{path}\n@@ -63 +63,2 @@\n-    let span = base.checked_sub(margin).ok_or(Error::Underflow)?;\n+    \
                 // A margin wider than the input clamps to zero: callers rely on it.\n+    let span = \
                 base.saturating_sub(margin);\n@@ -212 +213,5 @@\n+    #[test]\n+    fn \
                 margin_wider_than_input_clamps_to_zero() {{ ... }}"
            ),
        )],
    );
    s.answer(format!(
        "That is the whole change: one line in `{func}` plus the regression test. Nothing outside `{path}` is touched."
    ));

    s.user(format!(
        "While you're here: clippy has been warning about `{lint_path}` for weeks. Can you clean that up on the same \
         branch?"
    ));
    s.tools(
        "",
        vec![call(
            "run_clippy",
            json!({"args": ["--all-targets", "--", "-D", "warnings"]}),
            format!(
                "error: this `if` has identical blocks\n  --> {lint_path}:88:5\nerror: redundant clone\n  --> \
                 {lint_path}:131:22\nerror: could not compile `{name}` due to 2 previous errors"
            ),
        )],
    );
    s.tools(
        "",
        vec![call(
            "read_file",
            json!({"path": lint_path, "start_line": 86, "end_line": 94}),
            "86     let label = if totals.is_empty() {\n87         \"none\"\n88     } else if totals.len() == 1 {\n89         \
             \"none\"\n90     } else {\n91         \"some\"\n92     };",
        )],
    );
    s.tools(
        "Merging the identical branches and dropping the clone; behaviour is unchanged.",
        vec![call(
            "apply_patch",
            json!({"path": lint_path, "patch": "@@ -86,7 +86,3 @@\n-    let label = if totals.is_empty() {\n-        \"none\"\n-    } else if totals.len() == 1 {\n+    let label = if totals.len() <= 1 {\n@@ -131 +127 @@\n-    render(&rows.clone())\n+    render(&rows)"}),
            format!("patch applied: {lint_path}, 2 hunks, +2 -6"),
        )],
    );
    s.tools(
        "Checking lints and tests together.",
        vec![
            call(
                "run_clippy",
                json!({"args": ["--all-targets", "--", "-D", "warnings"]}),
                "Finished `dev` profile: 0 warnings",
            ),
            call("run_tests", json!({}), "test result: ok. 131 passed; 0 failed; 0 ignored; finished in 4.77s"),
        ],
    );
    s.answer(format!(
        "Clippy is clean and all 131 tests still pass. In `{lint_path}` the two identical branches are merged into \
         `totals.len() <= 1`, and a needless `clone()` before `render` is gone."
    ));

    s.user("Write a commit message covering both changes.".to_string());
    s.answer(format!(
        "fix({module}): clamp a margin wider than the input to zero again\n\ne4b91c2 made `{func}` return \
         Err(Underflow) where it used to clamp, which broke `{test}` and the caller in `{lint_path}`. Restore the \
         clamp with saturating_sub and pin it with a regression test.\n\nAlso fix two clippy lints in `{lint_path}` \
         (identical if-branches, redundant clone); no behaviour change."
    ));

    s.user(format!("Open a draft PR with that, and ask {author} to review since it touches their commit."));
    s.tools(
        "",
        vec![call(
            "open_pull_request",
            json!({"title": format!("fix({module}): clamp a margin wider than the input to zero again"), "draft": true, "reviewers": [author]}),
            json!({"number": r.pr, "url": format!("https://git.example.com/{name}/pulls/{}", r.pr), "state": "draft"})
                .to_string(),
        )],
    );
    s.answer(format!("Draft PR #{} is open and {author} is asked to review.", r.pr));

    s.user("Anything I should watch for in review?".to_string());
    s.answer(format!(
        "Two things. First, whether any caller wanted the new `Err(Underflow)`: I found none in `src/`, but \
         downstream crates may call `{func}` too. Second, the clippy fix changes control flow slightly in \
         `{lint_path}`; it is equivalent, and the tests cover both branches."
    ));
}

/// What the user and agent say after the review came back: the demo appends it while the session
/// is being compacted.
pub(super) fn follow_up(s: &mut Script, r: &Repo) {
    let (func, lint, author, pr) = (r.func, r.lint_module, r.author, r.pr);
    s.user(format!("{author} approved PR #{pr}. Run the tests once more on the branch before I merge?"));
    s.tools(
        "",
        vec![call("run_tests", json!({}), "test result: ok. 131 passed; 0 failed; 0 ignored; finished in 4.90s")],
    );
    s.answer(format!(
        "All 131 tests pass on the branch and {author} has approved PR #{pr}: it is ready to merge. I'll leave the \
         merge to you."
    ));
    s.user("Merged. Thanks, that's all for today.".to_string());
    s.answer(format!(
        "For your notes: `{func}` clamps a wide margin to zero again, pinned by a regression test; two clippy lints in \
         `src/{lint}.rs` are fixed; PR #{pr} is merged."
    ));
}
