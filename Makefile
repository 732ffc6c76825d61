# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8080
CONFIG ?= policies/default.yaml

.PHONY: install system-deps run test lint format bench schema clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

install: $(STAMP)  ## create .venv with the `gateway` command and the test tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "Python 3.11 is required (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

system-deps:  ## redis-server for the tests, wrk and nginx for the benchmarks (apt, when missing)
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			(apt-get install -y -q $$missing >/dev/null 2>&1 || \
			 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null)) || \
			{ echo "could not install$$missing"; exit 1; }; \
		else \
			echo "please install:$$missing (e.g. sudo apt-get install$$missing)"; exit 1; \
		fi; \
	fi

run: install  ## start the gateway on $(PORT) with the embedded default policy
	PORT=$(PORT) $(BIN)/gateway serve --config $(CONFIG)

test: install system-deps  ## run the whole test suite
	$(BIN)/python -m pytest -q

lint: install  ## ruff and mypy --strict
	$(BIN)/ruff check gateway plugins tests bench
	$(BIN)/ruff format --check gateway plugins
	$(BIN)/mypy

format: install
	$(BIN)/ruff format gateway plugins
	$(BIN)/ruff check --fix gateway plugins

schema: install  ## regenerate schema/policy.schema.json
	$(BIN)/gateway schema -o schema/policy.schema.json

bench: install system-deps  ## benchmarks; results go to docs/benchmarks.md
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .bench
