//! A test of the module graph: dependencies point one way (docs/architecture.md). It reads the
//! sources, so a `use` that closes a circle fails `cargo test`, not a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its code (tests and comments aside) names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs").to_string())
                .unwrap_or_default();
            let is_test_file = rel.to_string_lossy().contains("tests");
            if path.extension().is_none_or(|e| e != "rs")
                || matches!(top.as_str(), "lib" | "architecture")
                || is_test_file
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source is readable");
            let deps = g.entry(top.clone()).or_default();
            for dep in referenced_modules(&code_only(&text)) {
                if dep != top {
                    deps.insert(dep);
                }
            }
        }
    }
    g
}

/// The text before `#[cfg(test)]`, without comments and string literals.
fn code_only(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    out
}

/// `crate::x` and `crate::{x, y::z}` and `extoken::x` references.
fn referenced_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for prefix in ["crate::", "extoken::"] {
        for (i, _) in code.match_indices(prefix) {
            let rest = &code[i + prefix.len()..];
            if let Some(list) = rest.strip_prefix('{') {
                let list = &list[..list.find('}').unwrap_or(list.len())];
                for item in list.split(',') {
                    let name = item.trim().split("::").next().unwrap_or("");
                    found.insert(name.to_string());
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.insert(name);
            }
        }
    }
    found.retain(|n| !n.is_empty() && n != "self");
    found
}

/// A circle through `from`, if any (depth-first).
fn circle(g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>) -> Option<Vec<String>> {
    let last = path.last().cloned().unwrap_or_default();
    for next in g.get(&last).into_iter().flatten() {
        if let Some(i) = path.iter().position(|p| p == next) {
            let mut c = path[i..].to_vec();
            c.push(next.clone());
            return Some(c);
        }
        path.push(next.clone());
        if let Some(c) = circle(g, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}

#[test]
fn dependencies_point_one_way() {
    let g = graph();
    assert!(g.len() > 10, "modules found: {g:?}");
    for start in g.keys() {
        if let Some(c) = circle(&g, &mut vec![start.clone()]) {
            panic!("module circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn config_and_the_leaves_depend_on_no_stage() {
    let g = graph();
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("config", &["target"][..]),
        ("target", &[][..]),
        ("clock", &[][..]),
        ("drain", &[][..]),
        ("metrics", &[][..]),
        ("extract", &[][..]),
        ("telemetry", &["config", "metrics"][..]),
    ]);
    for (module, ok) in allowed {
        let deps = g.get(module).cloned().unwrap_or_default();
        let extra: Vec<_> = deps.iter().filter(|d| !ok.contains(&d.as_str())).collect();
        assert!(extra.is_empty(), "{module} depends on {extra:?}");
    }
}

#[test]
fn the_scanner_sees_through_comments_and_strings() {
    let code = code_only("use crate::{a, b::c};\n// crate::x\nlet s = \"crate::y\";\ncrate::d::f();\n#[cfg(test)]\ncrate::t");
    let found: Vec<_> = referenced_modules(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "d"]);
    let g = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert!(circle(&g, &mut vec!["a".into()]).is_some());
}
