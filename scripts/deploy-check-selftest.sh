#!/usr/bin/env bash
# Negative tests of `make deploy-check`: each case breaks one thing in a copy of the
# repository, runs scripts/deploy-check.sh on the copy, and passes only if the check fails
# and says why. A check that cannot fail checks nothing.
#
#   missing-probe      k8s/base/checkout/deployment.yaml without its livenessProbe
#   bad-metric         a dashboard panel naming a metric no service exports (the generator
#                      changed and re-run, so only the metric check can notice)
#   misspelt-k8s-key   CHECKOUT_KAFKA__BROKER (for BROKERS) in checkout's ConfigMap env file
#   misspelt-compose   INVENTORY_KAFKA__PARTITION (for PARTITIONS) in docker-compose.yml
#   shared-database    deploy/postgres/init.sh without its REVOKE, so every role can open
#                      every service's database
set -euo pipefail

SCRIPTS=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$SCRIPTS/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say() { printf '[deploy-check-selftest] %s\n' "$*"; }

# A copy of what git tracks (or would, for files not yet added): the tree CI checks out.
copy() {
  local dest=$WORK/$1
  mkdir -p "$dest"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$dest"
  echo "$dest"
}

# Starts deploy-check on a broken copy, in the background: the cases are independent, and
# most of each run is waiting on tools starting up.
CASES=()
expect_failure() {
  local name=$1 tree=$2 expected=$3
  printf '%s\n' "$expected" >"$WORK/$name.expected"
  (
    rc=0
    FAULTLINE_DEPLOY_ROOT=$tree FAULTLINE_DEPLOY_SELFTEST=1 "$tree/scripts/deploy-check.sh" \
      >"$WORK/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$WORK/$name.rc"
  ) &
  CASES+=("$name")
}

# Passes if each case's check failed with its expected words in the output.
judge() {
  wait
  local failed=0 name expected
  for name in "${CASES[@]}"; do
    expected=$(cat "$WORK/$name.expected")
    if [ "$(cat "$WORK/$name.rc")" -eq 0 ]; then
      say "FAILED: $name: deploy-check passed on a broken tree"
      cat "$WORK/$name.log"
      failed=$((failed + 1))
    elif ! grep -qF -- "$expected" "$WORK/$name.log"; then
      say "FAILED: $name: deploy-check failed, but not saying '$expected':"
      cat "$WORK/$name.log"
      failed=$((failed + 1))
    else
      say "ok: $name: $(grep -F -- "$expected" "$WORK/$name.log" | head -n 1)"
    fi
  done
  say "$((${#CASES[@]} - failed)) passed, $failed failed"
  [ "$failed" -eq 0 ]
}

tree=$(copy missing-probe)
python3 - "$tree/k8s/base/checkout/deployment.yaml" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
broken = re.sub(r"          livenessProbe:\n(?:            .*\n)+", "", text, count=1)
assert broken != text
open(path, "w").write(broken)
EOF
expect_failure missing-probe "$tree" "container checkout has no livenessProbe"

tree=$(copy bad-metric)
sed -i 's/"max by (job) (outbox_oldest_pending_age_seconds)"/"max by (job) (outbox_oldest_pending_age)"/' \
  "$tree/deploy/grafana/dashboards.py"
grep -q '(outbox_oldest_pending_age)"' "$tree/deploy/grafana/dashboards.py"
python3 "$tree/deploy/grafana/dashboards.py"
FAULTLINE_DEPLOY_ROOT=$tree "$tree/scripts/deploy-sync.sh"
expect_failure bad-metric "$tree" "metric outbox_oldest_pending_age is not registered"

tree=$(copy misspelt-k8s-key)
echo "CHECKOUT_KAFKA__BROKER=kafka:9092" >>"$tree/k8s/base/checkout/config.env"
expect_failure misspelt-k8s-key "$tree" "CHECKOUT_KAFKA__BROKER"

tree=$(copy misspelt-compose)
sed -i 's/INVENTORY_KAFKA__PARTITIONS:/INVENTORY_KAFKA__PARTITION:/' "$tree/docker-compose.yml"
grep -q 'INVENTORY_KAFKA__PARTITION:' "$tree/docker-compose.yml"
expect_failure misspelt-compose "$tree" "INVENTORY_KAFKA__PARTITION"

tree=$(copy shared-database)
sed -i '/^REVOKE ALL ON DATABASE/d' "$tree/deploy/postgres/init.sh"
FAULTLINE_DEPLOY_ROOT=$tree "$tree/scripts/deploy-sync.sh"
expect_failure shared-database "$tree" "role checkout opening database inventory: yes, expected no"

judge
