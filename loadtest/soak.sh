#!/usr/bin/env bash
# extoken soak test: wrk load over USERS (10,000) distinct users for --duration (default 10m, after
# a warm-up), while
#   - the Descope signing key rotates every segment (a minute by default): a local JWKS endpoint
#     this script controls publishes the next key beside the current one half-way through a
#     segment (dropping the one before), and the next segment's sessions are signed with it;
#   - a SIGHUP reloads the gateway every HUP_EVERY seconds (30);
#   - the upstream (nginx) is stopped and started again once, inside a segment of its own;
#   - a quarter of the requests go to a route whose `jwt` connector mints a token per user (the
#     rest to a `claim` route).
# It samples the gateway's RSS and open fds every 2 s and reports, as a table and a JSON file:
# RSS after warm-up and at the end (growth <= 10%), open fds (flat), non-2xx and socket errors
# outside the upstream-restart window (0) and inside it, and p99 per segment (no drift). Exits 1
# when a criterion fails.
#
#   loadtest/soak.sh                       10 minutes (+3 min warm-up), release build
#   loadtest/soak.sh --duration 60s        the CI version (20 s segments, 2 min warm-up)
#   EXTOKEN_BIN=target/debug/extoken loadtest/soak.sh --duration 60s
#   loadtest/soak.sh --help                the settings
#
# Self-contained: installs what is missing (Debian: wrk, nginx-light, curl, python3, openssl),
# builds `cargo build --release` unless EXTOKEN_BIN is set. Loopback only; every process started
# is recorded by PID and stopped by PID on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=loadtest/lib.sh
source "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)

# ---- settings ------------------------------------------------------------------------------
STATE_DIR=${STATE_DIR:-/tmp/extoken-soak}   # keys, tokens, run/ (configs, logs), results/
USERS=${USERS:-10000}                 # distinct users (one session token each per key generation)
CONNECTIONS=${CONNECTIONS:-32}        # wrk connections
MINT_EVERY=${MINT_EVERY:-4}           # every n-th request goes to the minting (jwt connector) route
HUP_EVERY=${HUP_EVERY:-30}            # seconds between SIGHUPs
SEGMENT=${SEGMENT:-}                  # seconds per segment = per key; default 60, 20 when --duration < 5m
WARMUP_SEGMENTS=${WARMUP_SEGMENTS:-} # unmeasured segments first: 3, or 6 of 20 s (the cache reaches its size)
RESTART_SEGMENT=${RESTART_SEGMENT:-10} # seconds of the segment in which the upstream restarts
RESTART_DOWN=${RESTART_DOWN:-1}       # seconds the upstream stays down
EXTOKEN_BIN=${EXTOKEN_BIN:-}          # use this binary instead of building target/release/extoken
EXTOKEN_THREADS=${EXTOKEN_THREADS:-2} # gateway worker threads
INSTALL=${INSTALL:-1}                 # 0: never apt-get install, fail if something is missing
BASE_PORT=${BASE_PORT:-18280}         # backend; gateway +1, admin +2, JWKS +3
RSS_GROWTH_MAX=${RSS_GROWTH_MAX:-10}  # % allowed between the end of warm-up and the end
P99_DRIFT_MAX=${P99_DRIFT_MAX:-1.5}   # last-half median p99 <= this x first-half median p99 (+2 ms)

DURATION=10m
usage() { sed -n '2,23p' "$0"; grep -E '^[A-Z_0-9]+=\$\{[A-Z_0-9]+:-' "$0" | sed 's/^/  /'; }
while (($#)); do
  case "$1" in
    --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$DURATION" in
  *m) DURATION_S=$(( ${DURATION%m} * 60 )) ;;
  *s) DURATION_S=${DURATION%s} ;;
  *) DURATION_S=$DURATION ;;
esac
[[ $DURATION_S =~ ^[0-9]+$ ]] && ((DURATION_S >= 20)) || { echo "bad --duration $DURATION (e.g. 60s, 10m)" >&2; exit 2; }
if [[ -z $SEGMENT ]]; then
  if ((DURATION_S < 300)); then SEGMENT=20; else SEGMENT=60; fi
fi
if [[ -z $WARMUP_SEGMENTS ]]; then
  if ((SEGMENT < 60)); then WARMUP_SEGMENTS=6; else WARMUP_SEGMENTS=3; fi
fi
MEASURED=$(( (DURATION_S + SEGMENT - 1) / SEGMENT ))   # measured segments

