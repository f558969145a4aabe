"""Shared harness of the interop suite.

Starts real processes on 127.0.0.1 only: the extoken gateway (``extoken run``), a recording legacy
backend (``http.server`` in a thread), and uses ``extoken mint`` for Descope session tokens. The
PostgreSQL cluster and the Firebase Auth emulator are started by ``run.sh`` and passed in through
``INTEROP_PG_DSN`` / ``INTEROP_FIREBASE_AUTH_PORT``; tests that need them skip when they are absent
(i.e. when pytest is run by hand without ``run.sh``).
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import signal
import sys

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXTOKEN_BIN = Path(os.environ.get("EXTOKEN_BIN") or ROOT / "target" / "debug" / "extoken")
PROJECT_ID = "P2InteropProject0000000000"

# The contract's fixed facts (docs/connectors-contract.md).
DEFAULT_UUID_NAMESPACE = uuid.UUID("dbd8928c-bb64-505a-830f-43f6b6e8fabd")
FIREBASE_CUSTOM_TOKEN_AUD = (
    "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit"
)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent():
    """In the child before exec: get SIGTERM when pytest dies, so no gateway outlives the run."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_case_log(path: Path) -> dict[str, list[str]]:
    """Case id -> the lines a server logged for it (each line starts with the case id)."""
    seen: dict[str, list[str]] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            case_id, _, rest = line.partition(" ")
            seen.setdefault(case_id, []).append(rest)
    return seen


def stop_process(proc: subprocess.Popen, log, grace: float, ask=None) -> None:
    """Asks the process to end (``ask(proc)``, by default SIGTERM), then SIGKILL after `grace`
    seconds; closes the process's log file."""
    if proc.poll() is None:
        if ask is None:
            proc.send_signal(signal.SIGTERM)
        else:
            ask(proc)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    log.close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified(token: str) -> tuple[dict, dict]:
    """(header, payload) of a JWT without checking anything: for comparisons and messages."""
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def rfc7638_thumbprint(jwk: dict) -> str:
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    required = members[jwk["kty"]]
    canon = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canon.encode()).digest())


# --------------------------------------------------------------------------- connector availability

_support: dict[str, str | None] = {}


def connector_unsupported(type_name: str, tmp: Path) -> str | None:
    """Why this build cannot take a connector of ``type_name`` (None if it can).

    Only an unknown ``type`` counts: any other complaint of ``extoken check`` about a config is a
    real failure of the test that wrote it, not a reason to skip.
    """
    if type_name in _support:
        return _support[type_name]
    cfg = {
        "listen": "127.0.0.1:1",
        "descope": {"project_id": PROJECT_ID, "jwks_file": str(tmp / "none.json")},
        "connectors": {"probe": {"type": type_name}},
        "routes": [{"upstream": "http://127.0.0.1:1", "connector": "probe"}],
    }
    path = tmp / f"probe-{type_name}.yaml"
    path.write_text(json.dumps(cfg))
    out = subprocess.run(
        [str(EXTOKEN_BIN), "check", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    text = out.stdout + out.stderr
    reason = None
    if "unknown variant" in text and f"`{type_name}`" in text:
        reason = f"this extoken build has no `{type_name}` connector yet (extoken check: unknown variant)"
    _support[type_name] = reason
    return reason


@pytest.fixture
def require_connector(tmp_path):
    def need(type_name: str):
        reason = connector_unsupported(type_name, tmp_path)
        if reason:
            pytest.skip(reason)
    return need


# --------------------------------------------------------------------------- recording backend

class NodeServer:
    """A Node backend script from ``tests/interop/express`` (packages from ``node_modules``): it
    records one JSON line per request in the file given as its argument, prints
    ``LISTENING <port>`` once it accepts, and exits when its stdin closes."""

    def __init__(self, script: str, packages: tuple[str, ...], workdir: Path):
        node = os.environ.get("INTEROP_NODE") or shutil.which("node")
        if not node:
            pytest.fail("node not found (Node 20 is expected on the machine)", pytrace=False)
        for pkg in packages:
            if not (HERE / "node_modules" / pkg / "package.json").is_file():
                pytest.fail(f"tests/interop/node_modules/{pkg} is missing: run "
                            f"tests/interop/run.sh (npm ci from package-lock.json)", pytrace=False)
        self.name = script
        self.records_path = workdir / f"{script}.jsonl"
        self.records_path.touch()
        self.log_path = workdir / f"{script}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [node, str(HERE / "express" / script), str(self.records_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=workdir,
            preexec_fn=_die_with_parent,
        )
        self.port = self._wait_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_port(self, timeout: float = 30.0) -> int:
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline, buf = time.monotonic() + timeout, b""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read() or b""
            buf += chunk
            if b"\n" in buf:
                line = buf.split(b"\n", 1)[0].decode()
                assert line.startswith("LISTENING "), f"unexpected output: {line!r}"
                return int(line.split()[1])
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.name} did not listen within {timeout}s: "
                             f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.records_path.read_text().splitlines()]

    def stop(self):
        # The server exits when its stdin closes.
        stop_process(self.proc, self.log, 10, ask=lambda p: p.stdin.close())


