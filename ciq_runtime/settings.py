"""Process configuration, read once from the environment into a frozen object.

``main()`` calls :meth:`Settings.from_env` and passes the result down; nothing else in the
code base reads ``os.environ``. This module imports only the standard library so that
``import ciq_runtime.settings`` stays cheap (CLIs, Helm value checks, tests).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args
from urllib.parse import SplitResult, urlsplit, urlunsplit

__all__ = [
    "GRPC_ENGINES",
    "REDACTED",
    "ConfigError",
    "GrpcEngine",
    "LogFormat",
    "Settings",
    "normalize_database_url",
    "redact_url",
]

LogFormat = Literal["json", "text"]
#: The gRPC server implementation: ``native`` (pygrpc-native: HTTP/2 and gRPC framing in Rust,
#: outside the GIL) or ``grpcio`` (grpc.aio).
GrpcEngine = Literal["native", "grpcio"]
GRPC_ENGINES: tuple[GrpcEngine, ...] = get_args(GrpcEngine)

REDACTED = "[REDACTED]"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Scheme prefixes that name Postgres without (or with our) driver; anything else is rejected
# because the services only ship the asyncpg driver.
_PG_SCHEMES = ("postgresql+asyncpg", "postgresql", "postgres")

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration value is missing or malformed.

    The message is a single line naming the environment variable and the bad value, fit to
    print to an operator as-is.
    """


