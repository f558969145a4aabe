"""Decision mode against the real ingresses: nginx ``auth_request``, Envoy ``ext_authz`` (gRPC
and HTTP) and Traefik ForwardAuth, each in front of the recording backend with extoken deciding;
and ingress-nginx's ``auth-url``, as real nginx running what ingress-nginx renders for the
example Ingress (its controller template's auth location, its ``auth-response-headers`` lines).

Every ingress runs the example in ``deploy/examples/decision/`` as written: the test only
replaces its addresses (ports, the backend, the JWKS file) and fails when an address it expects
is no longer in the file, so the examples cannot drift from what is tested.

Checked through each ingress:

1. No unauthenticated request reaches a protected location (no session, a bad one, a spoofed
   identity header, a dot-segment walk from a public path, a spoofed original-request header).
2. A session (Bearer or the ``DS`` cookie) gets through, and the backend receives the external
   token (never the session), the identity header from the session (never the client's), and the
   cookies without ``DS``/``DSR``.
3. An ``auth: none`` route passes without a session, with the Descope cookies and any client
   identity header removed.
4. A refusal carries extoken's ``WWW-Authenticate``.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import EXTOKEN_BIN, ROOT, _die_with_parent, free_port, stop_process

EXAMPLES = ROOT / "deploy" / "examples" / "decision"
REALM = 'Bearer realm="extoken"'


def example(name: str, subs: dict[str, str]) -> str:
    """An example file with its addresses replaced; each one must still be in the file."""
    text = (EXAMPLES / name).read_text()
    for old, new in subs.items():
        assert old in text, f"{name} no longer contains {old!r}: update the test with the example"
        text = text.replace(old, new)
    return text


def wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not listen on {port}:\n{log.read_text()[-3000:]}")


class Proc:
    """A child process with its output in ``dir/<name>.log``, stopped at teardown."""

    def __init__(self, name: str, args: list[str], workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir,
                                     preexec_fn=_die_with_parent)

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self):
        stop_process(self.proc, self.log, 10)


def binary(name: str) -> str:
    """An ingress binary: on PATH, or beside this Python (the venv run.sh installs into)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found and name == "nginx" and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    assert found, f"{name} is not installed (tests/interop/run.sh installs it)"
    return found


@pytest.fixture(scope="module")
def decider(tmp_path_factory, backend, descope):
    """extoken from the example gateway.yaml: its decision listeners and ports."""
    wd = tmp_path_factory.mktemp("decider")
    ports = {"proxy": free_port(), "admin": free_port(), "http": free_port(), "grpc": free_port()}
    cfg = example("gateway.yaml", {
        "127.0.0.1:8080": f"127.0.0.1:{ports['proxy']}",
        "127.0.0.1:9090": f"127.0.0.1:{ports['admin']}",
        "127.0.0.1:9191": f"127.0.0.1:{ports['http']}",
        "127.0.0.1:9192": f"127.0.0.1:{ports['grpc']}",
        "http://127.0.0.1:8081": backend.url,
        '"dev.jwks.json"': f'"{descope.jwks_file}"',
    })
    (wd / "gateway.yaml").write_text(cfg)
    p = Proc("extoken", [str(EXTOKEN_BIN), "run", "--config", str(wd / "gateway.yaml")], wd)
    try:
        wait_port(ports["http"], p.proc, "extoken", p.log_path)
        wait_port(ports["grpc"], p.proc, "extoken", p.log_path)
        yield ports
    finally:
        p.stop()


