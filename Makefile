# Two commands: `make run` (serve on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast test-rasa lint install bench bench-nlu bench-engine bench-desk bench-ops config-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/patientbot serve --host 127.0.0.1 --port 8000

# ruff, mypy (pydantic plugin) and the import-linter layer contract (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check bot channels handoff nlu tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	scripts/ensure-chromium.sh
	scripts/ensure-dovecot.sh
	scripts/with-redis.sh $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The inner loop: unit and store-contract tests only (about a minute and a half).
test-fast: $(STAMP)
	scripts/with-redis.sh $(BIN)/python -m pytest -q tests/unit tests/contract $(PYTEST_ARGS)

# Optional: the Rasa backend against real Rasa servers (Python 3.10 venv .venv-rasa, ~3 GB),
# and the embedded-vs-Rasa comparison table. Not part of `make test`.
test-rasa: $(STAMP)
	scripts/test-rasa.sh

bench: $(STAMP)
	scripts/with-redis.sh $(BIN)/python benchmarks/pipeline_bench.py

# NLU latency, throughput, training time and memory (no Redis needed).
bench-nlu: $(STAMP)
	$(BIN)/python benchmarks/nlu_bench.py

# Engine turns (MemoryStore and Redis), booking contention on Redis, readiness wall time.
# Options go in BENCH_ARGS, e.g. `make bench-engine BENCH_ARGS=--json`.
bench-engine: $(STAMP)
	scripts/with-redis.sh $(BIN)/python benchmarks/engine_bench.py $(BENCH_ARGS)

# Agent desk on Redis: claim race between agents, owner replies, escalation sweeps.
bench-desk: $(STAMP)
	scripts/with-redis.sh $(BIN)/python benchmarks/desk_bench.py $(BENCH_ARGS)

# Ops commands by hand (config check, audit verify, ingress dead-letters, desk token): < 2 s each.
bench-ops: $(STAMP)
	scripts/with-redis.sh $(BIN)/python benchmarks/ops_bench.py $(BENCH_ARGS)

config-check: $(STAMP)
	$(BIN)/patientbot config check

clean:
	rm -rf $(VENV) .pytest_cache
