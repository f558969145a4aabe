"""Differential test: extoken's routing against a real servlet container's mapping of the same
request (security issue: ``;`` path parameters moving a request to a less protected route).

Servlet containers (Tomcat, Jetty, Undertow, and Spring's ``UrlPathHelper``) remove ``;params``
from every path segment before they map a request to a servlet: Tomcat serves ``/api;x/admin``
from the servlet mapped to ``/api/*``, with ``request_uri`` still ``/api;x/admin``. A gateway that
routes on the path with the parameters left in sees ``/api;x/admin`` as something other than
``/api`` (the segment is ``api;x``), picks the open ``/`` route (``auth: none``), and forwards it
as is: the protected servlet answers a request that carried no identity. nginx keeps ``;`` as an
ordinary character, which is why ``test_nginx_differential.py`` cannot see this; this test puts a
servlet container beside it as a second judge.

Set-up (all on 127.0.0.1): a private Tomcat 10.1 (Debian's, ``CATALINA_HOME`` from run.sh, our
own ``CATALINA_BASE`` in the test's temp dir, no shutdown port) with one connector per extoken
route and, in its ROOT webapp, the same probe servlet twice (``servlet/``): ``protected`` on
``/api/*`` and ``open`` on ``/``. Each answers with the servlet Tomcat chose, the connector port
(= the extoken route), the method and ``Authorization`` it got, and logs the request. extoken
routes: ``api`` (/api, auth required, external token via the ``claim`` connector) and ``root``
(/, auth none), each to its own Tomcat port.

Corpus: ``;`` parameters in every place and encoding (``/api;x/admin``, ``/api;``, ``/;x/api``,
``/%61pi;x``, ``%3B``, case, ``//``, ``/./``, dot-segments around them, absolute-form) and the
origin-form targets of the nginx differential, sent over raw sockets without and with a session,
once per ``limits.path_parameters`` mode (default ``keep``, ``strip``, ``reject``). Checked for
all, failures listed together:

1. No unauthenticated request reaches the protected servlet (its answers and its log).
2. Agreement: the protected servlet is reached only through the ``api`` route, the open one
   only through ``root``; Tomcat refuses nothing extoken forwards.
3. With a session, the protected servlet gets ``Bearer <external token>``, never the session.
4. What is forwarded: the canonical target with its parameters (``keep``), without them
   (``strip``); with ``reject`` a path with a parameter is a 400 and never reaches Tomcat.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (EXTOKEN_BIN, HERE, Gateway, _die_with_parent, free_port, read_case_log,
                      stop_process)
from test_nginx_differential import (
    Case,
    Reply,
    canonical_request,
    origin_paths,
    send,
    upper_escapes,
)

CATALINA_HOME_ENV = "INTEROP_CATALINA_HOME"
ROUTES = ("api", "root")
EXTERNAL_TOKEN = f"legacy-servlet-diff-{uuid.uuid4().hex[:12]}"
MODES = ("keep", "strip", "reject")  # limits.path_parameters; "keep" is tested as the default

# The requests of the issue: Tomcat serves each from the /api/* servlet.
BYPASSES = [
    "/api;x/admin", "/api;/admin", "/api;jsessionid=0/admin", "/%61pi;x/admin",
    "/api;a=b;c=d/admin", "/api;", "/api;x", "//api;x/admin", "/./api;x/admin", "/;x/api/admin",
    "/api;x=%2e%2e/admin",
]
# ... and look-alikes Tomcat serves from the open servlet.
NOT_API = ["/api%3Bx/admin", "/api%3bx/admin", "/API;x/admin", "/apix;x/admin", "/api;x/../admin"]


# --------------------------------------------------------------------------- Tomcat

def find_tool(env: str, name: str) -> str | None:
    return os.environ.get(env) or shutil.which(name)


class Tomcat:
    """A private Tomcat: ``CATALINA_HOME`` from the Debian package, ``CATALINA_BASE`` here, the
    probe webapp compiled with ``javac`` against its ``servlet-api.jar``, run in the foreground
    (``Bootstrap start``, as ``catalina.sh run`` does) and stopped with a signal."""

    def __init__(self, home: Path, base: Path, java: str, javac: str):
        self.home, self.base = home, base
        self.ports = {r: free_port() for r in ROUTES}
        self.route_of_port = {p: r for r, p in self.ports.items()}
        self.probe_log = base / "probe.log"
        self.log_path = base / "tomcat.log"
        src = HERE / "servlet"
        root = base / "webapps" / "ROOT"
        classes = root / "WEB-INF" / "classes"
        for d in (base / "conf", base / "temp", base / "logs", base / "work", classes,
                  root / "META-INF"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "web.xml", root / "WEB-INF" / "web.xml")
        shutil.copy(src / "context.xml", root / "META-INF" / "context.xml")
        conf = (src / "server.xml.in").read_text()
        for r, p in self.ports.items():
            conf = conf.replace(f"@PORT_{r.upper()}@", str(p))
        left = re.findall(r"@[A-Z_]+@", conf)
        assert not left, f"unfilled placeholders in server.xml: {left}"
        (base / "conf" / "server.xml").write_text(conf)
        out = subprocess.run(
            [javac, "-nowarn", "-encoding", "UTF-8", "--release", "11",
             "-cp", str(home / "lib" / "servlet-api.jar"), "-d", str(classes),
             str(src / "Probe.java")],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, f"javac failed:\n{out.stdout}{out.stderr}"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m",
             f"-Dcatalina.home={home}", f"-Dcatalina.base={base}",
             f"-Djava.io.tmpdir={base / 'temp'}", f"-Dprobe.log={self.probe_log}",
             "-cp", f"{home / 'bin' / 'bootstrap.jar'}:{home / 'bin' / 'tomcat-juli.jar'}",
             "org.apache.catalina.startup.Bootstrap", "start"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=base, preexec_fn=_die_with_parent,
        )
        self._ready = False

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 90.0) -> "Tomcat":
        """Both connectors answer with the probe servlet (ports are bound before the webapp is
        deployed, so a connect alone proves nothing)."""
        if self._ready:
            return self
        deadline = time.monotonic() + timeout
        pending = set(self.ports.values())
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Tomcat exited with {self.proc.returncode}:\n{self.logs()}")
            for p in list(pending):
                head = b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                try:
                    if send(p, head, timeout=2.0).body.startswith(b"SERVLETPROBE\n"):
                        pending.discard(p)
                except OSError:  # not listening yet
                    pass
            if pending:
                time.sleep(0.1)
        if pending:
            self.stop()
            raise AssertionError(f"Tomcat did not serve the probe on {sorted(pending)} within "
                                 f"{timeout}s:\n{self.logs()}")
        self._ready = True
        return self

    def received(self) -> dict[str, list[str]]:
        """Case id -> the probe servlet's log lines for it."""
        return read_case_log(self.probe_log)

    def stop(self):
        stop_process(self.proc, self.log, 15)


