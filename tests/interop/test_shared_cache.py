"""`cache.shared` against a real Redis (Debian's redis-server): replicas share minted tokens.

Every test starts its own redis-server (one server, a 3-node Cluster, or a master with a
Sentinel) on free loopback ports, several ``extoken run`` processes sharing it, and one counting
``http`` token service, so what is counted are real connector calls:

* 300 concurrent first requests for one user spread over three replicas: one connector call, one
  token everywhere; a refreshed session on another replica reuses it.
* Redis stopped in the middle of the load: every request still 200 (local mints), counted and
  logged once; Redis back: shared again.
* A 401 from the backend on replica A: replica B mints anew (the eviction reaches it by pub/sub).
* One session provoking 401s on both replicas: one Redis delete and publish for the fleet per
  ``evict_min_interval``, a handful of mints at most.
* What Redis holds: no user id and no token in any key or value.
* A replica with another encryption_key: it mints for itself, no client sees an error.
* A value that does not decrypt (moved to another name) is a miss.
* A full Redis (writes refused, OOM): local mints; room again: shared again.
* Refresh-ahead: one replica mints the new token under the lock, the other finds it.
* ``rediss://``: the server's certificate is verified (shared with the CA trusted, local mints
  without it).
* Redis Cluster and Sentinel: a config accepted by ``extoken check``, and one mint across replicas.

``run.sh`` installs redis-server; without it these tests skip with that reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import EXTOKEN_BIN, _die_with_parent, free_port, serve_http

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(100, 132))).decode()


def _binary(name: str) -> str | None:
    return os.environ.get(f"INTEROP_{name.upper().replace('-', '_')}") or shutil.which(name) \
        or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)


REDIS_SERVER = _binary("redis-server")
REDIS_CLI = _binary("redis-cli")
pytestmark = pytest.mark.skipif(
    not (REDIS_SERVER and REDIS_CLI),
    reason="redis-server/redis-cli not installed (tests/interop/run.sh installs them)")


def eventually(cond, limit: float = 10.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


# --------------------------------------------------------------------------- Redis processes

class Redis:
    """One redis-server on 127.0.0.1:``port`` (no persistence), stoppable and restartable."""

    def __init__(self, workdir: Path, *extra: str, port: int | None = None):
        self.port = port or free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), *self.extra]
        self.log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        assert eventually(lambda: self.ping(), 15), f"redis-server :{self.port} did not start"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def cli(self, *args: str) -> bytes:
        out = subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def keys(self) -> list[bytes]:
        return [k for k in self.cli("--scan").splitlines() if k]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        self.log.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
def redis_servers(tmp_path):
    started: list[Redis] = []

    def start(*extra: str, port: int | None = None) -> Redis:
        r = Redis(tmp_path, *extra, port=port)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


# --------------------------------------------------------------------------- the token service

class TokenService:
    """An ``http`` connector endpoint that counts its calls per user: ``tok-<user>-<n>``."""

    def __init__(self, delay: float = 0.5):
        self.calls: dict[str, int] = {}
        self.expires_in = 600
        self.lock = threading.Lock()
        svc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                user = body["user"]["id"]
                with svc.lock:
                    n = svc.calls[user] = svc.calls.get(user, 0) + 1
                time.sleep(delay)
                out = json.dumps({"token": f"tok-{user}-{n}",
                                  "expires_in": svc.expires_in}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server, base = serve_http(Handler)
        self.url = f"{base}/token"

    def count(self, user: str) -> int:
        with self.lock:
            return self.calls.get(user, 0)

    def total(self) -> int:
        with self.lock:
            return sum(self.calls.values())


@pytest.fixture
def token_service():
    s = TokenService()
    yield s
    s.server.shutdown()
    s.server.server_close()


# --------------------------------------------------------------------------- the fleet

def shared_block(redis: Redis | None = None, key: str = KEY, **more) -> dict:
    block = {"encryption_key": key, "operation_timeout": "200ms", **more}
    if redis is not None:
        block["url"] = redis.url
    return block


@pytest.fixture
def fleet(gateway, token_service):
    """``fleet(n, shared_block)``: n gateways sharing one cache, with the counting connector."""

    def start(n: int, shared: dict, keys: list[str] | None = None, env: dict | None = None,
              **cache):
        out = []
        for i in range(n):
            block = dict(shared)
            if keys:
                block["encryption_key"] = keys[i]
            connectors = {"legacy": {"type": "http", "url": token_service.url, "timeout": "3s",
                                     "retries": 0}}
            out.append(gateway(connectors, env=env, cache={"shared": block, **cache}))
        return out

    return start


def full_log(g) -> str:
    g.log.flush()
    return g.log_path.read_text(errors="replace")


def forward_token(g, backend, session: str) -> tuple[int, str | None]:
    f = g.forward(session, backend)
    return f.status, (f.token if f.status == 200 and f.record else None)


def burst(gws, backend, session: str, n: int, workers: int = 60) -> list[tuple[int, str | None]]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: forward_token(gws[i % len(gws)], backend, session),
                             range(n)))


def metrics(g) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{g.admin_port}/metrics", timeout=10) as r:
        return r.read().decode()


def shared_ops(g, results: tuple[str, ...]) -> float:
    total = 0.0
    for line in metrics(g).splitlines():
        if line.startswith("extoken_shared_cache_operations_total{") and any(
                f'result="{r}"' in line for r in results):
            total += float(line.rsplit(" ", 1)[1])
    return total


FAILED = ("error", "timeout", "skipped")


# --------------------------------------------------------------------------- tests

def test_three_replicas_make_one_call_for_300_concurrent_first_requests(
        fleet, redis_servers, token_service, backend, descope):
    redis = redis_servers()
    gws = fleet(3, shared_block(redis))
    session = descope.mint("U2fleet")
    results = burst(gws, backend, session, 300)
    assert [s for s, _ in results] == [200] * 300
    assert token_service.count("U2fleet") == 1, "one connector call for the whole fleet"
    assert {t for _, t in results} == {"tok-U2fleet-1"}, "one token everywhere"
    # A refreshed session (another JWT, same user and claims) on another replica reuses it.
    refreshed = descope.mint("U2fleet", ttl="20m")
    assert refreshed != session
    assert forward_token(gws[2], backend, refreshed) == (200, "tok-U2fleet-1")
    assert token_service.count("U2fleet") == 1
    for g in gws:
        assert shared_ops(g, FAILED) == 0, metrics(g)


def test_redis_holds_no_user_id_and_no_token(fleet, redis_servers, token_service, backend,
                                             descope):
    redis = redis_servers()
    gws = fleet(2, shared_block(redis))
    users = ["U2secretalice", "U2secretbob"]
    for u in users:
        for g in gws:
            assert forward_token(g, backend, descope.mint(u))[0] == 200
    assert token_service.total() == 2
    keys = redis.keys()
    values = [k for k in keys if not k.endswith(b":lock")]
    assert len(values) == 2, keys
    for k in keys:
        assert k.startswith(b"extoken:"), k
        for u in users:
            assert u.encode() not in k and b"legacy" not in k, k
    for k in values:
        v = redis.cli("--no-raw", "GET", k.decode())
        raw = subprocess.run([REDIS_CLI, "-p", str(redis.port), "GET", k.decode()],
                             capture_output=True, timeout=10).stdout
        for u in users:
            for secret in (u.encode(), f"tok-{u}-1".encode()):
                assert secret not in raw and secret not in v, (k, raw[:80])
        ttl = int(redis.cli("PTTL", k.decode()))
        # 600 s token, 10% margin: shared for 540 s at most.
        assert 500_000 < ttl <= 540_000, ttl


def test_redis_stopped_mid_load_then_back(fleet, redis_servers, token_service, backend, descope):
    redis = redis_servers()
    gws = fleet(3, shared_block(redis))
    assert burst(gws, backend, descope.mint("U2before"), 30) and token_service.count("U2before") == 1
    # Load in the background while Redis goes away.
    stop = threading.Event()
    statuses: list[int] = []
    sessions = {f"U2load{i}": descope.mint(f"U2load{i}") for i in range(20)}

    def load():
        i = 0
        while not stop.is_set():
            u = f"U2load{i % 20}"
            statuses.append(forward_token(gws[i % 3], backend, sessions[u])[0])
            i += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    redis.stop()
    time.sleep(2.0)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {set(statuses)}"
    failed = sum(shared_ops(g, FAILED) for g in gws)
    assert failed > 0, "Redis failures are counted"
    # Fresh users while Redis is down: every replica mints locally, every request served.
    down = descope.mint("U2whiledown")
    assert [forward_token(g, backend, down)[0] for g in gws] == [200, 200, 200]
    assert token_service.count("U2whiledown") == 3, "no sharing without Redis: local mints"
    for g in gws:
        assert full_log(g).count("shared token cache (Redis) unavailable") == 1, full_log(g)
    # Redis back (empty, on the same port): a new user is minted once for the fleet again.
    redis.start()
    n = 0

    def shared_again() -> bool:
        nonlocal n
        n += 1
        u = f"U2after{n}"
        s = descope.mint(u)
        codes = [forward_token(g, backend, s)[0] for g in gws]
        assert codes == [200, 200, 200]
        return token_service.count(u) == 1

    assert eventually(shared_again, 20, 0.5), "sharing resumes once Redis is back"
    for g in gws:
        assert "answers again" in full_log(g), full_log(g)


def lookups(g, result: str) -> float:
    prefix = f'extoken_cache_lookups_total{{connector="legacy",result="{result}"}} '
    return sum(float(line[len(prefix):]) for line in metrics(g).splitlines()
               if line.startswith(prefix))


def test_refresh_ahead_is_one_mint_for_the_fleet(fleet, redis_servers, token_service, backend,
                                                 descope):
    # 12 s tokens with a 3 s margin: served alone for 6 s, refreshed ahead from 6 s to 9 s.
    token_service.expires_in = 12
    redis = redis_servers()
    a, b = fleet(2, shared_block(redis), min_margin="3s")
    session = descope.mint("U2refresh")
    assert forward_token(a, backend, session) == (200, "tok-U2refresh-1")
    minted = time.monotonic()  # A's entry counts from the end of its mint
    assert forward_token(b, backend, session) == (200, "tok-U2refresh-1")
    time.sleep(max(0.0, 7.0 - (time.monotonic() - minted)))
    # A refreshes ahead: it serves the old token and mints once, under the lock, into Redis.
    assert forward_token(a, backend, session) == (200, "tok-U2refresh-1")
    assert eventually(lambda: token_service.count("U2refresh") == 2, 5)
    assert lookups(a, "refresh_ahead") == 1
    # B's copy is due too: it finds A's newer token in Redis instead of minting.
    assert eventually(lambda: forward_token(b, backend, session) == (200, "tok-U2refresh-2"), 5)
    assert forward_token(a, backend, session) == (200, "tok-U2refresh-2")
    assert token_service.count("U2refresh") == 2, "one refresh for the fleet"


def test_upstream_401_on_one_replica_makes_the_others_mint_anew(
        fleet, redis_servers, token_service, backend, descope):
    redis = redis_servers()
    a, b = fleet(2, shared_block(redis))
    session = descope.mint("U2revoked")
    assert forward_token(a, backend, session) == (200, "tok-U2revoked-1")
    assert forward_token(b, backend, session) == (200, "tok-U2revoked-1")
    assert token_service.count("U2revoked") == 1
    # Each replica subscribes to evictions on its first shared lookup; what is published before
    # that (or while it reconnects) it does not see.
    for g in (a, b):
        assert eventually(lambda: shared_ops(g, ("ok",)) > 0 and 'op="subscribe",result="ok"'
                          in metrics(g), 10), metrics(g)
    # The backend refuses the token on A (the /status/401/ path makes it answer 401).
    status, _, _ = a.request("/status/401/x", {"Authorization": f"Bearer {session}"})
    assert status == 401
    # B had the token in its first level: the eviction reaches it through pub/sub.
    assert eventually(lambda: forward_token(b, backend, session) == (200, "tok-U2revoked-2"), 10), \
        b.logs()
    assert forward_token(a, backend, session) == (200, "tok-U2revoked-2"), "A reads B's new token"
    assert token_service.count("U2revoked") == 2, "the next request anywhere mints once"


def counter(g, name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in metrics(g).splitlines():
        if line.startswith(f"extoken_{name}{{") and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_provoked_401s_cost_the_fleet_one_eviction_per_interval(
        fleet, redis_servers, token_service, backend, descope):
    redis = redis_servers()
    gws = fleet(2, shared_block(redis))
    session = descope.mint("U2provoker")
    for g in gws:
        assert forward_token(g, backend, session) == (200, "tok-U2provoker-1")
        assert eventually(lambda: 'op="subscribe",result="ok"' in metrics(g), 10), metrics(g)
    # One session, 40 rounds spread over both replicas: a path the backend answers 401, then one
    # it answers 200.
    auth = {"Authorization": f"Bearer {session}"}
    for i in range(40):
        assert gws[i % 2].request(f"/status/401/{i}", auth)[0] == 401
        assert forward_token(gws[(i + 1) % 2], backend, session)[0] == 200
    mints = token_service.count("U2provoker")
    print(f"40 provoked 401s over 2 replicas: {mints} connector calls")
    assert mints <= 3, f"{mints} connector calls"
    # Evictions happen in the background of the response: let the last ones finish.
    time.sleep(0.5)
    ops = lambda op, result: sum(counter(g, "shared_cache_operations_total", op=op,
                                         result=result) for g in gws)
    assert ops("delete", "ok") == 1, [metrics(g) for g in gws]
    assert ops("publish", "ok") == 1
    assert ops("evict_guard", "acquired") == 1
    evictions = lambda result: sum(counter(g, "token_evictions_total", result=result)
                                   for g in gws)
    assert evictions("evicted") <= 2, "at most once per replica in the interval"
    assert evictions("evicted") + evictions("suppressed") + evictions("stale") == 40
    guards = [k for k in redis.keys() if k.endswith(b":evicted")]
    assert len(guards) == 1, redis.keys()
    assert 0 < int(redis.cli("PTTL", guards[0].decode())) <= 30_000


def test_a_replica_with_another_encryption_key_mints_for_itself(
        fleet, redis_servers, token_service, backend, descope):
    redis = redis_servers()
    gws = fleet(3, shared_block(redis), keys=[KEY, KEY, OTHER_KEY])
    session = descope.mint("U2rotated")
    results = [forward_token(g, backend, session) for g in gws]
    assert [s for s, _ in results] == [200, 200, 200], "no client sees an error"
    assert results[0][1] == results[1][1] == "tok-U2rotated-1"
    assert results[2][1] == "tok-U2rotated-2", "its own mint"
    assert token_service.count("U2rotated") == 2
    for g in gws:
        assert shared_ops(g, FAILED) == 0, metrics(g)


def test_a_value_that_does_not_decrypt_is_a_miss(fleet, redis_servers, token_service, backend,
                                                 descope):
    redis = redis_servers()
    a, b = fleet(2, shared_block(redis))
    x, y = descope.mint("U2valuex"), descope.mint("U2valuey")
    assert forward_token(a, backend, x) == (200, "tok-U2valuex-1")
    (x_key,) = [k for k in redis.keys() if not k.endswith(b":lock")]
    assert forward_token(a, backend, y) == (200, "tok-U2valuey-1")
    (y_key,) = [k for k in redis.keys() if not k.endswith(b":lock") and k != x_key]
    # X's sealed token under Y's name: its associated data (the name) no longer matches.
    assert redis.cli("COPY", x_key.decode(), y_key.decode(), "REPLACE").strip() == b"1"
    assert forward_token(b, backend, y) == (200, "tok-U2valuey-2"), "a miss: B mints"
    assert forward_token(b, backend, x) == (200, "tok-U2valuex-1"), "X's own entry still opens"
    assert shared_ops(b, ("undecryptable",)) >= 1, metrics(b)
    assert shared_ops(b, FAILED) == 0, metrics(b)


def test_full_redis_means_local_mints(fleet, redis_servers, token_service, backend, descope):
    redis = redis_servers("--maxmemory-policy", "noeviction")
    gws = fleet(2, shared_block(redis))
    redis.cli("CONFIG", "SET", "maxmemory", "1")  # every write is refused: OOM
    s = descope.mint("U2full")
    assert [forward_token(g, backend, s)[0] for g in gws] == [200, 200]
    assert token_service.count("U2full") == 2, "each replica minted for itself"
    assert sum(shared_ops(g, ("error",)) for g in gws) >= 2
    for g in gws:
        assert "OOM" in full_log(g) and full_log(g).count("unavailable") == 1, full_log(g)
    redis.cli("CONFIG", "SET", "maxmemory", "0")
    s = descope.mint("U2roomagain")
    assert [forward_token(g, backend, s)[0] for g in gws] == [200, 200]
    assert token_service.count("U2roomagain") == 1, "shared again"


def tls_files(d: Path) -> tuple[str, str, str]:
    """A CA, and a certificate it signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "extoken interop CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (d / "ca.pem", d / "cert.pem", d / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)


