//! Shared harness of the integration tests: real servers on 127.0.0.1, no mocks. Each
//! `tests/*.rs` is its own crate and compiles this module on its own, using a part of it.
//!
//! - [`net`]: free ports, polling with a bound, a tiny hyper server.
//! - [`jwks`]: the Descope JWKS endpoint ([`JwksServer`], [`JwksMode`]).
//! - [`backend`]: the recording upstream ([`Backend`], [`Recorded`]).
//! - [`process`]: the real `extoken` binary ([`GatewayProcess`], [`Launch`], [`Reply`]).
//! - [`keys`]: test keys, key sets and session claims ([`TestKey`], [`session_claims`]).
//! - [`config`]: gateway configs as data ([`ConfigBuilder`], [`RouteSpec`]).
//! - [`setup`]: one gateway, one backend, one key set, for the session tests ([`Setup`]).
//! - [`endpoint`]: minting-connector rigs ([`Project`], [`TokenEndpoint`], [`Rig`]).
//! - [`sts`]: a strict RFC 8693 token exchange server ([`Sts`]) for the `token_exchange` connector.
//! - [`refresh`]: Descope's session refresh endpoint ([`RefreshEndpoint`]).
//! - [`te_rig`]: that server, a backend and a gateway with `token_exchange` connectors ([`TeRig`]).
//! - [`h2frames`]: an HTTP/2 client and raw frames ([`h2_client`], [`frame`], [`read_frame`]).
//! - [`collector`]: an OTLP/HTTP trace receiver ([`Collector`], [`SpanRec`]).
//! - [`trace_rig`]: that receiver with a project, a backend and a connector endpoint ([`TraceRig`]).
//! - [`tls`]: test CAs and certificates, a rustls client, an HTTPS backend ([`TestCa`], [`TlsClient`], [`TlsBackend`]).

// Each `tests/*.rs` is a crate of its own that compiles this whole harness and uses a part of it
// (cli.rs starts no JWKS server, only the connector tests use `endpoint`, only the session tests
// `setup`, ...); what one crate leaves unused, another uses. Every module below but `net` (which
// everything is built on) is partly unused in some crate, hence `dead_code` allowed per module and
// `unused_imports` on the re-exports, here and nowhere else.
#[allow(dead_code)]
mod backend;
#[allow(dead_code)]
mod collector;
#[allow(dead_code)]
mod config;
#[allow(dead_code)]
mod endpoint;
#[allow(dead_code)]
mod h2frames;
#[allow(dead_code)]
mod jwks;
#[allow(dead_code)]
mod keys;
mod net;
#[allow(dead_code)]
mod process;
#[allow(dead_code)]
mod refresh;
#[allow(dead_code)]
mod setup;
#[allow(dead_code)]
mod sts;
#[allow(dead_code)]
mod te_rig;
#[allow(dead_code)]
mod tls;
#[allow(dead_code)]
mod trace_rig;

#[allow(unused_imports)]
pub use {
    backend::*, collector::*, config::*, endpoint::*, h2frames::*, jwks::*, keys::*, net::*,
    process::*, refresh::*, setup::*, sts::*, te_rig::*, tls::*, trace_rig::*,
};

use std::path::{Path, PathBuf};

/// Path of a fixture under `tests/fixtures/` (used by descope_fixtures.rs only).
#[allow(dead_code)]
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A fixture's text, trimmed.
#[allow(dead_code)]
pub fn read_fixture(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel))
        .unwrap()
        .trim()
        .to_string()
}
