"""TLS and HTTP/2 at the edge (issue 18) with real clients: sslyze's Mozilla "intermediate" check,
``openssl s_client`` (SNI, ALPN, protocol versions, client certificates), ``curl`` (HTTP/2 by
ALPN, h2c with prior knowledge, HTTP/1.1 on the same port) and crafted HTTP/2 frame sequences
from the PyPI ``h2`` state machine (a dribbled preface, rapid reset, the stream limit, Host vs
:authority). Certificates are made at test time (tls_h2_common.CA); nothing is committed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid

import h2.errors
import pytest

from tls_h2_common import (CA, H2Client, Recorder, TlsGateway, access_lines, client_tls, h2_tls,
                           h2c, header)

ALPHA, BETA = "alpha.test", "beta.test"
HEADER_TIMEOUT = 1.0  # limits.client_header_timeout of the edge gateway, seconds
MAX_STREAMS = 2


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, foreign = CA("interop server ca"), CA("interop foreign ca")
    clients = CA("interop client ca")
    files = {"dir": d, "ca": ca, "clients": clients, "foreign": foreign,
             "alice": clients.client("alice"), "mallory": foreign.client("mallory")}
    files["alpha"] = ca.server(ALPHA).write(d, "alpha")
    files["beta"] = ca.server(BETA).write(d, "beta")
    for name in ("ca", "clients"):
        (d / f"{name}.pem").write_bytes(files[name].pem)
    for name in ("alice", "mallory"):
        files[name].write(d, name)
    return files


@pytest.fixture(scope="module")
def recorder():
    r = Recorder()
    yield r
    r.close()


def start(tmp_path_factory, descope, recorder, pki, tls_extra: dict | None = None,
          limits: dict | None = None) -> TlsGateway:
    certs = [{"cert_file": str(pki[n][0]), "key_file": str(pki[n][1])} for n in ("alpha", "beta")]
    cfg = {
        "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
        "connectors": {},
        "routes": [{"name": "root", "path_prefix": "/", "auth": "none", "upstream": recorder.url}],
    }
    if limits:
        cfg["limits"] = limits
    return TlsGateway(tmp_path_factory.mktemp("gw-tls"), cfg,
                      {"certificates": certs, **(tls_extra or {})})


@pytest.fixture(scope="module")
def edge(tmp_path_factory, descope, recorder, pki):
    """Two certificates (alpha first = default), default ALPN, no client certificates, 1 s for
    a TLS handshake and for a head, at most 2 streams per HTTP/2 connection."""
    g = start(tmp_path_factory, descope, recorder, pki,
              limits={"client_header_timeout": f"{HEADER_TIMEOUT:g}s",
                      "tls_handshake_timeout": f"{HEADER_TIMEOUT:g}s",
                      "h2_max_concurrent_streams": MAX_STREAMS})
    yield g
    g.stop()


# --------------------------------------------------------------------------- sslyze

@pytest.mark.parametrize("profile,key,min_version", [
    ("intermediate", "ecdsa", None), ("intermediate", "rsa", None), ("modern", "ecdsa", "1.3")])
def test_sslyze_mozilla_profile(profile, key, min_version, edge, pki, tmp_path_factory, descope,
                                recorder):
    """sslyze's check against Mozilla's "intermediate" (the default settings, with an ECDSA and
    an RSA 2048 certificate) and "modern" (``min_version: "1.3"``) configurations."""
    sslyze = os.environ.get("INTEROP_SSLYZE")
    if not sslyze or not os.access(sslyze, os.X_OK):
        pytest.fail("INTEROP_SSLYZE is not set: run tests/interop/run.sh (it makes "
                    ".venv-sslyze from requirements-sslyze.txt)", pytrace=False)
    gw = edge
    if key == "rsa" or min_version:
        cert, keyf = pki["ca"].server(ALPHA, rsa_bits=2048 if key == "rsa" else None).write(
            pki["dir"], f"sslyze-{key}")
        tls = {"certificates": [{"cert_file": str(cert), "key_file": str(keyf)}]}
        if min_version:
            tls["min_version"] = min_version
        gw = TlsGateway(tmp_path_factory.mktemp("gw-sslyze"), {
            "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
            "routes": [{"name": "root", "path_prefix": "/", "auth": "none",
                        "upstream": recorder.url}]}, tls)
    try:
        scan = run_sslyze(sslyze, profile, gw.tls_port, pki["dir"])
    finally:
        if gw is not edge:
            gw.stop()

    def accepted(kind: str) -> list[str]:
        r = scan[f"{kind}_cipher_suites"]
        assert r["status"] == "COMPLETED", r
        return [s["cipher_suite"]["name"] for s in r["result"]["accepted_cipher_suites"]]

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert accepted(old) == [], f"{old} accepted"
    tls12 = accepted("tls_1_2")
    kx = "TLS_ECDHE_RSA_" if key == "rsa" else "TLS_ECDHE_ECDSA_"
    if min_version == "1.3":
        assert tls12 == [], tls12
    else:
        assert tls12 and all(s.startswith(kx) and ("_GCM_" in s or "CHACHA20" in s)
                             for s in tls12), tls12
    assert set(accepted("tls_1_3")) == {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                        "TLS_CHACHA20_POLY1305_SHA256"}
    print(f"{profile}/{key}: TLS 1.2 suites {tls12}")


def run_sslyze(sslyze: str, profile: str, port: int, d) -> dict:
    """Runs the CLI against alpha.test on ``port``; asserts the compliance verdict and returns
    the JSON scan result."""
    out_json = d / f"sslyze-{port}.json"
    # host:port{ip}: SNI and certificate name alpha.test, connecting to 127.0.0.1.
    t0 = time.monotonic()
    out = subprocess.run([sslyze, f"--mozilla_config={profile}",
                          f"--certinfo_ca_file={d / 'ca.pem'}", f"--json_out={out_json}",
                          f"{ALPHA}:{port}{{127.0.0.1}}"], capture_output=True, text=True,
                         timeout=120)
    print(f"sslyze {profile} took {time.monotonic() - t0:.1f}s")
    report = out.stdout[out.stdout.find("COMPLIANCE AGAINST"):]
    assert f"{ALPHA}:{port}: OK - Compliant." in report, \
        f"sslyze (exit {out.returncode}):\n{report or out.stdout[-3000:]}\n{out.stderr[-2000:]}"
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out_json.read_text())["server_scan_results"][0]["scan_result"]


# --------------------------------------------------------------------------- openssl s_client

def s_client(port: int, *args: str, stdin: bytes = b"Q\n", timeout: float = 15) -> tuple[int, str]:
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                         input=stdin, capture_output=True, timeout=timeout)
    return out.returncode, (out.stdout + out.stderr).decode(errors="replace")


def served_subject(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("subject="):
            return line.split("=", 1)[1].strip()
    return None


def test_sni_picks_the_certificate(edge, pki):
    ca = str(pki["dir"] / "ca.pem")
    for sni, want in [(ALPHA, ALPHA), (BETA, BETA), ("unknown.test", ALPHA), (None, ALPHA)]:
        args = ["-servername", sni] if sni else ["-noservername"]
        rc, text = s_client(edge.tls_port, *args, "-CAfile", ca)
        assert rc == 0, text
        assert served_subject(text) == f"CN = {want}", f"SNI {sni}: {text}"
        assert "Verify return code: 0 (ok)" in text, text


def test_alpn_negotiation(edge, pki):
    for offer, want in [("h2", "h2"), ("http/1.1", "http/1.1"), ("h2,http/1.1", "h2"),
                        ("http/1.1,h2", "h2")]:  # the server's order of preference wins
        rc, text = s_client(edge.tls_port, "-servername", ALPHA, "-alpn", offer)
        assert rc == 0 and f"ALPN protocol: {want}" in text, f"offered {offer}: {text}"
    rc, text = s_client(edge.tls_port, "-servername", ALPHA, "-alpn", "spdy/3")
    assert rc != 0 and "ALPN protocol" not in text, f"no common protocol: {text}"


def test_tls_1_0_and_1_1_are_refused(edge):
    for flag in ("-tls1", "-tls1_1"):
        before = edge.metric("extoken_tls_handshakes_total", 'result="incompatible"')
        # SECLEVEL=0: Debian's OpenSSL would not even offer TLS < 1.2 otherwise, so the refusal
        # would be the client's own.
        rc, text = s_client(edge.tls_port, "-servername", ALPHA, flag,
                            "-cipher", "DEFAULT:@SECLEVEL=0")
        assert rc != 0 and "Cipher is (NONE)" in text, f"{flag}: {text}"
        after = edge.metric_reaches("extoken_tls_handshakes_total", 'result="incompatible"',
                                    before + 1)
        assert after == before + 1, f"{flag}: the gateway saw no incompatible handshake"
    for flag in ("-tls1_2", "-tls1_3"):
        rc, text = s_client(edge.tls_port, "-servername", ALPHA, flag)
        assert rc == 0 and "Cipher is (NONE)" not in text, f"{flag}: {text}"


def test_a_stalled_tls_handshake_is_closed_at_the_deadline(edge):
    before = edge.metric("extoken_tls_handshakes_total", 'result="timeout"')
    with socket.create_connection(("127.0.0.1", edge.tls_port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes, then silence
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
        took = time.monotonic() - t0
    assert got == b"" and HEADER_TIMEOUT - 0.2 < took < HEADER_TIMEOUT + 2, (got, took)
    assert edge.metric_reaches("extoken_tls_handshakes_total", 'result="timeout"',
                               before + 1) == before + 1


def mtls_get(port: int, pki, path: str, who: str | None, version: str) -> tuple[int, str]:
    args = ["-servername", ALPHA, "-CAfile", str(pki["dir"] / "ca.pem"), version, "-ign_eof"]
    if who:
        args += ["-cert", str(pki["dir"] / f"{who}.pem"), "-key", str(pki["dir"] / f"{who}.key")]
    req = f"GET {path} HTTP/1.1\r\nHost: {ALPHA}\r\nConnection: close\r\n\r\n".encode()
    return s_client(port, *args, stdin=req)


def wait_access_line(gw: TlsGateway, path: str) -> str:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = access_lines(gw.full_log(), path)
        if lines:
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {path}:\n{gw.logs()}")


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_client_certificates(mode, tmp_path_factory, descope, recorder, pki):
    gw = start(tmp_path_factory, descope, recorder, pki,
               {"client_auth": mode, "client_ca_file": str(pki["dir"] / "clients.pem")})
    try:
        for version in ("-tls1_2", "-tls1_3"):
            tag = f"/mtls-{mode}{version}-{uuid.uuid4().hex[:6]}"
            # A verified certificate: served, subject and fingerprint in the access line.
            rc, text = mtls_get(gw.tls_port, pki, f"{tag}/alice", "alice", version)
            assert "HTTP/1.1 200" in text, text
            line = wait_access_line(gw, f"{tag}/alice")
            assert 'client_cert_subject="CN=alice"' in line, line
            assert f'client_cert_sha256="{pki["alice"].sha256}"' in line, line
            # A certificate of a CA the gateway does not trust: no handshake, nothing forwarded.
            rc, text = mtls_get(gw.tls_port, pki, f"{tag}/mallory", "mallory", version)
            assert "HTTP/1.1" not in text, text
            assert recorder.count(f"{tag}/mallory") == 0
            # No certificate: refused with `required`, served (without a subject) with `optional`.
            rc, text = mtls_get(gw.tls_port, pki, f"{tag}/anon", None, version)
            if mode == "required":
                assert "HTTP/1.1" not in text, text
                assert recorder.count(f"{tag}/anon") == 0
            else:
                assert "HTTP/1.1 200" in text, text
                assert "client_cert" not in wait_access_line(gw, f"{tag}/anon")
        want = 4 if mode == "required" else 2  # (mallory, and anon if required) x 2 versions
        refused = gw.metric_reaches("extoken_tls_handshakes_total", 'result="client_certificate"',
                                    want)
        assert refused == want, refused
    finally:
        gw.stop()


# --------------------------------------------------------------------------- curl

def curl(*args: str) -> tuple[str, str]:
    out = subprocess.run(["curl", "-sS", "--path-as-is", "-o", "/dev/null", "-w",
                          "%{http_version} %{http_code}", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    version, code = out.stdout.split()
    return version, code


def test_curl_h2_alpn_h2c_and_http1_agree(edge, pki, recorder):
    tag = uuid.uuid4().hex[:8]
    raw = f"/c-{tag}/a/%2e%2e/%61pi//x?q=%2f"  # canonical: /c-<tag>/api/x?q=%2f
    ca = str(pki["dir"] / "ca.pem")
    runs = {
        "h2 over TLS": (["--http2", "--cacert", ca, "--resolve",
                         f"{ALPHA}:{edge.tls_port}:127.0.0.1", f"https://{ALPHA}:{edge.tls_port}"],
                        "2", "https"),
        "h1 over TLS": (["--http1.1", "--cacert", ca, "--resolve",
                         f"{ALPHA}:{edge.tls_port}:127.0.0.1", f"https://{ALPHA}:{edge.tls_port}"],
                        "1.1", "https"),
        "h2c": (["--http2-prior-knowledge", "--resolve", f"{ALPHA}:{edge.port}:127.0.0.1",
                 f"http://{ALPHA}:{edge.port}"], "2", "http"),
        "h1": (["--http1.1", "--resolve", f"{ALPHA}:{edge.port}:127.0.0.1",
                f"http://{ALPHA}:{edge.port}"], "1.1", "http"),
    }
    seen = {}
    for name, (args, version, proto) in runs.items():
        *opts, base = args
        assert curl(*opts, "-H", f"X-Probe-Case: {tag}-{name}", base + raw) == (version, "200"), name
        rec = recorder.by_case[f"{tag}-{name}"][-1]
        assert rec["target"] == f"/c-{tag}/api/x?q=%2f", (name, rec)
        assert header(rec, "x-forwarded-proto") == proto, (name, rec["headers"])
        assert header(rec, "host").split(":")[0] == ALPHA, (name, rec["headers"])
        seen[name] = rec
    print({n: r["headers"] for n, r in seen.items()})


# --------------------------------------------------------------------------- crafted HTTP/2

PREFACE_AND_SETTINGS = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def dribble(port: int, gap: float) -> tuple[socket.socket, bytes, float | None]:
    """Writes the preface and an empty SETTINGS one byte every ``gap`` seconds; what came back
    meanwhile, and when the server closed (None: still open)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0, got = time.monotonic(), b""
    for b in PREFACE_AND_SETTINGS:
        try:
            s.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(gap)
    s.settimeout(max(0.1, HEADER_TIMEOUT * 3 - (time.monotonic() - t0)))
    try:
        while chunk := s.recv(65536):
            got += chunk
            if gap < 0.02:
                return s, got, None  # the fast dribble: the server's SETTINGS, still open
    except (ConnectionResetError, socket.timeout):
        pass
    return s, got, time.monotonic() - t0


