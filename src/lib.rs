//! extoken: an edge gateway that accepts a Descope session and forwards the request to a legacy
//! backend with the token that backend already understands.
//!
//! The modules follow a request's path:
//! [`extract`] (find the session token) → [`verify`] (JWKS, claims) → [`exchange`] (the external
//! token, from a connector) → [`rewrite`] (headers for the backend) → [`proxy`] (pingora phases,
//! forward). [`route`] picks the route, [`answer`] builds the refusals, [`gateway`] holds the
//! runtime built from [`config`], [`server`] assembles the pingora server; [`admin`], [`metrics`],
//! [`telemetry`] and [`lifecycle`] are the operations side (probes, metrics, logs, reload, shutdown). [`mint`] and [`demo`]
//! serve the developer commands.

pub(crate) mod admin;
pub mod answer;
pub mod authorize;
pub(crate) mod bounded;
pub mod clock;
pub mod config;
pub(crate) mod decision;
pub mod demo;
pub(crate) mod dns;
pub(crate) mod drain;
pub mod exchange;
pub mod extract;
pub mod gateway;
pub mod lifecycle;
pub(crate) mod listener;
pub(crate) mod metrics;
pub mod mint;
pub mod proxy;
pub(crate) mod refresh;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod verify;
pub(crate) mod websocket;

#[cfg(test)]
mod architecture;
