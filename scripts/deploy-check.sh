#!/usr/bin/env bash
# `make deploy-check`: validates docker-compose.yml, deploy/ and k8s/ offline, with the real
# tools (scripts/tools.sh installs them), and checks that they agree with the services
# (scripts/deploy_check.py). No Docker engine and no cluster are needed, or used: images are
# not built and containers not started here (README.md says what that leaves unchecked).
#
#   scripts/deploy-check.sh              every check, then the negative tests
#   scripts/deploy-check.sh --no-selftest
#   FAULTLINE_DEPLOY_ROOT=DIR ...        check another tree (the negative tests do)
#
# The service binaries must be built (`make build`); FAULTLINE_BIN_DIR says where they are.
set -euo pipefail

SCRIPTS=$(cd "$(dirname "$0")" && pwd)
ROOT=${FAULTLINE_DEPLOY_ROOT:-$(cd "$SCRIPTS/.." && pwd)}
BIN_DIR=${FAULTLINE_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/faultline/target}/debug}
# The Kubernetes version whose schemas the manifests must satisfy: the oldest we support,
# which has the preStop `sleep` action and matchLabelKeys in topology spread.
K8S_VERSION=1.34.0

"$SCRIPTS/tools.sh" install
eval "$("$SCRIPTS/tools.sh" env)"
PYTHON=$(dirname "$(command -v yamllint)")/python

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

step() { printf '[deploy-check] %s\n' "$*"; }
fail() { printf '[deploy-check] FAILED: %s\n' "$*" >&2; exit 1; }

for service in checkout inventory payments; do
  [ -x "$BIN_DIR/$service" ] || fail "$BIN_DIR/$service is missing: run make build (or set FAULTLINE_BIN_DIR)"
  # A binary from before --check-config would ignore the flag and start serving.
  grep -qaF -- --check-config "$BIN_DIR/$service" ||
    fail "$BIN_DIR/$service predates --check-config: rebuild it (make build)"
done

step "yamllint (strict) on every YAML file"
yamllint --strict . || fail "yamllint"

step "generated files and kustomize copies are up to date"
python3 deploy/prometheus/slo.py --check || fail "deploy/prometheus/rules/slo.rules.yml"
python3 deploy/grafana/dashboards.py --check || fail "deploy/grafana/dashboards"
FAULTLINE_DEPLOY_ROOT=$ROOT "$SCRIPTS/deploy-sync.sh" --check || fail "copies under k8s/components"

step "docker-compose config for the app and each profile"
for profiles in "" "--profile observability" "--profile tools"; do
  # shellcheck disable=SC2086 # the profile flags are meant to split
  docker-compose $profiles config -q || fail "docker-compose $profiles config"
done
docker-compose --profile observability --profile tools config >"$WORK/compose.yml" ||
  fail "docker-compose config"

