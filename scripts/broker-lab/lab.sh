#!/usr/bin/env bash
# Throw-away tansu instances for measuring the broker (docs/notes/broker.md), on loopback
# ports of their own and with data under /tmp/broker-lab, never touching what
# scripts/deps.sh runs on 9092.
#
#   lab.sh start NAME PORT STORAGE   e.g. lab.sh start sqlite 19092 sqlite://tansu.db
#                                         lab.sh start pg 19093 'postgres://postgres@127.0.0.1:5432/broker_lab_pg?sslmode=disable'
#   lab.sh stop NAME [SIGNAL]        default TERM; waits at most 10 s
#   lab.sh pid NAME
#   lab.sh pg-create DB SCHEMA.sql   creates database DB (must be broker_lab_*) and loads the schema
#   lab.sh pg-drop DB
#
# The binary is the one scripts/deps.sh builds (TANSU=... to use another). Relative sqlite
# paths are relative to /tmp/broker-lab/NAME, where the log and pid file also live.
set -euo pipefail

LAB=${BROKER_LAB:-/tmp/broker-lab}
TANSU=${TANSU:-$HOME/.cache/faultline/tansu-0.6.0-libsql-dynostore-postgres/bin/tansu}
PG=${PG_URL:-postgres://postgres@127.0.0.1:5432}

die() { printf 'lab: %s\n' "$*" >&2; exit 1; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case ${1:-} in
  start)
    name=$2 port=$3 storage=$4
    [ "$port" != 9092 ] || die "9092 belongs to scripts/deps.sh"
    listening "$port" && die "something already listens on 127.0.0.1:$port"
    mkdir -p "$LAB/$name"
    (
      cd "$LAB/$name"
      exec env -u OTEL_EXPORTER_OTLP_ENDPOINT "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$storage" >>"$LAB/$name/tansu.log" 2>&1
    ) &
    echo $! >"$LAB/$name/pid"
    for _ in $(seq 100); do listening "$port" && break; sleep 0.1; done
    listening "$port" || die "tansu did not listen on $port (see $LAB/$name/tansu.log)"
    echo "$name: pid $(cat "$LAB/$name/pid") on 127.0.0.1:$port ($storage)"
    ;;
  stop)
    name=$2 sig=${3:-TERM}
    pid=$(cat "$LAB/$name/pid" 2>/dev/null) || exit 0
    kill -s "$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) still runs 10 s after SIG$sig"
    rm -f "$LAB/$name/pid"
    ;;
  pid) cat "$LAB/$2/pid" ;;
  pg-create)
    db=$2 schema=$3
    [[ $db == broker_lab_* ]] || die "lab databases are named broker_lab_*"
    psql "$PG/postgres" -qAtc "create database $db"
    psql "$PG/$db" -q -v ON_ERROR_STOP=1 -f "$schema" >/dev/null
    ;;
  pg-drop)
    db=$2
    [[ $db == broker_lab_* ]] || die "lab databases are named broker_lab_*"
    psql "$PG/postgres" -qAtc "drop database if exists $db with (force)"
    ;;
  *) die "usage: lab.sh start|stop|pid|pg-create|pg-drop ..." ;;
esac
