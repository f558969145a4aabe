"""Differential test: extoken's routing decision against a real nginx's reading of the same request
(security issue #7).

A gateway that authenticates by route is only as strong as the agreement between the request it
routes on and the request the backend acts on. If extoken routed ``/public/%2e%2e/api/x`` to the
``auth: none`` route ``public`` while the backend, after decoding and removing dot-segments, served
it from ``/api/``, an unauthenticated client would reach a protected location; likewise for
``Host: admin.example.com.`` or an absolute-form ``GET http://admin.example.com/x``.

Set-up (all on 127.0.0.1): a real nginx (``nginx/differential.conf.in``) with one port per extoken
route and, on each port, the same location set (``= /api``, ``/api/``, ``= /public``,
``/public/``, ``/``) in two virtual hosts (``admin.example.com`` and a default server); every
location answers with a body naming its port, vhost and location, and the ``Authorization`` it got.
extoken routes: ``public`` (/public, auth none), ``api`` (/api, auth), ``root`` (/, auth none) and
``admin`` (host admin.example.com, /, auth). So the route extoken chose is the port nginx answered
on, and what nginx made of the request is the (vhost, location) in the body.

A combinatorial corpus of raw request heads (dot-segments in every encoding, encoded and raw
(back)slashes, ``;`` parameters, doubled slashes, encoded unreserved characters, control bytes,
bad escapes, absolute-form, odd Host values, HTTP/1.0) is sent over plain sockets, once without
credentials and once with a valid Descope session. Checked for every request, failures collected
and reported together:

1. No unauthenticated request reaches a protected nginx location (``/api/``, ``= /api``, or the
   admin vhost outside ``/public``).
2. Agreement: whenever a request is forwarded, the location/vhost nginx chose is the one extoken's
   route stands for (and nginx does not refuse what extoken forwarded).
3. With a session, a request forwarded on a protected route carries ``Bearer <external token>``,
   never the Descope session JWT.
4. What is forwarded is the canonical request: nginx receives the canonical target (unreserved
   escapes decoded, runs of ``/`` merged, dot-segments removed, query untouched) and Host.
5. What the gateway spec refuses (``%2F``/``%5C``, backslash, encoded controls, bad escapes,
   climbing above ``/``, ``..;``, missing or malformed Host, ...) is refused and never forwarded.

The policy both sides implement, in nginx terms (extoken picks the longest ``path_prefix`` first,
so ``admin.example.com/public/...`` is the ``public`` route and ``admin.example.com/api/...`` the
``api`` route; the admin vhost is protected everywhere else):

    route public <-> location /public/ or = /public   (either vhost)
    route api    <-> location /api/    or = /api      (either vhost; protected)
    route root   <-> location /, default vhost
    route admin  <-> location /, admin vhost           (protected)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import (EXTOKEN_BIN, HERE, Gateway, _die_with_parent, free_port, read_case_log,
                      stop_process)

NGINX_ENV = "INTEROP_NGINX_BIN"
ROUTES = ("public", "api", "root", "admin")
PROTECTED_ROUTES = {"api", "admin"}
EXTERNAL_TOKEN = f"legacy-nginx-diff-{uuid.uuid4().hex[:12]}"

# route extoken chose -> the (vhost, location) pairs nginx may answer from for it ("*": any vhost)
AGREES = {
    "public": {("*", "public"), ("*", "public_exact")},
    "api": {("*", "api"), ("*", "api_exact")},
    "root": {("default", "root")},
    "admin": {("admin", "root")},
}


def nginx_protected(vhost: str, loc: str) -> bool:
    """Would the nginx side of the policy require authentication for this (vhost, location)?"""
    return loc in ("api", "api_exact") or (vhost == "admin" and loc == "root")


def agrees(route: str, vhost: str, loc: str) -> bool:
    return any(v in ("*", vhost) and l == loc for v, l in AGREES[route])


# --------------------------------------------------------------------------- nginx

class Nginx:
    """A throwaway nginx: temp prefix dir, config from ``nginx/differential.conf.in``."""

    def __init__(self, binary: str, prefix: Path):
        self.prefix = prefix
        self.ports = {r: free_port() for r in ROUTES}
        self.route_of_port = {p: r for r, p in self.ports.items()}
        self.access_log = prefix / "access.log"
        self.log_path = prefix / "nginx.stderr"
        (prefix / "logs").mkdir()  # nginx's compiled-in relative paths, if any, stay in here
        shutil.copy(HERE / "nginx" / "locations.conf", prefix / "locations.conf")
        conf = (HERE / "nginx" / "differential.conf.in").read_text()
        subs = {"@PREFIX@": str(prefix), "@TEMP_PATHS@": self._temp_paths(binary, prefix)}
        subs.update({f"@PORT_{r.upper()}@": str(p) for r, p in self.ports.items()})
        for k, v in subs.items():
            conf = conf.replace(k, v)
        left = re.findall(r"@[A-Z_]+@", conf)
        assert not left, f"unfilled placeholders in the nginx config: {left}"
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(conf)
        globals_ = f"daemon off; master_process off; pid {prefix}/nginx.pid; error_log stderr;"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(self.conf), "-g", globals_],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        self._wait_ready()

    @staticmethod
    def _temp_paths(binary: str, prefix: Path) -> str:
        """Temp dirs inside the prefix (the compiled-in ones, e.g. /var/lib/nginx, may not be
        writable), for the modules this build has."""
        built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30).stderr
        lines = [f"client_body_temp_path {prefix}/client_body;"]
        for module in ("proxy", "fastcgi", "uwsgi", "scgi"):
            if f"--without-http_{module}_module" not in built:
                lines.append(f"{module}_temp_path {prefix}/{module};")
        return "\n    ".join(lines)

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def _wait_ready(self, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values())
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.logs()}")
            for p in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", p), timeout=0.5):
                        pending.discard(p)
                except OSError:
                    pass
            time.sleep(0.05)
        if pending:
            self.stop()
            raise AssertionError(f"nginx did not listen on {sorted(pending)}:\n{self.logs()}")

    def received(self) -> dict[str, list[str]]:
        """Case id -> access-log lines of the requests nginx received for it."""
        return read_case_log(self.access_log)

    def stop(self):
        stop_process(self.proc, self.log, 10)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    binary = os.environ.get(NGINX_ENV)
    if not binary:
        pytest.fail(f"{NGINX_ENV} is not set: run tests/interop/run.sh, which installs nginx-light "
                    f"and sets it (or set it to an nginx binary)", pytrace=False)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"{NGINX_ENV}={binary!r} is not an executable", pytrace=False)
    n = Nginx(binary, tmp_path_factory.mktemp("nginx"))
    yield n
    n.stop()


@pytest.fixture(scope="module")
def session(descope) -> str:
    """A valid Descope session whose externalToken claim is EXTERNAL_TOKEN."""
    out = subprocess.run(
        [str(EXTOKEN_BIN), "mint", "--key", str(descope.key), "--project-id", descope.project_id,
         "--sub", "U2nginxDiff", "--ttl", "30m", "--external-token", EXTERNAL_TOKEN],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, f"extoken mint failed: {out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, descope, nginx):
    def upstream(route: str) -> str:
        return f"http://127.0.0.1:{nginx.ports[route]}"

    cfg = {
        "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
        "connectors": {"ext": {"type": "claim"}},
        "routes": [
            {"name": "public", "path_prefix": "/public", "auth": "none", "upstream": upstream("public")},
            {"name": "api", "path_prefix": "/api", "upstream": upstream("api"), "connector": "ext"},
            {"name": "root", "path_prefix": "/", "auth": "none", "upstream": upstream("root")},
            {"name": "admin", "host": "admin.example.com", "path_prefix": "/",
             "upstream": upstream("admin"), "connector": "ext"},
        ],
    }
    g = Gateway(tmp_path_factory.mktemp("gw-nginx"), cfg)
    yield g
    g.stop()


# --------------------------------------------------------------------------- raw requests

@dataclass(frozen=True)
class Case:
    method: str
    target: str
    version: str  # "HTTP/1.1" / "HTTP/1.0"
    host: str | None  # None: no Host header
    refuse: bool  # the gateway spec refuses it (400, or pingora's own 4xx), never forwarded

    def head(self, case_id: str, authorization: str | None) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"]
        if self.host is not None:
            lines.append(f"Host: {self.host}")
        lines.append(f"X-Probe-Case: {case_id}")
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def __str__(self) -> str:
        host = "(no Host)" if self.host is None else f"Host: {self.host}"
        return f"{self.method} {self.target!r} {self.version} {host}"


@dataclass
class Reply:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    route_hint: str = "?"  # the extoken route whose nginx port answered (set by the sender)

    @property
    def probe(self) -> dict[str, str] | None:
        """The fields of an nginx location's answer (port, vhost, loc, host, auth, ...)."""
        if not self.body.startswith(b"NGINXPROBE\n"):
            return None
        fields = {}
        for line in self.body.decode("latin-1").splitlines()[1:]:
            k, _, v = line.partition("=")
            fields.setdefault(k, v)
        return fields

    @property
    def from_nginx(self) -> bool:
        """nginx answered (a location, or one of its own error pages)."""
        return (self.probe is not None or "x-probe" in self.headers
                or self.headers.get("server", "").startswith("nginx"))

    @property
    def from_extoken(self) -> bool:
        """extoken's own answer: a JSON document with an "error" key."""
        try:
            return "error" in json.loads(self.body)
        except (ValueError, TypeError):
            return False

    def describe(self) -> str:
        if self.status is None:
            return "no answer (connection closed)"
        p = self.probe
        if p:
            return (f"{self.status} from nginx port {p.get('port')} ({self.route_hint}) vhost="
                    f"{p.get('vhost')} loc={p.get('loc')} uri={p.get('uri')!r} "
                    f"auth={p.get('auth', '')[:24]!r}")
        who = "nginx error page" if self.from_nginx else "extoken" if self.from_extoken else "pingora"
        return f"{self.status} from {who}: {self.body[:120]!r}"


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


