"""Helpers of test_tls_h2.py and test_tls_h2_differential.py: a test PKI made with
``cryptography``, a gateway with a TLS listener and ``h2c``, a recording backend that can be slow,
and a small HTTP/2 client on the PyPI ``h2`` state machine (any socket: plain or TLS).

The PKI is hand-made rather than trustme's because sslyze validates the chain with
``cryptography``'s strict RFC 5280 verifier (trustme's leaves have a critical subjectAltName beside
a non-empty subject, which it refuses) and checks Mozilla's certificate lifespan rule (< 366 days):
these leaves are what a public CA issues (CN + non-critical SAN, EKU, 90 days).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import Gateway, free_port, serve_http

# --------------------------------------------------------------------------- PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=days))


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def sha256(self) -> str:
        """Lower-case hex of the DER's SHA-256: the access line's ``client_cert_sha256``."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def write(self, d: Path, stem: str) -> tuple[Path, Path]:
        c, k = d / f"{stem}.pem", d / f"{stem}.key"
        c.write_bytes(self.cert_pem)
        k.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        return c, k


class CA:
    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        usage = x509.KeyUsage(digital_signature=False, content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False)
        b = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
             .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(usage, critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                            critical=False))
        self.cert = _validity(b, 365).sign(self.key, hashes.SHA256())

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, cn: str, sans: list[str], eku, rsa_bits: int | None = None) -> Issued:
        key = (rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits) if rsa_bits
               else ec.generate_private_key(ec.SECP256R1()))
        usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                              key_encipherment=bool(rsa_bits), data_encipherment=False,
                              key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(usage, critical=True)
             .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 self.key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]),
                                critical=False)
        return Issued(_validity(b, 90).sign(self.key, hashes.SHA256()), key)

    def server(self, *names: str, rsa_bits: int | None = None) -> Issued:
        """A server leaf for ``names`` (the first is the CN): ECDSA P-256, or RSA."""
        return self._issue(names[0], list(names), ExtendedKeyUsageOID.SERVER_AUTH, rsa_bits)

    def client(self, cn: str) -> Issued:
        return self._issue(cn, [], ExtendedKeyUsageOID.CLIENT_AUTH)


# --------------------------------------------------------------------------- recording backend

