"""Settings: defaults, parsing, one-line errors naming the variable, URL handling, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciq_runtime.settings import REDACTED, ConfigError, Settings, normalize_database_url


def test_defaults_when_environment_is_empty() -> None:
    s = Settings.from_env({}, service_name="sessions")
    assert s.service_name == "sessions"
    assert (s.grpc_host, s.grpc_port) == ("127.0.0.1", 50051)
    assert (s.http_host, s.http_port, s.metrics_port) == ("127.0.0.1", 8080, 0)
    assert s.database_url is None
    assert s.nats_url is None
    assert s.data_dir == Path("./.contextiq")
    assert (s.log_level, s.log_format) == ("INFO", "json")
    assert s.auth_disabled is False
    assert s.jwt_issuer == "contextiq"
    assert (s.db_pool_size, s.db_max_overflow) == (30, 0)
    assert s.shutdown_grace_s == 10.0
    assert s.worker_concurrency == 32
    assert s.otel_endpoint is None


def test_every_variable_is_read() -> None:
    env = {
        "CONTEXTIQ_GRPC_HOST": "0.0.0.0",
        "CONTEXTIQ_GRPC_PORT": "6000",
        "CONTEXTIQ_GRPC_ENGINE": "GRPCIO",
        "CONTEXTIQ_HTTP_HOST": "::",
        "CONTEXTIQ_HTTP_PORT": "6001",
        "CONTEXTIQ_METRICS_PORT": "9090",
        "DATABASE_URL": "postgresql://u:p@db:5432/ciq",
        "NATS_URL": "nats://nats:4222",
        "QDRANT_URL": "http://qdrant:6333",
        "CONTEXTIQ_SESSIONS_ADDR": "sessions:50051",
        "CONTEXTIQ_MEMORY_ADDR": "memory:50051",
        "CONTEXTIQ_EXTRACTION_ADDR": "extraction:50051",
        "CONTEXTIQ_DATA_DIR": "/var/lib/ciq",
        "CONTEXTIQ_LOG_LEVEL": "debug",
        "CONTEXTIQ_LOG_FORMAT": "TEXT",
        "CONTEXTIQ_AUTH_DISABLED": "Yes",
        "CONTEXTIQ_JWT_SECRET": "s3cret",
        "CONTEXTIQ_JWT_ISSUER": "me",
        "CONTEXTIQ_BOOTSTRAP_API_KEY": "ck_bootstrap_123456",
        "CONTEXTIQ_LLM_MODEL": "openai/gpt-4o-mini",
        "CONTEXTIQ_DB_POOL_SIZE": "3",
        "CONTEXTIQ_DB_MAX_OVERFLOW": "0",
        "CONTEXTIQ_SHUTDOWN_GRACE_SECONDS": "2.5",
        "CONTEXTIQ_WORKER_CONCURRENCY": "2",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
        "CONTEXTIQ_PG_PORT": "5433",
        "CONTEXTIQ_NATS_PORT": "4223",
        "QDRANT_API_KEY": "qdrant-key",
        "CONTEXTIQ_QDRANT_PATH": "/var/lib/ciq/index",
        "CONTEXTIQ_EMBEDDING_MODEL": "openai/text-embedding-3-small",
        "CONTEXTIQ_EMBEDDING_API_BASE": "http://embed:8000/v1",
        "CONTEXTIQ_EMBEDDING_API_KEY": "embed-key",
        "CONTEXTIQ_MEMORY_SWEEP_INTERVAL_SECONDS": "7.5",
    }
    s = Settings.from_env(env, service_name="memory")
    assert (s.grpc_host, s.grpc_port, s.http_host, s.http_port) == ("0.0.0.0", 6000, "::", 6001)
    assert s.metrics_port == 9090
    assert s.grpc_engine == "grpcio"
    assert s.database_url == "postgresql+asyncpg://u:p@db:5432/ciq"
    assert s.nats_url == "nats://nats:4222"
    assert s.qdrant_url == "http://qdrant:6333"
    assert (s.sessions_addr, s.memory_addr, s.extraction_addr) == (
        "sessions:50051",
        "memory:50051",
        "extraction:50051",
    )
    assert s.data_dir == Path("/var/lib/ciq")
    assert (s.log_level, s.log_format) == ("DEBUG", "text")
    assert s.auth_disabled is True
    assert (s.jwt_secret, s.jwt_issuer) == ("s3cret", "me")
    assert s.bootstrap_api_key == "ck_bootstrap_123456"
    assert s.llm_model == "openai/gpt-4o-mini"
    assert (s.db_pool_size, s.db_max_overflow) == (3, 0)
    assert s.shutdown_grace_s == 2.5
    assert s.worker_concurrency == 2
    assert s.otel_endpoint == "http://otel:4317"
    assert (s.pg_port, s.nats_port) == (5433, 4223)
    assert (s.qdrant_api_key, s.qdrant_path) == ("qdrant-key", Path("/var/lib/ciq/index"))
    assert s.embedding_model == "openai/text-embedding-3-small"
    assert (s.embedding_api_base, s.embedding_api_key) == ("http://embed:8000/v1", "embed-key")
    assert s.memory_sweep_interval_s == 7.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("No", False), ("0", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    s = Settings.from_env({"CONTEXTIQ_AUTH_DISABLED": raw}, service_name="x")
    assert s.auth_disabled is expected


def test_empty_values_mean_default() -> None:
    s = Settings.from_env({"CONTEXTIQ_GRPC_PORT": "", "DATABASE_URL": "  "}, service_name="x")
    assert s.grpc_port == 50051
    assert s.grpc_engine == "native"
    assert s.database_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONTEXTIQ_GRPC_PORT", "abc"),
        ("CONTEXTIQ_GRPC_PORT", "70000"),
        ("CONTEXTIQ_HTTP_PORT", "-1"),
        ("CONTEXTIQ_AUTH_DISABLED", "maybe"),
        ("CONTEXTIQ_DB_POOL_SIZE", "0"),
        ("CONTEXTIQ_DB_POOL_SIZE", "2.5"),
        ("CONTEXTIQ_SHUTDOWN_GRACE_SECONDS", "soon"),
        ("CONTEXTIQ_SHUTDOWN_GRACE_SECONDS", "nan"),
        ("CONTEXTIQ_SHUTDOWN_GRACE_SECONDS", "-1"),
        ("CONTEXTIQ_LOG_LEVEL", "LOUD"),
        ("CONTEXTIQ_LOG_FORMAT", "xml"),
        ("CONTEXTIQ_GRPC_ENGINE", "tonic"),
        ("CONTEXTIQ_WORKER_CONCURRENCY", "0"),
    ],
)
def test_bad_values_raise_one_line_error_naming_variable_and_value(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value}, service_name="x")
    message = str(info.value)
    assert name in message
    assert repr(value) in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@/db?host=/tmp/sock", "postgresql+asyncpg://u@/db?host=/tmp/sock"),
    ],
)
def test_database_url_is_normalised_to_asyncpg(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected
    assert Settings.from_env({"DATABASE_URL": url}, service_name="x").database_url == expected
    # replace() goes through the same normalisation.
    assert Settings(service_name="x").replace(database_url=url).database_url == expected


def test_non_postgres_url_is_rejected_without_leaking_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "mysql://root:hunter2@db/x"}, service_name="x")
    assert "DATABASE_URL" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_replace_returns_a_changed_copy() -> None:
    s = Settings(service_name="x")
    t = s.replace(grpc_port=0)
    assert (s.grpc_port, t.grpc_port) == (50051, 0)
    with pytest.raises(AttributeError):
        s.grpc_port = 1  # type: ignore[misc]


def test_redacted_dict_masks_secrets() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://ciq:pg-pass@db:5432/ciq?sslmode=require",
            "NATS_URL": "nats://user:nats-pass@n1:4222,nats://tok3n@n2:4222",
            "CONTEXTIQ_JWT_SECRET": "jwt-secret-value",
            "CONTEXTIQ_BOOTSTRAP_API_KEY": "ck_live_abcdefgh",
            "QDRANT_API_KEY": "qdrant-key-value",
            "CONTEXTIQ_EMBEDDING_API_KEY": "embedding-key-value",
        },
        service_name="x",
    )
    shown = s.redacted_dict()
    assert shown["qdrant_api_key"] == shown["embedding_api_key"] == REDACTED
    assert shown["jwt_secret"] == REDACTED
    assert shown["bootstrap_api_key"] == REDACTED
    assert shown["database_url"] == (
        f"postgresql+asyncpg://ciq:{REDACTED}@db:5432/ciq?sslmode=require"
    )
    assert shown["nats_url"] == f"nats://user:{REDACTED}@n1:4222,nats://{REDACTED}@n2:4222"
    assert shown["data_dir"] == ".contextiq"
    text = repr(s) + str(shown)
    secrets = ("pg-pass", "nats-pass", "tok3n", "jwt-secret-value", "ck_live_abcdefgh")
    for secret in (*secrets, "qdrant-key-value", "embedding-key-value"):
        assert secret not in text


def test_redacted_dict_keeps_unset_secrets_as_none() -> None:
    shown = Settings(service_name="x").redacted_dict()
    assert shown["jwt_secret"] is None
    assert shown["database_url"] is None