def send(port: int, head: bytes, timeout: float = 5.0) -> Reply:
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(head)
            while chunk := s.recv(65536):
                data += chunk
    except (ConnectionResetError, socket.timeout):
        pass  # judged by what arrived before
    if not data.startswith(b"HTTP/"):
        return Reply(None, body=data)
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = dechunk(body)
    return Reply(int(status_line.split()[1]), headers, body)


# --------------------------------------------------------------------------- the corpus

DOTDOT = ["..", "%2e%2e", "%2E%2E", "%2E%2e", "%2e%2E", ".%2e", ".%2E", "%2e.", "%2E."]
DOT = [".", "%2e", "%2E"]
ENCODED_SLASH = ["%2f", "%2F", "%5c", "%5C"]

# Hosts: value -> whether the spec refuses it.
HOSTS = {
    "public.example.com": False,
    "admin.example.com": False,
    "ADMIN.example.com": False,
    "Admin.Example.COM.": False,
    "admin.example.com.": False,
    "admin.example.com:80": False,
    "admin.example.com:8443": False,
    "127.0.0.1": False,
    "admin.example.com:8x": True,
    "admin.example.com:0": True,
    "admin.example.com:65536": True,
    "admin.example.com:": True,
    "admin.example.com..": True,
    "admin..example.com": True,
}


