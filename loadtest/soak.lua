-- wrk script of loadtest/soak.sh: rotates "Authorization: Bearer <token>" over the tokens in the
-- file named by env TOKENS_FILE (one session JWT per line, one per user) and sends every
-- MINT_EVERY-th request (default 4) to /mint/... (a route whose connector mints a JWT per user),
-- the rest to /api/... (a claim route). Requests are pre-built in init(). Every answer other than
-- 2xx is counted by status. done() prints one machine-readable line:
--   WRKRESULT requests=.. duration_us=.. rps=.. p50_us=.. p99_us=.. ... non2xx=.. codes=502:3;401:1
local api, mint = {}, {}
local n, idx, count = 0, 0, 0
local mint_every = tonumber(os.getenv("MINT_EVERY") or "4") or 4
local thread_no = 0
local threads = {}
codes = {}

function setup(thread)
  thread:set("thread_no", thread_no)
  thread_no = thread_no + 1
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("TOKENS_FILE")
  for line in io.lines(path) do
    if #line > 0 then
      n = n + 1
      local h = {["Authorization"] = "Bearer " .. line}
      api[n] = wrk.format("GET", "/api/users/" .. n, h)
      mint[n] = wrk.format("GET", "/mint/users/" .. n, h)
    end
  end
  assert(n > 0, "no tokens in " .. tostring(path))
  idx = ((thread_no or 0) * 7919) % n
end

function request()
  idx = idx % n + 1
  count = count + 1
  -- shifted by one every pass over the users, so that every user takes the minting route
  if mint_every > 0 and (count + math.floor(count / n)) % mint_every == 0 then
    return mint[idx]
  end
  return api[idx]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    codes[status] = (codes[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local all, non2xx = {}, 0
  for _, t in ipairs(threads) do
    local c = t:get("codes")
    if c then
      for k, v in pairs(c) do
        all[k] = (all[k] or 0) + v
        non2xx = non2xx + v
      end
    end
  end
  local parts = {}
  for k, v in pairs(all) do
    table.insert(parts, string.format("%d:%d", k, v))
  end
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d rps=%.1f mean_us=%.1f " ..
    "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d non2xx=%d codes=%s\n",
    summary.requests, summary.duration,
    summary.requests / (summary.duration / 1e6),
    latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.timeout, non2xx,
    (#parts > 0) and table.concat(parts, ";") or "-"))
end
