# Faultline's two commands (see README.md):
#   make demo   bring everything up, place three orders, leave the system running
#   make test   bring the dependencies up and run every test (deploy-check included)
# and `make down` to stop what they started.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Build output lives outside the clone so that fresh clones (CI, worktrees) reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/faultline/target
CARGO ?= cargo

.PHONY: demo test down deps build credentials lint status deploy-check deploy-sync \
	bench-outbox bench-auth bench-resilience bench-cache

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

## bench-resilience: per-call overhead of the client stack (vs tower's Timeout + Retry) and
## the breaker under 8 contending tasks (vs tower-resilience-circuitbreaker)
bench-resilience:
	$(CARGO) bench -p faultline-resilience

## bench-cache: cache hit vs a raw Redis GET (own redis-server), and hash placement vs the
## seed's MD5 ring
bench-cache: deps
	$(CARGO) bench -p faultline-cache
