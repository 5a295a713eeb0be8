#!/usr/bin/env bash
# Brings up (or tears down) what Faultline needs on loopback: Postgres on 5432, Redis on 6379
# and a Kafka-protocol broker (tansu) on 9092.
#
#   scripts/deps.sh up      reuse whatever already listens; install and start the rest
#   scripts/deps.sh down    stop only what `up` started
#   scripts/deps.sh status  say what listens and who started it
#
# Idempotent: running `up` twice starts nothing twice. Everything this script starts keeps its
# logs, pid files and data under $FAULTLINE_STATE (default: .state/ in the repository, which
# git ignores). Postgres and Redis come from Debian packages and are started without systemd.
# tansu is built from crates.io at a pinned version into $FAULTLINE_TOOLS (default
# ~/.cache/faultline), outside the clone, so a fresh clone reuses an earlier build.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${FAULTLINE_STATE:-$ROOT/.state}
TOOLS=${FAULTLINE_TOOLS:-$HOME/.cache/faultline}
LOGS=$STATE/logs

PG_PORT=5432
REDIS_PORT=6379
KAFKA_PORT=9092

# The broker: tansu, pinned, built with every storage engine that was measured (sqlite,
# memory, Postgres; docs/notes/broker.md) so that one build serves the default and the
# alternatives, and CI reuses it. Which engine runs, and why: docs/adr/0002.
TANSU_VERSION=0.6.0
TANSU_FEATURES=libsql,dynostore,postgres
TANSU_ROOT=$TOOLS/tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}
TANSU=$TANSU_ROOT/bin/tansu
TANSU_STORAGE=${FAULTLINE_TANSU_STORAGE:-sqlite://tansu.db}

say() { printf '[deps] %s\n' "$*"; }
die() { printf '[deps] error: %s\n' "$*" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2 tries=${3:-100}
  for _ in $(seq "$tries"); do
    listening "$port" && return 0
    sleep 0.2
  done
  die "$what did not start listening on 127.0.0.1:$port (see $LOGS)"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $*"
  fi
}

apt_install() {
  say "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

postgres_up() {
  if listening $PG_PORT; then
    say "postgres: reusing the server on 127.0.0.1:$PG_PORT"
  else
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    [ -n "$version" ] || die "postgres is installed but has no cluster under /etc/postgresql"
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    # A development database on loopback: trust local TCP connections, as the services'
    # default URLs (postgres://postgres@127.0.0.1) expect. Production uses secrets.
    if ! as_root grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    say "postgres: starting cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    touch "$STATE/started-postgres"
    wait_for_port $PG_PORT postgres
  fi
  if command -v psql >/dev/null &&
     ! psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    die "postgres on 127.0.0.1:$PG_PORT refuses user 'postgres' without a password; allow it in pg_hba.conf or point the services' *_DATABASE__URL at another server"
  fi
}

redis_up() {
  if listening $REDIS_PORT; then
    say "redis: reusing the server on 127.0.0.1:$REDIS_PORT"
    return
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  say "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no \
    --dir "$STATE" --pidfile "$STATE/redis.pid" --logfile "$LOGS/redis.log"
  wait_for_port $REDIS_PORT redis
}

tansu_install() {
  [ -x "$TANSU" ] && return
  command -v cargo >/dev/null || die "cargo is needed to build the broker (tansu $TANSU_VERSION)"
  command -v cc >/dev/null || apt_install build-essential
  say "tansu: building $TANSU_VERSION with features $TANSU_FEATURES (takes ~10 minutes on 2 cores, once)"
  cargo install "tansu@$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
    --root "$TANSU_ROOT" --quiet
}

# A tansu that got SIGTERM stops its storage at once but keeps its port bound while client
# connections drain (up to 5 s), answering every request with Storage(UnableToSend). Never
# take such a broker for a running one: wait for ours to go, and refuse to reuse a broker
# whose storage does not answer (`tansu topic list` reads the topics from storage).
# A broker under load can be slow to answer, so try three times before giving up on it.
broker_answers() {
  [ -x "$TANSU" ] || return 0 # not ours to check; trust whoever runs it
  for _ in 1 2 3; do
    timeout 10 "$TANSU" topic list --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1 &&
      return 0
    sleep 1
  done
  return 1
}

tansu_up() {
  if [ -f "$STATE/tansu.pid" ] && ! kill -0 "$(cat "$STATE/tansu.pid")" 2>/dev/null; then
    rm -f "$STATE/tansu.pid"
  fi
  if listening $KAFKA_PORT; then
    if broker_answers; then
      say "kafka: reusing the broker on 127.0.0.1:$KAFKA_PORT"
      # One started before the indexes existed gets them too.
      if [ -f "$STATE/tansu.pid" ]; then tansu_indexes; fi
      return
    fi
    if [ -f "$STATE/tansu.pid" ]; then
      say "kafka: the broker we started does not answer (shutting down?); restarting it"
      stop_pidfile tansu
    else
      die "something listens on 127.0.0.1:$KAFKA_PORT but does not answer as a Kafka broker, and Faultline did not start it"
    fi
  fi
  tansu_install
  mkdir -p "$STATE/tansu"
  say "kafka: starting tansu $TANSU_VERSION ($TANSU_STORAGE)"
  # tansu reads OTEL_EXPORTER_OTLP_ENDPOINT too; the broker's own traces are not wanted here.
  (
    cd "$STATE/tansu" || exit 1
    exec env -u OTEL_EXPORTER_OTLP_ENDPOINT nohup "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "$TANSU_STORAGE" \
      >>"$LOGS/tansu.log" 2>&1
  ) &
  echo $! >"$STATE/tansu.pid"
  wait_for_port $KAFKA_PORT tansu
  tansu_indexes
}

# tansu's sqlite schema lacks two indexes its hot queries need; without them the broker slows
# down as its log grows (scripts/tansu-sqlite-indexes.sql says which, and what they cost).
# tansu creates its tables as it starts, so this retries until they exist; `if not exists`
# makes it a no-op on a database that has the indexes.
tansu_indexes() {
  case $TANSU_STORAGE in sqlite://*) ;; *) return 0 ;; esac
  local db=${TANSU_STORAGE#sqlite://}
  db=${db%%\?*}
  case $db in /*) ;; *) db=$STATE/tansu/$db ;; esac
  command -v sqlite3 >/dev/null || apt_install sqlite3
  for _ in $(seq 50); do
    [ -s "$db" ] && sqlite3 -cmd '.timeout 10000' "$db" \
      ".read $ROOT/scripts/tansu-sqlite-indexes.sql" 2>/dev/null && return 0
    sleep 0.2
  done
  die "could not add the broker's indexes to $db (tables not created?)"
}

stop_pidfile() {
  local name=$1 file=$STATE/$1.pid
  [ -f "$file" ] || return 0
  local pid
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    say "$name: stopping (pid $pid)"
    kill "$pid"
    # tansu gives its connections 5 s to drain after SIGTERM; allow for that and a little.
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid"
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -f "$file"
}

down() {
  stop_pidfile tansu
  stop_pidfile redis
  if [ -f "$STATE/started-postgres" ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "postgres: stopping cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main stop || true
    rm -f "$STATE/started-postgres"
  fi
}

status() {
  for entry in "postgres:$PG_PORT" "redis:$REDIS_PORT" "kafka:$KAFKA_PORT"; do
    local name=${entry%%:*} port=${entry##*:} owner="not started by Faultline"
    case $name in
      postgres) [ -f "$STATE/started-postgres" ] && owner="started by Faultline" ;;
      redis) [ -f "$STATE/redis.pid" ] && owner="started by Faultline" ;;
      kafka) [ -f "$STATE/tansu.pid" ] && owner="started by Faultline" ;;
    esac
    if ! listening "$port"; then say "$name: down"; continue; fi
    if [ "$name" = kafka ]; then
      local engine=""
      [ -f "$STATE/tansu.pid" ] && engine=", tansu $TANSU_VERSION on $TANSU_STORAGE"
      if broker_answers; then owner="$owner$engine, answers"
      else owner="$owner$engine, does NOT answer: its storage is gone or it is shutting down"
      fi
    fi
    say "$name: listening on $port ($owner)"
  done
}

mkdir -p "$STATE" "$LOGS"
case ${1:-up} in
  up) postgres_up; redis_up; tansu_up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
