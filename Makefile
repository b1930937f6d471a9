# Two commands set everything up on a fresh machine: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck format install bench clean

# The runtime lock plus the dev and dev-stack extras' (requirements-dev.lock includes the other).
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/tidings dev

lint: $(STAMP)
	$(BIN)/ruff check api worker bounces shared tidings tests
	$(BIN)/ruff format --check api worker bounces shared tidings tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

format: $(STAMP)
	$(BIN)/ruff format api worker bounces shared tidings tests
	$(BIN)/ruff check --fix api worker bounces shared tidings tests

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache

# The benchmark (tests/perf/README.md): P1-P7 beside ceilings measured in the same run. Not
# part of `make test` (a smoke version is). Knobs: BENCH_* in the environment, BENCH_ARGS=--soak.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): tests/perf/requirements.txt $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r tests/perf/requirements.txt
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python tests/perf/bench.py $(BENCH_ARGS)

# The console's browser tests (tests/test_console.py) drive Debian's chromium with Playwright
# (never a browser Playwright downloads): installed here when missing, as root or through sudo.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "install Debian's chromium (apt-get install chromium) as root for the console's browser tests" >&2; exit 1; fi; \
	APT="$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"; \
	$$APT install -y chromium || { $$APT update && $$APT install -y chromium; }

test: $(CHROMIUM)
