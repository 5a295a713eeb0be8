#!/bin/sh
# The db-secrets job (docker-compose.yml): one random password for the Postgres superuser
# and one per service role, written once into the db-secrets volume and kept after that.
#   postgres.password       read by the postgres image (POSTGRES_PASSWORD_FILE)
#   <service>.password      read by init.sh when it creates the role
#   <service>.toml          the service's CONFIG_FILE: only `[database] password`, since the
#                           services read everything else from the environment
# Development only: every container that mounts the volume can read every file.
set -eu
umask 022
cd /secrets

random() {
  # 24 random bytes as hex: no character that TOML or SQL would need escaped.
  od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

[ -s postgres.password ] || random >postgres.password
for service in checkout inventory payments; do
  [ -s "$service.toml" ] && continue
  password=$(random)
  printf '%s' "$password" >"$service.password"
  printf '# Written by the db-secrets job; development only.\n[database]\npassword = "%s"\n' \
    "$password" >"$service.toml"
done
chmod 0444 ./*.password ./*.toml
echo "db-secrets: passwords in place"
