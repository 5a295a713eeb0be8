# Faultline's two commands (see README.md):
#   make demo   bring everything up, place three orders, leave the system running
#   make test   bring the dependencies up and run every test (deploy-check included)
# and `make down` to stop what they started. `make load` measures a fresh system under load.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Build output lives outside the clone so that fresh clones (CI, worktrees) reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/faultline/target
CARGO ?= cargo

.PHONY: demo test down deps build credentials lint status deploy-check deploy-sync \
	bench-outbox bench-auth bench-resilience bench-cache load load-tools chaos

## demo: start Postgres, Redis, the broker and the services; place three orders
demo: deps build credentials
	scripts/services.sh start
	$(CARGO_TARGET_DIR)/debug/demo
	@echo
	@echo "Faultline is still running: checkout on http://127.0.0.1:8080. Get a token with"
	@echo "  $(CARGO_TARGET_DIR)/debug/faultline-auth-dev token --sub alice"
	@echo "and try GET /v1/orders/<id> with 'authorization: Bearer <token>' (README.md)."
	@echo "Stop it with 'make down'."

## test: start the dependencies and run every test (unit, property, integration, end-to-end),
## and the static checks of the deployment files
test: deps build
	$(MAKE) deploy-check
	$(CARGO) test --workspace

## deploy-check: validate docker-compose.yml, deploy/ and k8s/ offline with the real tools
## (installed once into ~/.cache/faultline by scripts/tools.sh), check that they agree with
## the services, and show that those checks fail on broken copies (docs/deploy.md)
deploy-check: build
	FAULTLINE_BIN_DIR=$(CARGO_TARGET_DIR)/debug scripts/deploy-check.sh

## deploy-sync: copy the deploy/ files the Kubernetes components carry (kustomize reads no
## file outside its folder), and regenerate the SLO rules and the dashboards
deploy-sync:
	python3 deploy/prometheus/slo.py
	python3 deploy/grafana/dashboards.py
	scripts/deploy-sync.sh

## down: stop the services and whatever the bootstrap started
down:
	scripts/services.sh stop
	scripts/deps.sh down

deps:
	scripts/deps.sh up

# One build for everything (binaries and tests together), so the demo and the tests share
# the same compiled dependencies instead of rebuilding them with other feature sets.
build:
	$(CARGO) build --workspace --all-targets

## credentials: a dev token signing key + JWKS (.state/auth) and a dev CA with a certificate
## per service and the operator (.state/certs). Existing keys and the CA are kept.
credentials: build
	$(CARGO_TARGET_DIR)/debug/faultline-auth-dev keys --dir .state/auth
	$(CARGO_TARGET_DIR)/debug/faultline-auth-dev certs --dir .state/certs \
		--service checkout --service inventory --service payments --service operator

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

status:
	scripts/deps.sh status

## bench-outbox: relay throughput (vs the seed's naive worker and raw rdkafka) and latency
bench-outbox: deps
	$(CARGO) bench -p faultline-outbox --bench relay

## bench-auth: token verification, policy decisions, and a handler with auth on and off
bench-auth: deps
	$(CARGO) bench -p faultline-auth --bench auth

## bench-resilience: per-call overhead of the client stack (vs tower's Timeout + Retry), the
## breaker under 8 contending tasks (vs tower-resilience-circuitbreaker), and the stack's share
## of a real gRPC call over loopback mTLS
bench-resilience:
	$(CARGO) bench -p faultline-resilience
	$(CARGO) bench -p faultline-e2e --bench grpc_call

## bench-cache: cache hit vs a raw Redis GET (own redis-server), and hash placement vs the
## seed's MD5 ring
bench-cache: deps
	$(CARGO) bench -p faultline-cache

## chaos: the full chaos matrix (docs/resilience.md): every fault under steady load, healed,
## drained and audited, on a Postgres, Redis and broker of its own (never the shared ones);
## prints the table and writes .state/chaos/report.md. `make test` runs the short matrix.
## Knobs: CHAOS_SEED=<n> replays a run; CHAOS_RATE, CHAOS_FAULT_SECS, CHAOS_STOP_SECS,
## CHAOS_REDIS_SECS, CHAOS_LANES, CHAOS_FAULTS='kill -9,blackhole' (tests/src/chaos/mod.rs).
chaos: deps build
	CHAOS_MODE=full $(CARGO) test -p faultline-e2e --test chaos -- --nocapture

## load: release binaries, a fresh system (databases, topic prefix, credentials of its own),
## pgbench's commit ceiling, then open-loop orders; prints one table and writes
## .state/load/result.json and chart.svg. Knobs (all optional):
##   LOAD_MODE=run|ramp  LOAD_RATE=50  LOAD_DURATION=60s  (run)
##   LOAD_ARGS='--arrivals constant --customers 200 ...'  flags of `faultline-load local run|ramp`
##   LOAD_LOCAL_ARGS='--pgbench-duration 20s --terminal poll ...'  flags of `faultline-load local`
## e.g. make load LOAD_MODE=ramp LOAD_ARGS='--start-rate 25 --rate-step 25 --step-duration 20s'
LOAD_MODE ?= run
LOAD_RATE ?= 50
LOAD_DURATION ?= 60s
LOAD_ARGS ?=
LOAD_LOCAL_ARGS ?=
ifeq ($(LOAD_MODE),ramp)
LOAD_SHAPE = ramp $(LOAD_ARGS)
else
LOAD_SHAPE = run --rate $(LOAD_RATE) --duration $(LOAD_DURATION) $(LOAD_ARGS)
endif

load: deps load-tools
	$(CARGO) build --release -p checkout -p inventory -p payments -p faultline-load
	FAULTLINE_BIN_DIR=$(CARGO_TARGET_DIR)/release \
		$(CARGO_TARGET_DIR)/release/faultline-load local $(LOAD_LOCAL_ARGS) $(LOAD_SHAPE)

## load-tools: pgbench, for the commit ceiling (Debian's postgresql-contrib ships it)
load-tools:
	@command -v pgbench >/dev/null || { \
		echo "[load] installing pgbench (postgresql-contrib)"; \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-contrib >/dev/null; }