def start_nginx(wd: Path, port: int, decider: dict, backend, server: str | None = None) -> Proc:
    prefix = wd / "nginx"
    prefix.mkdir()
    nginx = binary("nginx")
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30).stderr
    temp = [f"client_body_temp_path {prefix}/client_body;"]
    temp += [f"{m}_temp_path {prefix}/{m};" for m in ("proxy", "fastcgi", "uwsgi", "scgi")
             if f"--without-http_{m}_module" not in built]
    if server is None:
        server = example("nginx.conf", {
            "127.0.0.1:8000": f"127.0.0.1:{port}",
            "127.0.0.1:9191": f"127.0.0.1:{decider['http']}",
            "http://127.0.0.1:8081": backend.url,
        })
    conf = ("events { worker_connections 64; }\nhttp {\n" + "\n".join(temp)
            + "\naccess_log off;\n" + server + "\n}\n")
    (prefix / "nginx.conf").write_text(conf)
    g = f"daemon off; master_process off; pid {prefix}/nginx.pid; error_log stderr;"
    return Proc("nginx", [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", g], wd)


def start_envoy(wd: Path, port: int, decider: dict, backend, grpc: bool) -> Proc:
    name = "envoy-grpc.yaml" if grpc else "envoy-http.yaml"
    subs = {"port_value: 8000": f"port_value: {port}",
            "port_value: 8081": f"port_value: {backend.port}"}
    if grpc:
        subs["port_value: 9192"] = f"port_value: {decider['grpc']}"
    else:
        subs["port_value: 9191"] = f"port_value: {decider['http']}"
        subs["http://127.0.0.1:9191"] = f"http://127.0.0.1:{decider['http']}"
    (wd / name).write_text(example(name, subs))
    args = [binary("envoy"), "-c", str(wd / name), "--disable-hot-restart", "--log-level", "warn",
            "--concurrency", "1"]
    return Proc("envoy", args, wd)


def start_traefik(wd: Path, port: int, decider: dict, backend) -> Proc:
    dynamic = example("traefik-dynamic.yaml", {
        "http://127.0.0.1:9191/": f"http://127.0.0.1:{decider['http']}/",
        "http://127.0.0.1:8081": backend.url,
    })
    (wd / "traefik-dynamic.yaml").write_text(dynamic)
    static = example("traefik.yaml", {
        "127.0.0.1:8000": f"127.0.0.1:{port}",
        "filename: traefik-dynamic.yaml": f"filename: {wd / 'traefik-dynamic.yaml'}",
    })
    (wd / "traefik.yaml").write_text(static)
    return Proc("traefik", [binary("traefik"), f"--configFile={wd / 'traefik.yaml'}"], wd)


def annotation(text: str, name: str) -> str:
    """An ``nginx.ingress.kubernetes.io/<name>`` annotation's value in the example Ingress."""
    m = re.search(rf"^\s*nginx\.ingress\.kubernetes\.io/{name}:\s*\"?([^\"\n]*)\"?\s*$", text, re.M)
    assert m, f"ingress-nginx/ingress.yaml has no {name} annotation: update the test with it"
    return m.group(1)


def start_ingress_nginx(wd: Path, port: int, decider: dict, backend) -> Proc:
    """nginx with the server ingress-nginx renders for the example Ingress: the lines of its
    controller template's ``location = /_external-auth-*`` (default settings: no auth-method,
    no keepalive, no cache) and of ``buildAuthResponseHeaders``, for the example's
    ``auth-url`` (its host and port replaced by the decider's) and ``auth-response-headers``."""
    ingress = (EXAMPLES / "ingress-nginx" / "ingress.yaml").read_text()
    url = annotation(ingress, "auth-url")
    parts = urlsplit(url)
    auth_url = f"http://127.0.0.1:{decider['http']}{parts.path or '/'}"
    headers = [h.strip() for h in annotation(ingress, "auth-response-headers").split(",") if h.strip()]
    response_lines = []
    for i, h in enumerate(headers):
        var = h.lower().replace("-", "_")
        response_lines += [f"auth_request_set $authHeader{i} $upstream_http_{var};",
                           f"proxy_set_header '{h}' $authHeader{i};"]
    server = f"""
server {{
    listen 127.0.0.1:{port};
    location / {{
        auth_request /_external-auth-Lw-Prefix;
        auth_request_set $auth_cookie $upstream_http_set_cookie;
        add_header Set-Cookie $auth_cookie;
        {chr(10).join(response_lines)}
        proxy_pass {backend.url};
    }}
    location = /_external-auth-Lw-Prefix {{
        internal;
        proxy_intercept_errors      off;
        proxy_pass_request_body     off;
        proxy_set_header            Content-Length          "";
        proxy_set_header            X-Forwarded-Proto       "";
        proxy_set_header            X-Request-ID            $request_id;
        proxy_set_header            Host                    {parts.hostname};
        proxy_set_header            X-Original-URL          $scheme://$http_host$request_uri;
        proxy_set_header            X-Original-Method       $request_method;
        proxy_set_header            X-Sent-From             "nginx-ingress-controller";
        proxy_set_header            X-Real-IP               $remote_addr;
        proxy_set_header            X-Forwarded-For        $remote_addr;
        proxy_set_header            X-Auth-Request-Redirect $request_uri;
        proxy_ssl_server_name       on;
        proxy_pass_request_headers  on;
        proxy_http_version          1.1;
        set $target "{auth_url}";
        proxy_pass $target;
    }}
}}
"""
    return start_nginx(wd, port, decider, backend, server=server)


class Ingress:
    def __init__(self, kind: str, port: int, proc: Proc):
        self.kind, self.port, self.proc = kind, port, proc

    def request(self, path: str, headers: dict | None = None, method: str = "GET"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request(method, path, headers={"Host": "app.example", **(headers or {})})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()


INGRESSES = ["nginx", "ingress_nginx", "envoy_grpc", "envoy_http", "traefik"]


def start_ingress(kind: str, wd: Path, port: int, decider: dict, backend) -> Proc:
    if kind == "nginx":
        return start_nginx(wd, port, decider, backend)
    if kind == "ingress_nginx":
        return start_ingress_nginx(wd, port, decider, backend)
    if kind.startswith("envoy"):
        return start_envoy(wd, port, decider, backend, grpc=kind == "envoy_grpc")
    return start_traefik(wd, port, decider, backend)


@contextlib.contextmanager
def running_ingress(kind: str, wd: Path, decider, backend):
    """An ingress of `kind` in front of `backend`, extoken deciding; stopped on exit."""
    port = free_port()
    p = start_ingress(kind, wd, port, decider, backend)
    ing = Ingress(kind, port, p)
    try:
        wait_port(port, p.proc, kind, p.log_path)
        # Routers may load after the port opens (Traefik's file provider): wait for a public path.
        deadline = time.monotonic() + 30
        while ing.request("/public/ready")[0] != 200:
            assert time.monotonic() < deadline, f"{kind} never passed /public/ready:\n{p.logs()}"
            time.sleep(0.2)
        yield ing
    finally:
        p.stop()


@pytest.fixture(scope="module", params=INGRESSES)
def ingress(request, tmp_path_factory, decider, backend):
    with running_ingress(request.param, tmp_path_factory.mktemp(request.param), decider, backend) as ing:
        yield ing


# The unique last segments of every path this module sent (the backend is shared with the suite).
SENT: set[str] = set()


def unique(path: str) -> str:
    u = uuid.uuid4().hex
    SENT.add(u)
    return f"{path}/{u}"


def test_no_unauthenticated_request_reaches_a_protected_location(ingress, backend, descope):
    expired = descope.mint("U2late", ttl="-5m", externalToken="ext-late")
    attempts = [
        ("/api/x", {}),
        ("/api/x", {"X-User-Id": "U2admin"}),
        ("/api/x", {"Authorization": "Bearer not.a.jwt"}),
        ("/api/x", {"Authorization": f"Bearer {expired}"}),
        ("/api/x", {"Cookie": "DS=garbage; theme=dark"}),
        ("/public/%2e%2e/api/x", {}),
        ("/public/../api/x", {}),
        # A client's own copy of the headers an ingress uses to describe the request.
        ("/api/x", {"X-Forwarded-Uri": "/public/x"}),
        ("/api/x", {"X-Original-URI": "/public/x"}),
        ("/api/x", {"X-Original-Method": "GET", "X-Forwarded-Method": "POST"}),
        ("/api/x", {"X-Original-URL": "http://app.example/public/x"}),
        ("/api/x", {"X-Forwarded-Host": "other.example", "X-Original-URI": "/public/x"}),
    ]
    for path, headers in attempts:
        p = unique(path)
        status, h, _ = ingress.request(p, headers)
        assert status >= 400, f"{ingress.kind}: {p} {headers} was answered {status}"
        leaked = [r for r in backend.requests if p.rsplit("/", 1)[1] in r["path"]]
        assert not leaked, f"{ingress.kind}: {p} {headers} reached the backend: {leaked}"
    status, h, _ = ingress.request(unique("/api/x"))
    assert status == 401, f"{ingress.kind}: {status}"
    assert h.get("www-authenticate") == REALM, f"{ingress.kind}: {h}"


def test_a_session_gets_through_with_the_external_token(ingress, backend, descope):
    session = descope.mint("U2alice", externalToken="ext-alice")
    for creds in ({"Authorization": f"Bearer {session}"},
                  {"Cookie": f"theme=dark; DS={session}; DSR=refresh"}):
        p = unique("/api/x")
        spoofs = {"X-User-Id": "U2mallory", "x_user_id": "U2mallory"}
        status, _, body = ingress.request(p, {**creds, **spoofs})
        assert status == 200, f"{ingress.kind}: {status} {body[:300]!r}"
        rec = backend.find(p)
        assert rec is not None, f"{ingress.kind}: {p} not forwarded"
        h = rec["headers"]
        assert h.get("authorization") == "Bearer ext-alice", f"{ingress.kind}: {h}"
        assert session not in str(rec["all_headers"]), f"{ingress.kind}: the session passed"
        assert [v for k, v in rec["all_headers"] if k == "x-user-id"] == ["U2alice"], ingress.kind
        # A CGI/WSGI backend reads x_user_id as X-User-Id.
        assert "x_user_id" not in h, f"{ingress.kind}: {h}"
        if "Cookie" in creds:
            assert h.get("cookie") == "theme=dark", f"{ingress.kind}: {h}"


def test_a_spoofed_original_request_never_moves_a_session_to_another_route(ingress, backend,
                                                                           descope):
    """A session's request to /api with a client's own copy of another ingress's headers naming
    /public: either the ingress set the header itself (the client's never counts) and /api was
    decided, or extoken saw two sources and refused. Never /public's allow without the token."""
    session = descope.mint("U2eve", externalToken="ext-eve")
    spoofs = [{"X-Original-URI": "/public/x"}, {"X-Original-URL": "http://app.example/public/x"},
              {"X-Forwarded-Uri": "/public/x"}, {"X-Forwarded-Host": "other.example"},
              {"X-Original-Method": "POST"}]
    for spoof in spoofs:
        p = unique("/api/x")
        status, _, body = ingress.request(p, {"Authorization": f"Bearer {session}", **spoof})
        rec = backend.find(p)
        if rec is None:
            assert status >= 400, f"{ingress.kind}: {spoof} -> {status} but nothing forwarded"
        else:
            auth = rec["headers"].get("authorization")
            assert auth == "Bearer ext-eve", f"{ingress.kind}: {spoof} forwarded with {auth!r}"


def test_a_public_route_passes_without_descope_cookies(ingress, backend, descope):
    session = descope.mint("U2bob", externalToken="ext-bob")
    p = unique("/public/x")
    spoofs = {"X-User-Id": "U2mallory", "x_user_id": "U2mallory"}
    status, _, _ = ingress.request(p, {"Cookie": f"DS={session}", **spoofs})
    assert status == 200, f"{ingress.kind}: {status}"
    rec = backend.find(p)
    assert rec is not None
    assert "cookie" not in rec["headers"], f"{ingress.kind}: {rec['headers']}"
    assert "x-user-id" not in rec["headers"], f"{ingress.kind}: {rec['headers']}"
    assert "x_user_id" not in rec["headers"], f"{ingress.kind}: {rec['headers']}"
    p = unique("/public/x")
    status, _, _ = ingress.request(p, {"Cookie": f"DS={session}; theme=dark"})
    assert status == 200
    assert backend.find(p)["headers"].get("cookie") == "theme=dark", ingress.kind


def test_every_protected_request_the_backend_saw_carried_an_external_token(ingress, backend):
    """The invariant over everything sent so far, through every ingress: the backend never saw a
    request on the protected route without an external token, nor with a Descope session."""
    ours = [r for r in backend.requests if r["path"].rsplit("/", 1)[-1] in SENT]
    protected = [r for r in ours if r["path"].startswith("/api/")]
    assert protected, "no protected request got through at all"
    for r in protected:
        auth = r["headers"].get("authorization", "")
        assert auth.startswith("Bearer ext-"), f"{ingress.kind}: {r['path']} with {auth[:20]!r}"
        assert "DS=" not in r["headers"].get("cookie", ""), f"{ingress.kind}: {r['path']}"
