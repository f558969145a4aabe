//! Gateway config snippets, as YAML text.

/// The `descope:` block for a project whose keys come from `jwks_url`, plus `extra` lines
/// (each `key: value`, indented by this function).
pub fn descope_block(project: &str, jwks_url: &str, extra: &[&str]) -> String {
    let mut s = format!("descope:\n  project_id: \"{project}\"\n  jwks_url: \"{jwks_url}\"\n");
    for e in extra {
        s.push_str(&format!("  {e}\n"));
    }
    s
}

/// The usual `connectors:` block: `ext`, a `claim` connector on `externalToken`.
pub const CONNECTORS: &str = "connectors:\n  ext:\n    type: claim\n    claim: externalToken\n";

/// A whole config: project, keys at `jwks_url`, one `auth: required` route `/` to `upstream`.
pub fn simple_config(project: &str, jwks_url: &str, upstream: &str) -> String {
    format!(
        "{}{CONNECTORS}routes:\n  - name: api\n    path_prefix: /\n    upstream: \"{upstream}\"\n    connector: ext\n",
        descope_block(project, jwks_url, &[])
    )
}