def origin_paths() -> dict[str, bool]:
    """Origin-form targets -> whether the spec refuses them."""
    p: dict[str, bool] = {}
    for dd in DOTDOT:
        p[f"/public/{dd}/api/x"] = False            # -> /api/x
        p[f"/public/{dd}/api"] = False              # -> /api
        p[f"/public/x/{dd}/{dd}/api/x"] = False     # -> /api/x
        p[f"/api/x/{dd}/{dd}/public/y"] = False     # -> /public/y
        p[f"/public/{dd}"] = False                  # -> /
        p[f"/public/{dd};/api/x"] = True            # dot-segment with parameters
        p[f"/public/{dd};a=b/api/x"] = True
        p[f"/{dd}/api/x"] = True                    # above the root
        p[f"/public/{dd}/{dd}/api/x"] = True
        for sep in ENCODED_SLASH:
            p[f"/public/{dd}{sep}api/x"] = True
    for d in DOT:
        p[f"/{d}/api/x"] = False
        p[f"/public/{d}/x"] = False
        p[f"/public/{d}/../api/x"] = False
        p[f"/public/{d};/x"] = True
    for sep in ENCODED_SLASH:
        p[f"/api{sep}x"] = True
        p[f"/public{sep}..{sep}api/x"] = True
        p[f"/public/x{sep}"] = True
    p.update({
        # raw backslash
        "/public/..\\api/x": True, "/api\\x": True, "/public\\..\\api/x": True,
        # runs of /
        "//api/x": False, "///api///x": False, "/public//../api/x": False,
        "//public/../api/x": False, "/public/..//api/x": False, "/api//": False, "//": False,
        # encoded unreserved characters
        "/%61pi/x": False, "/%61%70%69/x": False, "/a%70%69": False, "/%41pi/x": False,
        "/%61PI/x": False, "/api%2Dx": False, "/%7Eapi/x": False, "/pub%6cic/%2e%2e/api/x": False,
        "/%70ublic/x": False, "/public/%252e%252e/api/x": False,
        # case and near-prefixes
        "/API/x": False, "/Api": False, "/api": False, "/api/": False, "/apix": False,
        "/public": False, "/publicx/../api": False, "/public/x": False, "/x": False, "/": False,
        # query untouched
        "/api?x=1": False, "/api?/../public": False, "/public?/../api/x": False,
        "/public/x?a=%2f&b=..": False, "/public?%2e%2e/api": False,
        # encoded control bytes
        "/api%00/x": True, "/public/%00/../../api/x": True, "/public/%0a": True,
        "/public/%0D%0A/x": True, "/public/%1f": True, "/public/%7F": True, "/public/%09/x": True,
        # invalid escapes
        "/public/%": True, "/public/%2": True, "/public/%zz/x": True, "/public/%g0": True,
        "/public/%%32e%%32e/api/x": True, "/public/%2e%2/api": True,
        # climbing above /
        "/..": True, "/../": True, "/a/../..": True, "/%2e%2e": True, "/api/../../x": True,
        # a fragment is not part of a request target: pingora drops it before extoken routes, so
        # the backend gets /public/x (never the /api/x the fragment spells)
        "/public/x#/../../api/x": False,
    })
    return p


