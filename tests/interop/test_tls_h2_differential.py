"""Differential: the routing/bypass corpora of test_nginx_differential.py and
test_servlet_differential.py (imported, not copied) through one gateway over HTTP/1.1 cleartext,
HTTP/1.1 over TLS, HTTP/2 over TLS (ALPN h2) and h2c, without and with a session, against
recording backends (one per route, so the backend that answered is the route extoken chose).

HTTP/1.1 cleartext is the reference. For every case and every other transport: the same status,
the same route, and the backend got the same method, target and headers, except the ones that
name the listener (``X-Forwarded-Proto``, ``X-Forwarded-Port``, ``Forwarded``'s ``proto=``) and
the per-request ``X-Request-Id``; header order is not compared (an HTTP/2 request has no Host
line of its own: pingora writes it where it likes).

HTTP/2 cannot say everything a raw HTTP/1.x head can. Those cases are skipped per case, counted
and printed with the reason (never silently): absolute-form and authority-form targets (HTTP/2
has only ``:path``; the equivalent ``:authority``/``:path`` pair is another request), a request
without Host (HTTP/2 always has ``:authority`` here: it is the only place the host can go),
``CONNECT``. A request HTTP/1.1 refuses with a 4xx (or a close) that HTTP/2 refuses at the
protocol level (RST_STREAM/GOAWAY ``PROTOCOL_ERROR``: the ``h2`` crate refuses a ``:path`` or
``:authority`` the ``http`` crate cannot parse before extoken sees it) counts as the same refusal,
provided neither forwarded anything; those are counted and printed too.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import EXTOKEN_BIN
from test_nginx_differential import CORPUS as NGINX_CORPUS
from test_nginx_differential import Case, Reply, send
from test_servlet_differential import CORPUS as SERVLET_CORPUS
from tls_h2_common import CA, H2Client, Recorder, TlsGateway

ROUTES = ("public", "api", "root", "admin")
TRANSPORTS = ("h1 TLS", "h2 TLS", "h2c")
EXTERNAL_TOKEN = f"legacy-h2-diff-{uuid.uuid4().hex[:12]}"
SNI = "public.example.com"
# Headers that name the listener or the request, not what the client asked for.
LISTENER_HEADERS = {"x-forwarded-proto", "x-forwarded-port", "x-request-id", "x-probe-case"}
H2_BATCH = 50  # streams in flight per HTTP/2 connection (the gateway allows 100)


def corpus() -> list[Case]:
    cases = dict.fromkeys(NGINX_CORPUS)
    cases.update(dict.fromkeys(s.case for s in SERVLET_CORPUS))
    return list(cases)


CORPUS = corpus()


def h2_skip_reason(case: Case) -> str | None:
    if case.method == "CONNECT":
        return "CONNECT (a tunnel in HTTP/2, not a request)"
    if case.host is None:
        return "no Host (HTTP/2's :authority is the only place for a host)"
    if not case.target.startswith("/") and not (case.method == "OPTIONS" and case.target == "*"):
        return "absolute-form or other non-origin target (HTTP/2 has only :path)"
    return None


@pytest.fixture(scope="module")
def backends():
    bs = {r: Recorder(r) for r in ROUTES}
    yield bs
    for b in bs.values():
        b.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki-diff")
    ca = CA("interop diff ca")
    cert, key = ca.server(SNI, "admin.example.com", "*.example.com").write(d, "server")
    (d / "ca.pem").write_bytes(ca.pem)
    return {"dir": d, "cert": cert, "key": key}


@pytest.fixture(scope="module")
def session(descope) -> str:
    out = subprocess.run(
        [str(EXTOKEN_BIN), "mint", "--key", str(descope.key), "--project-id", descope.project_id,
         "--sub", "U2h2Diff", "--ttl", "30m", "--external-token", EXTERNAL_TOKEN],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"extoken mint failed: {out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, descope, backends, pki):
    cfg = {
        "threads": 2,
        "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
        "connectors": {"ext": {"type": "claim"}},
        "routes": [
            {"name": "public", "path_prefix": "/public", "auth": "none",
             "upstream": backends["public"].url},
            {"name": "api", "path_prefix": "/api", "upstream": backends["api"].url,
             "connector": "ext"},
            {"name": "root", "path_prefix": "/", "auth": "none", "upstream": backends["root"].url},
            {"name": "admin", "host": "admin.example.com", "path_prefix": "/",
             "upstream": backends["admin"].url, "connector": "ext"},
        ],
    }
    g = TlsGateway(tmp_path_factory.mktemp("gw-h2-diff"), cfg,
                   {"certificates": [{"cert_file": str(pki["cert"]), "key_file": str(pki["key"])}]})
    yield g
    g.stop()


def tls_context(pki, alpn: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
    ctx.set_alpn_protocols([alpn])
    return ctx


# --------------------------------------------------------------------------- senders

def send_tls(port: int, ctx: ssl.SSLContext, head: bytes) -> Reply:
    """``test_nginx_differential.send`` over TLS (ALPN http/1.1)."""
    data = b""
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                             server_hostname=SNI) as s:
            s.sendall(head)
            while chunk := s.recv(65536):
                data += chunk
    except (ConnectionResetError, socket.timeout, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        pass
    if not data.startswith(b"HTTP/"):
        return Reply(None, body=data)
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    return Reply(int(status_line.split()[1]))


def h2_headers(case: Case, cid: str, authorization: str | None) -> list[tuple[str, str]]:
    hs = [("x-probe-case", cid)]
    if authorization:
        hs.append(("authorization", authorization))
    return hs


def run_h2(connect, scheme: str, jobs: list[tuple[str, Case]], authorization: str | None
           ) -> dict[str, str]:
    """Sends ``jobs`` (case id, case) as HTTP/2 streams, ``H2_BATCH`` at a time per connection;
    a batch whose connection ended is re-sent one stream per connection, so a case that kills a
    connection is charged with it and no other is. Case id -> outcome."""
    out: dict[str, str] = {}

    def one_batch(batch, c: H2Client) -> list[tuple[str, Case]]:
        sids = {}
        for cid, case in batch:
            sids[cid] = c.send(case.method, case.target.encode("latin-1"), case.host,
                               h2_headers(case, cid, authorization), scheme)
        c.pump(lambda: all(c.answers[s].done for s in sids.values()), timeout=20)
        lost = []
        for cid, sid in sids.items():
            a = c.answers[sid]
            if a.status is not None:
                out[cid] = str(a.status)
            elif a.reset is not None:
                out[cid] = f"RST_STREAM {a.reset}"
            else:
                lost.append((cid, batch_case[cid]))
        return lost

    batch_case = dict(jobs)
    c = connect()
    for i in range(0, len(jobs), H2_BATCH):
        if c.closed or c.goaway is not None:
            c.close()
            c = connect()
        lost = one_batch(jobs[i:i + H2_BATCH], c)
        for cid, case in lost:
            solo = connect()
            if one_batch([(cid, case)], solo):
                a = solo.answers[max(solo.answers)]
                out[cid] = f"GOAWAY {a.goaway}" if a.goaway not in (None, -1) else "closed"
            solo.close()
    c.close()
    return out


# --------------------------------------------------------------------------- running it

def forwarded(backends, cid: str) -> list[tuple]:
    """What the backends got for a case: (route, method, target, sorted headers) per request."""
    got = []
    for route, b in backends.items():
        for r in b.by_case.get(cid, []):
            hs = []
            for k, v in r["headers"]:
                if k in LISTENER_HEADERS:
                    continue
                if k == "forwarded":
                    v = v.replace("proto=https", "proto=http")
                hs.append((k, v))
            got.append((route, r["method"], r["target"], tuple(sorted(hs))))
    return got


def protos(backends, cid: str) -> list[str | None]:
    """The ``X-Forwarded-Proto`` of each request the backends got for a case."""
    return [dict(r["headers"]).get("x-forwarded-proto")
            for b in backends.values() for r in b.by_case.get(cid, [])]


@pytest.fixture(scope="module")
def outcomes(gw, backends, pki, session):
    """{(mode, transport): {case index: (status, forwarded)}} plus the skip reasons."""
    h1_ctx, h2_ctx = tls_context(pki, "http/1.1"), tls_context(pki, "h2")

    def h2_tls_conn():
        s = h2_ctx.wrap_socket(socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10),
                               server_hostname=SNI)
        return H2Client(s, validate=False)

    def h2c_conn():
        return H2Client(socket.create_connection(("127.0.0.1", gw.port), timeout=10),
                        validate=False)

    res: dict[tuple[str, str], dict[int, tuple]] = {}
    skipped: Counter = Counter()
    timings = {}
    for mode, auth in (("anonymous", None), ("session", f"Bearer {session}")):
        status: dict[str, dict[int, str]] = {t: {} for t in ("h1",) + TRANSPORTS}
        ids = {t: {} for t in status}
        t0 = time.monotonic()

        def h1(job):
            i, case, t, port, ctx = job
            cid = f"{mode}-{i}-{t.replace(' ', '_')}"
            head = case.head(cid, auth)
            r = send(port, head) if ctx is None else send_tls(port, ctx, head)
            return t, i, cid, str(r.status)

        h1_jobs = [(i, case, t, port, ctx) for i, case in enumerate(CORPUS)
                   for t, port, ctx in (("h1", gw.port, None), ("h1 TLS", gw.tls_port, h1_ctx))]
        # One connection per request (the heads say Connection: close): 4 at a time.
        with ThreadPoolExecutor(4) as pool:
            for t, i, cid, st in pool.map(h1, h1_jobs):
                status[t][i], ids[t][i] = st, cid
        timings[f"{mode} h1 + h1 TLS"] = time.monotonic() - t0
        jobs = []
        for i, case in enumerate(CORPUS):
            reason = h2_skip_reason(case)
            if reason:
                skipped[reason] += 1
                continue
            jobs.append((i, case))
        for t, connect, scheme in (("h2 TLS", h2_tls_conn, "https"), ("h2c", h2c_conn, "http")):
            t0 = time.monotonic()
            named = [(f"{mode}-{i}-{t.replace(' ', '_')}", case) for i, case in jobs]
            got = run_h2(connect, scheme, named, auth)
            for (cid, _), (i, _) in zip(named, jobs):
                status[t][i], ids[t][i] = got.get(cid, "no answer"), cid
            timings[f"{mode} {t}"] = time.monotonic() - t0
        time.sleep(0.3)  # the last forwarded requests reach the recorders
        for t in status:
            res[(mode, t)] = {i: (s, forwarded(backends, ids[t][i]), protos(backends, ids[t][i]))
                              for i, s in status[t].items()}
    print(f"\n{len(CORPUS)} cases x 2 (anonymous, session); per transport and mode: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print("HTTP/2 skips (per mode): " + "; ".join(f"{n // 2} x {r}" for r, n in skipped.items()))
    return res


def refused(status: str) -> bool:
    """An HTTP/1.x refusal: a 4xx, or a close without an answer."""
    return status == "None" or status.startswith("4")


def test_corpus_is_large(outcomes):
    assert len(CORPUS) >= 1000, len(CORPUS)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_same_answer_and_same_forwarded_request(outcomes, transport):
    failures, compared, protocol_refusals = [], 0, []
    for mode in ("anonymous", "session"):
        ref, other = outcomes[(mode, "h1")], outcomes[(mode, transport)]
        for i, (s2, fwd2, _) in other.items():
            s1, fwd1, _ = ref[i]
            compared += 1
            case = CORPUS[i]
            if s1 == s2 and fwd1 == fwd2:
                continue
            both_refused = refused(s1) and not s2.isdigit() and not fwd1 and not fwd2
            if both_refused and s2.endswith(" 1"):  # PROTOCOL_ERROR
                protocol_refusals.append(f"{case} [{mode}]: h1 {s1}, {transport} {s2}")
                continue
            if s1 != s2:
                failures.append(f"{case} [{mode}]: h1 {s1}, {transport} {s2}; "
                                f"forwarded h1 {fwd1[:1]} / {transport} {fwd2[:1]}")
            else:
                failures.append(f"{case} [{mode}]: both {s1}, but the backend got\n"
                                f"      h1: {fwd1}\n      {transport}: {fwd2}")
    print(f"\n{transport}: {compared} requests compared with HTTP/1.1 cleartext, "
          f"{len(failures)} differ, {len(protocol_refusals)} refused by both (HTTP/2 at the "
          "protocol level)")
    for p in protocol_refusals[:20]:
        print("  protocol-level refusal:", p)
    assert compared >= 1500, f"only {compared} requests compared"
    if failures:
        shown = "\n".join(f"  - {f}" for f in failures[:60])
        pytest.fail(f"{transport} differs from HTTP/1.1 cleartext on {len(failures)} of "
                    f"{compared} requests:\n{shown}", pytrace=False)


def test_the_session_reaches_protected_routes_on_every_transport(outcomes):
    """Not vacuous: with a session, each transport forwards hundreds of requests to the
    protected routes, each with the external token; X-Forwarded-Proto names the listener."""
    for t in ("h1",) + TRANSPORTS:
        want = "http" if t in ("h1", "h2c") else "https"
        for mode in ("anonymous", "session"):
            seen = Counter(p for _, _, ps in outcomes[(mode, t)].values() for p in ps)
            assert set(seen) == {want} and seen[want] >= 150, (t, mode, seen)
        statuses = Counter(s for s, _, _ in outcomes[("session", t)].values())
        print(f"{t} with a session: {dict(statuses.most_common())}")
        protected = [f for _, fwd, _ in outcomes[("session", t)].values() for f in fwd
                     if f[0] in ("api", "admin")]
        auths = Counter(dict(f[3]).get("authorization") for f in protected)
        assert len(protected) >= 200 and set(auths) == {f"Bearer {EXTERNAL_TOKEN}"}, (t, auths)
        anon = [f for _, fwd, _ in outcomes[("anonymous", t)].values() for f in fwd
                if f[0] in ("api", "admin")]
        assert anon == [], f"{t}: anonymous requests reached a protected route: {anon[:5]}"
