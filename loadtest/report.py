#!/usr/bin/env python3
"""The results table (markdown) and a JSON summary from loadtest/run.sh's results.csv.

usage: report.py results.csv [more.csv ...] [--env env.txt] [--json out.json]

Adapted from shared/bench/scripts/report.py. Per target, over the rounds:
  req/s        median round (min..max over rounds beside it)
  p50/p99      of the median round
  vs nginx     median over rounds of (target req/s / nginx req/s *in the same round*): a round's
               targets run back to back, so the ratio cancels most of the machine's drift
  CPU us/req   proxy CPU time (utime+stime of its processes, all threads) / requests, median
               over rounds: the figure a noisy machine disturbs least
  foreign      CPU time on the proxy's core that neither the proxy nor the backend used (other
               people's work, wrk excluded by pinning), as % of the run: high = distrust the round
"""
import csv
import json
import statistics
import sys

args = sys.argv[1:]


def opt(name):
    if name in args:
        i = args.index(name)
        v = args[i + 1]
        del args[i:i + 2]
        return v
    return None


env_path, json_path = opt("--env"), opt("--json")
rows = []
for path in args:
    rows.extend(csv.DictReader(open(path)))
if not rows:
    print("no results")
    sys.exit(1)

order, by, rounds = [], {}, {}
for r in rows:
    t = r["target"]
    if t not in order:
        order.append(t)
    by.setdefault(t, []).append(r)
    rounds.setdefault(r["round"], {})[t] = r


def f(x, default=None):
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def cpu_us(r):
    reqs = f(r["requests"]) or 0
    p = f(r["proxy_cpu_s"])
    return None if r["target"] == "direct" or p is None or not reqs else p * 1e6 / reqs


def backend_us(r):
    reqs = f(r["requests"]) or 0
    b = f(r["backend_cpu_s"])
    return None if b is None or not reqs else b * 1e6 / reqs


def foreign_pct(r):
    busy, dur = f(r["sut_core_busy_pct"]), f(r["duration_s"])
    if busy is None or not dur:
        return None
    ours = (f(r["proxy_cpu_s"], 0) + f(r["backend_cpu_s"], 0)) / dur * 100
    return max(0.0, busy - ours)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


summary = []
for t in order:
    rs = sorted(by[t], key=lambda r: f(r["rps"], 0))
    med = rs[(len(rs) - 1) // 2]
    def ratio_to(base):
        return median(f(r["rps"]) / f(rounds[r["round"]][base]["rps"])
                      for r in rs if base in rounds[r["round"]] and f(rounds[r["round"]][base]["rps"]))
    def cpu_ratio_to(base):
        # The floor compared by CPU per request: what extoken costs over pingora's own cost.
        return median(cpu_us(rounds[r["round"]][base]) / cpu_us(r)
                      for r in rs if base in rounds[r["round"]] and cpu_us(r)
                      and cpu_us(rounds[r["round"]][base]))
    summary.append({
        "target": t,
        "rounds": len(rs),
        "rps": f(med["rps"]),
        "rps_min": f(rs[0]["rps"]),
        "rps_max": f(rs[-1]["rps"]),
        "p50_ms": f(med["p50_us"], 0) / 1000,
        "p99_ms": f(med["p99_us"], 0) / 1000,
        "vs_nginx": ratio_to("nginx"),
        "vs_floor": ratio_to("pingora"),
        "floor_cpu_ratio": cpu_ratio_to("pingora"),
        "proxy_cpu_us_per_req": median(cpu_us(r) for r in rs),
        "backend_cpu_us_per_req": median(backend_us(r) for r in rs),
        "proxy_core_busy_pct": median(f(r["sut_core_busy_pct"]) for r in rs),
        "wrk_core_busy_pct": median(f(r["loadgen_core_busy_pct"]) for r in rs),
        "foreign_on_proxy_core_pct": median(foreign_pct(r) for r in rs),
        "non2xx": sum(int(f(r["non2xx"], 0)) for r in rs),
        "socket_errors": sum(int(f(r["socket_errors"], 0)) for r in rs),
    })


def fmt(x, spec, none="-"):
    return none if x is None else format(x, spec)


if env_path:
    print("```")
    print(open(env_path).read().rstrip())
    print("```")
    print()
hdr = ["target", "req/s", "min..max", "p50 ms", "p99 ms", "vs nginx", "vs floor", "floor CPU / CPU",
       "proxy CPU µs/req",
       "backend CPU µs/req", "proxy core busy", "foreign on proxy core", "wrk core busy",
       "non-2xx", "sock err"]
print("| " + " | ".join(hdr) + " |")
print("|" + "|".join("---" for _ in hdr) + "|")
for s in summary:
    print("| " + " | ".join([
        s["target"], fmt(s["rps"], ".0f"), "%s..%s" % (fmt(s["rps_min"], ".0f"), fmt(s["rps_max"], ".0f")),
        fmt(s["p50_ms"], ".2f"), fmt(s["p99_ms"], ".2f"), fmt(s["vs_nginx"], ".2f"),
        fmt(s["vs_floor"], ".2f"), fmt(s["floor_cpu_ratio"], ".2f"),
        fmt(s["proxy_cpu_us_per_req"], ".1f"), fmt(s["backend_cpu_us_per_req"], ".1f"),
        fmt(s["proxy_core_busy_pct"], ".0f") + "%", fmt(s["foreign_on_proxy_core_pct"], ".0f") + "%",
        fmt(s["wrk_core_busy_pct"], ".0f") + "%", str(s["non2xx"]), str(s["socket_errors"]),
    ]) + " |")
print()
print("req/s and latency: wrk (closed loop, keep-alive), median round. vs nginx: median of the "
      "per-round ratios to the nginx pass-through; vs floor: the same to the bare pingora "
      "pass-through (examples/passthrough.rs, same build); floor CPU / CPU: the floor's proxy CPU "
      "per request over this target's (1.00 = costs what pingora costs). proxy/backend CPU µs/req: CPU time of the "
      "processes / requests. foreign: busy time on the proxy's core not spent by proxy or backend "
      "(other work on the machine); rounds with much of it are noisy.")
if any(s["non2xx"] or s["socket_errors"] for s in summary):
    print()
    print("WARNING: some runs had non-2xx responses or socket errors (see raw/).")
if json_path:
    env = open(env_path).read() if env_path else ""
    json.dump({"env": env, "summary": summary, "rounds": rows}, open(json_path, "w"), indent=2)
