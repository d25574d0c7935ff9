"""Scope rules and request validation (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import duration_pb2

from ciq_runtime.errors import InvalidArgument, NotFound
from contextiq.memory.v1 import memory_pb2, memory_service_pb2
from memory_svc.banks import default_bank, validate_bank
from memory_svc.scopes import pair_tokens, scope_key, validate_scope
from memory_svc.validation import parse_memory_id, validate_create, validate_top_k, validate_update

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_scope_key_ignores_order_and_pairs_never_collide() -> None:
    assert scope_key({"a": "1", "b": "2"}) == scope_key({"b": "2", "a": "1"})
    assert scope_key({"a": "1"}) != scope_key({"a": "1", "b": "2"})
    assert pair_tokens({"a=b": "c"}) != pair_tokens({"a": "b=c"})


@pytest.mark.parametrize(
    "scope",
    [{}, {f"k{i}": "v" for i in range(6)}, {"": "v"}, {" ": "v"}, {"k": ""}, {"k" * 200: "v"}],
)
def test_bad_scopes_name_the_field(scope: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_scope(scope)
    assert info.value.field == "scope"


def test_scope_keys_of_the_bank_are_enforced() -> None:
    assert validate_scope({"user_id": "1"}, allowed_keys=frozenset({"user_id"})) == {"user_id": "1"}
    with pytest.raises(InvalidArgument):
        validate_scope({"team": "1"}, allowed_keys=frozenset({"user_id"}))


def test_create_applies_defaults_and_the_ttl() -> None:
    request = memory_service_pb2.CreateMemoryRequest(
        scope={"user_id": "1"}, fact=" f ", ttl=duration_pb2.Duration(seconds=10)
    )
    new = validate_create(request, default_bank(), now=NOW)
    assert (new.fact, new.confidence, new.topic, new.request_id) == ("f", 1.0, "", None)
    assert new.expires_at is not None
    assert (new.expires_at - NOW).total_seconds() == 10


def test_top_k_bounds() -> None:
    assert validate_top_k(0) == 10
    assert validate_top_k(100) == 100
    for bad in (-1, 101):
        with pytest.raises(InvalidArgument) as info:
            validate_top_k(bad)
        assert info.value.field == "top_k"


def test_memory_ids_that_are_not_uuids_do_not_exist() -> None:
    with pytest.raises(NotFound):
        parse_memory_id("m1")
    with pytest.raises(InvalidArgument):
        parse_memory_id("")


def test_update_mask_inference_and_errors() -> None:
    memory = memory_pb2.Memory(
        id="0b7c9a3e-1b2c-4d5e-8f90-123456789abc", fact="new", confidence=0.3
    )
    changes = validate_update(
        memory_service_pb2.UpdateMemoryRequest(memory=memory), default_bank(), now=NOW
    )
    assert changes.fields == {"fact", "confidence"}
    bad = memory_service_pb2.UpdateMemoryRequest(memory=memory)
    bad.update_mask.paths.append("created_at")
    with pytest.raises(InvalidArgument) as info:
        validate_update(bad, default_bank(), now=NOW)
    assert info.value.field == "update_mask"


def test_bank_topics_are_checked() -> None:
    duplicate = memory_pb2.MemoryBank(
        topics=[
            memory_pb2.MemoryTopic(id="USER_PREFERENCES"),
            memory_pb2.MemoryTopic(id="USER_PREFERENCES"),
        ]
    )
    with pytest.raises(InvalidArgument) as info:
        validate_bank(duplicate, prefix="memory_bank", paths={"topics"})
    assert info.value.field == "memory_bank.topics[1].id"
