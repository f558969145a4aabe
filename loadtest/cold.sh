#!/usr/bin/env bash
# extoken's cold paths: what a session costs the first time the gateway sees it.
#   1. Coalescing: BURST (1,000) concurrent first requests of ONE session on a route whose `type:
#      http` connector calls a counting endpoint (cold_connector.py, DELAY_MS = 20 ms per call):
#      exactly one connector call, every answer 200 (else exit 1).
#   2. Many users through the slow connector: USERS (10,000) distinct sessions, each sent once
#      (the "first" phase: a signature check and a connector call each) then REPEAT (3) more times
#      (cached): req/s, connector calls/s and calls in flight, the gateway's CPU seconds and CPU
#      us per request, and which side limited the first phase.
#   3. Memory: a fresh gateway, warmed up, then SESSIONS (100,000) distinct sessions verified once
#      on a `claim` route (nothing minted): RSS before and after, bytes per cached session, and
#      whether RSS stays <= RSS_MAX_MIB (100).
# Prints a Markdown report (also cold.md beside cold.json in $STATE_DIR/results/<time>/).
#
#   loadtest/cold.sh                                       full scale, release build
#   EXTOKEN_BIN=target/release/extoken loadtest/cold.sh    an existing binary
#   USERS=1000 SESSIONS=10000 EXTOKEN_BIN=target/debug/extoken loadtest/cold.sh   quick run
#   loadtest/cold.sh --help                                the settings
#
# Needs python3 (stdlib only), nginx, curl, ss, flock; installs what is missing (Debian) unless
# INSTALL=0. Loopback only; every process started is recorded by PID and stopped by PID on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=loadtest/lib.sh
source "$HERE/lib.sh"
HTTP_MAX_TIME=5
REPO=$(cd "$HERE/.." && pwd)

# ---- settings ------------------------------------------------------------------------------
STATE_DIR=${STATE_DIR:-/tmp/extoken-cold}  # keys, tokens, run/ (configs, logs), results/
BURST=${BURST:-1000}                  # part 1: concurrent first requests of one session
USERS=${USERS:-10000}                 # part 2: distinct sessions through the http connector
REPEAT=${REPEAT:-3}                   # part 2: requests per session after the first
CONCURRENCY=${CONCURRENCY:-100}       # parts 2 and 3: connections, one request in flight each
SESSIONS=${SESSIONS:-100000}          # part 3: distinct sessions verified once
WARMUP_REQUESTS=${WARMUP_REQUESTS:-5000} # part 3: before the first RSS reading (100 sessions)
DELAY_MS=${DELAY_MS:-20}              # the connector endpoint's time per call
RSS_MAX_MIB=${RSS_MAX_MIB:-100}       # part 3: RSS after SESSIONS sessions, reported against it
EXTOKEN_BIN=${EXTOKEN_BIN:-}          # use this binary instead of building target/release/extoken
EXTOKEN_THREADS=${EXTOKEN_THREADS:-2} # gateway worker threads
MINT_JOBS=${MINT_JOBS:-2}             # parallel `extoken mint` processes for part 3's sessions
INSTALL=${INSTALL:-1}                 # 0: never apt-get install, fail if something is missing
BASE_PORT=${BASE_PORT:-18380}         # backend; gateway +1, admin +2, JWKS +3, connector +4
PART_TIMEOUT=${PART_TIMEOUT:-600}     # seconds any one load client may run
KEEP_TOKENS=${KEEP_TOKENS:-0}         # 1: reuse the last run's key and tokens if they fit (< 1 h old)
GATEWAY_ENV=${GATEWAY_ENV:-}          # extra environment of the gateway, e.g. MALLOC_ARENA_MAX=2
PART3_ALL_CLAIMS=${PART3_ALL_CLAIMS:-0} # 1: part 3's gateway keeps its http connector (sessions keep more claims)
VERIFIED_CAP=${VERIFIED_CAP:-}        # cache.verified_sessions; default 2 x all sessions (none evicted)