def serve_http(handler) -> tuple[ThreadingHTTPServer, str]:
    """A threaded HTTP server on 127.0.0.1 (an ephemeral port) serving from a daemon thread, and
    its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class Backend:
    """A legacy backend: records method, path and headers of every request, answers 200 JSON
    (or ``<code>`` for paths under ``/status/<code>/``)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                rec = {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "all_headers": [(k.lower(), v) for k, v in self.headers.items()],
                    "body": body,
                }
                with backend.lock:
                    backend.requests.append(rec)
                out = json.dumps({"ok": True, "path": self.path}).encode()
                # A path starting /status/<code>/ makes the backend answer that status.
                parts = self.path.split("/")
                code = int(parts[2]) if len(parts) > 3 and parts[1] == "status" else 200
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, *a):  # quiet
                pass

        self.server, self.url = serve_http(Handler)
        self.port = self.server.server_address[1]

    def find(self, path: str) -> dict | None:
        with self.lock:
            for r in self.requests:
                if r["path"] == path:
                    return r
        return None

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def backend():
    b = Backend()
    yield b
    b.close()


# --------------------------------------------------------------------------- Descope session minting

class Descope:
    """Descope-shaped session tokens from ``extoken mint`` with a dev key."""

    def __init__(self, tmp: Path):
        self.key = tmp / "dev.pem"
        self.jwks_file = tmp / "dev.jwks.json"
        self.project_id = PROJECT_ID
        self.mint("U2warmup")  # creates the key and the JWKS beside it
        assert self.jwks_file.exists(), f"extoken mint did not write {self.jwks_file}"

    def mint(self, sub: str, ttl: str = "10m", **claims) -> str:
        args = [str(EXTOKEN_BIN), "mint", "--key", str(self.key), "--project-id", self.project_id,
                "--sub", sub, "--ttl", ttl]
        for k, v in claims.items():
            args += ["--claim", f"{k}={json.dumps(v)}"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"extoken mint failed: {out.stderr}"
        return out.stdout.strip()


@pytest.fixture(scope="session")
def descope(tmp_path_factory):
    if not EXTOKEN_BIN.exists():
        pytest.exit(f"no extoken binary at {EXTOKEN_BIN} (cargo build first, or set EXTOKEN_BIN)", 2)
    return Descope(tmp_path_factory.mktemp("descope"))


# --------------------------------------------------------------------------- the gateway

class Forwarded:
    """What the backend got for one request through the gateway."""

    def __init__(self, status: int, body: bytes, record: dict | None, resp_headers: dict):
        self.status = status
        self.body = body
        self.record = record
        self.resp_headers = resp_headers

    @property
    def authorization(self) -> str | None:
        return self.record["headers"].get("authorization") if self.record else None

    @property
    def token(self) -> str:
        """The external token (the Bearer credential the backend received)."""
        assert self.status == 200, f"gateway answered {self.status}: {self.body[:300]!r}"
        assert self.record is not None, "request was not forwarded to the backend"
        auth = self.authorization
        assert auth is not None, "backend got no Authorization header"
        scheme, _, cred = auth.partition(" ")
        assert scheme == "Bearer" and cred, f"Authorization is not 'Bearer <token>': {auth[:20]!r}..."
        return cred


class Gateway:
    def __init__(self, workdir: Path, config: dict, env: dict | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.admin_port = free_port()
        config = {"listen": f"127.0.0.1:{self.port}", "admin_listen": f"127.0.0.1:{self.admin_port}",
                  "threads": 1, **config}
        self.config_path = workdir / "gateway.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = workdir / "gateway.log"
        self.log = open(self.log_path, "wb")
        full_env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **(env or {})}
        self.proc = subprocess.Popen(
            [str(EXTOKEN_BIN), "run", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=workdir,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready()

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def _wait_ready(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"extoken run exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"extoken did not listen on {self.port} within {timeout}s:\n{self.logs()}")

    def request(self, path: str, headers: dict | None = None, method: str = "GET",
                timeout: float = 15.0) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def forward(self, session: str | None, backend: Backend, path: str = "/probe",
                headers: dict | None = None) -> Forwarded:
        """Sends one request with a Descope session and returns what the backend received."""
        unique = f"{path}/{uuid.uuid4().hex}"
        h = dict(headers or {})
        if session is not None:
            h["Authorization"] = f"Bearer {session}"
        status, rh, body = self.request(unique, h)
        return Forwarded(status, body, backend.find(unique), rh)

    def stop(self):
        # SIGINT is extoken's fast shutdown; SIGTERM would drain for shutdown_delay first.
        stop_process(self.proc, self.log, 10, ask=lambda p: p.send_signal(signal.SIGINT))


@pytest.fixture
def gateway(tmp_path, backend, descope):
    """``gateway(connectors, connector="name", env=..., route=..., **top)`` starts one gateway."""
    started: list[Gateway] = []

    def start(connectors: dict, connector: str | None = None, env: dict | None = None,
              route: dict | None = None, **top) -> Gateway:
        connector = connector or next(iter(connectors))
        cfg = {
            "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
            "connectors": connectors,
            "routes": [{"name": "api", "path_prefix": "/", "upstream": backend.url,
                        "connector": connector, **(route or {})}],
            **top,
        }
        wd = tmp_path / f"gw{len(started)}"
        wd.mkdir()
        g = Gateway(wd, cfg, env)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()
