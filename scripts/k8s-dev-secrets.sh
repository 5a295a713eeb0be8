#!/usr/bin/env bash
# The Secrets k8s/overlays/dev expects, with random values, in the namespace faultline-dev
# (or $NAMESPACE) of the current kubectl context:
#   postgres-superuser          password
#   <service>-database          password (for Postgres' init script) and config.toml (the
#                               service's CONFIG_FILE: `[database] password = "..."`)
#   checkout-jwks               jwks.json from .state/auth (`make credentials`)
# An existing Secret is kept, so re-running never changes a password under a running
# database. The mTLS certificates come from cert-manager (k8s/components/cert-manager).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAMESPACE=${NAMESPACE:-faultline-dev}

say() { printf '[k8s-dev-secrets] %s\n' "$*"; }
exists() { kubectl -n "$NAMESPACE" get secret "$1" >/dev/null 2>&1; }
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 ||
  kubectl apply -f "$ROOT/k8s/overlays/dev/namespace.yaml"

if ! exists postgres-superuser; then
  kubectl -n "$NAMESPACE" create secret generic postgres-superuser \
    --from-literal=password="$(random)"
  say "created postgres-superuser"
fi
for service in checkout inventory payments; do
  exists "$service-database" && continue
  password=$(random)
  kubectl -n "$NAMESPACE" create secret generic "$service-database" \
    --from-literal=password="$password" \
    --from-literal=config.toml="$(printf '[database]\npassword = "%s"\n' "$password")"
  say "created $service-database"
done
if ! exists checkout-jwks; then
  jwks=$ROOT/.state/auth/jwks.json
  [ -f "$jwks" ] || { echo "no $jwks: run 'make credentials' first" >&2; exit 1; }
  kubectl -n "$NAMESPACE" create secret generic checkout-jwks --from-file=jwks.json="$jwks"
  say "created checkout-jwks"
fi