@pytest.fixture(scope="module")
def tomcat_started(tmp_path_factory):
    """Tomcat launched (not yet waited for): the gateways and the session are made meanwhile."""
    home = os.environ.get(CATALINA_HOME_ENV)
    if not home:
        pytest.fail(f"{CATALINA_HOME_ENV} is not set: run tests/interop/run.sh, which installs "
                    f"Tomcat 10 (tomcat10-common) and sets it", pytrace=False)
    home_p = Path(home)
    for need in ("bin/bootstrap.jar", "bin/tomcat-juli.jar", "lib/servlet-api.jar"):
        if not (home_p / need).is_file():
            pytest.fail(f"{CATALINA_HOME_ENV}={home!r} has no {need}", pytrace=False)
    java = find_tool("INTEROP_JAVA", "java")
    javac = find_tool("INTEROP_JAVAC", "javac")
    if not java or not javac:
        pytest.fail("no java/javac: run tests/interop/run.sh, which installs "
                    "default-jdk-headless when javac is missing", pytrace=False)
    t = Tomcat(home_p, tmp_path_factory.mktemp("tomcat"), java, javac)
    yield t
    t.stop()


@pytest.fixture(scope="module")
def tomcat(tomcat_started, session) -> Tomcat:
    # `session` (the dev key and a mint) is made while Tomcat boots.
    return tomcat_started.wait_ready()


