#!/usr/bin/env bash
# Where does extoken spend its time on an accepted request? Runs one extoken (threads: 1) in front
# of the nginx backend on loopback, warms its session cache with the load-test tokens, then either
#   MODE=perf      (default) samples it with `perf record -e cpu-clock` under wrk load and prints
#                  the flat profile (self time by symbol), or
#   MODE=callgrind runs it under valgrind's callgrind with instrumentation switched on only for a fixed
#                  batch of requests, and prints instructions per request and the top functions
#                  (inclusive and self). Slow (50x) but exact and independent of machine noise.
#   MODE=strace    counts its system calls (every thread, `strace -c -f`) under wrk load for
#                  DURATION seconds and prints them per request: the kernel's share, which
#                  callgrind does not see. strace slows the process; the counts per request hold.
# Needs what loadtest/run.sh installs and the keys/tokens it mints: run `loadtest/run.sh
# --check-only` once first. Uses ports BASE_PORT+20 / +21, loopback only; everything started here
# is stopped by PID on exit.
#
# TARGET=pingora profiles the bare pingora pass-through (examples/passthrough.rs, the floor)
# under exactly the same requests instead; with PASSTHROUGH_MODE=bounded, the pass-through with
# extoken's default timeouts (what bounding every wait costs inside pingora).
#
#   EXTOKEN_BIN=target/release/extoken loadtest/profile.sh
#   MODE=callgrind REQUESTS=2000 loadtest/profile.sh
#   MODE=callgrind TARGET=pingora loadtest/profile.sh
#   MODE=callgrind EXTOKEN_CONFIG=loadtest/extoken-tracing.yaml OTLP_ENDPOINT=http://127.0.0.1:4318 \
#       TRACE_RATIO=0.01 loadtest/profile.sh   (traces on; a collector must answer at the endpoint)
#   MODE=callgrind SAME_TOKEN=1 loadtest/profile.sh   (one user: every request carries the same
#                  token, as from one keep-alive client; default: the users in turn, as from a
#                  front proxy multiplexing many clients)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
STATE_DIR=${STATE_DIR:-/tmp/extoken-loadtest}
MODE=${MODE:-perf}                    # perf | callgrind
EXTOKEN_BIN=${EXTOKEN_BIN:-$REPO/target/release/extoken}
PASSTHROUGH_BIN=${PASSTHROUGH_BIN:-$REPO/target/release/examples/passthrough}
TARGET=${TARGET:-extoken}             # extoken | pingora (the bare pass-through)
EXTOKEN_CONFIG=${EXTOKEN_CONFIG:-$HERE/extoken.yaml}
DURATION=${DURATION:-10}              # perf: seconds sampled
REQUESTS=${REQUESTS:-2000}            # callgrind: requests measured (after the warm-up)
CONNECTIONS=${CONNECTIONS:-50}        # perf: wrk connections
EXTOKEN_LOG_LEVEL=${EXTOKEN_LOG_LEVEL:-warn}
CPU_PROXY=${CPU_PROXY-0}
CPU_LOADGEN=${CPU_LOADGEN-1}
BASE_PORT=${BASE_PORT:-18180}
TOP=${TOP:-40}

PROJECT_ID=P2LoadTestProject000000000     # as loadtest/run.sh mints them
AUDIENCE=loadtest-gateway
BACKEND_PORT=$((BASE_PORT + 20))
GW_PORT=$((BASE_PORT + 21))
TOK=$STATE_DIR/tokens
JWKS=$STATE_DIR/keys/dev-key.jwks.json
OUT=$STATE_DIR/profile/$(date -u +%Y%m%d-%H%M%S)-$MODE
mkdir -p "$OUT/tmp"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -s $TOK/users.txt && -s $JWKS ]] || die "no tokens in $TOK: run loadtest/run.sh --check-only first"
[[ -x $EXTOKEN_BIN ]] || die "no extoken binary at $EXTOKEN_BIN"
case $MODE in
  perf) command -v perf >/dev/null || die "perf not installed (apt-get install linux-perf)" ;;
  callgrind) command -v valgrind >/dev/null || die "valgrind not installed (apt-get install valgrind)" ;;
  strace) command -v strace >/dev/null || die "strace not installed (apt-get install strace)" ;;
  *) die "MODE must be perf, callgrind or strace" ;;
