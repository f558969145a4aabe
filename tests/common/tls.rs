//! TLS for the tests, made at test time (nothing committed): a test CA that issues server and
//! client certificates ([`TestCa`], [`Leaf`]), a real rustls client ([`TlsClient`]) that speaks
//! HTTP/1.1 by hand over one connection ([`http_get`]), and an HTTPS backend with optional client
//! certificates ([`TlsBackend`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority of the test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM (for config files) and DER (for clients).
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }

    /// SHA-256 of the certificate, lower-case hex (as the access line prints it).
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str], cn: &str, eku: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "extoken tests");
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.issue(names, names[0], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        self.issue(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.issuer.der().clone()).unwrap();
        r
    }
}

/// A TLS client: whom it trusts, which versions it speaks, the certificate it shows.
pub struct TlsClient {
    pub roots: rustls::RootCertStore,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub client_cert: Option<Leaf>,
    pub alpn: Vec<Vec<u8>>,
}

impl TlsClient {
    pub fn trusting(ca: &TestCa) -> TlsClient {
        TlsClient {
            roots: ca.roots(),
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            client_cert: None,
            alpn: Vec::new(),
        }
    }

    pub fn only(mut self, v: &'static rustls::SupportedProtocolVersion) -> TlsClient {
        self.versions = vec![v];
        self
    }

    pub fn with_cert(mut self, leaf: &Leaf) -> TlsClient {
        self.client_cert = Some(leaf.clone());
        self
    }

    /// Connects to `addr` and completes a handshake for `sni`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&self.versions)
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let mut cfg = match &self.client_cert {
            Some(l) => b
                .with_client_auth_cert(vec![l.der.clone()], l.key_der())
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.clone();
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await?;
        // TLS 1.3: a server that refuses the client's certificate says so after the client's
        // handshake finished; one round trip brings that alert (or nothing) in.
        s.flush().await?;
        Ok(s)
    }
}

/// The leaf certificate the server presented on `s`.
pub fn server_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A whole HTTP/1.1 answer read off a connection.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` with `Host: host` on an open connection (kept alive), and its whole answer
/// (`Content-Length` bodies only).
pub async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> std::io::Result<RawReply> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                return Ok(RawReply { status, head, body });
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// An HTTPS backend on 127.0.0.1 with `cert`; with `client_ca`, it requires a client certificate
/// from that CA. Answers `200 tls backend ok`; records the common names of the client
/// certificates it was shown.
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub client_subjects: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    pub async fn start(cert: &Leaf, client_ca: Option<&TestCa>) -> TlsBackend {
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = match client_ca {
            Some(ca) => b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .unwrap(),
            ),
            None => b.with_no_client_auth(),
        };
        let cfg = b
            .with_single_cert(vec![cert.der.clone()], cert.key_der())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = super::bind(0).await;
        let addr = listener.local_addr().unwrap();
        let subjects = Arc::new(Mutex::new(Vec::new()));
        let seen = subjects.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(c) = s.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        let (_, x) = x509_parser::parse_x509_certificate(c.as_ref()).unwrap();
                        seen.lock().unwrap().push(x.subject().to_string());
                    }
                    serve_h1(&mut s).await;
                });
            }
        });
        TlsBackend {
            addr,
            client_subjects: subjects,
            task,
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers every request head on `s` with `200 tls backend ok` (bodyless requests only).
async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            got.drain(..end + 4);
            let body = "tls backend ok";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The ERROR lines of a gateway log, but for pingora's upstream-pool race ("failed to acquire
/// reusable stream": a pooled connection still held by its idle watcher, logged by pingora and
/// harmless, the request takes a new connection), which has nothing to do with TLS or HTTP/2.
pub fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") && !l.contains("failed to acquire reusable stream"))
        .collect()
}
