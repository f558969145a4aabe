"""Method-override headers against ``require.methods`` (security issue), with a real framework.

Express with the ``method-override`` middleware (and Rails' ``Rack::MethodOverride``) routes a
``POST`` carrying ``X-HTTP-Method-Override: DELETE`` (or ``X-HTTP-Method``, ``X-Method-Override``,
or ``?_method=DELETE``) as a ``DELETE``. A route that allows only ``GET`` and ``POST``
(``require: {methods: [GET, POST]}``) and judges the request line alone lets that DELETE through.
Required: every such value is judged like the request method; one the route does not allow is a
``403`` naming the rule ``methods``, and nothing is forwarded.

Set-up (127.0.0.1): ``express/method_override_server.js`` (Express 4 + method-override from
``tests/interop/node_modules``, one ``methodOverride(...)`` per header and one for the ``_method``
query getter, a handler per method that records what Express routed) behind extoken
(``require: {methods: [GET, POST]}``, ``claim`` connector). Requests carry a valid session and are
sent over raw sockets, byte-exact (duplicate headers, odd spacing).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from conftest import EXTOKEN_BIN, Gateway, NodeServer
from test_nginx_differential import Reply, send

ALLOWED = ("GET", "POST")
EXTERNAL_TOKEN = f"legacy-method-override-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class MCase:
    name: str
    method: str
    target: str
    headers: tuple[str, ...] = ()
    # "403": refused by the methods rule, nothing forwarded; a method: forwarded, and Express
    # routes it as that method; None: only the invariant (Express never routes a method the
    # route does not allow).
    expect: str | None = "403"

    def head(self, case_id: str, authorization: str | None) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: 127.0.0.1",
                 f"X-Probe-Case: {case_id}"]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += list(self.headers)
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            lines.append("Content-Length: 0")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


HMO, HM, MO = "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"

CASES = [
    # the request line alone (today's rule; the harness's own checks)
    MCase("post", "POST", "/x", expect="POST"),
    MCase("get", "GET", "/x", expect="GET"),
    MCase("delete", "DELETE", "/x"),
    MCase("put", "PUT", "/x"),
    # the issue: each header and the query parameter
    MCase("hmo-delete", "POST", "/x", (f"{HMO}: DELETE",)),
    MCase("hm-delete", "POST", "/x", (f"{HM}: DELETE",)),
    MCase("mo-delete", "POST", "/x", (f"{MO}: DELETE",)),
    MCase("query-delete", "POST", "/x?_method=DELETE"),
    # method-override upper-cases the value
    MCase("hmo-lower", "POST", "/x", (f"{HMO}: delete",)),
    MCase("hm-lower", "POST", "/x", (f"{HM}: delete",)),
    MCase("mo-mixed", "POST", "/x", (f"{MO}: DeLeTe",)),
    MCase("query-lower", "POST", "/x?_method=delete"),
    # allowed values pass, and Express sees them
    MCase("hmo-get", "POST", "/x", (f"{HMO}: GET",), expect="GET"),
    MCase("hm-post", "POST", "/x", (f"{HM}: POST",), expect="POST"),
    MCase("query-get", "POST", "/x?_method=GET", expect="GET"),
    # other disallowed methods, incl. ones extoken's methods: list cannot even name
    MCase("hmo-put", "POST", "/x", (f"{HMO}: PUT",)),
    MCase("hmo-patch", "POST", "/x", (f"{HMO}: PATCH",)),
    MCase("hmo-head", "POST", "/x", (f"{HMO}: HEAD",)),
    MCase("hmo-options", "POST", "/x", (f"{HMO}: OPTIONS",)),
    MCase("hmo-purge", "POST", "/x", (f"{HMO}: PURGE",)),
    MCase("hmo-propfind", "POST", "/x", (f"{HMO}: propfind",)),
    # header spelling and value shapes Express still reads as DELETE
    MCase("hmo-name-lower", "POST", "/x", (f"{HMO.lower()}: DELETE",)),
    MCase("hmo-name-upper", "POST", "/x", (f"{HMO.upper()}: DELETE",)),
    MCase("hmo-spaces", "POST", "/x", (f"{HMO}:    DELETE   ",)),
    MCase("hmo-tab", "POST", "/x", (f"{HMO}:\tDELETE",)),
    MCase("hmo-list", "POST", "/x", (f"{HMO}: DELETE, GET",)),
    MCase("hmo-list-nospace", "POST", "/x", (f"{HMO}: DELETE,GET",)),
    # every value is judged: a second header line, or another override header, with DELETE
    MCase("hmo-twice", "POST", "/x", (f"{HMO}: GET", f"{HMO}: DELETE")),
    MCase("hmo-twice-first", "POST", "/x", (f"{HMO}: DELETE", f"{HMO}: GET")),
    MCase("hmo-get-hm-delete", "POST", "/x", (f"{HMO}: GET", f"{HM}: DELETE")),
    MCase("hm-get-mo-delete", "POST", "/x", (f"{HM}: GET", f"{MO}: DELETE")),
    MCase("hmo-get-query-delete", "POST", "/x?_method=DELETE", (f"{HMO}: GET",)),
    # query spellings (method-override reads the query with querystring.parse: decoded keys and
    # values, the first of repeated keys)
    MCase("query-second-param", "POST", "/x?a=1&_method=DELETE"),
    MCase("query-encoded-key", "POST", "/x?%5Fmethod=DELETE"),
    MCase("query-encoded-key-lower", "POST", "/x?%5fmethod=DELETE"),
    MCase("query-encoded-value", "POST", "/x?_method=DEL%45TE"),
    MCase("query-repeated", "POST", "/x?_method=DELETE&_method=GET"),
    MCase("query-repeated-get-first", "POST", "/x?_method=GET&_method=DELETE"),
    MCase("query-on-api-path", "POST", "/api/items/1?_method=DELETE"),
    # Express ignores these (only a POST is overridden; "DELETE " is no method; an underscore
    # header name is another header to Node): only the invariant holds
    MCase("get-with-hmo", "GET", "/x", (f"{HMO}: DELETE",), expect=None),
    MCase("query-trailing-space", "POST", "/x?_method=DELETE+", expect=None),
    MCase("underscore-header", "POST", "/x", ("X_HTTP_Method_Override: DELETE",), expect=None),
]


# --------------------------------------------------------------------------- Express

def by_case(express: NodeServer) -> dict[str, list[dict]]:
    """What Express routed, by the case id each request carried."""
    out: dict[str, list[dict]] = {}
    for rec in express.records():
        out.setdefault(rec.get("case") or "-", []).append(rec)
    return out


@pytest.fixture(scope="module")
def express(tmp_path_factory):
    e = NodeServer("method_override_server.js", ("express", "method-override"),
                   tmp_path_factory.mktemp("express"))
    yield e
    e.stop()


@pytest.fixture(scope="module")
def session(descope) -> str:
    out = subprocess.run(
        [str(EXTOKEN_BIN), "mint", "--key", str(descope.key), "--project-id", descope.project_id,
         "--sub", "U2methodOverride", "--ttl", "30m", "--external-token", EXTERNAL_TOKEN],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, f"extoken mint failed: {out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, descope, express):
    cfg = {
        "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
        "connectors": {"ext": {"type": "claim"}},
        "routes": [{"name": "api", "path_prefix": "/", "connector": "ext",
                    "upstream": f"http://127.0.0.1:{express.port}",
                    "require": {"methods": list(ALLOWED)}}],
    }
    g = Gateway(tmp_path_factory.mktemp("gw-method-override"), cfg)
    yield g
    g.stop()


# --------------------------------------------------------------------------- running it

@dataclass
class Outcome:
    case: MCase
    reply: Reply
    seen: list[dict]  # what Express recorded for this request

    def __str__(self) -> str:
        r = self.reply
        if r.status is None:
            got = "no answer"
        else:
            got = f"{r.status} {r.body[:160]!r}"
        routed = [f"{s['originalMethod']}->{s['method']}" for s in self.seen]
        return (f"{self.case.name}: {self.case.method} {self.case.target} "
                f"{list(self.case.headers)} -> {got}; Express routed {routed or 'nothing'}")


@pytest.fixture(scope="module")
def outcomes(gw, express, session) -> list[Outcome]:
    sent = []
    for c in CASES:
        case_id = f"gw-{c.name}-{uuid.uuid4().hex[:6]}"
        sent.append((case_id, c, send(gw.port, c.head(case_id, f"Bearer {session}"))))
    seen = by_case(express)
    return [Outcome(c, reply, seen.get(case_id, [])) for case_id, c, reply in sent]


def report(title: str, failures: list[str], total: int):
    if failures:
        shown = "\n".join(f"  - {f}" for f in failures)
        pytest.fail(f"{title}: {len(failures)} of {total} requests\n{shown}", pytrace=False)


# --------------------------------------------------------------------------- the tests

def test_express_overrides_the_method(express):
    """The framework itself, without extoken: each header and the query parameter turn a POST
    into what they say (upper-cased), and the first of a list wins."""
    cases = [
        ((f"{HMO}: DELETE",), "/x", "DELETE"),
        ((f"{HM}: delete",), "/x", "DELETE"),
        ((f"{MO}: PUT",), "/x", "PUT"),
        ((), "/x?_method=DELETE", "DELETE"),
        ((), "/x?%5Fmethod=DEL%45TE", "DELETE"),
        ((f"{HMO}: DELETE, GET",), "/x", "DELETE"),
        ((f"{HMO}: GET", f"{HM}: DELETE"), "/x", "DELETE"),
        ((f"{HMO}: HEAD",), "/x", "HEAD"),
        ((), "/x", "POST"),
    ]
    failures = []
    for headers, target, want in cases:
        case_id = f"direct-{uuid.uuid4().hex[:8]}"
        send(express.port, MCase("direct", "POST", target, headers).head(case_id, None))
        seen = by_case(express).get(case_id, [])
        if [s["method"] for s in seen] != [want]:
            failures.append(f"POST {target} {list(headers)}: expected {want}, Express: {seen}")
    assert not failures, "\n".join(failures)


def test_express_never_routes_a_method_the_route_does_not_allow(outcomes):
    failures = [str(o) for o in outcomes
                if any(s["method"] not in ALLOWED for s in o.seen)]
    report(f"Express routed a method outside require.methods {list(ALLOWED)}", failures,
           len(outcomes))


def test_disallowed_overrides_are_403_methods_and_not_forwarded(outcomes):
    failures = []
    for o in outcomes:
        if o.case.expect != "403":
            continue
        r = o.reply
        try:
            rule = json.loads(r.body).get("rule")
        except (ValueError, AttributeError):
            rule = None
        if o.seen:
            failures.append(f"forwarded: {o}")
        elif r.status != 403 or rule != "methods":
            failures.append(f"expected 403 with rule 'methods': {o}")
        elif not r.headers.get("www-authenticate", "").startswith(
                'Bearer error="insufficient_scope"'):
            failures.append(f"no insufficient_scope challenge: {o}")
    report("disallowed method overrides were not refused", failures,
           sum(o.case.expect == "403" for o in outcomes))


def test_allowed_overrides_pass_and_express_sees_them(outcomes):
    failures = []
    for o in outcomes:
        want = o.case.expect
        if want in (None, "403"):
            continue
        if o.reply.status != 200 or [s["method"] for s in o.seen] != [want]:
            failures.append(f"expected 200 and Express routing {want}: {o}")
        elif o.seen[0]["authorization"] != f"Bearer {EXTERNAL_TOKEN}":
            failures.append(f"Express did not get the external token: {o}")
    report("allowed requests did not pass as expected", failures,
           sum(o.case.expect not in (None, "403") for o in outcomes))
