#!/usr/bin/env python3
"""The report of loadtest/soak.sh: a markdown table on stdout, soak.json beside the inputs, and
exit status 1 when a criterion fails.

usage: soak_report.py RESULTS_DIR [--idle-fds N] [--idle-rss KB] [--exit CODE]
                      [--rss-growth-max PCT] [--p99-drift-max FACTOR]

Reads RESULTS_DIR/segments.csv (one wrk run per segment), monitor.csv (the gateway's RSS and open
fds every 2 s), events.log, metrics.txt and env.txt. Criteria:
  rss      RSS at the end <= (1 + PCT/100) x RSS at the end of the warm-up
  fds      open fds at the end <= fds at the end of the warm-up + max(10, 10%)
           (both sampled in the last 2 s of a segment, while wrk's connections are open)
  non-2xx  non-2xx answers and socket errors outside the upstream-restart segment: 0
  p99      median p99 of the last half of the measured segments
           <= FACTOR x median p99 of the first half + 2 ms (no drift)
  exit     the gateway exits 0 on SIGTERM at the end
"""
import csv
import json
import statistics
import sys

args = sys.argv[1:]


def opt(name, default=None):
    if name in args:
        i = args.index(name)
        v = args[i + 1]
        del args[i:i + 2]
        return v
    return default


idle_fds = opt("--idle-fds")
idle_rss = opt("--idle-rss")
exit_code = opt("--exit", "")
rss_growth_max = float(opt("--rss-growth-max", "10"))
p99_drift_max = float(opt("--p99-drift-max", "1.5"))
if len(args) != 1:
    print(__doc__)
    sys.exit(2)
d = args[0]

segs = list(csv.DictReader(open(f"{d}/segments.csv")))
mon = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(open(f"{d}/monitor.csv"))]
events = []
for line in open(f"{d}/events.log"):
    t, _, what = line.strip().partition(" ")
    events.append((float(t), what))
env = open(f"{d}/env.txt").read().strip()
metrics = {}
try:
    for line in open(f"{d}/metrics.txt"):
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                metrics[k] = float(v)
            except ValueError:
                pass
except FileNotFoundError:
    pass

for s in segs:
    for k in ("start", "end"):
        s[k] = float(s[k])
    for k in ("requests", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "non2xx",
              "err_connect", "err_read", "err_write", "err_timeout", "index", "gen"):
        s[k] = int(float(s[k]))
    s["rps"] = float(s["rps"])
    s["errors"] = s["err_connect"] + s["err_read"] + s["err_write"] + s["err_timeout"]


def sample_before(t):
    """The last monitor sample at or before t (else the first one)."""
    best = mon[0]
    for m in mon:
        if m["t"] <= t:
            best = m
    return best


def under_load(s):
    """The last monitor sample taken while the segment's wrk ran (its connections open)."""
    inside = [m for m in mon if s["start"] + 1 <= m["t"] <= s["end"] - 0.5]
    return inside[-1] if inside else sample_before(s["end"])


t0 = segs[0]["start"]
measured = [s for s in segs if s["phase"] == "measure"]
restart = [s for s in segs if s["phase"] == "restart"]
warmups = [s for s in segs if s["phase"] == "warmup"]
load_end = segs[-1]["end"]
warm = under_load(warmups[-1] if warmups else segs[0])
end = under_load(segs[-1])
warm_end = warmups[-1]["end"] if warmups else t0
during = [m for m in mon if warm_end <= m["t"] <= load_end
          and any(s["start"] + 1 <= m["t"] <= s["end"] - 0.5 for s in segs)]
for s in segs:
    m = under_load(s)
    s["rss_kb"], s["fds"] = int(m["rss_kb"]), int(m["fds"])

outside = [s for s in segs if s["phase"] != "restart"]
out_non2xx = sum(s["non2xx"] for s in outside)
out_errors = sum(s["errors"] for s in outside)
in_non2xx = sum(s["non2xx"] for s in restart)
in_errors = sum(s["errors"] for s in restart)
in_requests = sum(s["requests"] for s in restart)
ev = dict((w, t) for t, w in events)
down_s = None
if "upstream: stop" in ev and "upstream: started" in ev:
    down_s = ev["upstream: started"] - ev["upstream: stop"]

p99s = [s["p99_us"] for s in measured]
half = len(p99s) // 2
first = statistics.median(p99s[:max(half, 1)]) if p99s else 0
last = statistics.median(p99s[-max(half, 1):]) if p99s else 0
p99_limit = p99_drift_max * first + 2000

rss_growth = (end["rss_kb"] - warm["rss_kb"]) / warm["rss_kb"] * 100
fd_limit = warm["fds"] + max(10, 0.1 * warm["fds"])

criteria = [
    ("RSS growth after warm-up", f"{rss_growth:+.1f}%", f"<= {rss_growth_max:g}%",
     rss_growth <= rss_growth_max),
    ("open fds at the end", f"{int(end['fds'])} (warm-up {int(warm['fds'])})", f"<= {fd_limit:.0f}",
     end["fds"] <= fd_limit),
    ("non-2xx + socket errors outside the restart window", f"{out_non2xx} + {out_errors}", "0",
     out_non2xx + out_errors == 0),
    ("p99 drift (median of last half vs first half)", f"{last / 1000:.1f} ms vs {first / 1000:.1f} ms",
     f"<= {p99_limit / 1000:.1f} ms", last <= p99_limit),
    ("gateway exit on SIGTERM", str(exit_code), "0", str(exit_code) == "0"),
]
ok = all(c[3] for c in criteria)


