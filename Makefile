# Faultline's two commands (see README.md):
#   make demo   bring everything up, place three orders, leave the system running
#   make test   bring the dependencies up and run every test
# and `make down` to stop what they started.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Build output lives outside the clone so that fresh clones (CI, worktrees) reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/faultline/target
CARGO ?= cargo

.PHONY: demo test down deps build lint status bench-outbox

## demo: start Postgres, Redis, the broker and the services; place three orders
demo: deps build
	scripts/services.sh start
	$(CARGO_TARGET_DIR)/debug/demo
	@echo
	@echo "Faultline is still running: checkout on http://127.0.0.1:8080 (try GET /v1/orders/<id>)."
	@echo "Stop it with 'make down'."

## test: start the dependencies and run every test (unit, property, integration, end-to-end)
test: deps build
	$(CARGO) test --workspace

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

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

status:
	scripts/deps.sh status

## bench-outbox: relay throughput (vs the seed's naive worker and raw rdkafka) and latency
bench-outbox: deps
	$(CARGO) bench -p faultline-outbox --bench relay