usage() { sed -n '2,21p' "$0"; grep -E '^[A-Z_0-9]+=\$\{[A-Z_0-9]+:-' "$0" | sed 's/^/  /'; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac
for v in BURST USERS REPEAT CONCURRENCY SESSIONS WARMUP_REQUESTS MINT_JOBS EXTOKEN_THREADS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a number (got ${!v})" >&2; exit 2; }
done
((BURST >= 1 && USERS >= 1 && SESSIONS >= 1 && MINT_JOBS >= 1 && CONCURRENCY >= 1)) \
  || { echo "BURST, USERS, SESSIONS, MINT_JOBS and CONCURRENCY must be >= 1" >&2; exit 2; }

PROJECT_ID=P2ColdTestProject0000000000
PORT_BACKEND=$BASE_PORT
PORT_GW=$((BASE_PORT + 1))
PORT_ADMIN=$((BASE_PORT + 2))
PORT_JWKS=$((BASE_PORT + 3))
PORT_CONN=$((BASE_PORT + 4))
# Room for every session of parts 2 and 3 (and the warm-up's), so none is evicted while measured.
VERIFIED_CAP=${VERIFIED_CAP:-$(( (SESSIONS + USERS + 1000) * 2 ))}
TOKEN_CAP=$(( USERS * 2 > 100000 ? USERS * 2 : 100000 ))

RUN_DIR=$STATE_DIR/run
# One run per STATE_DIR at a time (as soak.sh): taken before anything in it is touched.
mkdir -p "$STATE_DIR"
command -v flock >/dev/null || { echo "flock (util-linux) is needed" >&2; exit 2; }
exec 9>"$STATE_DIR/lock"
flock -n 9 || { echo "another cold.sh is running with STATE_DIR=$STATE_DIR; wait for it or set another STATE_DIR" >&2; exit 2; }
STAMP=$(date -u +%Y%m%d-%H%M%S)
RES_DIR=$STATE_DIR/results/$STAMP
KEYS=$RUN_DIR/keys
TOK=$RUN_DIR/tokens
rm -rf "$RUN_DIR/jwks"
mkdir -p "$RUN_DIR/conf" "$RUN_DIR/tmp" "$RUN_DIR/logs" "$RUN_DIR/jwks" "$KEYS" "$TOK" "$RES_DIR"


# ---- process bookkeeping (loadtest/lib.sh): by PID only, never by name ---------------------
pids_init "$RUN_DIR/pids.txt" "$RUN_DIR\|nginx\|extoken\|http.server\|cold_"

rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }

# ---- 1. install what is missing ------------------------------------------------------------
need=()
command -v nginx >/dev/null   || need+=(nginx-light)
command -v curl >/dev/null    || need+=(curl)
command -v ss >/dev/null      || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  ((INSTALL)) || die "missing: ${need[*]} (INSTALL=0)"
  log "installing ${need[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# Part 1 holds BURST connections open at once in the client and in the gateway.
if (( $(ulimit -n) < BURST + 200 )); then
  ulimit -n $((BURST + 1000)) 2>/dev/null || die "open-file limit $(ulimit -n) is too low for BURST=$BURST"
fi

# ---- 2. extoken ----------------------------------------------------------------------------
if [[ -z $EXTOKEN_BIN ]]; then
  log "building extoken (cargo build --release, nice 10)"
  (cd "$REPO" && nice -n 10 cargo build --release --bin extoken >&2)
  EXTOKEN_BIN=$REPO/target/release/extoken
fi
[[ -x $EXTOKEN_BIN ]] || die "no extoken binary at $EXTOKEN_BIN"
mkdir -p "$RUN_DIR/bin"
cp -f "$EXTOKEN_BIN" "$RUN_DIR/bin/extoken"   # a rebuild during the run cannot change it
EXTOKEN_SRC=$EXTOKEN_BIN
EXTOKEN_BIN=$RUN_DIR/bin/extoken

for p in $PORT_BACKEND $PORT_GW $PORT_ADMIN $PORT_JWKS $PORT_CONN; do
  port_free "$p" || die "port $p is in use; stop what holds it or set BASE_PORT"
done

