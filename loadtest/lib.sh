# Shared by loadtest/run.sh, soak.sh and cold.sh (sourced, not run): logging, process bookkeeping
# by PID, and HTTP polling.
#
# Process bookkeeping (after shared/bench/run.sh): `$PIDFILE` lists the PIDs of the current run, so
# processes left by a run killed with SIGKILL can still be found and stopped by PID. Nothing is
# ever stopped by name. A script calls `pids_init <pidfile> <pattern>` once (refusing to start while
# a recorded process whose command line matches <pattern> is alive), `record <pid> <role>` for each
# process it starts, `stop_pid`/`forget` for those it ends itself; `cleanup` (installed as the EXIT
# trap by `pids_init`) stops the rest, newest first.

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pids_init() {  # pids_init <pidfile> <grep pattern of this script's processes>
  PIDFILE=$1
  local pattern=$2 stale="" pid role
  if [[ -f $PIDFILE ]]; then
    while read -r pid role; do
      [[ -n $pid ]] || continue
      if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$pattern"; then
        stale+=" $pid($role)"
      fi
    done <"$PIDFILE"
    if [[ -n $stale ]]; then
      echo "processes from an earlier run of this script are still alive:$stale" >&2
      echo "stop them by PID (kill <pid>) and re-run" >&2
      exit 1
    fi
    rm -f "$PIDFILE"
  fi
  PIDS=()
  declare -gA PID_NAME=()
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

record() { PIDS+=("$1"); PID_NAME[$1]=$2; echo "$1 $2" >>"$PIDFILE"; }

forget() {  # a process that ended: never signalled again (its PID may be reused)
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  unset "PID_NAME[$1]"
  grep -v "^$1 " "$PIDFILE" >"$PIDFILE.tmp" || true
  mv "$PIDFILE.tmp" "$PIDFILE"
}

stop_pid() {  # stop_pid <pid>: TERM, up to 10 s, then KILL; forgotten afterwards
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "PID $pid (${PID_NAME[$pid]:-?}) ignored TERM, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

cleanup() {  # the EXIT trap: TERM to every recorded process (newest first: nginx masters stop
  # their workers), 5 s, then KILL; the pid file goes when none is left
  local rc=$?
  trap - EXIT INT TERM
  if ((${#PIDS[@]})); then
    log "stopping ${#PIDS[@]} process(es) started by this run: ${PIDS[*]}"
    local i pid alive left=""
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
      pid=${PIDS[i]}
      kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
      alive=0
      for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then
        log "PID $pid (${PID_NAME[$pid]:-?}) ignored TERM, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    wait 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && left+=" $pid"; done
    if [[ -z $left ]]; then log "all processes stopped"; rm -f "$PIDFILE"
    else log "still alive:$left (listed in $PIDFILE)"; fi
  fi
  exit "$rc"
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
HTTP_MAX_TIME=${HTTP_MAX_TIME:-2}
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "$HTTP_MAX_TIME" "$@" || true; }
wait_code() {  # wait_code <want> <tries of 0.1 s> curl-args...
  local want=$1 tries=$2 code=""; shift 2
  for _ in $(seq "$tries"); do
    code=$(http_code "$@")
    [[ $code == "$want" ]] && return 0
    sleep 0.1
  done
  log "wanted $want, last answer $code: $*"
  return 1
}
