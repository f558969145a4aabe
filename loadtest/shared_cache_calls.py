#!/usr/bin/env python3
"""Connector calls per 1,000 users, with 1 and 3 replicas, with and without `cache.shared`.

Counts, does not time: every scenario starts fresh gateways (`extoken run`), a counting `http`
token service and, for the shared scenarios, an empty redis-server, all on 127.0.0.1; then each of
USERS users sends REQUESTS requests, spread round-robin over the replicas (as a load balancer
would: a user's requests land on different replicas). What the token service counted is the
figure. The shared scenarios also measure what one entry costs in Redis (`MEMORY USAGE` of each
key, and `used_memory` before and after) for a token of TOKEN_BYTES.

    loadtest/shared_cache_calls.py                      # 1,000 users x 3 requests, 4 scenarios
    loadtest/shared_cache_calls.py --users 200 --requests 6
    EXTOKEN_BIN=target/release/extoken loadtest/shared_cache_calls.py

Needs: a built extoken (target/debug/extoken by default), redis-server and redis-cli (Debian:
`apt-get install redis-server`). Standard library only. Bounded: every request has a timeout and
the run ends after the four scenarios.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("EXTOKEN_BIN") or ROOT / "target" / "debug" / "extoken")
PROJECT = "P2SharedCacheLoad000000000"
KEY = base64.b64encode(os.urandom(32)).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {limit}s")


def serve(handler) -> tuple[ThreadingHTTPServer, int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


class Counter:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def inc(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


def token_service(counter: Counter, token_bytes: int):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            user = json.loads(self.rfile.read(int(self.headers["content-length"])))["user"]["id"]
            n = counter.inc()
            # A token of the size asked for (a Firebase ID token is ~900-1,000 bytes).
            stem = f"tok-{user}-{n}-"
            tok = stem + "x" * max(0, token_bytes - len(stem))
            out = json.dumps({"token": tok, "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    return serve(H)


def backend():
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    return serve(H)


class Redis:
    def __init__(self, work: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "redis-server")

    def cli(self, *args: str) -> str:
        return subprocess.run([shutil.which("redis-cli") or "/usr/bin/redis-cli", "-p",
                               str(self.port), *args], capture_output=True, text=True,
                              timeout=60, check=True).stdout

    def used_memory(self) -> int:
        for line in self.cli("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise RuntimeError("no used_memory in INFO")

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


def gateway(work: Path, i: int, jwks: Path, token_url: str, backend_url: str,
            redis: Redis | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = {
        "listen": f"127.0.0.1:{port}", "admin_listen": "off", "threads": 1,
        "log": {"level": "warn"},
        "descope": {"project_id": PROJECT, "jwks_file": str(jwks)},
        "connectors": {"legacy": {"type": "http", "url": token_url, "timeout": "3s"}},
        "routes": [{"upstream": backend_url, "connector": "legacy"}],
    }
    if redis is not None:
        cfg["cache"] = {"shared": {"url": f"redis://127.0.0.1:{redis.port}",
                                   "encryption_key": KEY, "operation_timeout": "200ms"}}
    path = work / f"gw{i}.yaml"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([str(BIN), "run", "--config", str(path)],
                            stdout=open(work / f"gw{i}.log", "wb"), stderr=subprocess.STDOUT)
    wait_port(port, proc, f"extoken #{i}")
    return proc, port


def request(port: int, session: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", "/", headers={"Authorization": f"Bearer {session}"})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def scenario(work: Path, sessions: list[str], replicas: int, shared: bool, requests: int,
             token_bytes: int, workers: int) -> dict:
    counter = Counter()
    svc, svc_port = token_service(counter, token_bytes)
    back, back_port = backend()
    redis = Redis(work) if shared else None
    mem_before = redis.used_memory() if redis else 0
    gws = [gateway(work, i, work / "dev.jwks.json", f"http://127.0.0.1:{svc_port}/mint",
                   f"http://127.0.0.1:{back_port}", redis) for i in range(replicas)]
    try:
        jobs = [(gws[(u + r) % replicas][1], s) for r in range(requests)
                for u, s in enumerate(sessions)]
        with ThreadPoolExecutor(workers) as pool:
            statuses = list(pool.map(lambda j: request(*j), jobs))
        bad = len([s for s in statuses if s != 200])
        out = {"replicas": replicas, "shared": shared, "requests": len(jobs), "non_200": bad,
               "calls": counter.n}
        if redis:
            keys = [k for k in redis.cli("--scan").split() if not k.endswith(":lock")]
            usage = [int(redis.cli("MEMORY", "USAGE", k)) for k in keys]
            out["redis_keys"] = len(keys)
            out["memory_usage_per_key"] = sum(usage) / max(1, len(usage))
            out["used_memory_per_key"] = (redis.used_memory() - mem_before) / max(1, len(keys))
        return out
    finally:
        for proc, _ in gws:
            proc.kill()
            proc.wait(timeout=10)
        if redis:
            redis.stop()
        svc.shutdown()
        back.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=3, help="requests per user, round-robin")
    ap.add_argument("--token-bytes", type=int, default=900)
    ap.add_argument("--workers", type=int, default=16, help="concurrent client connections")
    a = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"no extoken binary at {BIN} (cargo build, or set EXTOKEN_BIN)")
    if not shutil.which("redis-server") and not Path("/usr/bin/redis-server").exists():
        sys.exit("redis-server not found (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="extoken-shared-load.") as tmp:
        work = Path(tmp)
        sessions = subprocess.run(
            [str(BIN), "mint", "--key", str(work / "dev.pem"), "--project-id", PROJECT,
             "--sub", "U2load", "--ttl", "1h", "--count", str(a.users)],
            capture_output=True, text=True, timeout=300, check=True).stdout.split()
        assert len(sessions) == a.users, len(sessions)
        rows = [scenario(work, sessions, n, shared, a.requests, a.token_bytes, a.workers)
                for shared in (False, True) for n in (1, 3)]
    print(f"{a.users} users, {a.requests} requests each (round-robin over the replicas), "
          f"{a.token_bytes}-byte tokens\n")
    print("| replicas | cache.shared | requests | non-200 | connector calls | per 1,000 users |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        per = r["calls"] * 1000 / a.users
        print(f"| {r['replicas']} | {'yes' if r['shared'] else 'no'} | {r['requests']} | "
              f"{r['non_200']} | {r['calls']} | {per:g} |")
    shared = [r for r in rows if r["shared"]]
    for r in shared:
        print(f"\nRedis, {r['replicas']} replica(s): {r['redis_keys']} entries, MEMORY USAGE "
              f"{r['memory_usage_per_key']:.0f} B/entry, used_memory "
              f"+{r['used_memory_per_key']:.0f} B/entry")
    return 1 if any(r["non_200"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