PROJECT_ID=P2SoakTestProject0000000000
PORT_BACKEND=$BASE_PORT
PORT_GW=$((BASE_PORT + 1))
PORT_ADMIN=$((BASE_PORT + 2))
PORT_JWKS=$((BASE_PORT + 3))

RUN_DIR=$STATE_DIR/run
# One run per STATE_DIR at a time: a second run would delete this one's keys and tokens (seen: a
# run started 24 s after another died with "no tokens of generation 1"). The lock is taken before
# anything in the directory is touched and held until this process exits.
mkdir -p "$STATE_DIR"
command -v flock >/dev/null || { echo "flock (util-linux) is needed" >&2; exit 2; }
exec 9>"$STATE_DIR/lock"
flock -n 9 || { echo "another soak is running with STATE_DIR=$STATE_DIR; wait for it or set another STATE_DIR" >&2; exit 2; }
STAMP=$(date -u +%Y%m%d-%H%M%S)
RES_DIR=$STATE_DIR/results/$STAMP
KEYS=$RUN_DIR/keys
TOK=$RUN_DIR/tokens
rm -rf "$RUN_DIR/keys" "$RUN_DIR/tokens" "$RUN_DIR/jwks"
mkdir -p "$RUN_DIR/conf" "$RUN_DIR/tmp" "$RUN_DIR/logs" "$RUN_DIR/jwks" "$KEYS" "$TOK" "$RES_DIR/raw"

now() { echo "$EPOCHREALTIME"; }
event() { printf '%s %s\n' "$(now)" "$*" >>"$RES_DIR/events.log"; log "event: $*"; }

# ---- process bookkeeping (loadtest/lib.sh): by PID only, never by name ---------------------
pids_init "$RUN_DIR/pids.txt" "$RUN_DIR\|nginx\|extoken\|http.server\|wrk"


# ---- 1. install what is missing ------------------------------------------------------------
need=()
command -v wrk >/dev/null     || need+=(wrk)
command -v nginx >/dev/null   || need+=(nginx-light)
command -v curl >/dev/null    || need+=(curl)
command -v ss >/dev/null      || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  ((INSTALL)) || die "missing: ${need[*]} (INSTALL=0)"
  log "installing ${need[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
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

for p in $PORT_BACKEND $PORT_GW $PORT_ADMIN $PORT_JWKS; do
  port_free "$p" || die "port $p is in use; stop what holds it or set BASE_PORT"
done

# ---- 3. the plan: segments, each with its key generation -------------------------------------
# phase: warmup | measure | restart. The restart segment sits in the middle of the measured ones
# and keeps the key generation of the segment before it.
declare -a SEG_PHASE=() SEG_GEN=() SEG_LEN=()
gen=0
for ((i = 0; i < WARMUP_SEGMENTS; i++)); do SEG_PHASE+=(warmup); SEG_GEN+=("$gen"); SEG_LEN+=("$SEGMENT"); gen=$((gen + 1)); done
for ((i = 0; i < MEASURED; i++)); do
  SEG_PHASE+=(measure); SEG_GEN+=("$gen"); SEG_LEN+=("$SEGMENT"); gen=$((gen + 1))
  if ((i == (MEASURED - 1) / 2)); then
    SEG_PHASE+=(restart); SEG_GEN+=("$((gen - 1))"); SEG_LEN+=("$RESTART_SEGMENT")
  fi