def ms(us):
    return f"{us / 1000:.1f}"


lines = ["# extoken soak", "", "```", env, "```", ""]
lines += ["| # | phase | key | from | s | req/s | p50 ms | p99 ms | max ms | non-2xx | socket errors | RSS MiB | fds |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for s in segs:
    codes = "" if s["codes"] in ("-", "") else f" ({s['codes']})"
    lines.append(
        f"| {s['index']} | {s['phase']} | {s['gen']} | {s['start'] - t0:.0f}s | {s['end'] - s['start']:.0f} "
        f"| {s['rps']:.0f} | {ms(s['p50_us'])} | {ms(s['p99_us'])} | {ms(s['max_us'])} "
        f"| {s['non2xx']}{codes} | {s['errors']} | {s['rss_kb'] / 1024:.1f} | {s['fds']} |")
total = sum(s["requests"] for s in segs)
rotations = sum(1 for _, w in events if w.startswith("jwks:")) - 1
hups = sum(1 for _, w in events if w == "sighup")
def metric(name, **labels):
    """A sample of metrics.txt (labels in the text format's order), 0 when absent."""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return metrics.get(f"{name}{{{inner}}}" if labels else name, 0)


reloads = (metric("extoken_config_reloads_total", result="ok"),
           metric("extoken_config_reloads_total", result="error"))
fetches = (metric("extoken_jwks_fetches_total", result="ok"),
           metric("extoken_jwks_fetches_total", result="error"))
minted = (metric("extoken_connector_calls_total", connector="legacy", result="ok"),
          metric("extoken_connector_calls_total", connector="legacy", result="error"))
cached = metric("extoken_cache_entries", connector="legacy")
lines += [
    "",
    f"- requests: {total} in {load_end - t0:.0f} s ({total / (load_end - t0):.0f}/s); key publications: "
    f"{rotations}; SIGHUPs: {hups}; reloads ok/error: {reloads[0]:.0f}/{reloads[1]:.0f}",
    f"- JWKS fetches ok/error: {fetches[0]:.0f}/{fetches[1]:.0f}; tokens minted by the jwt connector: "
    f"{minted[0]:.0f} (errors {minted[1]:.0f}), cached {cached:.0f}",
    f"- RSS: {warm['rss_kb'] / 1024:.1f} MiB after warm-up, {end['rss_kb'] / 1024:.1f} MiB at the end, "
    f"max {max(x['rss_kb'] for x in during or [end]) / 1024:.1f} MiB while measured"
    + (f", {int(idle_rss) / 1024:.1f} MiB idle after" if idle_rss else ""),
    f"- open fds: {int(warm['fds'])} after warm-up, {int(end['fds'])} at the end, "
    f"{int(min(x['fds'] for x in during or [end]))}..{int(max(x['fds'] for x in during or [end]))} under load"
    + (f", {idle_fds} idle after" if idle_fds else ""),
    f"- upstream restart: down {down_s:.1f} s (stop to answering again); inside its segment "
    f"{in_non2xx} non-2xx + {in_errors} socket errors of {in_requests} requests"
    if down_s is not None else "- upstream restart: not run",
    f"- p99 per measured segment (ms): {' '.join(ms(p) for p in p99s)}",
    "",
    "| criterion | value | limit | |",
    "|---|---|---|---|",
]
for name, value, limit, passed in criteria:
    lines.append(f"| {name} | {value} | {limit} | {'ok' if passed else 'FAIL'} |")
lines += ["", "PASS" if ok else "FAIL"]
print("\n".join(lines))

summary = {
    "ok": ok,
    "env": env,
    "criteria": [{"name": n, "value": v, "limit": l, "ok": p} for n, v, l, p in criteria],
    "segments": [{k: s[k] for k in ("index", "phase", "gen", "requests", "rps", "p50_us", "p90_us", "p99_us",
                                    "p999_us", "max_us", "non2xx", "codes", "errors", "rss_kb", "fds")}
                 | {"start_s": round(s["start"] - t0, 1), "seconds": round(s["end"] - s["start"], 1)}
                 for s in segs],
    "rss_kb": {"after_warmup": int(warm["rss_kb"]), "end": int(end["rss_kb"]),
               "growth_pct": round(rss_growth, 2), "idle_after": int(idle_rss) if idle_rss else None},
    "fds": {"after_warmup": int(warm["fds"]), "end": int(end["fds"]),
            "min": int(min(x["fds"] for x in during or [end])), "max": int(max(x["fds"] for x in during or [end])),
            "idle_after": int(idle_fds) if idle_fds else None},
    "non2xx": {"outside_restart": out_non2xx, "socket_errors_outside_restart": out_errors,
               "inside_restart": in_non2xx, "socket_errors_inside_restart": in_errors,
               "requests_in_restart_segment": in_requests,
               "upstream_down_s": round(down_s, 2) if down_s is not None else None},
    "p99_us": {"per_measured_segment": p99s, "first_half_median": first, "last_half_median": last},
    "requests": total,
    "key_publications": rotations,
    "sighups": hups,
    "metrics": {k: v for k, v in metrics.items() if k.startswith(("extoken_config_reloads_total",
                                                                 "extoken_jwks_fetches_total",
                                                                 "extoken_connector_calls_total",
                                                                 "extoken_cache_entries",
                                                                 "extoken_requests_total"))},
}
json.dump(summary, open(f"{d}/soak.json", "w"), indent=2)
sys.exit(0 if ok else 1)
