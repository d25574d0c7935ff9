# ContextIQ — every task goes through this file. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN_OUT ?= gen
PROTOS := $(shell find proto/contextiq -name '*.proto' | LC_ALL=C sort)
PYTEST_ARGS ?=
BENCH ?=
BREAKING_AGAINST ?= .git\#branch=main

.PHONY: help setup lock gen gen-check buf-lint buf-breaking lint fmt typecheck test test-unit \
        run bench helm-check check clean

help: ## List every target with one line of help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP) ## Create .venv and install the pinned dependencies (requirements.lock)

lock: ## Re-resolve pyproject's pins into requirements.lock (needs the registry)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip freeze --exclude-editable --all | grep -vE '^(pip|wheel|contextiq)==' \
	  | LC_ALL=C sort > requirements.lock

gen: $(STAMP) ## Regenerate gen/ from proto/ (messages, gRPC stubs, .pyi) with the pinned tools
	rm -rf $(GEN_OUT)/contextiq
	mkdir -p $(GEN_OUT)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iproto \
	  --python_out=$(GEN_OUT) --grpc_python_out=$(GEN_OUT) \
	  --mypy_out=$(GEN_OUT) --mypy_grpc_out=$(GEN_OUT) $(PROTOS)
	find $(GEN_OUT)/contextiq -type d -exec touch {}/__init__.py \;
	touch $(GEN_OUT)/contextiq/py.typed
	@# The gateway's descriptor set keeps the proto comments for the OpenAPI document.
	$(if $(filter gen,$(GEN_OUT)),$(PY) -m gateway.build_descriptors)

gen-check: $(STAMP) ## Fail when gen/ differs from what `make gen` produces
	@tmp=$$(mktemp -d) && $(MAKE) --no-print-directory gen GEN_OUT=$$tmp >/dev/null && \
	  diff -r -x __pycache__ $$tmp/contextiq $(GEN_OUT)/contextiq && rm -rf $$tmp && \
	  $(PY) -m gateway.build_descriptors --check && echo "gen/ is up to date"

buf-lint: $(STAMP) ## Lint the protos with buf (STANDARD rules, one documented deviation)
	$(VENV)/bin/buf lint

buf-breaking: $(STAMP) ## Check the protos for breaking changes against main (BREAKING_AGAINST=…)
	$(VENV)/bin/buf breaking --against '$(BREAKING_AGAINST)'

lint: $(STAMP) ## ruff format check + ruff lint
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

fmt: $(STAMP) ## Format and auto-fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(STAMP) ## mypy --strict on our code (gen/ excluded)
	$(VENV)/bin/mypy ciq_runtime sessions_svc memory_svc extraction_svc gateway tests bench

test: $(STAMP) ## Lint, type-check and run the whole suite against real Postgres and NATS
	$(MAKE) --no-print-directory lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## Only the socket-free unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

run: $(STAMP) ## Start the whole stack (Postgres, NATS, services on :50051, gateway on :8080)
	$(PY) -m ciq_runtime.stack

bench: $(STAMP) ## Run the benchmarks in bench/ and print their numbers
	$(PY) -m bench $(BENCH)

helm-check: $(STAMP) ## helm lint + template + kubernetes-validate on deploy/helm
	@echo "helm-check: the chart arrives with the Helm issue (deploy/helm is empty)"; exit 1

check: lint typecheck buf-lint gen-check ## Every non-mutating gate

clean: ## Remove caches (keeps .venv and .contextiq data)
	find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf .mypy_cache .ruff_cache build *.egg-info
