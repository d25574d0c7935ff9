# syntax=docker/dockerfile:1
# ContextIQ: one image for every component; the command picks which one runs:
#   python -m sessions_svc          SessionService + ApiKeyService       (gRPC :50051)
#   python -m memory_svc            Memory, MemoryBank, MemoryJob, Procedural, Operations (gRPC :50051)
#   python -m extraction_svc        ExtractionService + the JetStream job worker (gRPC :50051)
#   python -m gateway               REST gateway (HTTP :8080, the default command)
#   python -m ciq_runtime.migrate   Alembic migrations of every schema, then exit
# Configuration comes from the environment (README "Configuration"; the Helm chart in
# deploy/helm/contextiq sets it). Build: docker build -t contextiq:0.1.0 .
#
# The install steps are the ones of `make setup` (Makefile, $(STAMP)): the pinned
# requirements.lock, then the project itself with --no-deps --no-build-isolation (not
# editable here). tests/helm/test_dockerfile.py keeps the two in step.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/contextiq/venv
ENV PATH=/opt/contextiq/venv/bin:$PATH
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN python -m pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY gen/ gen/
COPY ciq_runtime/ ciq_runtime/
COPY sessions_svc/ sessions_svc/
COPY memory_svc/ memory_svc/
COPY extraction_svc/ extraction_svc/
COPY gateway/ gateway/
RUN python -m pip install --no-deps --no-build-isolation . \
    && python -c "import ciq_runtime.migrate, sessions_svc, memory_svc, extraction_svc, gateway, contextiq"
# The local embedding model, prepared for int8 arithmetic ahead (memory_svc.embedding_model):
# pods then load it from the image instead of deriving it at start.
ENV CONTEXTIQ_MODEL_CACHE=/opt/contextiq/models
RUN python -m memory_svc.embedding_model

FROM ${PYTHON_IMAGE}
# A fixed non-root uid/gid (the chart's podSecurityContext uses the same), no login, no home.
RUN groupadd --system --gid 10001 contextiq \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin contextiq
COPY --from=build /opt/contextiq/venv /opt/contextiq/venv
COPY --from=build /opt/contextiq/models /opt/contextiq/models
# The root filesystem may be read-only (it is under the chart): bytecode was compiled at
# install time, caches and the data dir go to /tmp (an emptyDir in Kubernetes).
ENV PATH=/opt/contextiq/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    CONTEXTIQ_MODEL_CACHE=/opt/contextiq/models \
    CONTEXTIQ_DATA_DIR=/tmp/contextiq \
    CONTEXTIQ_GRPC_HOST=0.0.0.0 \
    CONTEXTIQ_HTTP_HOST=0.0.0.0 \
    CONTEXTIQ_METRICS_PORT=9090
WORKDIR /opt/contextiq
USER 10001:10001
# gRPC, the gateway's HTTP, the services' and worker's Prometheus /metrics.
EXPOSE 50051 8080 9090
CMD ["python", "-m", "gateway"]
