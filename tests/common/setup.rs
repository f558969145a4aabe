//! The arrangement of the session tests ([`Setup`]): one gateway in front of one recording backend,
//! its keys served by a JWKS endpoint, with helpers that assert a token was refused (and nothing
//! reached the backend) or accepted (and forwarded with its external token).

use super::backend::Backend;
use super::config::{ConfigBuilder, RouteSpec};
use super::jwks::JwksServer;
use super::keys::{session_claims, TestKey};
use super::process::GatewayProcess;

/// One gateway in front of one backend, keys served by a JWKS endpoint.
pub struct Setup {
    pub project: &'static str,
    pub gw: GatewayProcess,
    pub backend: Backend,
    pub jwks: JwksServer,
    /// The first key of the served set: [`Setup::token`] signs with it.
    pub key: TestKey,
    /// The other keys of the served set, in the order given.
    pub others: Vec<TestKey>,
}

impl Setup {
    /// Serves `keys` and starts a gateway for `project` whose config is `config(base, upstream)`:
    /// `base` has the `descope:` block and the `ext` connector, `upstream` is the backend's URL.
    pub async fn start(
        project: &'static str,
        keys: Vec<TestKey>,
        config: impl FnOnce(ConfigBuilder, &str) -> ConfigBuilder,
    ) -> Setup {
        let backend = Backend::start().await;
        let refs: Vec<&TestKey> = keys.iter().collect();
        let jwks = JwksServer::start(&refs).await;
        let base = ConfigBuilder::new(project, &jwks.url()).ext_connector();
        let yaml = config(base, &backend.url()).to_yaml();
        let gw = GatewayProcess::start(&yaml).await;
        let mut keys = keys.into_iter();
        let key = keys.next().unwrap();
        gw.wait_keys("/", &key.probe_token()).await;
        Setup {
            project,
            gw,
            backend,
            jwks,
            key,
            others: keys.collect(),
        }
    }

    /// [`Setup::start`] with the one route `api` on `/` (connector `ext`).
    pub async fn root(project: &'static str, keys: Vec<TestKey>) -> Setup {
        Self::start(project, keys, |c, up| c.route(root_route(up))).await
    }

    /// A session token with this `externalToken`, signed with [`Setup::key`].
    pub fn token(&self, ext: &str) -> String {
        self.key.sign(&session_claims(self.project, Some(ext)))
    }

    /// Sends `token` as Bearer, expects the invalid_token 401 with `description`, and checks the
    /// backend saw nothing.
    pub async fn refused(&self, token: &str, description: &str) {
        let r = self.gw.get_bearer("/refused", token).await;
        r.assert_invalid_token(description);
        assert_eq!(
            self.backend.count(),
            0,
            "a refused request reached the backend"
        );
    }

    /// Sends `token` as Bearer and expects it forwarded with `Authorization: Bearer <ext>`.
    pub async fn accepted(&self, token: &str, ext: &str) {
        let r = self.gw.get_bearer("/accepted", token).await;
        assert_eq!((r.status, r.body.as_str()), (200, "backend ok"), "{r:?}");
        let seen = self.backend.take();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer {ext}").as_str())
        );
    }
}

/// The route `api` on `/` to `upstream`, connector `ext`.
pub fn root_route(upstream: &str) -> RouteSpec {
    RouteSpec::new("/", upstream).name("api").connector("ext")
}