esac

declare -a PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
pin() { local c=$1; shift; if [[ -n $c ]]; then taskset -c "$c" "$@"; else "$@"; fi; }

spawn() {  # spawn <cpus> <logfile> cmd...: in the background, pinned; $! is the command's own PID
  local cpus=$1 logf=$2; shift 2
  if [[ -n $cpus ]]; then taskset -c "$cpus" "$@" >"$logf" 2>&1 &
  else "$@" >"$logf" 2>&1 &
  fi
  PIDS+=($!)
  SPAWNED=$!
}

sed -e "s|@RUN@|$OUT|g; s|@BACKEND_PORT@|$BACKEND_PORT|g" "$HERE/conf/backend-nginx.conf.in" >"$OUT/backend-nginx.conf"
spawn "$CPU_PROXY" "$OUT/backend.log" nginx -e stderr -c "$OUT/backend-nginx.conf"

if [[ $TARGET == pingora ]]; then
  [[ -x $PASSTHROUGH_BIN ]] || die "no pass-through binary at $PASSTHROUGH_BIN (cargo build --release --example passthrough)"
  cp -f "$PASSTHROUGH_BIN" "$OUT/extoken"
  cmd=("$OUT/extoken" "127.0.0.1:$GW_PORT" "127.0.0.1:$BACKEND_PORT" 1 ${PASSTHROUGH_MODE:-})
else
  cp -f "$EXTOKEN_BIN" "$OUT/extoken"
  cmd=(env -u EXTOKEN_LOG GW_PORT="$GW_PORT" BACKEND_PORT="$BACKEND_PORT" JWKS_FILE="$JWKS"
       JWT_PROJECT_ID="$PROJECT_ID" JWT_AUDIENCE="$AUDIENCE" EXTOKEN_LOG_LEVEL="$EXTOKEN_LOG_LEVEL"
       "$OUT/extoken" run --config "$EXTOKEN_CONFIG")
fi
if [[ $MODE == callgrind ]]; then
  # valgrind goes between `env` and the program, so the PID recorded is valgrind's (the program's).
  if [[ $TARGET == pingora ]]; then vg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" "${cmd[@]}")
  else vg=("${cmd[@]:0:9}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" "${cmd[@]:9}")
  fi
  spawn "$CPU_PROXY" "$OUT/extoken.log" "${vg[@]}"
else
  spawn "$CPU_PROXY" "$OUT/extoken.log" "${cmd[@]}"
fi
GW_PID=$SPAWNED
log "$TARGET PID $GW_PID ($MODE), backend on $BACKEND_PORT, gateway on $GW_PORT"

tok1=$(head -1 "$TOK/users.txt")
for _ in $(seq 600); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Authorization: Bearer $tok1" "http://127.0.0.1:$GW_PORT/" || true)
  [[ $code == 200 ]] && break
  kill -0 "$GW_PID" 2>/dev/null || { tail "$OUT/extoken.log" >&2; die "extoken exited"; }
  sleep 0.2
done
[[ $code == 200 ]] || die "extoken did not accept a valid token (last status $code)"

# warm-up: every user once (fills the session cache), then some steady load
TOKENS_FILE=$TOK/users.txt pin "$CPU_LOADGEN" wrk -t1 -c4 -d3s -s "$HERE/rotate_tokens.lua" "http://127.0.0.1:$GW_PORT/" >/dev/null 2>&1 || true

