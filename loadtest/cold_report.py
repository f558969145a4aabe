#!/usr/bin/env python3
"""Report of loadtest/cold.sh: reads the JSON files of one run, prints Markdown, writes cold.json.

Exits 1 when part 1 did not make exactly one connector call, or any part got an answer other
than 200 (the figures of such a run describe errors, not the cold path).

Usage: cold_report.py <results dir>
"""

import json
import os
import re
import sys


def load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def n(x):
    return f"{x:,.0f}"


def statuses(s):
    return ", ".join(f"{k}: {n(v)}" for k, v in sorted(s.items())) or "none"


def lookups(d, name, connector):
    """cache_lookups_total of one connector by result, from a saved /metrics page."""
    out = {}
    with open(os.path.join(d, name)) as f:
        for line in f:
            m = re.match(r'extoken_cache_lookups_total\{(.*)\} (\S+)$', line.strip())
            if m and f'connector="{connector}"' in m.group(1):
                r = re.search(r'result="([^"]+)"', m.group(1))
                if r:
                    out[r.group(1)] = float(m.group(2))
    return out


def part1(d, env):
    c, k = load(d, "part1-client.json"), load(d, "part1-connector.json")
    before = lookups(d, "part1-metrics-before.txt", "slow")
    after = lookups(d, "part1-metrics-after.txt", "slow")
    seen = {r: after[r] - before.get(r, 0) for r in after if after[r] - before.get(r, 0)}
    calls = k["calls"]
    ok = calls == 1 and c["statuses"] == {"200": env["burst"]}
    out = {"calls": calls, "statuses": c["statuses"], "pass": ok, "cache_lookups": seen,
           "write_span_ms": (c["write_last"] - c["burst_start"]) * 1000}
    lines = [
        "## 1. Coalescing: concurrent first requests of one session",
        "",
        f"{n(env['burst'])} connections opened, then one request each (the same new session) "
        f"written back to back within {out['write_span_ms']:.1f} ms, on a `type: http` route "
        f"whose endpoint takes {env['delay_ms']:g} ms per call.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| connector calls | **{calls}** (must be 1) |",
        f"| answers | {statuses(c['statuses'])} |",
        "| the gateway's token-cache lookups (`cache_lookups_total`: miss = made the call, "
        "coalesced = waited for it, hit = found its result) | "
        + (", ".join(f"{r} {n(v)}" for r, v in sorted(seen.items())) or "none") + " |",
    ]
    if k["calls_kept"]:
        start, end, _ = k["calls_kept"][0]
        during = sum(1 for t in c["writes"] if t <= end)
        out.update(sent_before_call_end=during, call_ms=(end - start) * 1000)
        lines += [
            f"| the call | began {(start - c['burst_start']) * 1000:.1f} ms after the first write, "
            f"lasted {(end - start) * 1000:.1f} ms |",
            f"| requests written before the call ended (so they waited for it, not for the cache) "
            f"| {n(during)} of {n(env['burst'])} |",
            f"| last answer | {(c['answer_last'] - c['burst_start']) * 1000:.1f} ms after the first write |",
        ]
    lines += ["", f"**{'PASS' if ok else 'FAIL'}**: "
              + ("one connector call for all of them, every answer 200." if ok else
                 f"{calls} connector calls, answers {statuses(c['statuses'])}."), ""]
    return out, lines


def cores(p, name):
    return p["cpu_s"].get(name, 0.0) / p["wall_s"]