def test_rediss_verifies_the_server(fleet, redis_servers, token_service, backend, descope,
                                    tmp_path):
    ca, cert, key = tls_files(tmp_path)
    tls_port = free_port()
    redis = redis_servers("--tls-port", str(tls_port), "--tls-cert-file", cert,
                          "--tls-key-file", key, "--tls-ca-cert-file", ca,
                          "--tls-auth-clients", "no")
    block = shared_block(url=f"rediss://127.0.0.1:{tls_port}")
    # Trusting the CA (rustls with the system store, which SSL_CERT_FILE replaces): shared.
    trusted = fleet(2, block, env={"SSL_CERT_FILE": ca})
    s = descope.mint("U2tls")
    assert [forward_token(g, backend, s) for g in trusted] == [(200, "tok-U2tls-1")] * 2
    assert token_service.count("U2tls") == 1
    assert len([k for k in redis.keys() if not k.endswith(b":lock")]) == 1
    for g in trusted:
        assert shared_ops(g, FAILED) == 0, metrics(g)
    # Without the CA the certificate is refused: a local mint, the request still served.
    untrusted = fleet(1, block)[0]
    s = descope.mint("U2tlsuntrusted")
    assert forward_token(untrusted, backend, s) == (200, "tok-U2tlsuntrusted-1")
    assert forward_token(trusted[0], backend, s) == (200, "tok-U2tlsuntrusted-2")
    assert shared_ops(untrusted, FAILED) > 0, metrics(untrusted)