def test_h2_preface_dribbled_past_the_head_deadline_is_closed_silently(edge):
    # 33 bytes, one every 100 ms: 3.3 s, past the 1 s deadline.
    s, got, closed = dribble(edge.port, 0.1)
    s.close()
    assert got == b"", f"the server wrote {got[:80]!r}"
    assert closed is not None and closed < HEADER_TIMEOUT + 2.5, closed


def test_h2_preface_dribbled_within_the_deadline_is_served(edge, recorder):
    # 33 bytes, one every 10 ms: ~0.4 s, inside the deadline.
    s, got, closed = dribble(edge.port, 0.01)
    assert closed is None and got[3:4] == b"\x04", got[:40]  # the server's SETTINGS
    c = H2Client(s)
    c.conn.data_to_send()  # our preface and SETTINGS went out by hand
    c.conn.receive_data(got)
    a = c.request("GET", "/dribbled", "alpha.test")
    c.close()
    assert a.status == 200 and recorder.count("/dribbled") == 1, a


def test_h2_rapid_reset_gets_enhance_your_calm(edge, recorder):
    c = h2c(edge.port)
    sent = 0
    try:
        for _ in range(50):  # up to 5,000 streams, in writes of 100 HEADERS + RST_STREAM
            for _ in range(100):
                sid = c.send("GET", "/rapid-reset", "alpha.test")
                c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            c.flush()
            sent += 100
    except OSError:
        pass  # the server closed the connection under us
    c.pump(lambda: c.goaway is not None, timeout=5)
    c.close()
    reached = recorder.count("/rapid-reset")
    print(f"rapid reset: {sent} streams sent before the close, {reached} reached the backend, "
          f"GOAWAY {c.goaway}")
    assert c.goaway == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, c.goaway
    # Not `sent`: what the client wrote before the close depends on socket buffers, not on the
    # gateway; the work it did is what reached the backend.
    assert reached < 500, (sent, reached)
    a = h2c(edge.port).request("GET", "/after-rapid-reset", "alpha.test")
    assert a.status == 200, a


