#!/usr/bin/env python3
"""Writes the five Grafana dashboards in dashboards/ (JSON, which Grafana provisions from
files): service RED, the order saga, messaging, resilience and SLOs. Each has a fixed uid,
so links and alerts can name it.

A panel is a title, a unit and PromQL queries with their legends; the layout is computed.
Every metric named here is exported by the services: scripts/deploy-check.sh checks each
name against the source and parses each query with promtool, and the e2e test
tests/tests/deploy_metrics.rs checks each against the services' real /metrics.

    python3 deploy/grafana/dashboards.py          # rewrite dashboards/*.json
    python3 deploy/grafana/dashboards.py --check  # exit 1 if any is out of date
"""

import json
import pathlib
import sys

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
# The Jaeger UI as docker-compose.yml publishes it (HOST_JAEGER_PORT in .env). Metrics carry
# no trace ids, so a panel links to the traces of its service over the same time range.
JAEGER_SEARCH = (
    "http://localhost:16686/search?service=${__field.labels.job}"
    "&start=${__from}000&end=${__to}000&limit=50"
)
RATE = "$__rate_interval"


def q(expr, legend):
    return (expr, legend)


def panel(title, unit, *queries, traces=False, kind="timeseries"):
    return {"title": title, "unit": unit, "queries": queries, "traces": traces, "kind": kind}


def p99(metric, by, selector=""):
    return (
        f"histogram_quantile(0.99, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
    )