# ---- 3. keys and tokens --------------------------------------------------------------------
# One RSA key (made by the first mint, JWKS beside it); every other mint signs with it. Distinct
# --sub prefixes keep the users of the parts (and of the parallel chunks) apart.
mint() {  # mint <out> <sub prefix> <count>
  nice -n 10 "$EXTOKEN_BIN" mint --key "$KEYS/session.pem" --project-id "$PROJECT_ID" \
    --sub "$2" --count "$3" --ttl 2h --external-token 'legacy-{sub}' >"$1.tmp"
  mv "$1.tmp" "$1"
}
tokens_fit() {  # the last run's tokens: as many as wanted, and valid for the next hour
  [[ -f $TOK/stamp && -s $KEYS/session.jwks.json ]] || return 1
  (( $(date +%s) - $(stat -c %Y "$TOK/stamp") < 3600 )) || return 1
  [[ $(cat "$TOK/stamp") == "$PROJECT_ID $USERS $SESSIONS" ]]
}
mint_all() {
  rm -rf "$KEYS" "$TOK"
  mkdir -p "$KEYS" "$TOK"
  log "minting 1 + 100 + $USERS + $SESSIONS sessions ($MINT_JOBS jobs for the last)"
  local t0=$EPOCHREALTIME pids=() p j n chunk=$(( (SESSIONS + MINT_JOBS - 1) / MINT_JOBS ))
  mint "$TOK/burst.txt" U2burst 1
  mint "$TOK/warm.txt" U2warm 100 & pids+=($!); record $! mint
  mint "$TOK/users.txt" U2cold "$USERS" & pids+=($!); record $! mint
  for ((j = 0; j < MINT_JOBS; j++)); do
    n=$(( SESSIONS - j * chunk < chunk ? SESSIONS - j * chunk : chunk ))
    ((n > 0)) || break
    mint "$TOK/sessions-$j.txt" "U2mem${j}x" "$n" & pids+=($!); record $! mint
  done
  for p in "${pids[@]}"; do wait "$p" || die "extoken mint failed"; forget "$p"; done
  cat "$TOK"/sessions-*.txt >"$TOK/sessions.txt"
  rm -f "$TOK"/sessions-*.txt
  for f in burst warm users sessions; do [[ -s $TOK/$f.txt ]] || die "no tokens in $TOK/$f.txt"; done
  n=$(wc -l <"$TOK/sessions.txt")
  ((n == SESSIONS)) || die "minted $n sessions, wanted $SESSIONS"
  echo "$PROJECT_ID $USERS $SESSIONS" >"$TOK/stamp"
  log "minted in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}') s"
}
if ((KEEP_TOKENS)) && tokens_fit; then
  log "KEEP_TOKENS=1: reusing the sessions minted at $(date -u -r "$TOK/stamp" +%H:%M:%S) UTC"
  # The burst's session must be new to the gateway and the connector: always a fresh one.
  mint "$TOK/burst.txt" "U2burst$(date +%s)" 1
else
  mint_all
fi
cp "$KEYS/session.jwks.json" "$RUN_DIR/jwks/jwks.json"

# ---- 4. configs and processes --------------------------------------------------------------
sed -e "s|@RUN@|$RUN_DIR|g; s|@BACKEND_PORT@|$PORT_BACKEND|g" \
  "$HERE/conf/backend-nginx.conf.in" >"$RUN_DIR/conf/backend-nginx.conf"
cat >"$RUN_DIR/conf/extoken.yaml" <<EOF
# written by loadtest/cold.sh
listen: "127.0.0.1:$PORT_GW"
admin_listen: "127.0.0.1:$PORT_ADMIN"
threads: $EXTOKEN_THREADS
pid_file: "$RUN_DIR/extoken.pid"
log:
  level: warn
shutdown_delay: 0s
shutdown_grace: 5s
descope:
  project_id: "$PROJECT_ID"
  jwks_url: "http://127.0.0.1:$PORT_JWKS/jwks.json"
cache:
  verified_sessions: $VERIFIED_CAP
  max_entries: $TOKEN_CAP
connectors:
  ext:
    type: claim
  slow:
    type: http
    url: "http://127.0.0.1:$PORT_CONN/token"
    timeout: 5s   # well above DELAY_MS: a queue on a busy machine must not turn into 503s