def absolute_targets() -> dict[str, bool]:
    return {
        "http://admin.example.com/x": False,
        "HTTP://admin.example.com/x": False,
        "Http://admin.example.com/public/../x": False,
        "http://ADMIN.Example.com./x": False,
        "http://admin.example.com:80/x": False,
        "https://admin.example.com/x": False,
        "http://admin.example.com/public/x": False,
        "http://admin.example.com/api/x": False,
        "http://admin.example.com": False,
        "http://public.example.com/public/../api/x": False,
        "http://public.example.com/public/%2e%2e/x": False,
        "http://public.example.com/x": False,
        "http://admin.example.com:8x/x": True,
        "http://admin..example.com/x": True,
        "http://admin.example.com/public/%2e%2e%2fx": True,
        "http://admin.example.com/..": True,
        "ftp://admin.example.com/x": True,
    }


def corpus() -> list[Case]:
    cases: dict[Case, None] = {}  # ordered set

    def add(method, target, version, host, refuse):
        if version == "HTTP/1.1" and host is None:
            refuse = True  # HTTP/1.1 needs a Host, whatever the form
        cases[Case(method, target, version, host, refuse)] = None

    paths = origin_paths()
    # every origin-form target with a public and an admin host over HTTP/1.1, and over HTTP/1.0
    for target, refuse in paths.items():
        add("GET", target, "HTTP/1.1", "public.example.com", refuse)
        add("GET", target, "HTTP/1.1", "admin.example.com.", refuse)
        add("GET", target, "HTTP/1.0", "public.example.com", refuse)
    # the Host variants crossed with a few targets, both versions, and with no Host at all
    for target in ["/x", "/public/x", "/api/x", "/public/../x", "/public/%2e%2e/x",
                   "/public/../api/x"]:
        for version in ("HTTP/1.1", "HTTP/1.0"):
            for host, bad_host in HOSTS.items():
                add("GET", target, version, host, paths.get(target, False) or bad_host)
            add("GET", target, version, None, paths.get(target, False))
    # absolute-form, with and without Host, both versions
    for target, refuse in absolute_targets().items():
        for version in ("HTTP/1.1", "HTTP/1.0"):
            for host in (None, "admin.example.com", "public.example.com", "ADMIN.example.com."):
                add("GET", target, version, host, refuse)
    # neither origin- nor absolute-form
    for method, target in [("OPTIONS", "*"), ("GET", "*"), ("GET", "api/x"),
                           ("GET", "\\api\\x"), ("CONNECT", "admin.example.com:443")]:
        for host in ("public.example.com", "admin.example.com"):
            add(method, target, "HTTP/1.1", host, True)
    return list(cases)


CORPUS = corpus()


# --------------------------------------------------------------------------- the canonical form

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


def upper_escapes(s: str) -> str:
    return re.sub(r"%[0-9a-fA-F]{2}", lambda m: m[0].upper(), s)


def canonical_path(path: str) -> str:
    """The spec's canonical path (for targets it accepts): unreserved escapes decoded, runs of /
    merged, then dot-segments removed (RFC 3986 5.2.4) -- the order nginx applies too."""
    def decode(m):
        c = chr(int(m[1], 16))
        return c if c in UNRESERVED else m[0].upper()

    path = re.sub(r"/{2,}", "/", re.sub(r"%([0-9A-Fa-f]{2})", decode, path))
    parts = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if last:
                out.append("")  # "/a/.." is "/", "/a/b/." is "/a/b/"
        else:
            out.append(seg)
    return "/" + "/".join(out)


def canonical_request(case: Case) -> tuple[str, str | None]:
    """(target, Host) the backend should receive for an accepted case (Host None: not checked)."""
    target, host = case.target.split("#")[0], case.host
    m = re.match(r"(?i)https?://([^/?]*)(.*)", target)
    if m:
        host, target = m[1], m[2] or "/"
    path, q, query = target.partition("?")
    if host is not None:
        name, colon, port = host.partition(":")
        host = name.lower().removesuffix(".") + colon + port
    return canonical_path(path) + q + query, host


# --------------------------------------------------------------------------- running it

@dataclass
class Outcome:
    case: Case
    with_session: bool
    reply: Reply
    forwarded: list[str]  # nginx access-log lines for this request

    @property
    def route(self) -> str | None:
        """The route extoken chose (the port nginx answered on), if nginx answered."""
        p = self.reply.probe
        if p is not None:
            return self.reply.route_hint
        return None

    def __str__(self) -> str:
        who = "with session" if self.with_session else "no credentials"
        got = self.reply.describe()
        if self.forwarded and not self.reply.from_nginx:
            got += f"; nginx got it anyway: {self.forwarded}"
        return f"{self.case} [{who}] -> {got}"


def run_corpus(gw: Gateway, nginx: Nginx, authorization: str | None, tag: str) -> list[Outcome]:
    replies = []
    for i, case in enumerate(CORPUS):
        case_id = f"{tag}-{i}"
        reply = send(gw.port, case.head(case_id, authorization))
        p = reply.probe
        if p is not None:
            reply.route_hint = nginx.route_of_port.get(int(p.get("port") or 0), "?")
        replies.append((case_id, case, reply))
    received = nginx.received()
    return [Outcome(case, authorization is not None, reply, received.get(case_id, []))
            for case_id, case, reply in replies]


@pytest.fixture(scope="module")
def outcomes(gw, nginx, session) -> dict[str, list[Outcome]]:
    return {
        "anonymous": run_corpus(gw, nginx, None, "anon"),
        "session": run_corpus(gw, nginx, f"Bearer {session}", "sess"),
    }


def report(title: str, failures: list[str], total: int):
    if failures:
        shown = "\n".join(f"  - {f}" for f in failures[:150])
        more = f"\n  ... and {len(failures) - 150} more" if len(failures) > 150 else ""
        pytest.fail(f"{title}: {len(failures)} of {total} requests\n{shown}{more}", pytrace=False)


# --------------------------------------------------------------------------- the invariants

def test_corpus_is_large_enough():
    assert len(CORPUS) >= 200, len(CORPUS)
    assert len(set(CORPUS)) == len(CORPUS)


def test_no_unauthenticated_request_reaches_a_protected_location(outcomes):
    failures = []
    for o in outcomes["anonymous"]:
        p = o.reply.probe
        if p is not None and nginx_protected(p["vhost"], p["loc"]):
            failures.append(str(o))
    report("unauthenticated requests answered by a protected nginx location", failures,
           len(outcomes["anonymous"]))


def test_forwarded_requests_reach_the_location_of_their_route(outcomes):
    failures = []
    for mode in ("anonymous", "session"):
        for o in outcomes[mode]:
            p = o.reply.probe
            if p is not None:
                if o.route == "?" or not agrees(o.route, p["vhost"], p["loc"]):
                    failures.append(f"route {o.route} disagrees: {o}")
            elif o.reply.from_nginx:
                failures.append(f"nginx refused what extoken forwarded: {o}")
            elif o.forwarded:
                failures.append(f"forwarded, but the client got another answer: {o}")
    report("extoken's route and nginx's location disagree", failures,
           sum(len(v) for v in outcomes.values()))


