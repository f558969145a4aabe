#!/usr/bin/env python3
"""The table of loadtest/decision.sh: per target the median round's req/s and latency, the CPU
time per request of each process (ingress, extoken, backend), and the issue's two ratios:

* extoken CPU per decision / extoken CPU per proxied request (target-by-target, to extoken-proxy
  in the same round; the target is <= 0.5);
* req/s of envoy-grpc / req/s of envoy-jwt (Envoy's jwt_authn alone, with its JWT cache, in the
  same round; the target is >= 0.8).

Usage: decision_report.py results.csv [--env env.txt] [--json out.json]
"""

import argparse
import csv
import json
import statistics
from collections import defaultdict


def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def per_req_us(r, col):
    n = f(r["requests"])
    s = f(r[col])
    return s * 1e6 / n if n and s is not None else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--env")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    rounds = defaultdict(dict)
    by = defaultdict(list)
    for r in rows:
        rounds[r["round"]][r["target"]] = r
        by[r["target"]].append(r)

    def ratio(rs, base, value):
        out = [value(r) / value(rounds[r["round"]][base]) for r in rs
               if base in rounds[r["round"]] and value(r) and value(rounds[r["round"]][base])]
        return statistics.median(out) if out else None

    summary = []
    for t, rs in by.items():
        med = sorted(rs, key=lambda r: f(r["rps"]) or 0)[len(rs) // 2]
        s = {
            "target": t,
            "rps": f(med["rps"]),
            "p50_ms": f(med["p50_us"]) / 1000 if f(med["p50_us"]) else None,
            "p99_ms": f(med["p99_us"]) / 1000 if f(med["p99_us"]) else None,
            "non2xx": sum(int(r["non2xx"] or 0) for r in rs),
            "errors": sum(int(r["errors"] or 0) for r in rs),
            "ingress_us": per_req_us(med, "ingress_cpu_s"),
            "extoken_us": per_req_us(med, "extoken_cpu_s"),
            "backend_us": per_req_us(med, "backend_cpu_s"),
            "rps_vs_envoy_jwt": ratio(rs, "envoy-jwt", lambda r: f(r["rps"])),
            "extoken_cpu_vs_proxy": ratio(rs, "extoken-proxy", lambda r: per_req_us(r, "extoken_cpu_s")),
        }
        summary.append(s)

    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    if a.env:
        print("```\n" + open(a.env).read().rstrip() + "\n```\n")
    print("| target | req/s | p50 ms | p99 ms | ingress CPU µs/req | extoken CPU µs/req | backend CPU µs/req "
          "| req/s vs envoy-jwt | extoken CPU vs proxied | non-2xx | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in summary:
        print(f"| {s['target']} | {fmt(s['rps'], '.0f')} | {fmt(s['p50_ms'], '.2f')} | {fmt(s['p99_ms'], '.2f')} "
              f"| {fmt(s['ingress_us'], '.1f')} | {fmt(s['extoken_us'], '.1f')} | {fmt(s['backend_us'], '.1f')} "
              f"| {fmt(s['rps_vs_envoy_jwt'], '.2f')} | {fmt(s['extoken_cpu_vs_proxy'], '.2f')} "
              f"| {s['non2xx']} | {s['errors']} |")
    got = {s["target"]: s for s in summary}
    print()
    for t in ("envoy-grpc", "envoy-http", "nginx-auth"):
        c = (got.get(t) or {}).get("extoken_cpu_vs_proxy")
        if c is not None:
            print(f"* extoken CPU per decision ({t}) / per proxied request: {c:.2f} "
                  f"({'meets' if c <= 0.5 else 'misses'} the <= 0.5 target)")
    r = (got.get("envoy-grpc") or {}).get("rps_vs_envoy_jwt")
    if r is not None:
        print(f"* Envoy + extoken gRPC / Envoy jwt_authn alone, req/s: {r:.2f} "
              f"({'meets' if r >= 0.8 else 'misses'} the >= 0.8 target)")
    if a.json:
        json.dump(summary, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
