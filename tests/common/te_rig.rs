//! The rig of the `token_exchange` connector tests (`tests/token_exchange*.rs`): a Descope
//! project, the strict RFC 8693 server ([`Sts`]) with three registered clients, a recording
//! backend, and a gateway with one `token_exchange` connector per route ([`TeRig`]).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::backend::Backend;
use super::config::RouteSpec;
use super::endpoint::{Project, CONNECTOR_PROJECT};
use super::net::now;
use super::process::{GatewayProcess, Launch};
use super::sts::{ClientCred, Sts, StsSetup};

pub const AUDIENCE: &str = "legacy-api";
pub const RESOURCE: &str = "https://legacy.example.com/api";
pub const SCOPES: [&str; 2] = ["orders.read", "orders.write"];
pub const BASIC_SECRET: &str = "b4sic secret&=";
pub const POST_SECRET: &str = "p0st-secret";

/// Project + STS + backend + gateway. Routes: `/basic`, `/post`, `/jwt` (one connector per client
/// authentication), `/chain` (exchanges the `/basic` connector's token again), `/claim-chain`
/// (exchanges the session's `externalToken` claim), `/per-user` and `/per-user-amr` (like `/basic`,
/// opted in to per-user reuse with `cache_key: [sub, dct, roles, tenants]` and `[sub, amr]`).
pub struct TeRig {
    pub project: Project,
    pub sts: Sts,
    pub backend: Backend,
    pub gw: GatewayProcess,
}

/// A token_exchange connector with the exchange parameters the STS expects.
pub fn te_connector(client_auth: Value) -> Value {
    json!({
        "type": "token_exchange",
        "client_auth": client_auth,
        "audience": AUDIENCE,
        "resource": [RESOURCE],
        "scope": SCOPES,
        "timeout": "1s",
    })
}

pub async fn te_rig() -> TeRig {
    let project = Project::start().await;
    let backend = Backend::start().await;
    let pem = extoken::mint::generate_pem().unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256)
        .unwrap();
    let mut jwk = serde_json::to_value(jwk).unwrap();
    jwk["kid"] = "client-key-1".into();
    let sts = Sts::start(StsSetup {
        clients: HashMap::from([
            ("gw-basic".into(), ClientCred::Basic(BASIC_SECRET.into())),
            ("gw-post".into(), ClientCred::Post(POST_SECRET.into())),
            ("gw-jwt".into(), ClientCred::PrivateKeyJwt(jwk)),
        ]),
        jwks_url: Some(project.jwks.url()),
        project: CONNECTOR_PROJECT.into(),
        audience: vec![AUDIENCE.into()],
        resource: vec![RESOURCE.into()],
        scope: Some(SCOPES.join(" ")),
        refused_users: ["U2mallory".to_string()].into(),
        required_amr: None,
        expires_in: 600,
    })
    .await;
    let with_url = |mut c: Value| {
        c["token_url"] = sts.url().into();
        c
    };
    let basic =
        json!({"client_secret_basic": {"client_id": "gw-basic", "client_secret": BASIC_SECRET}});
    let mut chain = with_url(te_connector(basic.clone()));
    chain["subject"] = json!({"external_token": "basic"});
    let mut claim_chain = with_url(te_connector(basic.clone()));
    claim_chain["subject"] = json!({"external_token": "ext"});
    let mut per_user = with_url(te_connector(basic.clone()));
    per_user["cache_key"] = json!(["sub", "dct", "roles", "tenants"]);
    let mut per_user_amr = with_url(te_connector(basic.clone()));
    per_user_amr["cache_key"] = json!(["sub", "amr"]);
    let route = |p: &str, c: &str| RouteSpec::new(p, &backend.url()).name(c).connector(c);
    let config = project
        .config()
        .ext_connector()
        .connector("basic", with_url(te_connector(basic)))
        .connector(
            "post",
            with_url(te_connector(json!({"client_secret_post": {"client_id": "gw-post", "client_secret": POST_SECRET}}))),
        )
        .connector(
            "jwt",
            with_url(te_connector(json!({"private_key_jwt": {"client_id": "gw-jwt", "key_file": "client.pem", "kid": "client-key-1"}}))),
        )
        .connector("chain", chain)
        .connector("claim_chain", claim_chain)
        .connector("per_user", per_user)
        .connector("per_user_amr", per_user_amr)
        .set("cache", json!({"negative_ttl": "1s"}))
        .route(route("/basic", "basic"))
        .route(route("/post", "post"))
        .route(route("/jwt", "jwt"))
        .route(route("/chain", "chain"))
        .route(route("/claim-chain", "claim_chain"))
        .route(route("/per-user-amr", "per_user_amr"))
        .route(route("/per-user", "per_user"));
    let files = [("client.pem", pem.as_str())];
    let how = Launch {
        files: &files,
        admin: true,
        ..Launch::default()
    };
    let gw = project.gateway(&config, how).await;
    TeRig {
        project,
        sts,
        backend,
        gw,
    }
}

impl TeRig {
    /// A session for `user` with `extra` claims, issued `age` seconds ago (so two sessions with
    /// the same claims but another age are two different JWTs, as after a refresh).
    pub fn session(&self, user: &str, age: u64, extra: &[(&str, Value)]) -> String {
        let mut all = vec![("iat", json!(now() - age))];
        all.extend(extra.iter().cloned());
        self.project.session(user, &all)
    }

    /// Nothing secret of the exchange is in the gateway's log.
    pub fn assert_log_clean(&self, secrets: &[&str]) {
        let log = self.gw.log();
        for s in secrets.iter().chain([&BASIC_SECRET, &POST_SECRET]) {
            assert!(!log.contains(s), "{s} is in the log:\n{log}");
        }
    }
}