class Recorder:
    """A backend recording every request by its ``X-Probe-Case`` header (method, target, headers
    in order); a path under ``/slow`` answers after 1.5 s (to hold streams open)."""

    def __init__(self, name: str = "backend"):
        self.by_case: dict[str, list[dict]] = {}
        self.all: list[dict] = []
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                r = {"backend": name, "method": self.command, "target": self.path,
                     "headers": [(k.lower(), v) for k, v in self.headers.items()]}
                with rec.lock:
                    rec.all.append(r)
                    rec.by_case.setdefault(self.headers.get("x-probe-case", ""), []).append(r)
                if self.path.startswith("/slow"):
                    time.sleep(1.5)
                out = json.dumps({"backend": name, "target": self.path}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle

            def log_message(self, *a):
                pass

        self.server, self.url = serve_http(Handler)

    def last(self, path_prefix: str) -> dict | None:
        with self.lock:
            for r in reversed(self.all):
                if r["target"].startswith(path_prefix):
                    return r
        return None

    def count(self, path_prefix: str) -> int:
        with self.lock:
            return sum(1 for r in self.all if r["target"].startswith(path_prefix))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def header(record: dict, name: str) -> str | None:
    return next((v for k, v in record["headers"] if k == name), None)


# --------------------------------------------------------------------------- the gateway

class TlsGateway(Gateway):
    """``conftest.Gateway`` with a ``tls:`` block (port ``tls_port``) and ``h2c: true``."""

    def __init__(self, workdir: Path, config: dict, tls: dict):
        self.tls_port = free_port()
        super().__init__(workdir, {"h2c": True, "tls": {"listen": f"127.0.0.1:{self.tls_port}",
                                                        **tls}, **config})
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no TLS listener on {self.tls_port}:\n{self.logs()}")
                time.sleep(0.05)

    def full_log(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the admin /metrics (0 when absent: counters appear on first use)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics",
                                      timeout=5).read().decode()
        want = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


    def metric_reaches(self, name: str, labels: str, want: float, timeout: float = 3.0) -> float:
        """The sample once it is ``want`` (a handshake is counted as it ends, which may be a
        moment after the client gave up), or what it is at ``timeout``."""
        deadline = time.monotonic() + timeout
        while (got := self.metric(name, labels)) != want and time.monotonic() < deadline:
            time.sleep(0.05)
        return got


def client_tls(ca: CA, alpn: list[str], tmp: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(write_once(tmp / "client-trust.pem", ca.pem)))
    ctx.set_alpn_protocols(alpn)
    return ctx


def write_once(path: Path, data: bytes) -> Path:
    if not path.exists():
        path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- HTTP/2 client

@dataclass
class H2Answer:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: int | None = None  # RST_STREAM error code
    goaway: int | None = None  # the connection's GOAWAY error code, if it ended before an answer
    done: bool = False


class H2Client:
    """An HTTP/2 client connection over ``sock`` (plain, or TLS with ALPN h2) on the ``h2``
    state machine. ``validate=False`` lets it send what a well-behaved client would refuse to
    (a Host that disagrees with :authority, odd :path bytes)."""

    def __init__(self, sock: socket.socket, validate: bool = True):
        self.sock = sock
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        self.answers: dict[int, H2Answer] = {}
        self.goaway: int | None = None
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send(self, method: str, path: bytes | str, authority: str | None,
             headers: list[tuple[str, str]] = (), scheme: str = "http") -> int:
        sid = self.conn.get_next_available_stream_id()
        hs = [(b":method", method.encode()), (b":scheme", scheme.encode()),
              (b":path", path if isinstance(path, bytes) else path.encode("latin-1"))]
        if authority is not None:
            hs.append((b":authority", authority.encode("latin-1")))
        hs += [(k.encode(), v.encode("latin-1")) for k, v in headers]
        self.conn.send_headers(sid, hs, end_stream=True)
        self.answers[sid] = H2Answer()
        return sid

    def pump(self, until, timeout: float = 10.0) -> bool:
        """Reads and handles frames until ``until()`` holds, the connection ends or ``timeout``."""
        deadline = time.monotonic() + timeout
        self.flush()
        while not until() and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return False
            except (ConnectionResetError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self._end()
                break
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self._end()
                break
            for e in events:
                self._event(e)
            try:
                self.flush()
            except OSError:
                self._end()
        return until()

    def _end(self):
        self.closed = True
        for a in self.answers.values():
            if not a.done:
                a.goaway = self.goaway if self.goaway is not None else -1
                a.done = True

    def _event(self, e):
        a = self.answers.get(getattr(e, "stream_id", 0) or 0)
        if isinstance(e, h2.events.ResponseReceived) and a:
            hs = {k.decode(): v.decode("latin-1") for k, v in e.headers}
            a.status, a.headers = int(hs[":status"]), hs
        elif isinstance(e, h2.events.DataReceived) and a:
            a.body += e.data
            self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.StreamEnded) and a:
            a.done = True
        elif isinstance(e, h2.events.StreamReset) and a:
            a.reset, a.done = int(e.error_code), True
        elif isinstance(e, h2.events.ConnectionTerminated):
            self.goaway = int(e.error_code)
            for sid, x in self.answers.items():
                if sid > e.last_stream_id and not x.done:
                    x.goaway, x.done = self.goaway, True

    def request(self, method: str, path: str, authority: str | None,
                headers: list[tuple[str, str]] = (), scheme: str = "http") -> H2Answer:
        sid = self.send(method, path, authority, headers, scheme)
        self.pump(lambda: self.answers[sid].done)
        return self.answers[sid]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def h2c(port: int, validate: bool = True) -> H2Client:
    return H2Client(socket.create_connection(("127.0.0.1", port), timeout=10), validate)


def h2_tls(port: int, ctx: ssl.SSLContext, sni: str, validate: bool = True) -> H2Client:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname=sni)
    assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
    return H2Client(s, validate)


def access_lines(log: str, path: str) -> list[str]:
    """The gateway's access lines for ``path`` (``path=<path>`` in the logfmt line)."""
    return [ln for ln in log.splitlines() if re.search(rf"\bpath=\"?{re.escape(path)}[\" ]", ln)]