routes:
  - name: api
    path_prefix: /api
    upstream: "http://127.0.0.1:$PORT_BACKEND"
    connector: ext
  - name: conn
    path_prefix: /conn
    upstream: "http://127.0.0.1:$PORT_BACKEND"
    connector: slow
EOF
"$EXTOKEN_BIN" check --config "$RUN_DIR/conf/extoken.yaml" >/dev/null || die "extoken check failed"
# Part 3's gateway: the same without the `http` connector, which sends every custom claim to its
# endpoint, so that sessions keep every claim; with `claim` connectors only they keep the ones the
# config reads (PART3_ALL_CLAIMS=1: keep the http connector, whose sessions keep every claim but
# the standard ones it does not send).
if ((PART3_ALL_CLAIMS)); then
  cp "$RUN_DIR/conf/extoken.yaml" "$RUN_DIR/conf/extoken-part3.yaml"
else
  sed '/^  slow:$/,/^    timeout:/d; /^  - name: conn$/,$d' "$RUN_DIR/conf/extoken.yaml" >"$RUN_DIR/conf/extoken-part3.yaml"
fi
"$EXTOKEN_BIN" check --config "$RUN_DIR/conf/extoken-part3.yaml" >/dev/null || die "extoken check failed (part 3)"

python3 -m http.server "$PORT_JWKS" --bind 127.0.0.1 --directory "$RUN_DIR/jwks" \
  >"$RUN_DIR/logs/jwks.log" 2>&1 &
record $! jwks
wait_code 200 100 "http://127.0.0.1:$PORT_JWKS/jwks.json" || die "the JWKS server did not start"

nginx -e stderr -c "$RUN_DIR/conf/backend-nginx.conf" >"$RUN_DIR/logs/backend.log" 2>&1 &
BACKEND_PID=$!
record "$BACKEND_PID" backend
wait_code 200 100 "http://127.0.0.1:$PORT_BACKEND/" || die "the backend did not start"

python3 "$HERE/cold_connector.py" --port "$PORT_CONN" --delay-ms "$DELAY_MS" \
  >"$RUN_DIR/logs/connector.log" 2>&1 &
CONN_PID=$!
record "$CONN_PID" connector
wait_code 200 100 "http://127.0.0.1:$PORT_CONN/stats" || die "the connector endpoint did not start"
conn_stats() { curl -sf --max-time 10 "http://127.0.0.1:$PORT_CONN/stats"; }
conn_reset() { curl -sf --max-time 10 -X POST "http://127.0.0.1:$PORT_CONN/reset" >/dev/null; }

GW_PID=""
start_gateway() {  # start_gateway <log name> [config]
  # shellcheck disable=SC2086 # GATEWAY_ENV: VAR=value words
  env -u EXTOKEN_LOG $GATEWAY_ENV "$EXTOKEN_BIN" run --config "${2:-$RUN_DIR/conf/extoken.yaml}" >"$RUN_DIR/logs/$1.log" 2>&1 &
  GW_PID=$!
  record "$GW_PID" "extoken-$1"
  wait_code 200 300 "http://127.0.0.1:$PORT_ADMIN/readyz" \
    || { tail -20 "$RUN_DIR/logs/$1.log" >&2; die "extoken never became ready"; }
  log "extoken ($EXTOKEN_SRC) started: PID $GW_PID"
}
start_gateway gateway-a
warm1=$(sed -n 1p "$TOK/warm.txt")
for path in /api/check /conn/check; do
  wait_code 200 50 -H "Authorization: Bearer $warm1" "http://127.0.0.1:$PORT_GW$path" \
    || die "a warm-up session is not accepted on $path"
done
client() { timeout "$PART_TIMEOUT" python3 "$HERE/cold_client.py" --port "$PORT_GW" --timeout "$PART_TIMEOUT" "$@"; }
host_load() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- part 1: coalescing ----------------------------------------------------------------------
metrics() { curl -sf --max-time 10 "http://127.0.0.1:$PORT_ADMIN/metrics"; }
conn_reset
metrics >"$RES_DIR/part1-metrics-before.txt" || die "no metrics"
log "part 1: $BURST concurrent first requests of one session (connector: ${DELAY_MS} ms per call)"
client burst --n "$BURST" --token-file "$TOK/burst.txt" --path /conn/burst >"$RES_DIR/part1-client.json" \
  || die "the burst client failed"
