# ChronoSync: `make dev` runs a local cluster, `make test` runs every test. `make help`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := libs/chronocore services/scheduler services/coordinator services/worker
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))

.DEFAULT_GOAL := help
.PHONY: help install dev test mutation-test chaos-test bench up proto lint

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

mutation-test: $(STAMP) ## break each guarantee in a scratch copy: its test must fail (MUTATION_ARGS=--ci)
	$(BIN)/python tests/mutation/run.py $(MUTATION_ARGS)

CHAOS_DURATION ?= 180
chaos-test: $(STAMP) ## the randomized kill-node scenario (CHAOS_DURATION=180 s, CHAOS_SEED=N)
	$(BIN)/python tests/chaos/chaos.py --duration $(CHAOS_DURATION) \
		$(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

bench: $(STAMP) ## the benchmark: throughput, lateness, scale, failover (bench/README.md)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

up: ## docker compose up --build: PostgreSQL, 2 schedulers, 2 coordinators, 3 workers
	@token="$${CHRONOSYNC_API_TOKEN:-$$(openssl rand -hex 16)}"; \
	echo "API token: $$token  (curl -H 'Authorization: Bearer $$token' localhost:8081/nodes)"; \
	CHRONOSYNC_API_TOKEN="$$token" docker compose up --build

proto: $(STAMP) ## regenerate the gRPC code from proto/
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=libs/chronocore/src \
		--pyi_out=libs/chronocore/src --grpc_python_out=libs/chronocore/src \
		proto/chronocore/rpc/worker.proto

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .
