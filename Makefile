# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
# The models `make export` converts: NAME=PATH or NAME=FRAMEWORK:PATH each, served as /NAME.
# SKLEARN_MODEL and PYTORCH_MODEL still set the paths of the default list.
SKLEARN_MODEL ?= export/sources/sklearn.joblib
PYTORCH_MODEL ?= export/sources/pytorch.pt
MODELS ?= sklearn=$(SKLEARN_MODEL) pytorch=$(PYTORCH_MODEL)
OUT ?= onnx_models

.PHONY: install runtime serve export test test-fast lint format sources bench soak test-upstream lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps make the installs idempotent: pip runs again only when a requirements file changes.
# The runtime comes from requirements.lock, every file checked against its sha256; the build and
# test set goes on top of it (its runtime pins are the lock's, so pip keeps what is installed).
$(VENV)/.runtime-installed: requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements.txt export/requirements.txt tests/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

runtime: $(VENV)/.runtime-installed

install: $(VENV)/.dev-installed

# requirements.lock from requirements.txt: the same pins and everything they pull in, with the
# sha256 of every file PyPI has for each (for any platform, Python 3.11). Run it after changing
# requirements.txt; tests/deploy/test_runtime_lock.py fails until the two agree.
lock: install
	$(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
		--custom-compile-command "make lock" --output-file requirements.lock requirements.txt

serve: runtime
	PORT=$(PORT) $(BIN)/python -m serve

export: install
	$(BIN)/python -m export $(foreach model,$(MODELS),--model $(model)) --out $(OUT)

# Retrains the committed stand-in source models (deterministic).
sources: install
	$(BIN)/python -m export.train_sources --out export/sources

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# promtool and prometheus for tests/deploy/test_monitoring.py: Debian's package, only when missing. The
# package's own service is stopped: the tests run their own Prometheus. Without apt-get or root,
# those tests skip and say why.
.PHONY: monitoring-tools
monitoring-tools:
	@if command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus || exit 1; \
		service prometheus stop >/dev/null 2>&1 || true; \
	else echo "monitoring-tools: promtool missing and apt-get unavailable or not root"; fi

# Headless Chromium for tests/e2e/test_docs_browser.py: Debian's package, only when missing. Without
# apt-get or root, that test skips and says why.
.PHONY: chromium
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium || exit 1; \
	else echo "chromium: missing and apt-get unavailable or not root"; fi

# tests/serve first, in one process (in-process tests, about 25 s: they fail fast), then the rest
# on two pytest-xdist workers, a test file to a worker (a module's server or export made once).
test: lint monitoring-tools chromium
	$(BIN)/python -m pytest tests/serve
	$(BIN)/python -m pytest -n 2 --dist loadfile --ignore=tests/serve

# The tests that start no server and export no whole set of models (under a minute): the loop for a change to one module.
# `make test` stays the whole suite and the CI command.
test-fast: install
	$(BIN)/python -m pytest -m "not e2e and not slow" -q

# Benchmark: the service against the floor and native designs (a few minutes; see docs/performance.md).
bench: install
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(BIN)/python -m bench --out bench/results
	$(BIN)/python -m bench.compression --out bench/results
	$(BIN)/python -m bench.mlserver --out bench/results

# Load with faults: a minute of mixed load while a worker is killed, the server reloaded and stopped.
soak: install
	$(BIN)/python -m tools.soak --seconds 60 --clients 8

# The newest gunicorn and gunicorn-h1c releases against serve/worker.py, in a throwaway venv (not
# part of `make test`): the check of the private gunicorn names it uses, and the transport tests.
UPSTREAM_VENV ?= /tmp/crystal-test-upstream
UPSTREAM_TESTS := tests/serve/test_worker.py tests/e2e/test_transport_e2e.py tests/e2e/test_hostile_e2e.py
test-upstream:
	$(PYTHON) -m venv --clear $(UPSTREAM_VENV)
	$(UPSTREAM_VENV)/bin/pip install --quiet --disable-pip-version-check \
		-r requirements.txt -r tests/requirements.txt
	$(UPSTREAM_VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade \
		gunicorn gunicorn-h1c
	@version=$$($(UPSTREAM_VENV)/bin/python -c 'import gunicorn; print(gunicorn.__version__)'); \
	pinned=$$(sed -n 's/^gunicorn==//p' requirements.txt); \
	if [ "$$version" = "$$pinned" ]; then echo "test-upstream: the newest gunicorn is the pinned $$version"; \
	else echo "test-upstream: the newest gunicorn is $$version (requirements.txt pins $$pinned)"; fi; \
	failed=""; \
	$(UPSTREAM_VENV)/bin/python -m serve.check --gunicorn-only || failed=" the private-name check"; \
	$(UPSTREAM_VENV)/bin/python -m pytest -q $(UPSTREAM_TESTS) || failed="$${failed:+$$failed and} the transport tests"; \
	if [ -z "$$failed" ]; then echo "test-upstream: gunicorn $$version passes everything"; \
	else echo "test-upstream: gunicorn $$version fails:$$failed (see above)"; exit 1; fi
