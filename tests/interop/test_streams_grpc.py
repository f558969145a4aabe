"""gRPC end to end through extoken: a real grpcio server behind, a real grpcio client in front.

The stubs are generated at test time (``python -m grpc_tools.protoc``) from a small .proto into the
test's temp dir. The server (127.0.0.1, plaintext HTTP/2) has unary, server-streaming,
client-streaming and bidi methods, and one that ends with a status, a message and custom trailing
metadata. extoken listens with ``h2c: true`` (and a TLS listener with ALPN h2) and forwards with
``upstream_protocol: h2`` (prior knowledge), ``auth: required``, ``claim`` connector.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from concurrent import futures

# The gateway is started with fork+exec while this process runs gRPC threads: grpc-core's fork
# handlers then run in the child before its exec and can abort it ("epoll_wait error: Bad file
# descriptor", exit -6). No test here forks a process that goes on using gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import grpc  # noqa: E402
import pytest

PROTO = """
syntax = "proto3";
package streams;
message Msg { string text = 1; int32 n = 2; }
service Streams {
  rpc Unary (Msg) returns (Msg);
  rpc ServerStream (Msg) returns (stream Msg);
  rpc ClientStream (stream Msg) returns (Msg);
  rpc Bidi (stream Msg) returns (stream Msg);
  rpc Fail (Msg) returns (Msg);
}
"""

FAIL_MESSAGE = "precondition failed: 100% ünïcode \u2713"
FAIL_TRAILERS = (("x-detail", "why-it-failed"), ("x-blob-bin", b"\x00\x01\xfe\xff"))
TIMEOUT = 10  # seconds per RPC


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpc_stubs")
    (out / "streams.proto").write_text(PROTO)
    r = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
         f"--grpc_python_out={out}", str(out / "streams.proto")],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"protoc failed: {r.stderr}"
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("streams_pb2")
        pb2_grpc = importlib.import_module("streams_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


class Server:
    """The gRPC backend: records the invocation metadata of every call."""

    def __init__(self, pb2, pb2_grpc):
        self.seen: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        srv = self

        class Servicer(pb2_grpc.StreamsServicer):
            def _record(self, name, context):
                with srv.lock:
                    srv.seen.append((name, dict(context.invocation_metadata())))

            def Unary(self, request, context):
                self._record("Unary", context)
                return pb2.Msg(text="echo:" + request.text, n=request.n + 1)

            def ServerStream(self, request, context):
                self._record("ServerStream", context)
                for i in range(request.n):
                    yield pb2.Msg(text=f"{request.text}-{i}", n=i)

            def ClientStream(self, request_iterator, context):
                self._record("ClientStream", context)
                msgs = list(request_iterator)
                return pb2.Msg(text="".join(m.text for m in msgs), n=len(msgs))

            def Bidi(self, request_iterator, context):
                self._record("Bidi", context)
                for m in request_iterator:
                    yield pb2.Msg(text=m.text.upper(), n=m.n * 2)

            def Fail(self, request, context):
                self._record("Fail", context)
                context.set_trailing_metadata(FAIL_TRAILERS)
                context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
                context.set_details(FAIL_MESSAGE)
                return pb2.Msg()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb2_grpc.add_StreamsServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def last(self, name: str) -> dict:
        with self.lock:
            for n, md in reversed(self.seen):
                if n == name:
                    return md
        raise AssertionError(f"the server got no {name} call (got {[n for n, _ in self.seen]})")

    def stop(self):
        self.server.stop(grace=None)


@pytest.fixture
def grpc_server(stubs):
    s = Server(*stubs)
    yield s
    s.stop()


@pytest.fixture
def grpc_gateway(gateway, grpc_server, tmp_path):
    """extoken with h2c on `listen` and a TLS listener (ALPN h2), one route for the service."""
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "gw.crt", tmp_path / "gw.key", tmp_path / "ca.crt"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.cert_pem.write_to_path(str(ca_file))
    from conftest import free_port
    tls_port = free_port()
    g = gateway(
        {"descope-claim": {"type": "claim", "claim": "externalToken"}},
        route={"name": "grpc", "path_prefix": "/streams.Streams/",
               "upstream": f"http://127.0.0.1:{grpc_server.port}",
               "upstream_protocol": "h2", "auth": "required"},
        h2c=True,
        tls={"listen": f"127.0.0.1:{tls_port}",
             "certificates": [{"cert_file": str(cert_file), "key_file": str(key_file)}],
             "alpn": ["h2", "http/1.1"]},
    )
    g.tls_port = tls_port
    g.ca_pem = ca_file.read_bytes()
    return g


def _session_md(session):
    return (("authorization", f"Bearer {session}"),)


def _check_all_kinds(channel, pb2, pb2_grpc, server, session, ext):
    stub = pb2_grpc.StreamsStub(channel)
    md = _session_md(session)

    r = stub.Unary(pb2.Msg(text="hi", n=41), metadata=md, timeout=TIMEOUT)
    assert (r.text, r.n) == ("echo:hi", 42)

    got = [(m.text, m.n) for m in stub.ServerStream(pb2.Msg(text="s", n=5), metadata=md,
                                                    timeout=TIMEOUT)]
    assert got == [(f"s-{i}", i) for i in range(5)]

    r = stub.ClientStream(iter([pb2.Msg(text=c) for c in "abcdef"]), metadata=md, timeout=TIMEOUT)
    assert (r.text, r.n) == ("abcdef", 6)

    got = [(m.text, m.n) for m in stub.Bidi(iter([pb2.Msg(text=w, n=i) for i, w in
                                                  enumerate(["x", "yy", "zzz"])]),
                                            metadata=md, timeout=TIMEOUT)]
    assert got == [("X", 0), ("YY", 2), ("ZZZ", 4)]

    for name in ("Unary", "ServerStream", "ClientStream", "Bidi"):
        seen = server.last(name)
        assert seen.get("authorization") == f"Bearer {ext}", (name, seen.get("authorization"))
        assert session not in repr(seen), f"the Descope session reached the gRPC server ({name})"

    # Status, message and trailing metadata of the server reach the client unchanged.
    with pytest.raises(grpc.RpcError) as ei:
        stub.Fail(pb2.Msg(text="f"), metadata=md, timeout=TIMEOUT)
    err = ei.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (err.code(), err.details())
    assert err.details() == FAIL_MESSAGE
    trailers = dict(err.trailing_metadata())
    assert trailers.get("x-detail") == "why-it-failed", trailers
    assert trailers.get("x-blob-bin") == b"\x00\x01\xfe\xff", trailers
    assert server.last("Fail").get("authorization") == f"Bearer {ext}"


def _grpc_refusal(port: int, path: str, session: str | None) -> dict:
    """One gRPC-shaped POST over h2c with curl; the response headers extoken wrote."""
    args = ["curl", "-sS", "--max-time", "10", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            "--data-binary", "@/dev/null"]
    if session:
        args += ["-H", f"authorization: Bearer {session}"]
    r = subprocess.run(args + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("HTTP/2 "), lines
    head = {"status": lines[0].split()[1]}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        head[k.strip().lower()] = v.strip()
    return head


def test_grpc_through_h2c(grpc_gateway, grpc_server, stubs, descope):
    pb2, pb2_grpc = stubs
    session = descope.mint("U2grpc", externalToken="legacy-grpc-h2c")
    with grpc.insecure_channel(f"127.0.0.1:{grpc_gateway.port}") as ch:
        _check_all_kinds(ch, pb2, pb2_grpc, grpc_server, session, "legacy-grpc-h2c")


def test_grpc_refusals_are_grpc_shaped(grpc_gateway, grpc_server, stubs, descope):
    """extoken's own answers to gRPC calls carry the gRPC status of README's table, as a
    Trailers-Only response (HTTP 200, application/grpc, grpc-status on the one HEADERS frame that
    ends the stream), read by a real grpcio client; nothing reaches the server."""
    pb2, pb2_grpc = stubs
    session = descope.mint("U2grpcref", externalToken="legacy-grpc-ref")
    port = grpc_gateway.port
    h = _grpc_refusal(port, "/streams.Streams/Unary", None)
    assert (h["status"], h.get("content-type"), h.get("grpc-status")) == ("200", "application/grpc", "16"), h
    assert h.get("www-authenticate", "").startswith("Bearer"), h
    h = _grpc_refusal(port, "/other.Nope/Call", session)
    assert (h["status"], h.get("content-type"), h.get("grpc-status")) == ("200", "application/grpc", "12"), h
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb2_grpc.StreamsStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            stub.Unary(pb2.Msg(text="x"), timeout=TIMEOUT)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED, (ei.value.code(), ei.value.details())
        assert ei.value.details().startswith("no session token"), ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:
            stub.Unary(pb2.Msg(text="x"), metadata=(("authorization", "Bearer not.a.jwt"),),
                       timeout=TIMEOUT)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED, (ei.value.code(), ei.value.details())
        with pytest.raises(grpc.RpcError) as ei:
            ch.unary_unary("/other.Nope/Call")(b"", metadata=_session_md(session), timeout=TIMEOUT)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED, (ei.value.code(), ei.value.details())
    assert grpc_server.seen == [], "a refused call reached the gRPC server"


def test_grpc_through_tls_alpn_h2(grpc_gateway, grpc_server, stubs, descope):
    pb2, pb2_grpc = stubs
    session = descope.mint("U2grpctls", externalToken="legacy-grpc-tls")
    creds = grpc.ssl_channel_credentials(root_certificates=grpc_gateway.ca_pem)
    with grpc.secure_channel(f"localhost:{grpc_gateway.tls_port}", creds) as ch:
        _check_all_kinds(ch, pb2, pb2_grpc, grpc_server, session, "legacy-grpc-tls")