@pytest.fixture(scope="module")
def session(descope) -> str:
    """A valid Descope session whose externalToken claim is EXTERNAL_TOKEN."""
    out = subprocess.run(
        [str(EXTOKEN_BIN), "mint", "--key", str(descope.key), "--project-id", descope.project_id,
         "--sub", "U2servletDiff", "--ttl", "30m", "--external-token", EXTERNAL_TOKEN],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, f"extoken mint failed: {out.stderr}"
    return out.stdout.strip()


def gateway_config(descope, tomcat: Tomcat, mode: str) -> dict:
    cfg = {
        "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
        "connectors": {"ext": {"type": "claim"}},
        "routes": [
            {"name": "api", "path_prefix": "/api", "connector": "ext",
             "upstream": f"http://127.0.0.1:{tomcat.ports['api']}"},
            {"name": "root", "path_prefix": "/", "auth": "none",
             "upstream": f"http://127.0.0.1:{tomcat.ports['root']}"},
        ],
    }
    if mode != "keep":  # keep is the default: tested without the key, as most configs are
        cfg["limits"] = {"path_parameters": mode}
    return cfg


def check_config(tmp: Path, cfg: dict) -> str | None:
    """``extoken check``'s complaint about a config (None if it accepts it)."""
    path = tmp / "check.yaml"
    cfg = {"listen": "127.0.0.1:1", **cfg}
    path.write_text(json.dumps(cfg))
    out = subprocess.run([str(EXTOKEN_BIN), "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    return None if out.returncode == 0 else (out.stdout + out.stderr).strip()


@pytest.fixture(scope="module", params=MODES)
def gw(request, tmp_path_factory, descope, tomcat_started, session):
    mode = request.param
    wd = tmp_path_factory.mktemp(f"gw-servlet-{mode}")
    cfg = gateway_config(descope, tomcat_started, mode)
    refused = check_config(wd, cfg)
    if refused:
        pytest.fail(f"limits.path_parameters: {mode} is not accepted by this extoken build "
                    f"(the ;-parameter fix is not in it):\n{refused}", pytrace=False)
    g = Gateway(wd, cfg)
    g.mode = mode
    yield g
    g.stop()


# --------------------------------------------------------------------------- the corpus

def param_paths() -> list[str]:
    """Targets with ``;`` parameters (all accepted by the spec: a parameter on a dot-segment,
    ``..;``, is refused and is in the nginx corpus)."""
    p = list(BYPASSES) + list(NOT_API)
    p += [
        "/api;x/", "/api;x/admin;y", "/api;x?y=1", "/api;x/admin?_=;", "/ap%69;x/admin",
        "/%2e/api;x/admin", "/public/%2e%2e/api;x/admin", "/x/%2E%2E/api;x/admin",
        "/;/api/admin", "/;x/api", "/;jsessionid=1/api/admin", "/api;../admin",
        "/api;/../admin", "/x;y/../api/admin", "/a;b/api;c/admin", "/api;x;/admin",
        "/api;x%20y/admin", "/api;x=%3B/admin", "/api/x;y", "/api/;x/admin", "/x;y", "/;",
        "/public;x/../api/admin", "/apI;x/admin", "/api%3B/admin", "/api%3B",
        "/?a=;b", "/x?;/api",
    ]
    return p


@dataclass(frozen=True)
class SCase:
    case: Case
    params: bool  # the canonical path has a ; parameter (what reject refuses, strip removes)

    def __str__(self) -> str:
        return str(self.case)


def gateway_canonical(case: Case) -> tuple[str, str | None]:
    """The canonical request as extoken forwards it: the nginx model, with a segment that is only
    ``;params`` dropped first (an empty segment to a servlet container, so extoken drops it too:
    it can neither be routed nor take a ``..`` away from the segment before it)."""
    path, q, query = case.target.partition("?")
    path = re.sub(r"(?<=/);[^/#]*", "", path)
    return canonical_request(Case(case.method, path + q + query, case.version, case.host,
                                  case.refuse))


def canonical_has_params(case: Case) -> bool:
    target, _ = gateway_canonical(case)
    return ";" in target.partition("?")[0]


def corpus() -> list[SCase]:
    cases: dict[Case, None] = {}
    for target in param_paths():
        for host in ("public.example.com", "127.0.0.1"):
            cases[Case("GET", target, "HTTP/1.1", host, False)] = None
        cases[Case("GET", target, "HTTP/1.0", "public.example.com", False)] = None
    for target in ("/api;x/admin", "/;x/api/admin", "/api;"):
        cases[Case("GET", f"http://public.example.com{target}", "HTTP/1.1",
                   "public.example.com", False)] = None
        cases[Case("POST", target, "HTTP/1.1", "public.example.com", False)] = None
    # the nginx differential's origin-form targets (its refusals hold here too)
    for target, refuse in origin_paths().items():
        cases[Case("GET", target, "HTTP/1.1", "public.example.com", refuse)] = None
    return [SCase(c, not c.refuse and canonical_has_params(c)) for c in cases]


CORPUS = corpus()


def strip_params(path: str) -> str:
    """A canonical path without its segments' ;parameters, runs of / merged again."""
    out = "/".join(seg.split(";", 1)[0] for seg in path.split("/"))
    return re.sub(r"/{2,}", "/", out) or "/"


def expected_target(case: Case, mode: str) -> str:
    target, _ = gateway_canonical(case)
    if mode != "strip":
        return target
    path, q, query = target.partition("?")
    return strip_params(path) + q + query


# --------------------------------------------------------------------------- running it

def probe(reply: Reply) -> dict[str, str] | None:
    if not reply.body.startswith(b"SERVLETPROBE\n"):
        return None
    fields: dict[str, str] = {}
    for line in reply.body.decode("utf-8", "replace").splitlines()[1:]:
        k, _, v = line.partition("=")
        fields.setdefault(k, v)
    return fields


def from_tomcat(reply: Reply) -> bool:
    """Tomcat answered: the probe, or one of its own error pages."""
    return probe(reply) is not None or b"Apache Tomcat" in reply.body


def head(case: Case, case_id: str, authorization: str | None) -> bytes:
    h = case.head(case_id, authorization)
    if case.method == "POST":
        h = h[:-2] + b"Content-Length: 0\r\n\r\n"
    return h


@dataclass
class Outcome:
    scase: SCase
    mode: str
    with_session: bool
    reply: Reply
    reached: list[str]  # the probe servlet's log lines for this request
    route: str | None  # the extoken route whose Tomcat port answered

    @property
    def case(self) -> Case:
        return self.scase.case

    @property
    def servlet(self) -> str | None:
        p = probe(self.reply)
        return p["servlet"] if p else None

    def __str__(self) -> str:
        who = "with session" if self.with_session else "no credentials"
        r = self.reply
        p = probe(r)
        if r.status is None:
            got = "no answer (connection closed)"
        elif p:
            got = (f"{r.status} from servlet {p['servlet']} on port {p['port']} (route "
                   f"{self.route}) request_uri={p['request_uri']!r} "
                   f"auth={p['auth'][:24]!r}")
        else:
            src = "Tomcat" if from_tomcat(r) else "extoken" if r.from_extoken else "pingora"
            got = f"{r.status} from {src}: {r.body[:100]!r}"
        if self.reached and p is None:
            got += f"; Tomcat got it anyway: {self.reached}"
        return f"[{self.mode}] {self.case} [{who}] -> {got}"


def run_corpus(g: Gateway, tomcat: Tomcat, authorization: str | None, tag: str) -> list[Outcome]:
    replies = []
    for i, sc in enumerate(CORPUS):
        case_id = f"{tag}-{i}"
        reply = send(g.port, head(sc.case, case_id, authorization))
        replies.append((case_id, sc, reply))
    received = tomcat.received()
    out = []
    for case_id, sc, reply in replies:
        p = probe(reply)
        route = tomcat.route_of_port.get(int(p["port"] or 0), "?") if p else None
        out.append(Outcome(sc, g.mode, authorization is not None, reply,
                           received.get(case_id, []), route))
    return out


@pytest.fixture(scope="module")
def outcomes(gw, tomcat, session) -> dict[str, list[Outcome]]:
    return {
        "anonymous": run_corpus(gw, tomcat, None, f"{gw.mode}-anon"),
        "session": run_corpus(gw, tomcat, f"Bearer {session}", f"{gw.mode}-sess"),
    }


def report(title: str, failures: list[str], total: int):
    if failures:
        shown = "\n".join(f"  - {f}" for f in failures[:120])
        more = f"\n  ... and {len(failures) - 120} more" if len(failures) > 120 else ""
        pytest.fail(f"{title}: {len(failures)} of {total} requests\n{shown}{more}", pytrace=False)


def raw_has_params(case: Case) -> bool:
    """A raw ``;`` in the path as sent (reject refuses it even where canonicalization removed it:
    ``/;x/api``, ``/a;x/../b``)."""
    target = re.sub(r"(?i)^https?://[^/?]*", "", case.target)
    return ";" in target.partition("?")[0]


def refused_in(mode: str, sc: SCase) -> bool:
    return sc.case.refuse or (mode == "reject" and raw_has_params(sc.case))


# --------------------------------------------------------------------------- Tomcat itself

def direct(tomcat: Tomcat, target: str) -> dict[str, str]:
    head_ = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    reply = send(tomcat.ports["root"], head_)
    p = probe(reply)
    assert p is not None, f"Tomcat did not answer {target!r} with the probe: {reply.describe()}"
    return p


def test_tomcat_maps_path_parameters_like_a_servlet_container(tomcat):
    """The judge itself, without extoken: Tomcat removes ;params from every segment before
    mapping (so these reach /api/*, with request_uri as sent), %3B is part of the segment."""
    for target in BYPASSES:
        p = direct(tomcat, target)
        assert p["servlet"] == "protected" and p["servlet_path"] == "/api", (target, p)
        assert ";" in p["request_uri"], (target, p)
    for target in NOT_API:
        assert direct(tomcat, target)["servlet"] == "open", target
    assert direct(tomcat, "/api/admin")["servlet"] == "protected"
    assert direct(tomcat, "/x")["servlet"] == "open"


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 200, len(CORPUS)
    assert sum(sc.params for sc in CORPUS) >= 60


# --------------------------------------------------------------------------- the invariants

def test_no_unauthenticated_request_reaches_the_protected_servlet(outcomes):
    failures = []
    for o in outcomes["anonymous"]:
        if o.servlet == "protected" or any("servlet=protected" in r for r in o.reached):
            failures.append(str(o))
    report("unauthenticated requests served by the protected servlet (/api/*)", failures,
           len(outcomes["anonymous"]))


def test_extoken_route_agrees_with_the_servlet_mapping(outcomes):
    failures = []
    for mode in ("anonymous", "session"):
        for o in outcomes[mode]:
            servlet = o.servlet
            if servlet is not None:
                want = "api" if servlet == "protected" else "root"
                if o.route != want:
                    failures.append(f"route {o.route}, servlet {servlet}: {o}")
            elif from_tomcat(o.reply):
                failures.append(f"Tomcat refused what extoken forwarded: {o}")
            elif o.reached:
                failures.append(f"forwarded, but the client got another answer: {o}")
    report("extoken's route and Tomcat's servlet mapping disagree", failures,
           sum(len(v) for v in outcomes.values()))


def test_protected_servlet_gets_the_external_token_not_the_session(outcomes, session):
    failures = []
    for o in outcomes["session"]:
        p = probe(o.reply)
        if p is None or p["servlet"] != "protected":
            continue
        if session in p["auth"]:
            failures.append(f"the Descope session reached the protected servlet: {o}")
        elif p["auth"] != f"Bearer {EXTERNAL_TOKEN}":
            failures.append(f"Authorization is not the external token: {o}")
    report("the protected servlet got the wrong Authorization", failures,
           len(outcomes["session"]))


def test_a_session_gets_its_requests_through(outcomes):
    """Not vacuous: with a valid session, what the spec accepts is served by Tomcat."""
    failures = []
    for o in outcomes["session"]:
        if refused_in(o.mode, o.scase):
            continue
        if probe(o.reply) is None:
            failures.append(str(o))
    report("requests with a valid session not served", failures, len(outcomes["session"]))


def test_tomcat_receives_the_target_of_the_mode(outcomes):
    """keep (default): the canonical target with its ;parameters, as sent; strip: without any."""
    failures = []
    for mode in ("anonymous", "session"):
        for o in outcomes[mode]:
            p = probe(o.reply)
            if p is None or o.case.refuse:
                continue
            want = expected_target(o.case, o.mode).partition("?")[0]
            got = p["request_uri"]
            if upper_escapes(got) != upper_escapes(want):
                failures.append(f"request_uri {got!r}, expected {want!r}: {o}")
            elif o.mode == "strip" and ";" in got:
                failures.append(f"a ;parameter was forwarded: {o}")
    report("Tomcat received another target than the mode's", failures,
           sum(len(v) for v in outcomes.values()))


def test_what_is_refused_is_a_400_and_never_reaches_tomcat(outcomes):
    """The spec's refusals, and with reject every path with a ;parameter."""
    failures = []
    for mode in ("anonymous", "session"):
        for o in outcomes[mode]:
            if not refused_in(o.mode, o.scase):
                continue
            r = o.reply
            if o.reached or from_tomcat(r):
                failures.append(f"forwarded: {o}")
            elif r.from_extoken and r.status != 400:
                failures.append(f"extoken answered {r.status}, not 400: {o}")
            elif r.status is None or not 400 <= r.status < 500:
                failures.append(f"not a 4xx refusal: {o}")
    report("requests to refuse were not refused", failures,
           sum(len(v) for v in outcomes.values()))


# --------------------------------------------------------------------------- targeted cases

def one(g: Gateway, tomcat: Tomcat, target: str, authorization: str | None = None) -> Outcome:
    case = Case("GET", target, "HTTP/1.1", "public.example.com", False)
    case_id = f"one-{uuid.uuid4().hex[:8]}"
    reply = send(g.port, head(case, case_id, authorization))
    p = probe(reply)
    route = tomcat.route_of_port.get(int(p["port"] or 0), "?") if p else None
    return Outcome(SCase(case, canonical_has_params(case)), g.mode, authorization is not None,
                   reply, tomcat.received().get(case_id, []), route)


def test_the_issue_requests_need_a_session(gw, tomcat, session):
    """The requests of the issue, one by one: no session -> 401 (reject: 400), never forwarded;
    with one (keep, strip) -> the protected servlet through the api route, external token."""
    failures = []
    for target in BYPASSES:
        o = one(gw, tomcat, target)
        want = 400 if gw.mode == "reject" else 401
        if not (o.reply.status == want and o.reply.from_extoken and not o.reached):
            failures.append(f"expected extoken's {want}: {o}")
        if gw.mode == "reject":
            continue
        o = one(gw, tomcat, target, f"Bearer {session}")
        p = probe(o.reply)
        if not (p and p["servlet"] == "protected" and o.route == "api"
                and p["auth"] == f"Bearer {EXTERNAL_TOKEN}"):
            failures.append(f"expected the protected servlet via route api: {o}")
    report("the issue's requests (each without and with a session)", failures,
           len(BYPASSES) * (1 if gw.mode == "reject" else 2))


def test_what_extoken_already_gets_right(gw, tomcat, session):
    """Cases the gateway got right before the ;-parameter fix too (the harness sees passes)."""
    o = one(gw, tomcat, "/api/admin")
    assert o.reply.status == 401 and o.reply.from_extoken and not o.reached, str(o)
    o = one(gw, tomcat, "/public/../api/admin")
    assert o.reply.status == 401 and o.reply.from_extoken and not o.reached, str(o)
    o = one(gw, tomcat, "/api/admin", f"Bearer {session}")
    p = probe(o.reply)
    assert p and p["servlet"] == "protected" and o.route == "api", str(o)
    assert p["auth"] == f"Bearer {EXTERNAL_TOKEN}", str(o)
    # look-alikes both sides read as the open route (reject: without a ;parameter only)
    for target in ("/api%3Bx/admin", "/API;x/admin", "/apix;x/admin"):
        if gw.mode == "reject" and ";" in target:
            continue
        o = one(gw, tomcat, target)
        p = probe(o.reply)
        assert p and p["servlet"] == "open" and o.route == "root", str(o)
        want = expected_target(o.case, gw.mode)
        assert upper_escapes(p["request_uri"]) == upper_escapes(want), f"expected {want!r}: {o}"


def test_path_parameters_config_values(tmp_path, descope):
    """limits.path_parameters takes keep, strip and reject, and nothing else."""
    base = {
        "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
        "connectors": {"ext": {"type": "claim"}},
        "routes": [{"path_prefix": "/", "upstream": "http://127.0.0.1:1", "connector": "ext"}],
    }
    for mode in MODES:
        refused = check_config(tmp_path, {**base, "limits": {"path_parameters": mode}})
        assert refused is None, f"path_parameters: {mode} refused:\n{refused}"
    refused = check_config(tmp_path, {**base, "limits": {"path_parameters": "drop"}})
    assert refused is not None and "path_parameters" in refused, refused
