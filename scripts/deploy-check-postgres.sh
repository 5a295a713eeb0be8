#!/usr/bin/env bash
# Runs deploy/postgres/secrets.sh and deploy/postgres/init.sh as the compose stack does,
# against a throwaway Postgres cluster of our own (initdb into a temporary folder, a unix
# socket only, no TCP port, so nothing else on the machine is touched), and checks what
# they promise: one role and one database per service, each role able to open its own
# database and refused every other. Part of `make deploy-check`; skipped, saying so, where
# no Postgres server binaries are installed.
set -euo pipefail

ROOT=${FAULTLINE_DEPLOY_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
say() { printf '[deploy-check] postgres: %s\n' "$*"; }

BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  say "SKIPPED: no Postgres server binaries under /usr/lib/postgresql"
  exit 0
fi

WORK=$(mktemp -d)
# initdb refuses to run as root; the cluster belongs to the postgres user, or to us.
RUN=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$WORK"
  RUN=(runuser -u postgres --)
fi
cleanup() {
  "${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"${RUN[@]}" mkdir -p "$WORK/secrets" "$WORK/socket"
"${RUN[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth-local=trust >/dev/null 2>&1
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w \
  -o "-c listen_addresses='' -c unix_socket_directories=$WORK/socket" start >/dev/null

# The two scripts, with the compose stack's paths pointed at the scratch folder.
sed "s|cd /secrets|cd $WORK/secrets|" "$ROOT/deploy/postgres/secrets.sh" >"$WORK/secrets.sh"
sed "s|/secrets/|$WORK/secrets/|" "$ROOT/deploy/postgres/init.sh" >"$WORK/init.sh"
"${RUN[@]}" sh "$WORK/secrets.sh" >/dev/null
"${RUN[@]}" env POSTGRES_USER=postgres PGHOST="$WORK/socket" sh "$WORK/init.sh" >/dev/null

status=0
for service in checkout inventory payments; do
  owner=$("${RUN[@]}" psql -h "$WORK/socket" -U postgres -d postgres -Atqc \
    "select pg_get_userbyid(datdba) from pg_database where datname = '$service'")
  [ "$owner" = "$service" ] || { say "database $service is owned by '$owner'"; status=1; }
done

# Password authentication from here on, as the services connect over TCP in compose.
sed -i 's/trust$/scram-sha-256/' "$WORK/data/pg_hba.conf"
"${RUN[@]}" "$BIN/pg_ctl" -D "$WORK/data" reload >/dev/null

for service in checkout inventory payments; do
  password=$(cat "$WORK/secrets/$service.password")
  for database in checkout inventory payments; do
    if "${RUN[@]}" env PGPASSWORD="$password" psql -h "$WORK/socket" -U "$service" -d "$database" \
      -Atqc 'select current_user' >/dev/null 2>&1; then
      opened=yes
    else
      opened=no
    fi
    want=no
    [ "$service" = "$database" ] && want=yes
    if [ "$opened" != "$want" ]; then
      say "role $service opening database $database: $opened, expected $want"
      status=1
    fi
  done
done
[ "$status" -eq 0 ] && say "one role per service; each opens its own database and no other"
exit "$status"
