#!/bin/sh
# Runs once, when the postgres image initialises an empty data directory
# (/docker-entrypoint-initdb.d): one database and one role per service. Each role owns its
# own database and nothing else; CONNECT is revoked from PUBLIC, so no role can open another
# service's database. The passwords come from the db-secrets job.
#
# The services create their database only when it is missing (crates/platform/src/db.rs);
# here it exists already, so the roles need no CREATEDB.
set -eu

for service in checkout inventory payments; do
  password=$(cat "/secrets/$service.password")
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v role="$service" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"role" OWNER :"role";
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"role" TO :"role";
SQL
  echo "init: role and database $service"
done
