"""Pieces of the worker that need no server: similarity consolidation, service tokens, the
runner's retry schedule, the worker settings."""

from __future__ import annotations

import jwt
import pytest

from ciq_runtime.settings import ConfigError, Settings
from contextiq.memory.v1 import memory_job_service_pb2, memory_pb2
from extraction_svc.clients import ServiceTokens
from extraction_svc.runner import RunnerConfig
from extraction_svc.similarity import consolidate_by_similarity


def _fact(text: str) -> memory_pb2.ExtractedFact:
    return memory_pb2.ExtractedFact(fact=text, topic="USER_PREFERENCES", confidence=0.8)


def _similar(index: int, *pairs: tuple[str, float]) -> memory_job_service_pb2.SimilarMemories:
    return memory_job_service_pb2.SimilarMemories(
        fact_index=index,
        memories=[memory_pb2.Memory(id=memory_id) for memory_id, _ in pairs],
        similarities=[score for _, score in pairs],
    )


def test_similarity_noop_update_create() -> None:
    facts = [_fact("a"), _fact("b"), _fact("c"), _fact("d")]
    actions = consolidate_by_similarity(
        facts,
        [
            _similar(0, ("m1", 0.99)),
            _similar(1, ("m2", 0.70), ("m3", 0.91)),
            _similar(2, ("m4", 0.80)),
        ],
    )
    plan = [(a.action, a.memory_id, list(a.fact_indexes)) for a in actions]
    assert plan == [
        ("NOOP", "m1", [0]),
        ("UPDATE", "m3", [1]),
        ("CREATE", "", [2]),
        ("CREATE", "", [3]),
    ]
    assert actions[1].fact == "b"


def test_one_update_per_memory_and_duplicates_merge() -> None:
    facts = [_fact("x"), _fact("y"), _fact("New fact"), _fact("new  FACT")]
    actions = consolidate_by_similarity(
        facts, [_similar(0, ("m1", 0.90)), _similar(1, ("m1", 0.93))]
    )
    plan = [(a.action, a.memory_id, list(a.fact_indexes)) for a in actions]
    # The closer fact updates m1; the other is kept as a new memory, not a second UPDATE.
    assert plan == [("CREATE", "", [0]), ("UPDATE", "m1", [1]), ("CREATE", "", [2, 3])]


def test_service_tokens_are_per_tenant_cached_and_short_lived() -> None:
    now = [1_000_000.0]
    tokens = ServiceTokens(secret="s" * 32, issuer="contextiq", ttl_s=300, clock=lambda: now[0])
    first = tokens.token("acme")
    assert tokens.token("acme") == first
    assert tokens.token("other") != first
    claims = jwt.decode(
        first, "s" * 32, algorithms=["HS256"], issuer="contextiq", options={"verify_exp": False}
    )
    assert claims["org_id"] == "acme"
    assert claims["sub"] == "service:extraction"
    assert claims["exp"] - claims["iat"] == 300
    assert set(claims["permissions"]) == {"SESSION_READ", "MEMORY_READ", "MEMORY_WRITE", "ADMIN"}
    now[0] += 250  # less than a third of the lifetime left: renewed
    assert tokens.token("acme") != first


def test_runner_backoff_schedule() -> None:
    config = RunnerConfig(stream="S", ack_wait_s=30, max_deliver=3, backoff_s=(30, 60, 120))
    assert config.consumer_backoff() == [30, 60]  # fewer entries than max_deliver
    assert [config.delay_after(n) for n in (1, 2, 3, 4)] == [30, 60, 120, 120]
    assert RunnerConfig(stream="S", max_deliver=1).consumer_backoff() is None


def test_worker_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CONTEXTIQ_WORKER_ACK_WAIT_SECONDS": "5",
            "CONTEXTIQ_WORKER_BACKOFF_SECONDS": "5, 10,20",
            "CONTEXTIQ_WORKER_MAX_DELIVER": "4",
            "CONTEXTIQ_WORKER_ENABLED": "false",
        },
        service_name="extraction",
    )
    assert settings.worker_backoff_s == (5.0, 10.0, 20.0)
    assert settings.worker_max_deliver == 4
    assert not settings.worker_enabled
    defaults = Settings.from_env({}, service_name="extraction")
    assert defaults.worker_ack_wait_s == 30.0
    assert defaults.worker_backoff_s == (30.0, 60.0, 120.0, 300.0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CONTEXTIQ_WORKER_BACKOFF_SECONDS": "10,60"}, "CONTEXTIQ_WORKER_BACKOFF_SECONDS"),
        ({"CONTEXTIQ_WORKER_BACKOFF_SECONDS": "x"}, "CONTEXTIQ_WORKER_BACKOFF_SECONDS"),
        ({"CONTEXTIQ_WORKER_MAX_DELIVER": "0"}, "CONTEXTIQ_WORKER_MAX_DELIVER"),
        ({"CONTEXTIQ_WORKER_ACK_WAIT_SECONDS": "0.5"}, "CONTEXTIQ_WORKER_ACK_WAIT_SECONDS"),
    ],
)
def test_bad_worker_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env, service_name="extraction")
