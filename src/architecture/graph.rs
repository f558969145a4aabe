//! The crate's files as a module tree, and what each file names, resolved to the module (file)
//! that defines it: `crate::`/`extoken::`, `super::`, `self::`, child modules, names brought in by
//! `use`, and re-exports (`pub use cache::TokenCache` in `exchange/mod.rs` makes
//! `crate::exchange::TokenCache` a name of `exchange/cache.rs`, not of `exchange/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::scan::{code_only, paths, Named};

/// A module's path from the crate root: `[]` is `lib.rs`, `["exchange", "cache"]` is
/// `exchange/cache.rs`; the binary (`main.rs`) is `["main"]`.
pub(super) type ModPath = Vec<String>;

/// One dependency: a file names something another module defines.
#[derive(Debug, Clone)]
pub(super) struct Edge {
    pub(super) from: ModPath,
    pub(super) to: ModPath,
    /// Where it was seen: the file and the path as written.
    pub(super) witness: String,
}

/// At one level of the tree (the children of one module), which child depends on which, each
/// with the first file-level edge seen for it.
pub(super) type Level = BTreeMap<String, BTreeMap<String, String>>;

/// Deepest a chain of `use`s and re-exports is followed.
const MAX_HOPS: usize = 8;

pub(super) struct Crate {
    files: BTreeMap<ModPath, Source>,
}

struct Source {
    file: String,
    names: Vec<Named>,
}

impl Crate {
    /// The sources under `src`, tests and this checker aside.
    pub(super) fn read(src: &Path) -> Crate {
        let mut found = Vec::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(src).expect("under src");
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    let text = std::fs::read_to_string(&path).expect("source is readable");
                    found.push((rel, text));
                }
            }
        }
        Crate::from_files(found)
    }

    /// `(path relative to src, text)` pairs; files of tests and of this checker are left out.
    pub(super) fn from_files(files: impl IntoIterator<Item = (String, String)>) -> Crate {
        let mut out = BTreeMap::new();
        for (rel, text) in files {
            if rel.contains("tests") || rel.starts_with("architecture") {
                continue;
            }
            let names = paths(&code_only(&text));
            out.insert(module_of(&rel), Source { file: rel, names });
        }
        Crate { files: out }
    }

    /// Every dependency between two files of which neither is inside the other: a parent and
    /// its children are one unit (a child uses its parent's items, the parent re-exports the
    /// child's), so only edges that leave a module's subtree are design.
    pub(super) fn edges(&self) -> Vec<Edge> {
        let mut out = Vec::new();
        for (from, src) in &self.files {
            for n in &src.names {
                let Some((to, _)) = self.resolve(from, &n.segments, 0) else {
                    continue;
                };
                if to.starts_with(from) || from.starts_with(&to) {
                    continue;
                }
                let witness = format!("{} names {}", src.file, n.segments.join("::"));
                out.push(Edge {
                    from: from.clone(),
                    to,
                    witness,
                });
            }
        }
        out
    }

    /// For each module with children, the graph among its children: an edge from any file in
    /// one child's subtree to any file in another's is an edge between the two children.
    pub(super) fn levels(&self) -> BTreeMap<ModPath, Level> {
        let mut levels: BTreeMap<ModPath, Level> = BTreeMap::new();
        for e in self.edges() {
            let common = e.from.iter().zip(&e.to).take_while(|(a, b)| a == b).count();
            let level = levels.entry(e.from[..common].to_vec()).or_default();
            level
                .entry(e.from[common].clone())
                .or_default()
                .entry(e.to[common].clone())
                .or_insert(e.witness);
        }
        levels
    }

    /// The module `segments` names from the file of `from`, and whether every segment was a
    /// module (so a re-export of it can be descended into); `None` for another crate's path or
    /// a local item.
    fn resolve(
        &self,
        from: &[String],
        segments: &[String],
        hops: usize,
    ) -> Option<(ModPath, bool)> {
        if hops > MAX_HOPS || segments.is_empty() {
            return None;
        }
        let first = segments[0].as_str();
        match first {
            "crate" | "extoken" => self.descend(Vec::new(), &segments[1..], hops),
            "self" => self.descend(from.to_vec(), &segments[1..], hops),
            "super" => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let base = from[..from.len().checked_sub(ups)?].to_vec();
                self.descend(base, &segments[ups..], hops)
            }
            _ if self.files.contains_key(&child(from, first)) => {
                self.descend(from.to_vec(), segments, hops)
            }
            _ => {
                let (base, whole) = self.imported(from, first, hops)?;
                if !whole {
                    return Some((base, false));
                }
                self.descend(base, &segments[1..], hops)
            }
        }
    }

    /// From module `cur`, down `rest` as far as modules (or re-exports of modules) go.
    fn descend(&self, mut cur: ModPath, rest: &[String], hops: usize) -> Option<(ModPath, bool)> {
        for (k, seg) in rest.iter().enumerate() {
            let next = child(&cur, seg);
            if self.files.contains_key(&next) {
                cur = next;
                continue;
            }
            return match self.imported(&cur, seg, hops) {
                Some((m, true)) => self.descend(m, &rest[k + 1..], hops + 1),
                Some((m, false)) => Some((m, false)),
                None => Some((cur, false)),
            };
        }
        Some((cur, true))
    }

    /// What `name` is in module `m`'s file when a `use` there brought it in.
    fn imported(&self, m: &[String], name: &str, hops: usize) -> Option<(ModPath, bool)> {
        let src = self.files.get(m)?;
        let import = src
            .names
            .iter()
            .find(|n| n.imported_as.as_deref() == Some(name) && n.segments[0] != name)?;
        self.resolve(m, &import.segments, hops + 1)
    }
}

fn child(m: &[String], name: &str) -> ModPath {
    let mut c = m.to_vec();
    c.push(name.to_string());
    c
}

/// `exchange/cache.rs` → `[exchange, cache]`; `exchange/mod.rs` → `[exchange]`; `lib.rs` → `[]`.
fn module_of(rel: &str) -> ModPath {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// A circle in `g`, if any, as the names along it (first = last).
pub(super) fn circle(g: &Level) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    for start in g.keys() {
        if let Some(c) = walk(g, &mut vec![start.clone()], &mut done) {
            return Some(c);
        }
    }
    None
}

/// Depth-first from the last node of `path`; `done` holds nodes known to lead to no circle.
fn walk(g: &Level, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
    let last = path.last().cloned().unwrap_or_default();
    if done.contains(&last) {
        return None;
    }
    for next in g.get(&last).into_iter().flat_map(BTreeMap::keys) {
        if let Some(i) = path.iter().position(|p| p == next) {
            let mut c = path[i..].to_vec();
            c.push(next.clone());
            return Some(c);
        }
        path.push(next.clone());
        if let Some(c) = walk(g, path, done) {
            return Some(c);
        }
        path.pop();
    }
    done.insert(last);
    None
}
