#!/usr/bin/env python3
"""Counting token endpoint for loadtest/cold.sh: what extoken's `type: http` connector calls.

A stdlib-only asyncio HTTP/1.1 server (keep-alive, Content-Length bodies, no chunked requests) on
127.0.0.1. Every `POST /token` is one connector call: it waits --delay-ms (an endpoint doing real
work: a database lookup, a token service), then answers what the http connector expects,
`200 {"token": "conn-<user id>-<call no>", "expires_in": 3600}`. It counts what cold.sh reports:
calls, calls per user, calls in flight (mean and max), connections, the first call's start and the
last call's end (CLOCK_MONOTONIC, comparable with the load client's own clock), and keeps the
first --keep-calls calls' (start, end, user) so the coalescing check can say which requests were
sent while the one call was in flight.

  GET  /stats   the counters as JSON (never counted as a call)
  POST /reset   zeroes them (between the parts of cold.sh)

Run: cold_connector.py --port 18384 --delay-ms 20
"""

import argparse
import asyncio
import json
import time

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


class Stats:
    def __init__(self, keep):
        self.keep = keep
        self.reset()

    def reset(self):
        """Zeroes the counters; connections still open stay counted as open."""
        self.calls = 0
        self.per_user = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.busy = 0.0  # sum of call durations: mean in flight = busy / wall (Little's law)
        self.first_start = None
        self.last_end = None
        self.kept = []
        self.bad = 0
        self.connections = 0  # connections that carried a call, opened since the reset
        self.open = getattr(self, "open", 0)  # such connections open now
        self.max_open = self.open

    def as_json(self):
        repeated = sum(1 for c in self.per_user.values() if c > 1)
        return {
            "calls": self.calls,
            "users": len(self.per_user),
            "users_called_more_than_once": repeated,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "busy_s": self.busy,
            "first_start": self.first_start,
            "last_end": self.last_end,
            "calls_kept": self.kept,
            "bad_requests": self.bad,
            "connections": self.connections,
            "max_open_connections": self.max_open,
        }


async def read_request(reader):
    """(method, path, body) of the next request, or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ValueError("truncated request head") from e
        return None
    except asyncio.LimitOverrunError as e:
        raise ValueError("request head too long") from e
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            raise ValueError("chunked request bodies are not supported")
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length < 0 or length > MAX_BODY:
        raise ValueError("bad content-length")
    body = await reader.readexactly(length) if length else b""
    return parts[0], parts[1], body, close


def reply(status, body, close=False):
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n"
    )
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + data


async def call(stats, body, delay):
    start = time.monotonic()
    if stats.first_start is None:
        stats.first_start = start
    stats.calls += 1
    n = stats.calls
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        user = json.loads(body)["user"]["id"]
        if not isinstance(user, str):
            raise ValueError("user.id is not a string")
    except (ValueError, KeyError, TypeError):
        stats.in_flight -= 1
        stats.bad += 1
        return reply("400 Bad Request", {"error": "no user.id"})
    stats.per_user[user] = stats.per_user.get(user, 0) + 1
    await asyncio.sleep(delay)
    end = time.monotonic()
    stats.in_flight -= 1
    stats.busy += end - start
    stats.last_end = end
    if len(stats.kept) < stats.keep:
        stats.kept.append([start, end, user])
    return reply("200 OK", {"token": f"conn-{user}-{n}", "expires_in": 3600})


async def serve(stats, delay, reader, writer):
    caller = False  # counted once it carries a call: /stats and /reset are not the gateway's
    try:
        while True:
            try:
                req = await read_request(reader)
            except (ValueError, asyncio.IncompleteReadError):
                stats.bad += 1
                writer.write(reply("400 Bad Request", {"error": "bad request"}, close=True))
                break
            if req is None:
                break
            method, path, body, close = req
            if method == "POST" and path == "/token":
                if not caller:
                    caller = True
                    stats.connections += 1
                    stats.open += 1
                    stats.max_open = max(stats.max_open, stats.open)
                out = await call(stats, body, delay)
            elif method == "GET" and path == "/stats":
                out = reply("200 OK", stats.as_json())
            elif method == "POST" and path == "/reset":
                stats.reset()
                out = reply("200 OK", {"reset": True})
            else:
                out = reply("404 Not Found", {"error": "not found"})
            writer.write(out)
            await writer.drain()
            if close:
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        if caller:
            stats.open -= 1
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--keep-calls", type=int, default=1000)
    args = ap.parse_args()
    stats = Stats(args.keep_calls)
    delay = args.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: serve(stats, delay, r, w),
        "127.0.0.1",
        args.port,
        backlog=4096,
        limit=MAX_HEAD,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
