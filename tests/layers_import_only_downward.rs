//! SPEC.md section 12: the folders of `src/` are layers, and each imports only layers below it
//! (one named exception). This reads every source file and checks every `crate::<module>` path
//! outside comments against the layer order, so an import that bends the layering fails here,
//! naming the file and the line.

use std::path::{Path, PathBuf};

/// The layers, bottom up. A module may use its own layer's module (itself) and any lower layer.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["log", "config", "testing"],
    &["storage"],
    &["guard", "summarizer"],
    &["engine"],
    &["compaction", "episodes", "extraction"],
    &["audit"],
    &["transfer"],
    &["open"],
];

/// Upward paths SPEC.md 12 allows: the summarizer reports chunk progress as compaction's plain
/// data type, a leaf module that imports nothing above `log`.
const ALLOWED_UPWARD: &[(&str, &str)] = &[("summarizer", "crate::compaction::Stage")];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top module of a file under `src/`: `src/engine/mod.rs` and `src/engine/cache.rs` are
/// `engine`, `src/open.rs` is `open`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src/");
    let first = relative.components().next().expect("a path under src/");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
}

/// Every `crate::<name>` in `line` outside a comment, with the text that follows it.
fn crate_paths(line: &str) -> Vec<(String, String)> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let path: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        found.push((name, format!("crate::{path}")));
        rest = after;
    }
    found
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue; // the crate root re-exports the public API from every layer
        }
        let Some(own) = layer_of(&module) else {
            violations.push(format!("{}: module `{module}` has no layer in this test (add it)", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a source file is UTF-8");
        for (n, line) in text.lines().enumerate() {
            for (name, path) in crate_paths(line) {
                if name.is_empty() || name == module {
                    continue;
                }
                checked += 1;
                let Some(theirs) = layer_of(&name) else {
                    violations.push(format!("{}:{}: `{path}`: unknown module `{name}`", file.display(), n + 1));
                    continue;
                };
                let allowed = ALLOWED_UPWARD.iter().any(|(m, p)| *m == module && path.starts_with(p));
                if theirs >= own && !allowed {
                    violations.push(format!(
                        "{}:{}: `{module}` (layer {own}) uses `{path}` (layer {theirs})",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} crate paths found: the scan is broken");
    assert!(violations.is_empty(), "imports against the layering (SPEC.md 12):\n{}", violations.join("\n"));
}

#[test]
fn the_scan_sees_paths_and_skips_comments() {
    assert_eq!(
        crate_paths("use crate::engine::Engine; let x = crate::log::fold::apply;"),
        [
            ("engine".to_string(), "crate::engine::Engine".to_string()),
            ("log".to_string(), "crate::log::fold::apply".to_string())
        ]
    );
    assert!(crate_paths("    // see crate::open").is_empty());
    assert!(crate_paths("/// attached by `crate::open`").is_empty());
    assert_eq!(layer_of("open"), Some(LAYERS.len() - 1));
    assert_eq!(layer_of("nonsense"), None);
}
