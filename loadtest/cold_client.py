#!/usr/bin/env python3
"""Load client of loadtest/cold.sh: exact request counts, which wrk cannot give (it runs for a time).

Stdlib only (asyncio, HTTP/1.1 keep-alive, one request in flight per connection). Prints one JSON
object on stdout.

  burst  --n 1000 --token-file F: opens n connections, and only once all are open writes one request
         (the same session token) on each, as close together as it can, then reads every answer.
         Reports statuses and when the burst started, each write returned and the answers came
         (CLOCK_MONOTONIC, the clock cold_connector.py stamps its calls with).
  run    --tokens F --count n --repeat r --concurrency c: phase "first" sends each of the first n
         tokens once (n distinct sessions), phase "repeat" then sends them r more times (same
         order); c connections each keep one request in flight. Per phase: requests, wall time,
         req/s, statuses, latency percentiles, and the CPU seconds (utime + stime from
         /proc/<pid>/stat, children included) of every --pid name=PID, of this client and of the
         whole machine (/proc/stat), plus each --pid's RSS at the end of the phase.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from array import array

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---- /proc ---------------------------------------------------------------------------------------
def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_ticks(pid):
    """utime + stime of pid and its descendants, in clock ticks."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(rest[11]) + int(rest[12])  # fields 14 and 15 of proc(5)
    return total


def rss_kb(pid):
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KB
        except OSError:
            pass
    return total


def machine_ticks():
    """(busy, total) ticks of all CPUs: busy excludes idle and iowait."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - v[3] - v[4], total


class Cpu:
    def __init__(self, pids):
        self.pids = pids
        self.t0 = time.monotonic()
        self.proc0 = {n: cpu_ticks(p) for n, p in pids.items()}
        self.self0 = sum(os.times()[:2])
        self.mach0 = machine_ticks()

    def result(self):
        wall = time.monotonic() - self.t0
        cpu = {n: (cpu_ticks(p) - self.proc0[n]) / CLK_TCK for n, p in self.pids.items()}
        cpu["client"] = sum(os.times()[:2]) - self.self0
        busy1, tot1 = machine_ticks()
        busy = busy1 - self.mach0[0]
        return {
            "cpu_s": cpu,
            "machine_busy_cores": busy / CLK_TCK / wall if wall > 0 else 0.0,
            "machine_cores": os.cpu_count(),
            "rss_kb": {n: rss_kb(p) for n, p in self.pids.items()},
        }


# ---- HTTP ----------------------------------------------------------------------------------------
def request(path, token):
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


async def read_response(reader):
    """(status, keep_alive) of one response, its body read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length, chunked, keep = 0, False, True
    for line in head[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            keep = False
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep


def percentiles(lat):
    if not lat:
        return {}
    s = sorted(lat)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000.0  # noqa: E731
    return {"p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99), "max_ms": s[-1] * 1000.0}


# ---- burst ---------------------------------------------------------------------------------------
async def burst(args):
    token = open(args.token_file).readline().strip()
    req = request(args.path, token)
    conns = await asyncio.gather(
        *(asyncio.open_connection(args.host, args.port) for _ in range(args.n))
    )
    writes = []
    start = time.monotonic()
    for _, w in conns:  # no await between the writes: they go out back to back
        w.write(req)
        writes.append(time.monotonic())

    async def answer(r):
        try:
            status, _ = await read_response(r)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            return f"error:{type(e).__name__}", time.monotonic()
        return str(status), time.monotonic()

    answers = await asyncio.gather(*(answer(r) for r, _ in conns))
    for _, w in conns:
        w.close()
    statuses = {}
    for s, _ in answers:
        statuses[s] = statuses.get(s, 0) + 1
    ends = [t for _, t in answers]
    return {
        "n": args.n,
        "statuses": statuses,
        "burst_start": start,
        "write_first": min(writes),
        "write_last": max(writes),
        "writes": writes,
        "answer_first": min(ends),
        "answer_last": max(ends),
    }


# ---- run -----------------------------------------------------------------------------------------
async def phase(args, name, tokens, total, pids):
    nxt = 0
    statuses, errors = {}, {}
    lat = array("d")

    async def worker():
        nonlocal nxt
        conn = None
        while nxt < total:
            i = nxt
            nxt += 1
            tok = tokens[i % len(tokens)]
            path = f"{args.path_prefix}/{i % len(tokens)}"
            for attempt in (1, 2):  # a pooled connection the server closed: once more, fresh
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(args.host, args.port)
                    t0 = time.monotonic()
                    conn[1].write(request(path, tok))
                    status, keep = await read_response(conn[0])
                    lat.append(time.monotonic() - t0)
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if not keep:
                        conn[1].close()
                        conn = None
                    break
                except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    if attempt == 2:
                        k = type(e).__name__
                        errors[k] = errors.get(k, 0) + 1
        if conn is not None:
            conn[1].close()

    cpu = Cpu(pids)
    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.monotonic() - t0
    out = {"phase": name, "requests": total, "wall_s": wall, "rps": total / wall,
           "statuses": statuses, "errors": errors, "start": t0, "end": t0 + wall}
    out.update(percentiles(lat))
    out.update(cpu.result())
    return out


async def run(args):
    pids = {}
    for kv in args.pid:
        name, _, pid = kv.partition("=")
        pids[name] = int(pid)
    tokens = []
    with open(args.tokens) as f:
        for line in f:
            line = line.strip()
            if line:
                tokens.append(line)
            if len(tokens) == args.count:
                break
    if len(tokens) < args.count:
        sys.exit(f"{args.tokens} has {len(tokens)} tokens, {args.count} wanted")
    phases = [await phase(args, "first", tokens, len(tokens), pids)]
    if args.repeat > 0:
        phases.append(await phase(args, "repeat", tokens, args.repeat * len(tokens), pids))
    return {"concurrency": args.concurrency, "users": len(tokens), "phases": phases}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole command")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("burst")
    b.add_argument("--n", type=int, default=1000)
    b.add_argument("--token-file", required=True)
    b.add_argument("--path", default="/conn/burst")
    r = sub.add_parser("run")
    r.add_argument("--tokens", required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--repeat", type=int, default=0)
    r.add_argument("--concurrency", type=int, default=100)
    r.add_argument("--path-prefix", default="/conn/users")
    r.add_argument("--pid", action="append", default=[], help="name=PID whose CPU and RSS to report")
    args = ap.parse_args()
    job = burst(args) if args.cmd == "burst" else run(args)
    try:
        out = asyncio.run(asyncio.wait_for(job, args.timeout))
    except asyncio.TimeoutError:
        sys.exit(f"cold_client {args.cmd}: not done within {args.timeout} s")
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
