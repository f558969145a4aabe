//! PEM files of the TLS settings: certificate chains, private keys, CA bundles. Every error names
//! the config key the file was given under (`tls.certificates[0].key_file: ...`).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

/// Largest PEM file read (a certificate bundle of a few hundred CAs is well under it).
const MAX_PEM_BYTES: u64 = 4 << 20;

/// Reads `path` (given under `key`), at most [`MAX_PEM_BYTES`].
fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let err = |m: String| ConfigError::key(key, format!("{}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// The certificates of a PEM file, in file order (at least one, each a parseable X.509
/// certificate: pingora's own parsing of a peer's certificates panics on one that is not).
pub(crate) fn certificates(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read(key, path)?;
    let err = |m: String| ConfigError::key(key, format!("{}: {m}", path.display()));
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(err("holds no certificate".into()));
    }
    for (i, c) in certs.iter().enumerate() {
        if x509_parser::parse_x509_certificate(c.as_ref()).is_err() {
            return Err(err(format!("certificate #{} is not valid X.509", i + 1)));
        }
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read(key, path)?;
    // The parser's error may quote the file; a key file's content never goes into a message.
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| ConfigError::key(key, format!("{}: holds no PEM private key", path.display())))
}

/// A root store of the CA certificates in `path`.
pub(crate) fn roots(key: &str, path: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certificates(key, path)?.into_iter().enumerate() {
        store.add(c).map_err(|e| {
            let m = format!("{}: CA #{} not usable: {e}", path.display(), i + 1);
            ConfigError::key(key, m)
        })?;
    }
    Ok(store)
}

/// The DNS names a certificate is for: its subjectAltName DNS entries, else its common name
/// (lower-cased; `*.example.com` kept as written).
pub(crate) fn names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match x.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            x.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}
