//! One TLS handshake on an accepted connection: bounded, classified, counted, logged at debug.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::TlsStream;
use pingora::protocols::{Ssl, Stream};
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};

use super::ServerTls;
use crate::telemetry::ClientCert;

/// The access line's view of a verified client certificate.
fn client_cert(der: &[u8]) -> ClientCert {
    let subject = x509_parser::parse_x509_certificate(der)
        .map(|(_, x)| x.subject().to_string())
        .unwrap_or_default();
    let sha256 = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ClientCert { subject, sha256 }
}

/// How a handshake ended: the `result` label of `extoken_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// Not done within `limits.tls_handshake_timeout`.
    Timeout,
    /// The client closed or reset the connection (a port scan, a health check on TCP).
    Closed,
    /// No protocol version, cipher suite or ALPN protocol in common (TLS 1.0/1.1 clients).
    Incompatible,
    /// Not TLS, or TLS that breaks the protocol (plain HTTP sent to the TLS port).
    Malformed,
    /// The client sent an alert (it did not accept our certificate).
    Alert,
    /// No client certificate where one is required, or one that does not verify.
    ClientCertificate,
    Error,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Closed => "closed",
            Outcome::Incompatible => "incompatible",
            Outcome::Malformed => "malformed",
            Outcome::Alert => "alert",
            Outcome::ClientCertificate => "client_certificate",
            Outcome::Error => "error",
        }
    }
}

fn handshakes() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        let m = IntCounterVec::new(
            prometheus::Opts::new(
                "extoken_tls_handshakes_total",
                "TLS handshakes on the proxy listener, by result.",
            ),
            &["result"],
        )
        .expect("static metric definition");
        // Fresh name in a registry of our own: this only fails on a programming error.
        if let Err(e) = crate::metrics::metrics()
            .registry
            .register(Box::new(m.clone()))
        {
            tracing::error!(target: "extoken::tls", "metric not registered: {e}");
        }
        m
    })
}

/// What a failed handshake's error says about its cause. pingora keeps only the text of the IO
/// error (`explain_err`), so it is read from that: rustls's `Display` of its error, or the IO
/// error's. The unit test below formats each rustls error as pingora does, so a rustls upgrade
/// that rewords one fails there, not silently here.
fn classify(text: &str) -> Outcome {
    const RULES: [(&str, Outcome); 13] = [
        ("peer is incompatible", Outcome::Incompatible),
        ("doesn't support any known protocol", Outcome::Incompatible),
        ("received corrupt message", Outcome::Malformed),
        ("received unexpected", Outcome::Malformed),
        ("peer misbehaved", Outcome::Malformed),
        ("received fatal alert", Outcome::Alert),
        ("peer sent no certificates", Outcome::ClientCertificate),
        ("invalid peer certificate", Outcome::ClientCertificate),
        ("tls handshake eof", Outcome::Closed),
        ("Connection reset by peer", Outcome::Closed),
        ("Broken pipe", Outcome::Closed),
        ("Connection aborted", Outcome::Closed),
        ("unexpected end of file", Outcome::Closed),
    ];
    RULES
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map_or(Outcome::Error, |(_, o)| *o)
}

/// Counts and logs one handshake's end (debug: a failed handshake is the client's affair).
fn record(outcome: Outcome, peer: Option<&str>, detail: &str) {
    handshakes().with_label_values(&[outcome.as_str()]).inc();
    if outcome != Outcome::Ok {
        tracing::debug!(target: "extoken::tls", peer = peer.unwrap_or("-"), result = outcome.as_str(), "TLS handshake failed: {detail}");
    }
}

impl ServerTls {
    /// The TLS handshake on an accepted TCP connection, within `limit`: the TLS stream and the
    /// client's verified certificate, or `None` (counted and logged; the connection is dropped).
    pub(crate) async fn accept(
        &self,
        stream: Stream,
        limit: Duration,
    ) -> Option<(Stream, Option<Arc<ClientCert>>)> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(|a| a.to_string()));
        // The TCP listener hands out plain L4 streams; pingora's TLS stream wraps that type.
        let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
            record(Outcome::Error, peer.as_deref(), "not a TCP stream");
            return None;
        };
        let tls: TlsStream<L4Stream> =
            match tokio::time::timeout(limit, self.acceptor.tls_handshake(*l4)).await {
                Err(_) => {
                    record(Outcome::Timeout, peer.as_deref(), "deadline passed");
                    return None;
                }
                Ok(Err(e)) => {
                    let text = e.to_string();
                    record(classify(&text), peer.as_deref(), &text);
                    return None;
                }
                Ok(Ok(s)) => s,
            };
        record(Outcome::Ok, peer.as_deref(), "");
        let cert = tls
            .get_ssl()
            .and_then(|s| s.peer_certificate_der())
            .map(|der| Arc::new(client_cert(der)));
        Some((Box::new(tls), cert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A rustls error as pingora's handshake error shows it.
    fn as_pingora(r: rustls::Error) -> String {
        let io = io::Error::new(io::ErrorKind::InvalidData, r);
        format!("TLSHandshakeFailure context: TLS accept() failed: TLSHandshakeFailure context: tls connect error: {io}")
    }

    #[test]
    fn handshake_failures_have_their_reasons() {
        use rustls::Error as R;
        let cases = [
            (
                R::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered),
                Outcome::Incompatible,
            ),
            (R::NoApplicationProtocol, Outcome::Incompatible),
            (
                R::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                Outcome::Malformed,
            ),
            (
                R::InappropriateMessage {
                    expect_types: vec![],
                    got_type: rustls::ContentType::ApplicationData,
                },
                Outcome::Malformed,
            ),
            (
                R::AlertReceived(rustls::AlertDescription::UnknownCA),
                Outcome::Alert,
            ),
            (R::NoCertificatesPresented, Outcome::ClientCertificate),
            (
                R::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                Outcome::ClientCertificate,
            ),
            (R::General("x".into()), Outcome::Error),
        ];
        for (e, want) in cases {
            let text = as_pingora(e);
            assert_eq!(classify(&text), want, "{text}");
        }
        // tokio-rustls's own end of stream, and the kernel's resets.
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(classify(&eof.to_string()), Outcome::Closed);
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(classify(&reset.to_string()), Outcome::Closed);
    }
}