conn_stats >"$RES_DIR/part1-connector.json" || die "no connector stats"
metrics >"$RES_DIR/part1-metrics-after.txt" || die "no metrics"

# ---- part 2: many users through the slow connector -------------------------------------------
conn_reset
log "part 2: $USERS distinct sessions through the connector, then each $REPEAT more times ($CONCURRENCY connections)"
load2=$(host_load)
client run --tokens "$TOK/users.txt" --count "$USERS" --repeat "$REPEAT" --concurrency "$CONCURRENCY" \
  --path-prefix /conn/users --pid "gateway=$GW_PID" --pid "connector=$CONN_PID" --pid "backend=$BACKEND_PID" \
  >"$RES_DIR/part2-client.json" || die "the part 2 client failed"
conn_stats >"$RES_DIR/part2-connector.json" || die "no connector stats"
stop_pid "$GW_PID"

# ---- part 3: memory per cached session -------------------------------------------------------
log "part 3: a fresh gateway, warm-up ($WARMUP_REQUESTS requests over 100 sessions), then $SESSIONS distinct sessions"
start_gateway gateway-b "$RUN_DIR/conf/extoken-part3.yaml"
rss_start=$(rss_kb "$GW_PID")
client run --tokens "$TOK/warm.txt" --count 100 --repeat $(( (WARMUP_REQUESTS + 99) / 100 - 1 )) \
  --concurrency "$CONCURRENCY" --path-prefix /api/warm --pid "gateway=$GW_PID" \
  >"$RES_DIR/part3-warmup.json" || die "the warm-up client failed"
sleep 2
rss_before=$(rss_kb "$GW_PID")
load3=$(host_load)
client run --tokens "$TOK/sessions.txt" --count "$SESSIONS" --concurrency "$CONCURRENCY" \
  --path-prefix /api/users --pid "gateway=$GW_PID" >"$RES_DIR/part3-client.json" \
  || die "the part 3 client failed"
rss_end=$(rss_kb "$GW_PID")
sleep 5
rss_after=$(rss_kb "$GW_PID")
hwm=$(hwm_kb "$GW_PID")
metrics >"$RES_DIR/part3-metrics.txt" || true
stop_pid "$GW_PID"

# ---- report ----------------------------------------------------------------------------------
cat >"$RES_DIR/env.json" <<EOF
{"date": "$(date -u -Is)", "host": "$(uname -srm)", "cpus": $(nproc),
 "extoken": "$EXTOKEN_SRC (built $(date -u -r "$EXTOKEN_SRC" '+%F %H:%M') UTC; tree at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', src modified'))",
 "threads": $EXTOKEN_THREADS, "burst": $BURST, "users": $USERS, "repeat": $REPEAT,
 "concurrency": $CONCURRENCY, "sessions": $SESSIONS, "warmup_requests": $WARMUP_REQUESTS,
 "delay_ms": $DELAY_MS, "gateway_env": "$GATEWAY_ENV", "part3_all_claims": $PART3_ALL_CLAIMS, "rss_max_mib": $RSS_MAX_MIB, "verified_cap": $VERIFIED_CAP,
 "load_part2": "$load2", "load_part3": "$load3", "load_end": "$(host_load)",
 "rss_kb": {"start": $rss_start, "before": $rss_before, "end": $rss_end, "after": $rss_after, "hwm": $hwm}}
EOF
set +e
python3 "$HERE/cold_report.py" "$RES_DIR" | tee "$RES_DIR/cold.md"
rc=${PIPESTATUS[0]}
set -e
ln -sfn "$RES_DIR" "$STATE_DIR/results/latest"
log "results in $RES_DIR (cold.md, cold.json, part*.json, env.json, part*-metrics*.txt)"
exit "$rc"
