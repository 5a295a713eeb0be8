#!/usr/bin/env bash
# kustomize reads no file outside a kustomization's folder, so the Kubernetes components
# carry copies of files whose one true version lives under deploy/. This copies them
# (`make deploy-sync`), or with --check fails naming every copy that differs (run by
# scripts/deploy-check.sh).
set -euo pipefail
ROOT=${FAULTLINE_DEPLOY_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT"

OBS=k8s/components/observability/files
DEV=k8s/components/dev-dependencies/files
PAIRS=(
  "deploy/postgres/init.sh $DEV/init.sh"
  "deploy/kafka/topics.sh $DEV/topics.sh"
  "deploy/otel-collector/config.yaml $OBS/otel-collector.yaml"
  "deploy/jaeger/config.yaml $OBS/jaeger.yaml"
  "deploy/prometheus/rules/slo.rules.yml $OBS/rules/slo.rules.yml"
  "deploy/prometheus/rules/alerts.rules.yml $OBS/rules/alerts.rules.yml"
  "deploy/grafana/provisioning/datasources/datasources.yml $OBS/datasources.yml"
  "deploy/grafana/provisioning/dashboards/dashboards.yml $OBS/dashboards.yml"
)
for board in deploy/grafana/dashboards/*.json; do
  PAIRS+=("$board $OBS/dashboards/$(basename "$board")")
done

status=0
for pair in "${PAIRS[@]}"; do
  read -r source copy <<<"$pair"
  if [ "${1:-}" = --check ]; then
    if ! cmp -s "$source" "$copy"; then
      echo "[deploy-sync] $copy differs from $source: run make deploy-sync" >&2
      status=1
    fi
  else
    mkdir -p "$(dirname "$copy")"
    cp "$source" "$copy"
  fi
done
exit $status