def normalize_database_url(url: str) -> str:
    """Rewrite a Postgres URL so that SQLAlchemy uses the asyncpg driver.

    Managed Postgres offerings hand out ``postgres://`` or ``postgresql://`` URLs; SQLAlchemy
    would pick psycopg2 for those, which is not installed. The rest of the URL (credentials,
    host, query parameters such as ``?host=/tmp/sock``) is kept verbatim.

    Args:
        url: A ``postgres://``, ``postgresql://`` or ``postgresql+asyncpg://`` URL.

    Returns:
        The same URL with the scheme ``postgresql+asyncpg``.

    Raises:
        ConfigError: If the URL is not a Postgres URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _PG_SCHEMES:
        raise ConfigError(
            f"DATABASE_URL={redact_url(url)!r} is not a Postgres URL: "
            "expected postgresql://user:password@host:port/dbname"
        )
    return f"postgresql+asyncpg://{rest}"


def redact_url(url: str, *, mask_username_only: bool = False) -> str:
    """Mask the password in a URL (or each URL of a comma-separated list).

    Args:
        url: The URL to mask.
        mask_username_only: Also mask a lone user name; NATS reads ``nats://TOKEN@host`` as a
            token, so for NATS URLs the user part is a secret too.

    Returns:
        The URL with secrets replaced by ``[REDACTED]``.
    """
    return ",".join(_redact_one_url(part, mask_username_only) for part in url.split(","))


def _redact_one_url(url: str, mask_username_only: bool) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparseable URLs could hold anything; showing none of it is the safe choice.
        return REDACTED
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:{REDACTED}"
    elif mask_username_only:
        userinfo = REDACTED
    return urlunsplit(SplitResult(parts.scheme, f"{userinfo}@{hostinfo}", *parts[2:]))


def _optional_path(value: str | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Everything a ContextIQ process reads from its environment.

    Build with :meth:`from_env` in ``main()``; tests build it directly or via :meth:`replace`.
    """

    service_name: str
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    grpc_engine: GrpcEngine = "native"
    """Which gRPC server serves the port (see :data:`GrpcEngine`)."""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    metrics_port: int = 0
    """0 disables the Prometheus endpoint."""
    database_url: str | None = None
    """Always ``postgresql+asyncpg://...`` (normalised on construction)."""
    nats_url: str | None = None
    qdrant_url: str | None = None
    sessions_addr: str | None = None
    memory_addr: str | None = None
    extraction_addr: str | None = None
    data_dir: Path = Path("./.contextiq")
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    auth_disabled: bool = False
    jwt_secret: str | None = None
    jwt_issuer: str = "contextiq"
    bootstrap_api_key: str | None = None
    llm_model: str | None = None
    db_pool_size: int = 30
    db_max_overflow: int = 0
    shutdown_grace_s: float = 10.0
    worker_concurrency: int = 32
    """Jobs the worker runs at once. Jobs mostly wait on the model: by Little's law 25 jobs/s
    at ~0.75 s each (two model calls of ~0.3 s plus the pipeline) need ~19 in flight, and jobs
    of one session take turns, so a burst holds slots waiting; bench.generation measured 24.2
    jobs/s at 24, 26.5 at 32. Slower models need more, or more worker replicas."""
    worker_enabled: bool = True
    """Run the job worker in the extraction process (off: only the ExtractionService RPCs)."""
    worker_ack_wait_s: float = 30.0
    """How long a delivered job may go without an ack or heartbeat before redelivery."""
    worker_max_deliver: int = 5
    """Deliveries of a job before it is dead-lettered and its operation failed."""
    worker_backoff_s: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0)
    """Delay before each redelivery, the last one repeating; every entry >= worker_ack_wait_s."""
    worker_job_timeout_s: float = 900.0
    """Longest one delivery of a job may run (heartbeats included) before it is retried."""
    worker_rpc_timeout_s: float = 30.0
    """Deadline of each call the worker makes to the sessions and memory services."""
    otel_endpoint: str | None = None
    pg_port: int = 54329
    """Port of the embedded Postgres (``make run`` without DATABASE_URL); 0 picks a free one."""
    nats_port: int = 4223
    """Port of the embedded nats-server (``make run`` without NATS_URL); 0 picks a free one."""
    rate_limit_per_minute: int = 1000
    """Requests per minute allowed per credential (API key or JWT subject); 0 disables."""
    tenant_rate_limit_per_minute: int = 1000
    """Requests per minute allowed per tenant, all its credentials together; 0 disables."""
    rate_limit_burst: float = 2.0
    """Bucket size as a multiple of the per-minute rate (2 = a burst of twice the rate)."""
    auth_cache_s: float = 10.0
    """How long a service caches an API key verified by the sessions service."""
    llm_api_base: str | None = None
    """Base URL of an OpenAI-compatible server (Ollama, vLLM, a proxy) for the LLM calls."""
    llm_api_key: str | None = None
    """API key passed to LiteLLM; providers' own variables (OPENAI_API_KEY, …) also work."""
    llm_timeout_s: float = 60.0
    """Deadline of one model call."""
    llm_max_attempts: int = 3
    """Model calls per step when the output is invalid (malformed JSON, unknown ids)."""
    max_event_bytes: int = 1_048_576
    """Largest serialized session event AppendEvent accepts."""
    sessions_sweep_interval_s: float = 30.0
    """Pause between two purges of expired sessions."""
    sessions_stream_poll_s: float = 5.0
    """How often an idle StreamEvents re-checks the database (a lost notification's bound)."""
    qdrant_path: Path | None = None
    """Directory of the embedded vector index; ``<data_dir>/qdrant`` when unset."""
    qdrant_api_key: str | None = None
    """API key of the Qdrant server named by ``qdrant_url``."""
    embedding_model: str | None = None
    """Embedding model of banks that name none; the bundled local model when unset."""
    embedding_api_base: str | None = None
    """Base URL of an OpenAI-compatible embedding server for LiteLLM embedding models."""
    embedding_api_key: str | None = None
    """API key for LiteLLM embedding models; providers' own variables also work."""
    memory_sweep_interval_s: float = 30.0
    """Pause between two purges of expired memories."""

    def __post_init__(self) -> None:
        # Normalising here (not only in from_env) means Settings(...) and replace(...) can never
        # hold a URL that would make SQLAlchemy look for psycopg2.
        if self.database_url is not None:
            object.__setattr__(self, "database_url", normalize_database_url(self.database_url))
        # JetStream uses each backoff entry as the ack wait of that delivery: an entry below
        # the ack wait would redeliver a job that is still running and sending heartbeats.
        if any(b < self.worker_ack_wait_s for b in self.worker_backoff_s):
            raise ConfigError(
                "CONTEXTIQ_WORKER_BACKOFF_SECONDS="
                f"{','.join(f'{b:g}' for b in self.worker_backoff_s)!r} is not valid: every "
                f"entry must be >= CONTEXTIQ_WORKER_ACK_WAIT_SECONDS ({self.worker_ack_wait_s:g})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, service_name: str) -> Settings:
        """Read settings from environment variables.

        Empty values count as unset, so ``FOO=`` in a manifest means "use the default".

        Args:
            environ: The variables to read; ``os.environ`` when omitted.
            service_name: Name of this process ("sessions", "memory", "contextiq", ...); used
                in logs and as the Postgres application name.

        Returns:
            The parsed settings.

        Raises:
            ConfigError: If a variable holds a value of the wrong type or out of range.
        """
        env = _Env(os.environ if environ is None else environ)
        return cls(
            service_name=service_name,
            grpc_host=env.text("CONTEXTIQ_GRPC_HOST", "127.0.0.1"),
            grpc_port=env.port("CONTEXTIQ_GRPC_PORT", 50051),
            grpc_engine=cast(
                GrpcEngine,
                env.choice("CONTEXTIQ_GRPC_ENGINE", "native", GRPC_ENGINES, str.lower),
            ),
            http_host=env.text("CONTEXTIQ_HTTP_HOST", "127.0.0.1"),
            http_port=env.port("CONTEXTIQ_HTTP_PORT", 8080),
            metrics_port=env.port("CONTEXTIQ_METRICS_PORT", 0),
            database_url=env.database_url("DATABASE_URL"),
            nats_url=env.optional("NATS_URL"),
            qdrant_url=env.optional("QDRANT_URL"),
            sessions_addr=env.optional("CONTEXTIQ_SESSIONS_ADDR"),
            memory_addr=env.optional("CONTEXTIQ_MEMORY_ADDR"),
            extraction_addr=env.optional("CONTEXTIQ_EXTRACTION_ADDR"),
            data_dir=Path(env.text("CONTEXTIQ_DATA_DIR", "./.contextiq")).expanduser(),
            log_level=env.choice("CONTEXTIQ_LOG_LEVEL", "INFO", _LOG_LEVELS, str.upper),
            log_format=cast(
                LogFormat, env.choice("CONTEXTIQ_LOG_FORMAT", "json", ("json", "text"), str.lower)
            ),
            auth_disabled=env.flag("CONTEXTIQ_AUTH_DISABLED", False),
            jwt_secret=env.optional("CONTEXTIQ_JWT_SECRET"),
            jwt_issuer=env.text("CONTEXTIQ_JWT_ISSUER", "contextiq"),
            bootstrap_api_key=env.optional("CONTEXTIQ_BOOTSTRAP_API_KEY"),
            llm_model=env.optional("CONTEXTIQ_LLM_MODEL"),
            db_pool_size=env.integer("CONTEXTIQ_DB_POOL_SIZE", 30, minimum=1),
            db_max_overflow=env.integer("CONTEXTIQ_DB_MAX_OVERFLOW", 0, minimum=0),
            shutdown_grace_s=env.number("CONTEXTIQ_SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0.0),
            worker_concurrency=env.integer("CONTEXTIQ_WORKER_CONCURRENCY", 32, minimum=1),
            worker_enabled=env.flag("CONTEXTIQ_WORKER_ENABLED", True),
            worker_ack_wait_s=env.number("CONTEXTIQ_WORKER_ACK_WAIT_SECONDS", 30.0, minimum=1.0),
            worker_max_deliver=env.integer("CONTEXTIQ_WORKER_MAX_DELIVER", 5, minimum=1),
            worker_backoff_s=env.numbers(
                "CONTEXTIQ_WORKER_BACKOFF_SECONDS", (30.0, 60.0, 120.0, 300.0), minimum=1.0
            ),
            worker_job_timeout_s=env.number(
                "CONTEXTIQ_WORKER_JOB_TIMEOUT_SECONDS", 900.0, minimum=1.0
            ),
            worker_rpc_timeout_s=env.number(
                "CONTEXTIQ_WORKER_RPC_TIMEOUT_SECONDS", 30.0, minimum=0.1
            ),
            otel_endpoint=env.optional("OTEL_EXPORTER_OTLP_ENDPOINT"),
            pg_port=env.port("CONTEXTIQ_PG_PORT", 54329),
            nats_port=env.port("CONTEXTIQ_NATS_PORT", 4223),
            rate_limit_per_minute=env.integer("CONTEXTIQ_RATE_LIMIT_PER_MINUTE", 1000, minimum=0),
            tenant_rate_limit_per_minute=env.integer(
                "CONTEXTIQ_TENANT_RATE_LIMIT_PER_MINUTE", 1000, minimum=0
            ),
            rate_limit_burst=env.number("CONTEXTIQ_RATE_LIMIT_BURST", 2.0, minimum=1.0),
            auth_cache_s=env.number("CONTEXTIQ_AUTH_CACHE_SECONDS", 10.0, minimum=0.0),
            llm_api_base=env.optional("CONTEXTIQ_LLM_API_BASE"),
            llm_api_key=env.optional("CONTEXTIQ_LLM_API_KEY"),
            llm_timeout_s=env.number("CONTEXTIQ_LLM_TIMEOUT_SECONDS", 60.0, minimum=0.1),
            llm_max_attempts=env.integer("CONTEXTIQ_LLM_MAX_ATTEMPTS", 3, minimum=1),
            max_event_bytes=env.integer("CONTEXTIQ_MAX_EVENT_BYTES", 1_048_576, minimum=1024),
            sessions_sweep_interval_s=env.number(
                "CONTEXTIQ_SESSIONS_SWEEP_INTERVAL_SECONDS", 30.0, minimum=0.1
            ),
            sessions_stream_poll_s=env.number(
                "CONTEXTIQ_SESSIONS_STREAM_POLL_SECONDS", 5.0, minimum=0.05
            ),
            qdrant_path=_optional_path(env.optional("CONTEXTIQ_QDRANT_PATH")),
            qdrant_api_key=env.optional("QDRANT_API_KEY"),
            embedding_model=env.optional("CONTEXTIQ_EMBEDDING_MODEL"),
            embedding_api_base=env.optional("CONTEXTIQ_EMBEDDING_API_BASE"),
            embedding_api_key=env.optional("CONTEXTIQ_EMBEDDING_API_KEY"),
            memory_sweep_interval_s=env.number(
                "CONTEXTIQ_MEMORY_SWEEP_INTERVAL_SECONDS", 30.0, minimum=0.1
            ),
        )

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (``dataclasses.replace``).

        Args:
            **changes: Field names and their new values.

        Returns:
            A new ``Settings``.
        """
        return dataclasses.replace(self, **changes)

    def redacted_dict(self) -> dict[str, object]:
        """Return the settings as JSON-ready values with every secret masked, for logging.

        Returns:
            Field name to value; secrets set to ``[REDACTED]``, URL passwords masked.
        """
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif f.name in (
                "jwt_secret",
                "bootstrap_api_key",
                "llm_api_key",
                "qdrant_api_key",
                "embedding_api_key",
            ):
                out[f.name] = REDACTED
            elif f.name == "database_url":
                out[f.name] = redact_url(value)
            elif f.name == "nats_url":
                out[f.name] = redact_url(value, mask_username_only=True)
            elif isinstance(value, Path):
                out[f.name] = str(value)
            else:
                out[f.name] = value
        return out

    def __repr__(self) -> str:
        # The generated repr would print secrets into tracebacks and debug logs.
        fields = ", ".join(f"{k}={v!r}" for k, v in self.redacted_dict().items())
        return f"Settings({fields})"


class _Env:
    """Typed accessors over an environment mapping that raise one-line ``ConfigError``s."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def _parse(self, name: str, default: _T, parse: Callable[[str], _T], expected: str) -> _T:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}") from None

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"

        def parse(raw: str) -> int:
            value = int(raw)
            if value < minimum or (maximum is not None and value > maximum):
                raise ValueError(raw)
            return value

        return self._parse(name, default, parse, f"an integer {bounds}")

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, minimum=0, maximum=65535)

    def number(self, name: str, default: float, *, minimum: float) -> float:
        def parse(raw: str) -> float:
            value = float(raw)
            # float() accepts "nan" and "inf", which no timeout can mean.
            if not value >= minimum or value == float("inf"):
                raise ValueError(raw)
            return value

        return self._parse(name, default, parse, f"a number >= {minimum:g}")

    def numbers(
        self, name: str, default: tuple[float, ...], *, minimum: float
    ) -> tuple[float, ...]:
        def parse(raw: str) -> tuple[float, ...]:
            values = tuple(float(part) for part in raw.split(",") if part.strip())
            if not values or any(not v >= minimum or v == float("inf") for v in values):
                raise ValueError(raw)
            return values

        return self._parse(name, default, parse, f"comma-separated numbers >= {minimum:g}")

    def flag(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(raw)

        return self._parse(name, default, parse, "true/false, 1/0 or yes/no")

    def choice(
        self, name: str, default: str, choices: tuple[str, ...], fold: Callable[[str], str]
    ) -> str:
        def parse(raw: str) -> str:
            if fold(raw) not in choices:
                raise ValueError(raw)
            return fold(raw)

        return self._parse(name, default, parse, "one of " + ", ".join(choices))

    def database_url(self, name: str) -> str | None:
        raw = self.optional(name)
        # Only the scheme is checked; a wrong host or password shows up on first connect, with
        # a clearer error than any we could give here.
        return None if raw is None else normalize_database_url(raw)
