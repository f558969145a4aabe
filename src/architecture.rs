//! A test of the module graph: dependencies point one way (docs/architecture.md). It reads the
//! sources, so a `use` that closes a circle fails `cargo test`, not a review.
//!
//! Every `.rs` file is a node; each names other files' items (`crate::`, `super::`, `self::`,
//! child modules, `use`d names, re-exports followed to the file that defines the item). A module's
//! own file and its children are one unit, so the check is made at every level of the module
//! tree: among the children of each module (the top-level modules of the crate, the files of
//! `exchange/`, those of `exchange/shared/`, ...), an edge from anything inside one child to
//! anything inside another is an edge between the two, and there must be no circle. That also
//! rules out any circle of files where no file is inside another.

mod graph;
mod scan;

use std::collections::BTreeMap;
use std::path::Path;

use graph::{circle, Crate, Level};

fn the_crate() -> Crate {
    Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// Every circle, one per level that has one, with the file-level edges that make it.
fn circles(levels: &BTreeMap<Vec<String>, Level>) -> Vec<String> {
    let mut found = Vec::new();
    for (parent, level) in levels {
        let Some(c) = circle(level) else { continue };
        let how: Vec<&str> = c.windows(2).map(|w| level[&w[0]][&w[1]].as_str()).collect();
        let inside = if parent.is_empty() {
            "crate".to_string()
        } else {
            parent.join("::")
        };
        found.push(format!(
            "in {inside}: {} ({})",
            c.join(" -> "),
            how.join("; ")
        ));
    }
    found
}

#[test]
fn dependencies_point_one_way() {
    let levels = the_crate().levels();
    assert!(levels[&Vec::new()].len() > 10, "modules found: {levels:?}");
    assert!(
        levels.contains_key(&vec!["exchange".to_string()]),
        "{levels:?}"
    );
    let found = circles(&levels);
    assert!(found.is_empty(), "circles:\n{}", found.join("\n"));
}

#[test]
fn config_and_the_leaves_depend_on_no_stage() {
    let levels = the_crate().levels();
    let top = &levels[&Vec::new()];
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
        let deps = top.get(module).cloned().unwrap_or_default();
        let extra: Vec<_> = deps
            .iter()
            .filter(|(d, _)| !ok.contains(&d.as_str()))
            .collect();
        assert!(extra.is_empty(), "{module} depends on {extra:?}");
    }
}

#[test]
fn the_scanner_sees_through_comments_and_literals() {
    let code = scan::code_only(
        "use crate::{a, b::{c, self}};\n// crate::x\n/* crate::y /* nested */ crate::z */\n\
         let s = \"crate::y\"; let r = r#\"crate::r\"#; let q = '\"'; crate::d::f();\n\
         fn g<'a>(x: &'a str) { crate::e::h() }\n#[cfg(test)]\ncrate::t::u",
    );
    let found: Vec<String> = scan::paths(&code)
        .into_iter()
        .map(|n| n.segments.join("::"))
        .collect();
    assert_eq!(
        found,
        [
            "crate::a",
            "crate::b::c",
            "crate::b",
            "crate::d::f",
            "crate::e::h"
        ]
    );
}

fn synthetic(files: &[(&str, &str)]) -> BTreeMap<Vec<String>, Level> {
    Crate::from_files(files.iter().map(|(p, t)| (p.to_string(), t.to_string()))).levels()
}

#[test]
fn a_circle_of_sibling_files_fails() {
    // exchange/cache.rs and exchange/shared.rs name each other (one through its child, one
    // through a re-export of the parent): the circle the check exists for.
    let files = [
        ("lib.rs", "mod exchange;"),
        (
            "exchange/mod.rs",
            "mod cache; mod shared; pub use cache::CacheKey;",
        ),
        (
            "exchange/cache.rs",
            "mod fill; use super::shared::SharedCache; pub struct CacheKey;",
        ),
        ("exchange/cache/fill.rs", "use super::CacheKey;"),
        ("exchange/shared.rs", "mod lock; pub struct SharedCache;"),
        ("exchange/shared/lock.rs", "use crate::exchange::CacheKey;"),
    ];
    let found = circles(&synthetic(&files));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("in exchange: cache -> shared -> cache"),
        "{found:?}"
    );
    assert!(
        found[0].contains("exchange/shared/lock.rs names crate::exchange::CacheKey"),
        "{found:?}"
    );

    // With the key in a third file both use, the circle is gone; a child using its parent and
    // the parent re-exporting its child is no circle.
    let files = [
        ("lib.rs", "mod exchange;"),
        (
            "exchange/mod.rs",
            "mod cache; mod key; mod shared; pub use key::CacheKey;",
        ),
        ("exchange/key.rs", "pub struct CacheKey;"),
        (
            "exchange/cache.rs",
            "mod fill; use super::shared::SharedCache; use super::key::CacheKey;",
        ),
        ("exchange/cache/fill.rs", "use super::CacheKey;"),
        ("exchange/shared.rs", "mod lock; pub struct SharedCache;"),
        ("exchange/shared/lock.rs", "use crate::exchange::CacheKey;"),
    ];
    let levels = synthetic(&files);
    assert_eq!(circles(&levels), Vec::<String>::new());
    let exchange = &levels[&vec!["exchange".to_string()]];
    assert!(exchange["shared"].contains_key("key"), "{exchange:?}");
    assert!(exchange["cache"].contains_key("shared"), "{exchange:?}");
}

#[test]
fn a_circle_between_top_level_modules_fails() {
    let files = [
        ("lib.rs", "mod a; mod b; mod c;"),
        ("a.rs", "use crate::b::B; pub struct A;"),
        ("b.rs", "pub struct B; fn f() { super::c::g() }"),
        ("c.rs", "pub fn g() { let _ = crate::a::A; }"),
        ("main.rs", "use extoken::a::A;"),
    ];
    let found = circles(&synthetic(&files));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("in crate: a -> b -> c -> a"),
        "{found:?}"
    );
}
