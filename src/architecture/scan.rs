//! Reading one source file: its code without comments and literals, and the paths it names
//! (`crate::a::b`, `super::{c, d::E}`, `self::f`, `child::G`), `use` trees expanded.

/// One path the code names, and whether a `use` declaration imports it (and under which name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Named {
    pub(super) segments: Vec<String>,
    /// `Some(name)` for a path a `use` brings into scope: the last segment, or its `as` alias.
    pub(super) imported_as: Option<String>,
}

/// The code before `#[cfg(test)]` (test modules may name anything), without comments, and with
/// every string, byte-string, raw-string and char literal emptied (so `"crate::x"` names nothing).
pub(super) fn code_only(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        match b[i] {
            '/' if next == Some('/') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => i = skip_block_comment(&b, i),
            'r' | 'b' if starts_raw_string(&b, i) => {
                i = skip_raw_string(&b, i);
                out.push_str("\"\"");
            }
            '"' => {
                i = skip_string(&b, i);
                out.push_str("\"\"");
            }
            '\'' if is_char_literal(&b, i) => {
                i = skip_char_literal(&b, i);
                out.push_str("' '");
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn skip_block_comment(b: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i] == '/' && b.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// `r"`, `r#"`, `br"`, `br#"` not inside an identifier (`for"` is not a raw string).
fn starts_raw_string(b: &[char], i: usize) -> bool {
    if i > 0 && is_ident(b[i - 1]) {
        return false;
    }
    let mut j = i + usize::from(b[i] == 'b');
    if b.get(j) != Some(&'r') {
        return false;
    }
    j += 1;
    while b.get(j) == Some(&'#') {
        j += 1;
    }
    b.get(j) == Some(&'"')
}

fn skip_raw_string(b: &[char], i: usize) -> usize {
    let mut j = i;
    while b[j] != '#' && b[j] != '"' {
        j += 1;
    }
    let mut hashes = 0;
    while b[j] == '#' {
        hashes += 1;
        j += 1;
    }
    j += 1; // the opening quote
    while j < b.len() {
        if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
            return j + 1 + hashes;
        }
        j += 1;
    }
    j
}

/// From the opening quote to past the closing one (escapes skipped).
fn skip_string(b: &[char], mut i: usize) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// `'x'` or `'\n'` (a char literal), not `'a` (a lifetime).
fn is_char_literal(b: &[char], i: usize) -> bool {
    match b.get(i + 1) {
        Some('\\') => true,
        Some(_) => b.get(i + 2) == Some(&'\''),
        None => false,
    }
}

fn skip_char_literal(b: &[char], i: usize) -> usize {
    let mut j = i + 1;
    if b[j] == '\\' {
        j += 2;
    }
    while j < b.len() && b[j] != '\'' {
        j += 1;
    }
    j + 1
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path of two segments or more in `code` (from [`code_only`]), `use` trees expanded.
pub(super) fn paths(code: &str) -> Vec<Named> {
    let b: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut after_use = false;
    let mut i = 0;
    while i < b.len() {
        let starts_path = (b[i].is_ascii_alphabetic() || b[i] == '_')
            && (i == 0 || !is_ident(b[i - 1]))
            && !(i >= 2 && b[i - 2] == ':' && b[i - 1] == ':');
        if !starts_path {
            if !b[i].is_whitespace() {
                after_use = false;
            }
            i += 1;
            continue;
        }
        let (found, end) = tree(&b, i);
        let is_use = found.len() == 1 && found[0].segments == ["use"];
        for mut n in found {
            if !after_use {
                n.imported_as = None;
            }
            if n.segments.len() > 1 {
                out.push(n);
            }
        }
        after_use = is_use;
        i = end.max(i + 1);
    }
    out
}

fn skip_ws(b: &[char], mut i: usize) -> usize {
    while i < b.len() && b[i].is_whitespace() {
        i += 1;
    }
    i
}

fn word(b: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    (b[start..i].iter().collect(), i)
}

/// The path starting at `i` (`a::b::{c, d::{self, E as F}, *}`), expanded into whole paths, and
/// where it ends. `self` in a group names the group's prefix; a glob names nothing more.
fn tree(b: &[char], mut i: usize) -> (Vec<Named>, usize) {
    let mut prefix: Vec<String> = Vec::new();
    loop {
        i = skip_ws(b, i);
        if b.get(i) == Some(&'{') {
            return group(b, i + 1, &prefix);
        }
        let (w, end) = word(b, i);
        if w.is_empty() {
            let end = if b.get(i) == Some(&'*') { i + 1 } else { i };
            return (vec![named(prefix, None)], end);
        }
        prefix.push(w);
        let j = skip_ws(b, end);
        if b.get(j) == Some(&':') && b.get(j + 1) == Some(&':') {
            i = j + 2;
            continue;
        }
        let (alias, end) = alias(b, end);
        return (vec![named(prefix, alias)], end);
    }
}

/// The items of a `{...}` group, each behind `prefix`; `i` is just past the `{`.
fn group(b: &[char], mut i: usize, prefix: &[String]) -> (Vec<Named>, usize) {
    let mut all = Vec::new();
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            None => return (all, i),
            Some('}') => return (all, i + 1),
            Some(',') => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let (subs, end) = tree(b, i);
        for s in subs {
            // `{self}` names the group's prefix itself.
            let is_self = s.segments == ["self"];
            let inner = s.segments.into_iter().filter(|x| !is_self || x != "self");
            let whole: Vec<String> = prefix.iter().cloned().chain(inner).collect();
            all.push(named(whole, s.imported_as.filter(|_| !is_self)));
        }
        i = end.max(i + 1);
    }
}

/// ` as Name` after a path, if there.
fn alias(b: &[char], end: usize) -> (Option<String>, usize) {
    let j = skip_ws(b, end);
    let (w, after) = word(b, j);
    if w != "as" {
        return (None, end);
    }
    let (name, after) = word(b, skip_ws(b, after));
    (Some(name), after)
}

fn named(segments: Vec<String>, alias: Option<String>) -> Named {
    let imported_as = alias.or_else(|| segments.last().cloned());
    Named {
        segments,
        imported_as,
    }
}