step "kustomize: every overlay and k8s/tests folder"
mkdir -p "$WORK/rendered"
for dir in k8s/overlays/* k8s/tests/*; do
  name=$(basename "$(dirname "$dir")")-$(basename "$dir")
  kubectl kustomize "$dir" >"$WORK/rendered/$name.yaml" || fail "kubectl kustomize $dir"
done

# The coherence checks run before the slower validators: they are what the negative tests
# exercise, and a broken copy then fails within seconds.
step "coherence: metrics, config, ports and probes, memory, versions"
PROMTOOL=$(command -v promtool) "$PYTHON" "$SCRIPTS/deploy_check.py" \
  "$ROOT" "$BIN_DIR" "$WORK/rendered" "$WORK/compose.yml" || fail "coherence"

step "postgres: the init script's roles and databases, on a throwaway cluster"
FAULTLINE_DEPLOY_ROOT=$ROOT "$SCRIPTS/deploy-check-postgres.sh" || fail "postgres roles"

step "kubernetes-validate --strict: every render against Kubernetes $K8S_VERSION"
# --strict refuses unknown fields. The cert-manager and Argo Rollouts kinds have no schema in
# kubernetes-validate and would only warn; --no-warn keeps that noise out.
kubernetes-validate --strict --quiet --no-warn -k "$K8S_VERSION" "$WORK"/rendered/*.yaml ||
  fail "kubernetes-validate"

step "promtool: configs, rules, rule unit tests"
promtool check config deploy/prometheus/prometheus.yml >/dev/null || fail "promtool check config (compose)"
# The cluster's config names rule files by their path in the pod; check it with the rules
# beside it, as they are mounted there.
mkdir -p "$WORK/k8s-prometheus"
sed 's|/etc/prometheus/rules/|rules/|' k8s/components/observability/prometheus.yml \
  >"$WORK/k8s-prometheus/prometheus.yml"
cp -r deploy/prometheus/rules "$WORK/k8s-prometheus/rules"
promtool check config "$WORK/k8s-prometheus/prometheus.yml" >/dev/null || fail "promtool check config (k8s)"
promtool check rules deploy/prometheus/rules/*.yml >/dev/null || fail "promtool check rules"
promtool test rules deploy/prometheus/tests/*.yml || fail "promtool test rules"

step "hadolint on deploy/Dockerfile"
hadolint deploy/Dockerfile || fail "hadolint"

step "checkov on deploy/Dockerfile and the rendered manifests"
# --skip-download: checkov's policy updates come from a vendor's API, not a registry; the
# checks that ship in the pinned package are the ones run.
# Skipped checks, each for a reason that holds for every render:
#   CKV_K8S_40  "high UID": postgres (70), redis (999) and kafka (1000) run as their
#               images' own users, which own the images' files; ours run as 65532.
#   CKV_K8S_22  "read-only root file system": the Kafka image renders its server.properties
#               into its own config folder at start; every other container is read-only.
# And where the reason applies:
#   CKV_K8S_43  "image digest": dev and the k8s/tests renders run images built locally or
#               pinned by tag in .env; overlays/prod pins every image by digest, and passes.
#   CKV2_K8S_6  "pods without a NetworkPolicy": a k8s/tests folder that renders one
#               component alone leaves out components/network-policies on purpose; the
#               overlays and tests/all-components include it, and pass.
# One checkov run per group of renders: checkov's start-up is most of its time.
COMMON_SKIPS=CKV_K8S_40,CKV_K8S_22
mkdir -p "$WORK/checkov/prod" "$WORK/checkov/with-policies" "$WORK/checkov/alone"
for file in "$WORK"/rendered/*.yaml; do
  case $(basename "$file") in
    overlays-prod.yaml) group=prod ;;
    overlays-*|tests-all-components.yaml|tests-network-policies.yaml) group=with-policies ;;
    *) group=alone ;;
  esac
  cp "$file" "$WORK/checkov/$group/"
done
# The runs are independent and mostly checkov starting up, so they run side by side, with
# the Dockerfile's.
checkov --skip-download --quiet --compact --framework dockerfile -f deploy/Dockerfile \
  >"$WORK/checkov-dockerfile.txt" 2>&1 &
pids=("$!:dockerfile")
for group in prod with-policies alone; do
  case $group in
    prod) skips=$COMMON_SKIPS ;;
    with-policies) skips=$COMMON_SKIPS,CKV_K8S_43 ;;
    alone) skips=$COMMON_SKIPS,CKV_K8S_43,CKV2_K8S_6 ;;
  esac
  checkov --skip-download --quiet --compact --framework kubernetes --skip-check "$skips" \
    -d "$WORK/checkov/$group" >"$WORK/checkov-$group.txt" 2>&1 &
  pids+=("$!:$group")
done
for entry in "${pids[@]}"; do
  wait "${entry%%:*}" ||
    { cat "$WORK/checkov-${entry#*:}.txt"; fail "checkov on the ${entry#*:} files"; }
done

if [ "${1:-}" != --no-selftest ] && [ -z "${FAULTLINE_DEPLOY_SELFTEST:-}" ]; then
  step "negative tests: the checks above must fail on broken copies"
  "$SCRIPTS/deploy-check-selftest.sh"
fi
step "passed"