def test_h2_stream_over_the_limit_is_refused(edge, recorder):
    c = h2c(edge.port)
    # All three HEADERS go out with the preface, before the server's SETTINGS arrive (the h2
    # library would otherwise hold the third back itself).
    sids = [c.send("GET", f"/slow/limit-{i}", "alpha.test") for i in range(MAX_STREAMS + 1)]
    c.pump(lambda: all(c.answers[s].done for s in sids), timeout=10)
    c.close()
    assert c.conn.remote_settings.max_concurrent_streams == MAX_STREAMS
    got = [(c.answers[s].status, c.answers[s].reset) for s in sids]
    assert got == [(200, None)] * MAX_STREAMS + [(None, h2.errors.ErrorCodes.REFUSED_STREAM)], got
    assert recorder.count(f"/slow/limit-{MAX_STREAMS}") == 0


@pytest.mark.parametrize("transport", ["h2c", "h2 over TLS"])
def test_h2_host_disagreeing_with_authority_is_400(transport, edge, pki, recorder):
    def connect() -> H2Client:
        if transport == "h2c":
            return h2c(edge.port, validate=False)
        return h2_tls(edge.tls_port, client_tls(pki["ca"], ["h2"], pki["dir"]), ALPHA, False)

    scheme = "http" if transport == "h2c" else "https"
    tag = uuid.uuid4().hex[:8]
    c = connect()
    a = c.request("GET", f"/host-{tag}/bad", ALPHA, [("host", "evil.test")], scheme)
    assert a.status == 400 and recorder.count(f"/host-{tag}/bad") == 0, a
    a = c.request("GET", f"/host-{tag}/same", ALPHA, [("host", ALPHA)], scheme)
    assert a.status == 200, a
    c.close()