DASHBOARDS = {
    "faultline-red": (
        "Faultline / Service RED",
        [
            panel(
                "checkout HTTP requests by route",
                "reqps",
                q(f'sum by (job, method, route) (rate(http_server_request_duration_seconds_count{{job="checkout"}}[{RATE}]))',
                  "{{method}} {{route}}"),
                traces=True,
            ),
            panel(
                "checkout HTTP errors (5xx) by route",
                "reqps",
                q(f'sum by (job, method, route) (rate(http_server_request_duration_seconds_count{{job="checkout",status=~"5.."}}[{RATE}]))',
                  "{{method}} {{route}}"),
                traces=True,
            ),
            panel(
                "checkout HTTP p99 latency by route",
                "s",
                q(p99("http_server_request_duration_seconds", "job, method, route", 'job="checkout"'),
                  "{{method}} {{route}}"),
                traces=True,
            ),
            panel(
                "gRPC server calls by method",
                "reqps",
                q(f"sum by (job, service, method) (rate(rpc_server_duration_seconds_count[{RATE}]))",
                  "{{job}} {{method}}"),
                traces=True,
            ),
            panel(
                "gRPC server errors (not OK) by method",
                "reqps",
                q(f'sum by (job, method, code) (rate(rpc_server_duration_seconds_count{{code!="OK"}}[{RATE}]))',
                  "{{job}} {{method}} {{code}}"),
                traces=True,
            ),
            panel(
                "gRPC server p99 latency by method",
                "s",
                q(p99("rpc_server_duration_seconds", "job, method"), "{{job}} {{method}}"),
                traces=True,
            ),
            panel(
                "gRPC client calls by method and code",
                "reqps",
                q(f"sum by (job, method, code) (rate(rpc_client_duration_seconds_count[{RATE}]))",
                  "{{job}} → {{method}} {{code}}"),
                traces=True,
            ),
            panel(
                "gRPC client p99 latency",
                "s",
                q(p99("rpc_client_duration_seconds", "job, method"), "{{job}} → {{method}}"),
                traces=True,
            ),
        ],
    ),
    "faultline-saga": (
        "Faultline / Order saga",
        [
            panel(
                "Orders decided by outcome and code",
                "ops",
                q(f'sum by (job, outcome, code) (rate(saga_outcomes_total{{job="checkout"}}[{RATE}]))',
                  "{{outcome}} {{code}}"),
                traces=True,
            ),
            panel(
                "Time from placement to decision (p50, p99)",
                "s",
                q(f'histogram_quantile(0.5, sum by (le) (rate(saga_decision_duration_seconds_bucket{{job="checkout"}}[{RATE}])))',
                  "p50"),
                q(f'histogram_quantile(0.99, sum by (le) (rate(saga_decision_duration_seconds_bucket{{job="checkout"}}[{RATE}])))',
                  "p99"),
            ),
            panel(
                "Accepted orders without an outcome (last 30 min): sagas past their deadline",
                "short",
                q('sum(increase(http_server_request_duration_seconds_count{job="checkout",method="POST",'
                  'route="/v1/orders",status="202"}[30m])) - sum(increase(saga_outcomes_total{job="checkout"}[30m]))',
                  "undecided"),
            ),
            panel(
                "Parked messages (dead-letter) per service",
                "short",
                q("sum by (job) (increase(messaging_consumer_parked_total[1h]))", "{{job}}"),
                traces=True,
            ),
        ],
    ),
    "faultline-messaging": (
        "Faultline / Messaging",
        [
            panel(
                "Outbox backlog (rows not yet published)",
                "short",
                q("sum by (job) (outbox_pending_rows)", "{{job}}"),
            ),
            panel(
                "Age of the oldest unpublished outbox row",
                "s",
                q("max by (job) (outbox_oldest_pending_age_seconds)", "{{job}}"),
            ),
            panel(
                "Consumer lag by topic",
                "short",
                q("sum by (job, topic) (kafka_consumer_lag)", "{{job}} {{topic}}"),
            ),
            panel(
                "Records processed, duplicates skipped",
                "ops",
                q(f"sum by (job) (rate(messaging_consumer_processed_total[{RATE}]))", "{{job}} processed"),
                q(f"sum by (job) (rate(messaging_consumer_duplicates_total[{RATE}]))", "{{job}} duplicates"),
                traces=True,
            ),
            panel(
                "Dead-lettered (parked) records",
                "short",
                q("sum by (job) (increase(messaging_consumer_parked_total[1h]))", "{{job}}"),
            ),
            panel(
                "Partitions paused (lane full)",
                "ops",
                q(f"sum by (job) (rate(messaging_consumer_pauses_total[{RATE}]))", "{{job}}"),
            ),
        ],
    ),
    "faultline-resilience": (
        "Faultline / Resilience",
        [
            panel(
                "Circuit breaker state (0 closed, 1 half-open, 2 open)",
                "short",
                q("max by (job, name) (circuit_breaker_state)", "{{job}} {{name}}"),
            ),
            panel(
                "Breaker failure rate",
                "percent",
                q("max by (job, name) (circuit_breaker_failure_rate)", "{{job}} {{name}}"),
            ),
            panel(
                "Calls refused by an open breaker",
                "ops",
                q(f"sum by (job, name) (rate(circuit_breaker_not_permitted_total[{RATE}]))", "{{job}} {{name}}"),
            ),
            panel(
                "Client attempts by outcome (retries show as extra attempts)",
                "ops",
                q(f"sum by (job, method, code) (rate(rpc_client_duration_seconds_count[{RATE}]))",
                  "{{job}} → {{method}} {{code}}"),
                traces=True,
            ),
            panel(
                "Shed (503) and rate-limited (429) requests at the edge",
                "reqps",
                q(f'sum by (job, status) (rate(http_server_request_duration_seconds_count{{job="checkout",status=~"429|503"}}[{RATE}]))',
                  "{{status}}"),
                traces=True,
            ),
            panel(
                "Catalog cache hit ratio",
                "percentunit",
                q(f'sum(rate(faultline_cache_lookups_total{{outcome=~"hit|negative_hit"}}[{RATE}])) / '
                  f"sum(rate(faultline_cache_lookups_total[{RATE}]))",
                  "hit ratio"),
            ),
        ],
    ),
    "faultline-slo": (
        "Faultline / SLOs",
        [
            panel(
                "Burn rate over 1h (page above 14.4)",
                "short",
                q("slo:sli_error:ratio_rate1h / on (slo) (1 - slo:objective:ratio)", "{{slo}}"),
            ),
            panel(
                "Burn rate over 6h (page above 6)",
                "short",
                q("slo:sli_error:ratio_rate6h / on (slo) (1 - slo:objective:ratio)", "{{slo}}"),
            ),
            panel(
                "Burn rate over 3d (ticket above 1)",
                "short",
                q("slo:sli_error:ratio_rate3d / on (slo) (1 - slo:objective:ratio)", "{{slo}}"),
            ),
            panel(
                "Error budget remaining, 30 days (mean of the hourly error ratios)",
                "percentunit",
                q("1 - avg_over_time(slo:sli_error:ratio_rate1h[30d]) / on (slo) (1 - slo:objective:ratio)",
                  "{{slo}}"),
                kind="stat",
            ),
        ],
    ),
}


def render_panel(index, spec):
    width = 12
    result = {
        "id": index + 1,
        "type": spec["kind"],
        "title": spec["title"],
        "datasource": PROMETHEUS,
        "gridPos": {"h": 8, "w": width, "x": (index % 2) * width, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": spec["unit"]}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": PROMETHEUS, "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(spec["queries"])
        ],
    }
    if spec["traces"]:
        result["fieldConfig"]["defaults"]["links"] = [
            {"title": "Traces of ${__field.labels.job} in Jaeger", "url": JAEGER_SEARCH, "targetBlank": True}
        ]
    return result


def render(uid, title, panels):
    board = {
        "uid": uid,
        "title": title,
        "tags": ["faultline"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "links": [
            {"title": "Faultline dashboards", "type": "dashboards", "tags": ["faultline"], "asDropdown": True},
        ],
        "panels": [render_panel(i, p) for i, p in enumerate(panels)],
    }
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main():
    out = pathlib.Path(__file__).with_name("dashboards")
    stale = []
    for uid, (title, panels) in DASHBOARDS.items():
        target = out / f"{uid}.json"
        text = render(uid, title, panels)
        if sys.argv[1:] == ["--check"]:
            if not target.exists() or target.read_text() != text:
                stale.append(str(target))
        else:
            target.write_text(text)
    if stale:
        print(f"out of date: {' '.join(stale)}; run python3 {__file__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