done
NSEG=${#SEG_PHASE[@]}
NGEN=$gen
TOTAL_S=0; for l in "${SEG_LEN[@]}"; do TOTAL_S=$((TOTAL_S + l)); done
log "plan: $NSEG segments (${WARMUP_SEGMENTS} warm-up, $MEASURED measured of ${SEGMENT}s, 1 upstream restart of ${RESTART_SEGMENT}s), $NGEN signing keys, ~${TOTAL_S}s of load, $USERS users"

OVERHEAD=3   # seconds between segments (key check, wrk start), for token lifetimes
# Seconds from the start of segment $1 until the end of the last segment using generation $2.
until_gen_end() {
  local from=$1 g=$2 t=0 j
  for ((j = from; j < NSEG; j++)); do
    ((SEG_GEN[j] > g)) && break
    t=$((t + SEG_LEN[j] + OVERHEAD))
  done
  echo "$t"
}

# ---- 4. keys and tokens --------------------------------------------------------------------
# Generation g: an RSA key (extoken mint makes it, with its JWKS beside it) and USERS sessions
# signed with it, each living until shortly after the last segment that uses it, so the gateway's
# verified-session cache holds about two generations at any time (as with real session lifetimes).
mint_gen() {  # mint_gen <g> <ttl seconds>
  local g=$1 ttl=$2
  nice -n 10 "$EXTOKEN_BIN" mint --key "$KEYS/session-$g.pem" --project-id "$PROJECT_ID" \
    --sub U2soak --count "$USERS" --ttl "${ttl}s" --external-token 'legacy-{sub}' >"$TOK/gen-$g.tmp"
  mv "$TOK/gen-$g.tmp" "$TOK/gen-$g.txt"
}
declare -A MINT_PID=()
mint_ahead() {  # mint_ahead <segment index> <generation>: in the background
  local i=$1 g=$2
  ((g < NGEN)) || return 0
  [[ -n ${MINT_PID[$g]:-} || -f $TOK/gen-$g.txt ]] && return 0
  local ttl=$(( $(until_gen_end "$i" "$g") + MINT_PAD ))
  mint_gen "$g" "$ttl" &
  MINT_PID[$g]=$!
}
need_gen() {  # need_gen <g> <segment index>: waits for its tokens (mints them now if none were started)
  local g=$1 i=${2:-0}
  if [[ -n ${MINT_PID[$g]:-} ]]; then
    wait "${MINT_PID[$g]}" || die "minting generation $g failed"
    unset "MINT_PID[$g]"
  fi
  if [[ ! -f $TOK/gen-$g.txt ]]; then
    log "tokens of generation $g were not minted ahead; minting them now"
    mint_gen "$g" $(( $(until_gen_end "$i" "$g") + MINT_PAD )) || die "minting generation $g failed"
  fi
  [[ -s $TOK/gen-$g.txt ]] || die "no tokens of generation $g"
}
# Seconds the tokens of generation $1 still have (their `exp`, all minted within seconds).
gen_left() {
  python3 - "$TOK/gen-$1.txt" <<'PY'
import base64, json, sys, time
tok = open(sys.argv[1]).readline().strip()
body = tok.split(".")[1]
exp = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["exp"]
print(int(exp - time.time()))
PY
}
# fresh_gen <g> <segment index>: the tokens outlive the segments that use them. The lifetimes
# were planned when they were minted; a loaded machine (slow minting, waits between segments)
# can push the plan back past them, so they are re-minted (same key) rather than sent expired.
fresh_gen() {
  local g=$1 i=$2 want left
  want=$(( $(until_gen_end "$i" "$g") + 10 ))
  left=$(gen_left "$g")
  if ((left < want)); then
    log "tokens of generation $g have ${left}s left, ${want}s needed: minting them again"
    mint_gen "$g" $((want + MINT_PAD)) || die "minting generation $g failed"
  fi
}
publish() {  # publish <g>...: the JWKS endpoint serves the keys of these generations
  local files=() g
  for g in "$@"; do files+=("$KEYS/session-$g.jwks.json"); done
  python3 - "$RUN_DIR/jwks/jwks.json" "${files[@]}" <<'PY'
import json, os, sys
out, keys = sys.argv[1], []
for f in sys.argv[2:]:
    keys += json.load(open(f))["keys"]
json.dump({"keys": keys}, open(out + ".tmp", "w"))
os.replace(out + ".tmp", out)
PY
  event "jwks: generations $*"
}

# Extra lifetime beyond the plan: 30 s, or twice what minting a generation took here (a token
# minted first must still be good when the last one is done and its segments have run). Generation
# 0 is minted alone and timed; every later one gets that margin.
log "minting $USERS sessions for key generation 0"
mint_t0=$SECONDS
mint_gen 0 $(( $(until_gen_end 0 0) + 300 )) || die "minting generation 0 failed"   # its time is not known yet
MINT_PAD=$(( 2 * (SECONDS - mint_t0) > 30 ? 2 * (SECONDS - mint_t0) : 30 ))
log "minting took $((SECONDS - mint_t0))s: sessions live ${MINT_PAD}s beyond their last planned use"
mint_ahead 0 1
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$KEYS/legacy-key.pem" 2>/dev/null \
  || die "cannot make the jwt connector's key"
need_gen 1

# ---- 5. configs and processes --------------------------------------------------------------
sed -e "s|@RUN@|$RUN_DIR|g; s|@BACKEND_PORT@|$PORT_BACKEND|g" \
  "$HERE/conf/backend-nginx.conf.in" >"$RUN_DIR/conf/backend-nginx.conf"
cat >"$RUN_DIR/conf/extoken.yaml" <<EOF
# written by loadtest/soak.sh
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
  jwks_refresh: 5s
  jwks_min_refetch: 5s
connectors:
  ext:
    type: claim
  legacy:
    type: jwt
    algorithm: ES256
    key_file: "$KEYS/legacy-key.pem"
    issuer: https://legacy.soak.example
    audience: legacy-api
    expires_in: 2m   # re-minted (refresh-ahead) every minute or so: a steady mint path
routes:
  - name: api
    path_prefix: /api
    upstream: "http://127.0.0.1:$PORT_BACKEND"
    connector: ext
  - name: mint
    path_prefix: /mint
    upstream: "http://127.0.0.1:$PORT_BACKEND"
    connector: legacy
EOF
"$EXTOKEN_BIN" check --config "$RUN_DIR/conf/extoken.yaml" >/dev/null || die "extoken check failed"

publish 0 1
python3 -m http.server "$PORT_JWKS" --bind 127.0.0.1 --directory "$RUN_DIR/jwks" \
  >"$RUN_DIR/logs/jwks.log" 2>&1 &
record $! jwks
wait_code 200 100 "http://127.0.0.1:$PORT_JWKS/jwks.json" || die "the JWKS server did not start"

BACKEND_PID=""
start_backend() {
  nginx -e stderr -c "$RUN_DIR/conf/backend-nginx.conf" >>"$RUN_DIR/logs/backend.log" 2>&1 &
  BACKEND_PID=$!
  record "$BACKEND_PID" backend
  wait_code 200 100 "http://127.0.0.1:$PORT_BACKEND/" || die "the backend did not start"
}
stop_backend() {  # TERM: nginx's fast shutdown, every connection closed
  kill -TERM "$BACKEND_PID"
  for _ in $(seq 100); do kill -0 "$BACKEND_PID" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$BACKEND_PID" 2>/dev/null && die "the backend did not stop"
  wait "$BACKEND_PID" 2>/dev/null || true
  forget "$BACKEND_PID"
}
start_backend

env -u EXTOKEN_LOG "$EXTOKEN_BIN" run --config "$RUN_DIR/conf/extoken.yaml" >"$RUN_DIR/logs/extoken.log" 2>&1 &
GW_PID=$!
record "$GW_PID" extoken
log "extoken ($EXTOKEN_SRC) started: PID $GW_PID"
wait_code 200 300 "http://127.0.0.1:$PORT_ADMIN/readyz" || { tail -20 "$RUN_DIR/logs/extoken.log" >&2; die "extoken never became ready"; }
first_token() { head -1 "$TOK/gen-$1.txt"; }
fresh_gen 0 0
for path in /api/check /mint/check; do
  wait_code 200 100 -H "Authorization: Bearer $(first_token 0)" "http://127.0.0.1:$PORT_GW$path" \
    || die "a session of generation 0 is not accepted on $path"
done

# ---- 6. monitor and SIGHUPs ------------------------------------------------------------------
MON=$RES_DIR/monitor.csv
echo "t,rss_kb,fds,threads" >"$MON"
(
  while kill -0 "$GW_PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo "")
    thr=$(awk '/^Threads/{print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo "")
    fds=$(ls "/proc/$GW_PID/fd" 2>/dev/null | wc -l)
    [[ -n $rss ]] && echo "$EPOCHREALTIME,$rss,$fds,$thr" >>"$MON"
    sleep 2
  done
) &
record $! monitor
(
  while sleep "$HUP_EVERY"; do
    kill -HUP "$GW_PID" 2>/dev/null || exit 0
    printf '%s %s\n' "$EPOCHREALTIME" "sighup" >>"$RES_DIR/events.log"
  done
) &
HUP_LOOP=$!
record "$HUP_LOOP" sighup-loop

# ---- 7. the segments -------------------------------------------------------------------------
SEGS=$RES_DIR/segments.csv
echo "index,phase,gen,start,end,requests,rps,p50_us,p90_us,p99_us,p999_us,max_us,non2xx,codes,err_connect,err_read,err_write,err_timeout" >"$SEGS"
event "load: start"
for ((i = 0; i < NSEG; i++)); do
  g=${SEG_GEN[i]}; len=${SEG_LEN[i]}; phase=${SEG_PHASE[i]}
  need_gen "$g" "$i"
  fresh_gen "$g" "$i"
  mint_ahead "$i" $((g + 2))
  # A new generation: its key was published half-way through the segment before; make sure the
  # gateway has it before any of its sessions is sent.
  wait_code 200 300 -H "Authorization: Bearer $(first_token "$g")" "http://127.0.0.1:$PORT_GW/api/check" \
    || die "generation $g is not accepted (key rotation)"
  out=$RES_DIR/raw/seg-$i.txt
  start=$(now)
  TOKENS_FILE=$TOK/gen-$g.txt MINT_EVERY=$MINT_EVERY wrk -t1 -c"$CONNECTIONS" -d"${len}s" --timeout 5s \
    -s "$HERE/soak.lua" "http://127.0.0.1:$PORT_GW/" >"$out" 2>&1 &
  wrk_pid=$!
  record "$wrk_pid" "wrk-$i"
  if [[ $phase == restart ]]; then
    sleep 3
    event "upstream: stop"
    stop_backend
    event "upstream: stopped"
    sleep "$RESTART_DOWN"
    event "upstream: start"
    start_backend
    event "upstream: started"
  else
    sleep $((len / 2))
    if ((g + 1 < NGEN)); then
      need_gen $((g + 1)) "$i"
      publish "$g" $((g + 1))   # the next key beside the current one; the one before is gone
    fi
  fi
  wait "$wrk_pid" || true
  forget "$wrk_pid"
  res=$(grep '^WRKRESULT' "$out" | tail -1 || true)
  [[ -n $res ]] || die "wrk gave no result for segment $i (see $out)"
  declare -A R=()
  for kv in ${res#* }; do R[${kv%%=*}]=${kv#*=}; done
  # when wrk stopped (the wait above may have been longer, for a key still being minted)
  end=$(awk -v s="$start" -v d="${R[duration_us]}" 'BEGIN{printf "%.6f", s + d / 1e6}')
  echo "$i,$phase,$g,$start,$end,${R[requests]},${R[rps]},${R[p50_us]},${R[p90_us]},${R[p99_us]},${R[p999_us]},${R[max_us]},${R[non2xx]},${R[codes]},${R[err_connect]},${R[err_read]},${R[err_write]},${R[err_timeout]}" >>"$SEGS"
  log "segment $i/$NSEG ($phase, key $g): rps=${R[rps]} p99=${R[p99_us]}us non2xx=${R[non2xx]} (${R[codes]}) errors=${R[err_connect]}/${R[err_read]}/${R[err_write]}/${R[err_timeout]} rss=$(awk '/^VmRSS/{print $2}' "/proc/$GW_PID/status")kB fds=$(ls "/proc/$GW_PID/fd" | wc -l)"
  unset R
done
event "load: end"
kill "$HUP_LOOP" 2>/dev/null || true

# ---- 8. after the load -----------------------------------------------------------------------
sleep 3
idle_fds=$(ls "/proc/$GW_PID/fd" | wc -l)
idle_rss=$(awk '/^VmRSS/{print $2}' "/proc/$GW_PID/status")
curl -s --max-time 5 "http://127.0.0.1:$PORT_ADMIN/metrics" >"$RES_DIR/metrics.txt" || true
kill -TERM "$GW_PID"
gw_exit=""
for _ in $(seq 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$GW_PID" 2>/dev/null; then gw_exit=running; else wait "$GW_PID" && gw_exit=0 || gw_exit=$?; fi
cp "$RUN_DIR/logs/extoken.log" "$RES_DIR/extoken.log"
{
  echo "date: $(date -u -Is)"
  echo "host: $(uname -srm), $(nproc) CPUs, load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "extoken: $EXTOKEN_SRC ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', src modified')), threads $EXTOKEN_THREADS"
  echo "settings: duration ${DURATION_S}s in ${SEGMENT}s segments after $WARMUP_SEGMENTS warm-up segments; users $USERS; wrk $CONNECTIONS connections; 1 in $MINT_EVERY requests minted; SIGHUP every ${HUP_EVERY}s; upstream down ${RESTART_DOWN}s"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
} >"$RES_DIR/env.txt"

set +e
python3 "$HERE/soak_report.py" "$RES_DIR" --idle-fds "$idle_fds" --idle-rss "$idle_rss" \
  --exit "$gw_exit" --rss-growth-max "$RSS_GROWTH_MAX" --p99-drift-max "$P99_DRIFT_MAX" \
  | tee "$RES_DIR/soak.md"
rc=${PIPESTATUS[0]}
set -e
ln -sfn "$RES_DIR" "$STATE_DIR/results/latest"
log "results in $RES_DIR (soak.md, soak.json, segments.csv, monitor.csv, events.log, raw/)"
exit "$rc"
