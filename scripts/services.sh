#!/usr/bin/env bash
# Starts or stops the three Faultline services for the demo, natively, with their default
# configuration (checkout HTTP on 127.0.0.1:8080, inventory gRPC on :50051, payments gRPC on
# :50052, probes on :9180-:9182). Logs and pid files go under $FAULTLINE_STATE (.state/).
#
#   scripts/services.sh start   start whichever service is not running; wait until ready
#   scripts/services.sh stop    SIGTERM each service this script started; wait for it
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${FAULTLINE_STATE:-$ROOT/.state}
LOGS=$STATE/logs
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
SERVICES=(inventory payments checkout)

say() { printf '[services] %s\n' "$*"; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

admin_port() {
  case $1 in checkout) echo 9180 ;; inventory) echo 9181 ;; payments) echo 9182 ;; esac
}

# HTTP status of GET $2 on 127.0.0.1:$1, or nothing; plain bash, no curl needed.
http_status() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 &&
    head -n 1 <&3) 2>/dev/null) || return 0
  echo "$reply" | cut -d' ' -f2
}

running() {
  local file=$STATE/$1.pid
  [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null
}

start() {
  # The services' defaults name files relative to the repository (.state/certs, policies/).
  cd "$ROOT"
  mkdir -p "$LOGS"
  for service in "${SERVICES[@]}"; do
    if running "$service"; then
      say "$service: already running (pid $(cat "$STATE/$service.pid"))"
      continue
    fi
    [ -x "$BIN/$service" ] || die "$BIN/$service is missing; build first (make build)"
    # One process per service here, so each is a static group member under a fixed name:
    # after a crash, the restarted process takes its partitions back on its first join.
    env "${service^^}_KAFKA__GROUP_INSTANCE_ID=$service-0" "$BIN/$service" \
      >>"$LOGS/$service.log" 2>&1 &
    echo $! >"$STATE/$service.pid"
    say "$service: started (pid $!, log $LOGS/$service.log)"
  done
  for service in "${SERVICES[@]}"; do
    local port
    port=$(admin_port "$service")
    for _ in $(seq 300); do
      [ "$(http_status "$port" /ready)" = 200 ] && break
      running "$service" || die "$service exited; last lines of its log:
$(tail -n 20 "$LOGS/$service.log")"
      sleep 0.2
    done
    [ "$(http_status "$port" /ready)" = 200 ] || die "$service is not ready after 60 s (see $LOGS/$service.log)"
    say "$service: ready"
  done
}

stop() {
  for service in checkout payments inventory; do
    local file=$STATE/$service.pid
    [ -f "$file" ] || continue
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
      say "$service: stopping (pid $pid)"
      kill -TERM "$pid"
      for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$file"
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