if [[ $MODE == callgrind ]]; then
  # A fixed batch of requests with collection on: curl's keep-alive connection, URLs repeated.
  # Each request carries one of the user tokens in turn (all cached by now).
  cfg=$OUT/curl.cfg
  # per-URL options in every group (`next` resets them), no `next` after the last group
  awk -v n="$REQUESTS" -v p="$GW_PORT" -v one="${SAME_TOKEN:-0}" 'one != 1 || NR == 1 {t[++k]=$0} END{for(i=0;i<n;i++) printf "%surl = \"http://127.0.0.1:%s/\"\nheader = \"Authorization: Bearer %s\"\noutput = \"/dev/null\"\nwrite-out = \"%%{http_code}\\n\"\n", (i ? "next\n" : ""), p, t[i%k+1]}' "$TOK/users.txt" >"$cfg"
  callgrind_control -i on "$GW_PID" >/dev/null
  codes=$(pin "$CPU_LOADGEN" curl -s -K "$cfg" | sort | uniq -c)
  callgrind_control -i off "$GW_PID" >/dev/null
  callgrind_control -d "$GW_PID" >/dev/null
  log "status codes of the measured batch: $(echo $codes)"
  sleep 1
  f=$OUT/callgrind.out.1          # the dump of the batch (callgrind.out is written at exit)
  [[ -s $f ]] || die "no callgrind dump at $f"
  total=$(awk '/^totals:/{print $2; exit}' "$f")
  annotate() {  # annotate yes|no: top $TOP functions, paths shortened
    { callgrind_annotate --inclusive="$1" --threshold=100 "$f" 2>/dev/null || true; } |
      sed -n '/PROGRAM TOTALS/,$p' | sed -e 's| \[[^]]*\]$||' -e 's|/root/.cargo/registry/src/[^/]*/||' \
        -e 's|/rustc/[0-9a-f]*/library/|std:|' | cut -c1-230 | head -$((TOP + 4)) || true
  }
  {
    echo "instructions per request: $(awk -v t="$total" -v n="$REQUESTS" 'BEGIN{printf "%.0f", t/n}') ($total over $REQUESTS requests)"
    echo
    echo "== inclusive (top $TOP) =="
    annotate yes
    echo
    echo "== self (top $TOP) =="
    annotate no
  } | tee "$OUT/report.txt"
elif [[ $MODE == strace ]]; then
  strace -c -f -o "$OUT/strace.txt" -p "$GW_PID" 2>"$OUT/strace.log" &
  STRACE_PID=$!
  sleep 1   # strace attaches to every thread before the load starts
  TOKENS_FILE=$TOK/users.txt pin "$CPU_LOADGEN" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
    -s "$HERE/rotate_tokens.lua" "http://127.0.0.1:$GW_PORT/" >"$OUT/wrk.txt" 2>&1 || true
  kill -INT "$STRACE_PID" 2>/dev/null || true
  wait "$STRACE_PID" || true
  reqs=$(awk '/requests in/{print $1; exit}' "$OUT/wrk.txt")
  [[ -n $reqs && $reqs -gt 0 ]] || die "wrk completed no request ($OUT/wrk.txt)"
  {
    echo "system calls per request over $reqs requests ($CONNECTIONS connections, ${DURATION}s under strace):"
    awk -v n="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { name=$NF; calls=$4; printf "  %-16s %8.3f\n", name, calls/n; tot+=calls }
      END { printf "  %-16s %8.3f\n", "total", tot/n }' "$OUT/strace.txt"
  } | tee "$OUT/report.txt"
else
  perf record -e cpu-clock -F 4999 -g -p "$GW_PID" -o "$OUT/perf.data" -- sleep "$DURATION" >"$OUT/perf.log" 2>&1 &
  PERF_PID=$!
  TOKENS_FILE=$TOK/users.txt pin "$CPU_LOADGEN" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
    -s "$HERE/rotate_tokens.lua" "http://127.0.0.1:$GW_PORT/" >"$OUT/wrk.txt" 2>&1 || true
  wait "$PERF_PID" || true
  grep '^WRKRESULT' "$OUT/wrk.txt" | tee "$OUT/report.txt"
  {
    echo "== self time by symbol (top $TOP) =="
    perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -"$TOP"
    echo
    echo "== inclusive (children) by symbol (top $TOP) =="
    perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -"$TOP"
  } | tee -a "$OUT/report.txt"
fi
log "profile in $OUT (report.txt)"