def _check(tmp_path: Path, cache: dict, descope) -> subprocess.CompletedProcess:
    cfg = {
        "listen": "127.0.0.1:1", "admin_listen": "off",
        "descope": {"project_id": descope.project_id, "jwks_file": str(descope.jwks_file)},
        "connectors": {"legacy": {"type": "http", "url": "http://127.0.0.1:1/t"}},
        "routes": [{"upstream": "http://127.0.0.1:1", "connector": "legacy"}],
        "cache": cache,
    }
    p = tmp_path / "check.yaml"
    p.write_text(json.dumps(cfg))
    return subprocess.run([str(EXTOKEN_BIN), "check", "--config", str(p)], capture_output=True,
                          text=True, timeout=60)


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise AssertionError("no free port pair for a cluster node")


def test_redis_cluster(fleet, redis_servers, token_service, backend, descope, tmp_path):
    nodes = [redis_servers("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                           "--cluster-node-timeout", "2000", port=cluster_port())
             for _ in range(3)]
    out = subprocess.run([REDIS_CLI, "--cluster", "create",
                          *[f"127.0.0.1:{n.port}" for n in nodes],
                          "--cluster-replicas", "0", "--cluster-yes"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert eventually(lambda: all(b"cluster_state:ok" in n.cli("CLUSTER", "INFO")
                                  for n in nodes), 20)
    block = shared_block(cluster=[n.url for n in nodes])
    checked = _check(tmp_path, {"shared": block}, descope)
    assert checked.returncode == 0, checked.stderr
    as_url = _check(tmp_path, {"shared": shared_block(url=[n.url for n in nodes])}, descope)
    assert as_url.returncode == 0, as_url.stderr
    gws = fleet(2, block)
    for u in ("U2clusterA", "U2clusterB", "U2clusterC"):
        s = descope.mint(u)
        assert [forward_token(g, backend, s) for g in gws] == [(200, f"tok-{u}-1")] * 2
        assert token_service.count(u) == 1
    values = [k for n in nodes for k in n.keys() if not k.endswith(b":lock")]
    assert len(values) == 3, values
    for g in gws:
        assert shared_ops(g, FAILED) == 0, metrics(g)


def test_redis_sentinel(fleet, redis_servers, token_service, backend, descope, tmp_path):
    master = redis_servers()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor shared 127.0.0.1 {master.port} 1\n")
    sentinel = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"],
                                stdout=open(tmp_path / "sentinel.log", "wb"),
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    try:
        def knows_master() -> bool:
            out = subprocess.run([REDIS_CLI, "-p", str(port), "SENTINEL",
                                  "get-master-addr-by-name", "shared"],
                                 capture_output=True, timeout=10).stdout
            return str(master.port).encode() in out
        assert eventually(knows_master, 20), (tmp_path / "sentinel.log").read_text()
        block = shared_block(sentinel={"master_name": "shared",
                                       "nodes": [f"redis://127.0.0.1:{port}"]})
        checked = _check(tmp_path, {"shared": block}, descope)
        assert checked.returncode == 0, checked.stderr
        gws = fleet(2, block)
        s = descope.mint("U2sentinel")
        assert [forward_token(g, backend, s) for g in gws] == [(200, "tok-U2sentinel-1")] * 2
        assert token_service.count("U2sentinel") == 1
        assert len([k for k in master.keys() if not k.endswith(b":lock")]) == 1
        for g in gws:
            assert shared_ops(g, FAILED) == 0, metrics(g)
    finally:
        sentinel.kill()
        sentinel.wait(timeout=10)


def test_check_names_bad_shared_keys(tmp_path, descope):
    for block, key in [
        ({"url": "http://127.0.0.1:6379", "encryption_key": KEY}, "cache.shared.url"),
        ({"url": "redis://127.0.0.1:6379", "encryption_key": "dG9vIHNob3J0"},
         "cache.shared.encryption_key"),
        ({"url": "redis://127.0.0.1:6379", "encryption_key": KEY, "lock_ttl": "1s"},
         "cache.shared.lock_ttl"),
    ]:
        out = _check(tmp_path, {"shared": block}, descope)
        assert out.returncode == 1 and key in out.stderr, out.stderr
        assert KEY not in out.stderr