def test_protected_routes_forward_the_external_token_not_the_session(outcomes, session):
    failures = []
    for o in outcomes["session"]:
        p = o.reply.probe
        if p is None:
            continue
        if o.route not in PROTECTED_ROUTES:
            continue  # auth: none routes forward the client's headers untouched, by design
        if session in p.get("auth", ""):
            failures.append(f"the Descope session reached nginx: {o}")
        elif p.get("auth") != f"Bearer {EXTERNAL_TOKEN}":
            failures.append(f"Authorization is not the external token: {o}")
    report("protected routes forwarded the wrong Authorization", failures,
           len(outcomes["session"]))


def test_a_session_gets_protected_requests_through(outcomes):
    """A valid session is not refused on a protected route the spec accepts: same corpus, same
    routing, nginx answers (so the invariants above are not vacuous)."""
    failures = []
    for o in outcomes["session"]:
        if o.case.refuse:
            continue
        if o.reply.probe is None and o.reply.status in (401, 403):
            failures.append(str(o))
    report("requests with a valid session refused as unauthenticated", failures,
           len(outcomes["session"]))


def test_nginx_receives_the_canonical_request(outcomes):
    failures = []
    for mode in ("anonymous", "session"):
        for o in outcomes[mode]:
            p = o.reply.probe
            if p is None or o.case.refuse:
                continue
            target, host = canonical_request(o.case)
            if upper_escapes(p["request_uri"]) != upper_escapes(target):
                failures.append(f"target {p['request_uri']!r}, canonical {target!r}: {o}")
            elif host is not None and p["http_host"] != host:
                failures.append(f"Host {p['http_host']!r}, canonical {host!r}: {o}")
    report("nginx received a non-canonical request", failures,
           sum(len(v) for v in outcomes.values()))


def test_what_the_spec_refuses_is_refused_and_never_forwarded(outcomes):
    failures = []
    for mode in ("anonymous", "session"):
        for o in outcomes[mode]:
            if not o.case.refuse:
                continue
            r = o.reply
            if o.forwarded or r.from_nginx:
                failures.append(f"forwarded: {o}")
            elif r.from_extoken and r.status != 400:
                failures.append(f"extoken answered {r.status}, not 400: {o}")
            elif r.status is not None and not 400 <= r.status < 500:
                failures.append(f"not a 4xx refusal: {o}")
    report("requests the spec refuses were not refused", failures,
           sum(len(v) for v in outcomes.values()))


# --------------------------------------------------------------------------- targeted cases

def one(gw: Gateway, nginx: Nginx, target: str, host: str | None = "public.example.com",
        authorization: str | None = None, version: str = "HTTP/1.1") -> Outcome:
    case = Case("GET", target, version, host, False)
    case_id = f"one-{uuid.uuid4().hex[:8]}"
    reply = send(gw.port, case.head(case_id, authorization))
    p = reply.probe
    if p is not None:
        reply.route_hint = nginx.route_of_port.get(int(p.get("port") or 0), "?")
    return Outcome(case, authorization is not None, reply, nginx.received().get(case_id, []))


def test_public_dotdot_api_is_the_protected_api_route(gw, nginx, session):
    o = one(gw, nginx, "/public/../api/x")
    assert o.reply.status == 401 and o.reply.from_extoken and not o.forwarded, str(o)
    o = one(gw, nginx, "/public/../api/x", authorization=f"Bearer {session}")
    p = o.reply.probe
    assert p is not None and o.route == "api" and p["loc"] == "api", str(o)
    assert p["auth"] == f"Bearer {EXTERNAL_TOKEN}", str(o)
    assert p["request_uri"] == "/api/x", f"not the canonical target: {o}"


def test_encoded_slash_is_refused(gw, nginx):
    for target in ("/api%2fx", "/api%2Fx"):
        o = one(gw, nginx, target)
        assert o.reply.status == 400 and o.reply.from_extoken and not o.forwarded, str(o)


def test_absolute_form_admin_without_credentials_is_401(gw, nginx):
    o = one(gw, nginx, "http://admin.example.com/x", host="admin.example.com")
    assert o.reply.status == 401 and o.reply.from_extoken and not o.forwarded, str(o)


def test_admin_host_with_trailing_dot_is_the_admin_route(gw, nginx, session):
    o = one(gw, nginx, "/x", host="ADMIN.example.com.")
    assert o.reply.status == 401 and o.reply.from_extoken and not o.forwarded, str(o)
    o = one(gw, nginx, "/x", host="ADMIN.example.com.", authorization=f"Bearer {session}")
    p = o.reply.probe
    assert p is not None and o.route == "admin" and p["vhost"] == "admin", str(o)
    assert p["http_host"] == "admin.example.com", f"forwarded Host is not canonical: {o}"
