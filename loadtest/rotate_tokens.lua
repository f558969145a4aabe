-- wrk script: rotate "Authorization: Bearer <token>" over the tokens in the file named by env
-- TOKENS_FILE (one JWT per line), requests pre-built in init() so wrk's per-request cost is one
-- table lookup. done() prints one machine-readable line:
--   WRKRESULT requests=.. duration_us=.. rps=.. p50_us=.. ... non2xx=..
-- Copied from shared/bench/scripts/rotate_tokens.lua; WRK_CLOSE=1 adds "Connection: close" (a new
-- connection, so a full TLS handshake, per request: run.sh PROTO=handshake).
local reqs = {}
local n = 0
local idx = 0
local thread_no = 0
local threads = {}

function setup(thread)
  thread:set("thread_no", thread_no)
  thread_no = thread_no + 1
  table.insert(threads, thread)
end

function init(args)
  local close = os.getenv("WRK_CLOSE") == "1"
  local path = os.getenv("TOKENS_FILE")
  if path and path ~= "" then
    for line in io.lines(path) do
      if #line > 0 then
        n = n + 1
        local h = {["Authorization"] = "Bearer " .. line}
        if close then h["Connection"] = "close" end
        reqs[n] = wrk.format(nil, nil, h)
      end
    end
  end
  if n == 0 then
    n = 1
    reqs[1] = wrk.format(nil, nil, {})
  end
  -- spread threads over the token list
  idx = ((thread_no or 0) * 7919) % n
end

function request()
  idx = idx % n + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d bytes=%d rps=%.1f mean_us=%.1f stdev_us=%.1f " ..
    "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.bytes,
    summary.requests / (summary.duration / 1e6),
    latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