def part2(d, env):
    c, k = load(d, "part2-client.json"), load(d, "part2-connector.json")
    first = c["phases"][0]
    rep = c["phases"][1] if len(c["phases"]) > 1 else None
    conc = c["concurrency"]
    wall = first["wall_s"]
    calls = k["calls"]
    call_s = k["busy_s"] / calls if calls else 0.0
    in_flight = k["busy_s"] / wall
    bound = conc / call_s if call_s else 0.0
    gw_us = first["cpu_s"]["gateway"] / first["requests"] * 1e6
    ours = sum(first["cpu_s"].values())
    mach = first["machine_busy_cores"]
    foreign = max(0.0, mach - ours / wall)
    share = in_flight / conc
    saturated = mach >= 0.9 * first["machine_cores"]
    if share >= 0.8:
        limit = "connector"
        why = (f"on average {in_flight:.0f} of the {conc} requests in flight ({share:.0%}) were "
               f"waiting on the connector, so calls/s ≈ {in_flight:.0f} / {call_s * 1000:.1f} ms = "
               f"{calls / wall:,.0f} (at most {conc} / {call_s * 1000:.1f} ms = {bound:,.0f}); the "
               f"gateway used {cores(first, 'gateway'):.2f} cores")
        if saturated:
            why += (f". The rest ({1 - share:.0%} of the time in flight) went to the gateway, client "
                    f"and backend on a machine whose {first['machine_cores']} cores were "
                    f"{mach / first['machine_cores']:.0%} busy ({foreign:.2f} cores by others)")
    elif saturated:
        limit = "CPU (machine)"
        use = sorted(((cores(first, x), x) for x in first["cpu_s"]), reverse=True)
        why = (f"{in_flight:.0f} of the {conc} requests in flight ({share:.0%}, under the 80% that "
               f"makes the connector the limit) were at the connector on average (it could take "
               f"{bound:,.0f} calls/s); the {first['machine_cores']} cores were "
               f"{mach / first['machine_cores']:.0%} busy: "
               + ", ".join(f"{x} {v:.2f}" for v, x in use) + f", others {foreign:.2f} cores")
    else:
        limit = "gateway"
        why = (f"{in_flight:.0f} of the {conc} requests in flight ({share:.0%}) were at the connector "
               f"on average and the "
               f"machine was not saturated ({mach:.2f} of {first['machine_cores']} cores busy): the "
               f"requests waited in the gateway")
    out = {"first": first, "repeat": rep, "connector": {k2: v for k2, v in k.items() if k2 != "calls_kept"},
           "calls_per_s": calls / wall, "mean_in_flight": in_flight, "call_ms": call_s * 1000,
           "connector_bound_per_s": bound, "gateway_us_per_req": gw_us, "limit": limit}
    lines = [
        "## 2. Many users through the slow connector",
        "",
        f"{n(env['users'])} distinct sessions, each sent once (phase *first*: signature check + "
        f"connector call + cache insert), then {env['repeat']} more times each (phase *repeat*: "
        f"both caches hit); {conc} connections, one request in flight each; connector "
        f"{env['delay_ms']:g} ms per call; gateway `threads: {env['threads']}`.",
        "",
        "| phase | requests | req/s | p50 / p99 ms | answers | gateway CPU s | gateway CPU µs/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in [first] + ([rep] if rep else []):
        lines.append(
            f"| {p['phase']} | {n(p['requests'])} | {n(p['rps'])} | {p.get('p50_ms', 0):.1f} / "
            f"{p.get('p99_ms', 0):.1f} | {statuses(p['statuses'])}"
            + (f"; errors {p['errors']}" if p["errors"] else "")
            + f" | {p['cpu_s']['gateway']:.2f} | {p['cpu_s']['gateway'] / p['requests'] * 1e6:.0f} |")
    lines += [
        "",
        "| connector figure | value |",
        "|---|---|",
        f"| calls | {n(calls)} for {n(k['users'])} users ({n(k['users_called_more_than_once'])} called "
        f"more than once) |",
        f"| achieved calls/s (first phase) | {calls / wall:,.0f} |",
        f"| mean call time (its {env['delay_ms']:g} ms + its own overhead) | {call_s * 1000:.1f} ms |",
        f"| calls in flight: mean (Little: busy time / wall) / max | {in_flight:.1f} / {k['max_in_flight']} |",
        f"| its bound at this concurrency ({conc} / mean call time) | {bound:,.0f} calls/s |",
        f"| connections from the gateway | {n(k['connections'])} new, at most "
        f"{k['max_open_connections']} open at once |",
        "",
        "CPU during the first phase (cores = CPU seconds / wall seconds): "
        + ", ".join(f"{x} {cores(first, x):.2f}" for x in first["cpu_s"])
        + f"; whole machine {mach:.2f} of {first['machine_cores']} (others {foreign:.2f}); load "
        f"average before: {env['load_part2']}.",
        "",
        f"**Limit: {limit}** — {why}. At {gw_us:.0f} µs of gateway CPU per first request, one core "
        f"of gateway CPU serves about {1e6 / gw_us:,.0f} first requests/s." if gw_us else "",
        "",
    ]
    return out, lines


def part3(d, env):
    c, w = load(d, "part3-client.json"), load(d, "part3-warmup.json")
    p = c["phases"][0]
    r = env["rss_kb"]
    delta_kb = r["after"] - r["before"]
    per = delta_kb * 1024 / env["sessions"]
    mib = lambda kb: kb / 1024  # noqa: E731
    ok = mib(r["after"]) <= env["rss_max_mib"]
    capped = env["verified_cap"] < env["sessions"]
    out = {"rss_kb": r, "delta_kb": delta_kb, "bytes_per_session": per, "within": ok,
           "load": p, "warmup": w["phases"]}
    wreq = sum(x["requests"] for x in w["phases"])
    lines = [
        "## 3. Memory of cached sessions",
        "",
        f"A fresh gateway, warmed up with {n(wreq)} requests over 100 sessions ({env['concurrency']} "
        f"connections), then {n(env['sessions'])} distinct sessions verified once each on a `claim` "
        f"route (no connector call, nothing minted); `cache.verified_sessions: {env['verified_cap']}`; "
        + ("the `http` connector in the config, so sessions keep every claim but the standard ones "
           "it does not send."
           if env.get("part3_all_claims") else
           "`claim` connector only, so sessions keep the claims the config reads (`externalToken`, `dct`)."),
        "",
        "| RSS of the gateway | MiB |",
        "|---|---|",
        f"| just started (ready) | {mib(r['start']):.1f} |",
        f"| after the warm-up | {mib(r['before']):.1f} |",
        f"| right after the last of the {n(env['sessions'])} sessions | {mib(r['end']):.1f} |",
        f"| 5 s later | **{mib(r['after']):.1f}** |",
        f"| peak (VmHWM) | {mib(r['hwm']):.1f} |",
        "",
        (f"Growth: {mib(delta_kb):.1f} MiB for {n(env['sessions'])} sessions = {per:,.0f} bytes per "
         f"session sent. **The cache holds at most {n(env['verified_cap'])} of them** "
         f"(`VERIFIED_CAP`), so this is not the cost of a cached session."
         if capped else
         f"Growth: {mib(delta_kb):.1f} MiB for {n(env['sessions'])} sessions = **{per:,.0f} bytes per "
         f"cached session** (the verified-session cache entry: its key, the verified claims, the "
         f"cache's bookkeeping, and allocator slack)."),
        "",
        f"Load: {n(p['requests'])} requests at {n(p['rps'])} req/s, answers {statuses(p['statuses'])}"
        + (f", errors {p['errors']}" if p["errors"] else "")
        + f"; gateway CPU {p['cpu_s']['gateway']:.2f} s = "
        f"{p['cpu_s']['gateway'] / p['requests'] * 1e6:.0f} µs per first request (signature check "
        f"on the blocking pool + cache insert + forward).",
        "",
        f"**RSS ≤ {env['rss_max_mib']} MiB after {n(env['sessions'])} "
        f"{'sessions (cache capped)' if capped else 'cached sessions'}: "
        f"{'yes' if ok else 'NO'}** ({mib(r['after']):.1f} MiB).",
        "",
    ]
    return out, lines


def main():
    d = sys.argv[1]
    env = load(d, "env.json")
    o1, l1 = part1(d, env)
    o2, l2 = part2(d, env)
    o3, l3 = part3(d, env)
    all200 = all(
        set(p["statuses"]) <= {"200"} and not p["errors"]
        for p in [o2["first"]] + ([o2["repeat"]] if o2["repeat"] else []) + [o3["load"]]
    )
    head = [
        "# extoken cold paths (loadtest/cold.sh)",
        "",
        f"{env['date']}, {env['host']}, {env['cpus']} CPUs (shared), extoken {env['extoken']}"
        + (f", gateway environment `{env['gateway_env']}`" if env.get("gateway_env") else "") + ".",
        "",
    ]
    print("\n".join(head + l1 + l2 + l3).rstrip())
    if not all200:
        print("\n**Some answers were not 200**: the figures above describe errors, see the tables.")
    with open(os.path.join(d, "cold.json"), "w") as f:
        json.dump({"env": env, "part1": o1, "part2": o2, "part3": o3}, f, indent=1)
    sys.exit(0 if o1["pass"] and all200 else 1)


if __name__ == "__main__":
    main()
