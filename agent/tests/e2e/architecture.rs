//! The shape of the code, checked: layers import only downwards, no module
//! imports one that imports it back, the kernel's structs stay in `probes`,
//! no source file carries more than 600 lines before its tests, and no function
//! runs over 80 lines unless its doc comment says why (`Long:`).
//!
//! A layer is a top-level module of the library. The order, lowest first:
//! `error` < `core` < `os` < `cpython` < `probes` < `watch` < `otel` < `cli`,
//! except that `otel` sees only `core`, `os` and `error` (it turns reports
//! into telemetry and must not reach into processes or the kernel).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each layer may import (besides itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("core", &["error"]),
    ("os", &["core", "error"]),
    ("cpython", &["os", "core", "error"]),
    ("probes", &["cpython", "os", "core", "error"]),
    ("watch", &["probes", "cpython", "os", "core", "error"]),
    ("otel", &["os", "core", "error"]),
    (
        "cli",
        &["watch", "otel", "probes", "cpython", "os", "core", "error"],
    ),
];

/// Source lines a file may hold before its `#[cfg(test)]` module.
const MAX_FILE_LINES: usize = 600;
/// Lines a function may span without a `Long:` reason in its doc comment.
const MAX_FN_LINES: usize = 80;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file (not `main.rs`) and its module path (`otel::export::spool`).
fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src()).expect("under src");
            let rel = rel.to_string_lossy().replace('\\', "/");
            if !rel.ends_with(".rs") || rel == "main.rs" || rel == "lib.rs" {
                continue;
            }
            let module = rel
                .trim_end_matches(".rs")
                .trim_end_matches("/mod")
                .replace('/', "::");
            let text = std::fs::read_to_string(&path).expect("read source");
            out.insert(module, text);
        }
    }
    out
}

/// The text before the file's tests.
fn before_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The modules a file names through `crate::` (resolved to the longest known
/// module path), outside its tests.
fn imports(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code = before_tests(text);
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=segments.len()).rev() {
            let candidate = segments[..n].join("::");
            if known.contains(&candidate) {
                out.insert(candidate);
                break;
            }
        }
        // `use crate::a::{b, c::d}`: the braces name modules under `a`.
        let after = &rest[path.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let base = segments.join("::");
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim().split(" as ").next().unwrap_or("").trim();
                let segs: Vec<&str> = item.split("::").collect();
                for n in (1..=segs.len()).rev() {
                    let candidate = format!("{base}::{}", segs[..n].join("::"));
                    if known.contains(&candidate) {
                        out.insert(candidate);
                        break;
                    }
                }
            }
        }
    }
    out
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn layers_import_only_the_layers_below_them() {
    let mods = modules();
    let known: BTreeSet<String> = mods
        .keys()
        .cloned()
        .chain(LAYERS.iter().map(|(l, _)| l.to_string()))
        .collect();
    let mut wrong = Vec::new();
    for (module, text) in &mods {
        let own = layer(module);
        let allowed = LAYERS
            .iter()
            .find(|(l, _)| *l == own)
            .unwrap_or_else(|| panic!("module {module} is in no layer: add it to LAYERS"))
            .1;
        for import in imports(text, &known) {
            let to = layer(&import);
            if to != own && !allowed.contains(&to) {
                wrong.push(format!("{module} -> {import}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let graph: BTreeMap<&str, BTreeSet<String>> = mods
        .iter()
        .map(|(m, text)| {
            let mut deps = imports(text, &known);
            deps.remove(m);
            // A parent module (mod.rs) declares its children: that is not an import.
            (m.as_str(), deps)
        })
        .collect();
    // Tarjan-free check: a module is in a cycle when it reaches itself.
    let mut cycles = BTreeSet::new();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.to_string(), vec![])];
        while let Some((node, path)) = stack.pop() {
            for next in graph.get(node.as_str()).into_iter().flatten() {
                if next == start {
                    let mut cycle = path.clone();
                    cycle.insert(0, start.to_string());
                    cycle.push(node.clone());
                    cycle.dedup();
                    let mut key = cycle.clone();
                    key.sort();
                    cycles.insert((key, cycle.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(node.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    let found: Vec<String> = cycles.into_iter().map(|(_, text)| text).collect();
    assert!(found.is_empty(), "import cycles:\n  {}", found.join("\n  "));
}

#[test]
fn kernel_structs_do_not_leave_the_probes_layer() {
    let mut leaks = Vec::new();
    for (module, text) in modules() {
        if layer(&module) == "probes" {
            continue;
        }
        let code = before_tests(&text);
        for needle in ["probes::layout", "lanes_add", "aya::"] {
            if code.contains(needle) {
                leaks.push(format!("{module} names {needle}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

#[test]
fn no_source_file_holds_more_than_600_lines_before_its_tests() {
    let mut long = Vec::new();
    for (module, text) in modules() {
        let lines = before_tests(&text).lines().count();
        if lines > MAX_FILE_LINES {
            long.push(format!("{module}: {lines} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "split these (at most {MAX_FILE_LINES} lines before the tests):\n  {}",
        long.join("\n  ")
    );
}

/// Functions (name, first line, lines spanned) of rustfmt'd code: a function
/// starting at indentation k ends at the first later line that is k spaces and `}`.
fn functions(text: &str) -> Vec<(String, usize, usize, bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(pos) = trimmed.find("fn ") else {
            continue;
        };
        let head = &trimmed[..pos];
        let is_fn = head.split_whitespace().all(|w| {
            matches!(
                w,
                "pub"
                    | "pub(crate)"
                    | "pub(super)"
                    | "const"
                    | "async"
                    | "unsafe"
                    | "extern"
                    | "\"C\""
            )
        });
        // A declaration without a body (a trait's required method) has no length.
        if !is_fn || trimmed.starts_with("//") || trimmed.ends_with(';') {
            continue;
        }
        let name: String = trimmed[pos + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        let Some(end) = lines[i..].iter().position(|l| *l == close) else {
            continue;
        };
        // The doc comment above (and attributes between).
        let mut j = i;
        let mut reason = false;
        while j > 0 {
            let above = lines[j - 1].trim_start();
            if above.starts_with("///") || above.starts_with("#[") {
                reason |= above.contains("Long:");
                j -= 1;
            } else {
                break;
            }
        }
        out.push((name, i + 1, end + 1, reason));
    }
    out
}

#[test]
fn no_function_runs_over_80_lines_without_a_reason() {
    let mut long = Vec::new();
    for (module, text) in modules() {
        for (name, line, span, reason) in functions(before_tests(&text)) {
            if span > MAX_FN_LINES && !reason {
                long.push(format!("{module}::{name} (line {line}): {span} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these, or say why in their doc comment (`Long: ...`):\n  {}",
        long.join("\n  ")
    );
}
