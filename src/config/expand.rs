//! `${VAR}` and `${VAR:-default}` expansion in config *values*.
//!
//! Expansion runs on the parsed YAML tree, not on the raw text, so a variable's content can never
//! change the document's structure (a secret containing `:` or a newline stays one string). A value
//! that is exactly one `${...}` is re-read as a YAML scalar, so `max_entries: ${MAX:-1000}` is a
//! number. Errors carry the key path of the value that referenced the missing variable.

use serde_yaml::Value;

/// Expands variables in every string of `v`; `lookup` resolves a variable name.
pub fn expand_tree(
    v: &mut Value,
    path: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match v {
        Value::String(s) => {
            if !s.contains("${") {
                return Ok(());
            }
            let whole = is_single_reference(s);
            let expanded = expand_str(s, lookup).map_err(|m| (path.clone(), m))?;
            *v = if whole {
                match serde_yaml::from_str::<Value>(&expanded) {
                    Ok(scalar @ (Value::Bool(_) | Value::Number(_))) => scalar,
                    _ => Value::String(expanded),
                }
            } else {
                Value::String(expanded)
            };
            Ok(())
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_tree(item, path, lookup)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(k) => path.push_str(k),
                    other => path.push_str(&format!("{other:?}")),
                }
                expand_tree(item, path, lookup)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, lookup),
        _ => Ok(()),
    }
}

fn is_single_reference(s: &str) -> bool {
    s.starts_with("${") && s.ends_with('}') && s[2..].find('}') == Some(s.len() - 3)
}

/// Expands `${VAR}`, `${VAR:-default}`; `$${` is a literal `${`.
pub fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
            continue;
        }
        let Some(body_and_more) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let end = body_and_more
            .find('}')
            .ok_or_else(|| "unterminated ${ in value".to_string())?;
        let body = &body_and_more[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name {name:?} in ${{...}}"));
        }
        match (
            lookup(name).filter(|v| !v.is_empty() || default.is_none()),
            default,
        ) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &body_and_more[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    #[test]
    fn strings() {
        assert_eq!(
            expand_str("http://${HOST}/x", &env).unwrap(),
            "http://example.com/x"
        );
        assert_eq!(expand_str("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${EMPTY:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand_str("a$b $${HOST}", &env).unwrap(), "a$b ${HOST}");
        assert!(expand_str("${NOPE}", &env).unwrap_err().contains("NOPE"));
        assert!(expand_str("${HOST", &env).is_err());
    }

    #[test]
    fn tree_keeps_structure_and_types() {
        let mut v: Value =
            serde_yaml::from_str("a: ${PORT}\nb: [x, 'p${PORT}']\nc: {d: '${HOST:-z}'}").unwrap();
        expand_tree(&mut v, &mut String::new(), &env).unwrap();
        assert_eq!(v["a"], Value::Number(8080.into()));
        assert_eq!(v["b"][1], Value::String("p8080".into()));
        assert_eq!(v["c"]["d"], Value::String("example.com".into()));
    }

    #[test]
    fn tree_error_names_key_path() {
        let mut v: Value = serde_yaml::from_str("routes:\n  - upstream: ${UP}\n").unwrap();
        let (path, msg) = expand_tree(&mut v, &mut String::new(), &env).unwrap_err();
        assert_eq!(path, "routes[0].upstream");
        assert!(msg.contains("UP"));
    }
}
