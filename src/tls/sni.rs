//! Which certificate a handshake gets: the one whose names match the client's SNI (an exact
//! name first, then a `*.` wildcard for one label), else the first configured.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One configured certificate and the names it serves.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) names: Vec<String>,
    pub(crate) key: Arc<CertifiedKey>,
}

/// The certificates of the TLS listener, fixed for one built config (a reload builds a new
/// resolver with the files as they are then).
#[derive(Debug)]
pub(crate) struct SniResolver {
    /// Never empty; the first is the default.
    entries: Vec<Entry>,
}

impl SniResolver {
    /// `None` when `entries` is empty.
    pub(crate) fn new(entries: Vec<Entry>) -> Option<SniResolver> {
        (!entries.is_empty()).then_some(SniResolver { entries })
    }

    /// The certificate for `sni`.
    pub(crate) fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let found = sni.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let exact = self.entries.iter().find(|e| e.names.contains(&name));
            exact.or_else(|| {
                // `*.example.com` covers `a.example.com`, not `example.com` nor `a.b.example.com`.
                let (_, parent) = name.split_once('.')?;
                self.entries
                    .iter()
                    .find(|e| e.names.iter().any(|n| n.strip_prefix("*.") == Some(parent)))
            })
        });
        // `entries` is never empty (see `new`).
        &found.unwrap_or(&self.entries[0]).key
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}
