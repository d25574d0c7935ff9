"""State: deltas applied with their event, prefix scopes, deletions, PATCH with mask and etag."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from contextiq.sessions.v1 import session_pb2, session_service_pb2
from tests.integration.sessions.conftest import (
    Metadata,
    Stub,
    append,
    as_dict,
    create,
    delta_event,
    failure,
    get,
    struct,
)


async def _patch(
    stub: Stub,
    md: Metadata,
    session_id: str,
    state: dict[str, object],
    *,
    mask: list[str] | None = None,
    etag: str = "",
) -> session_pb2.Session:
    request = session_service_pb2.UpdateSessionStateRequest(
        session_id=session_id,
        state=struct(state),
        update_mask=field_mask_pb2.FieldMask(paths=mask) if mask is not None else None,
        etag=etag,
    )
    session: session_pb2.Session = await stub.UpdateSessionState(request, metadata=md)
    return session


async def test_delta_is_applied_with_its_event(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md, state=struct({"a": 1, "b": 2}))
    stored = await append(stub, md, session.id, delta_event({"a": 10, "c": {"x": [1]}}))
    assert as_dict(stored.actions.state_delta) == {"a": 10, "c": {"x": [1]}}
    fetched = await get(stub, md, session.id)
    assert as_dict(fetched.state) == {"a": 10, "b": 2, "c": {"x": [1]}}


async def test_null_deletes_a_key_at_every_level(stub: Stub, md: Metadata) -> None:
    session = await create(
        stub, md, app_name="app", state=struct({"a": 1, "user:u": 1, "app:x": 1, "keep": 1})
    )
    await append(stub, md, session.id, delta_event({"a": None, "user:u": None, "app:x": None}))
    assert as_dict((await get(stub, md, session.id)).state) == {"keep": 1}


async def test_app_keys_are_shared_by_the_apps_sessions(stub: Stub, md: Metadata) -> None:
    first = await create(stub, md, user_id="alice", app_name="travel")
    second = await create(stub, md, user_id="bob", app_name="travel")
    other_app = await create(stub, md, user_id="alice", app_name="billing")
    await append(stub, md, first.id, delta_event({"app:currency": "EUR"}))
    assert as_dict((await get(stub, md, second.id)).state) == {"app:currency": "EUR"}
    assert as_dict((await get(stub, md, other_app.id)).state) == {}


async def test_user_keys_are_shared_by_the_users_sessions_of_the_app(
    stub: Stub, md: Metadata
) -> None:
    first = await create(stub, md, user_id="alice", app_name="travel")
    second = await create(stub, md, user_id="alice", app_name="travel")
    bob = await create(stub, md, user_id="bob", app_name="travel")
    other_app = await create(stub, md, user_id="alice", app_name="billing")
    await append(stub, md, first.id, delta_event({"user:seat": "window", "mine": True}))
    assert as_dict((await get(stub, md, second.id)).state) == {"user:seat": "window"}
    assert as_dict((await get(stub, md, bob.id)).state) == {}
    assert as_dict((await get(stub, md, other_app.id)).state) == {}
    assert as_dict((await get(stub, md, first.id)).state) == {"user:seat": "window", "mine": True}
    # A new session of the user starts with the shared keys.
    third = await create(stub, md, user_id="alice", app_name="travel")
    assert as_dict(third.state) == {"user:seat": "window"}


async def test_temp_keys_are_never_stored_or_returned(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md, state=struct({"temp:draft": 1, "a": 1}))
    assert as_dict(session.state) == {"a": 1}
    stored = await append(stub, md, session.id, delta_event({"temp:scratch": "x", "b": 2}))
    assert as_dict(stored.actions.state_delta) == {"b": 2}
    fetched = await get(stub, md, session.id)
    assert as_dict(fetched.state) == {"a": 1, "b": 2}
    assert as_dict(fetched.events[0].actions.state_delta) == {"b": 2}
    patched = await _patch(stub, md, session.id, {"temp:t": 1, "c": 3})
    assert as_dict(patched.state) == {"a": 1, "b": 2, "c": 3}


async def test_get_returns_the_merged_view(stub: Stub, md: Metadata) -> None:
    session = await create(
        stub, md, app_name="app", state=struct({"s": 1, "user:u": 2, "app:a": 3})
    )
    assert as_dict((await get(stub, md, session.id)).state) == {"s": 1, "user:u": 2, "app:a": 3}
    listed = await stub.ListSessions(session_service_pb2.ListSessionsRequest(), metadata=md)
    assert as_dict(listed.sessions[0].state) == {"s": 1, "user:u": 2, "app:a": 3}


async def test_patch_state_with_mask_and_etag(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md, app_name="app", state=struct({"a": 1, "b": 2, "c": 3}))
    # Absent mask: every key present changes (null deletes).
    patched = await _patch(stub, md, session.id, {"a": 10, "b": None}, etag=session.etag)
    assert as_dict(patched.state) == {"a": 10, "c": 3}
    # Mask: only the named keys change; a masked key absent from `state` is deleted.
    patched = await _patch(
        stub,
        md,
        session.id,
        {"a": 99, "d": 4, "user:u": "x"},
        mask=["state.d", "state.c", "state.user:u"],
        etag=patched.etag,
    )
    assert as_dict(patched.state) == {"a": 10, "d": 4, "user:u": "x"}
    stale = await failure(_patch(stub, md, session.id, {"a": 0}, etag=session.etag))
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.metadata["current_etag"] == patched.etag
    assert as_dict((await get(stub, md, session.id)).state)["a"] == 10


async def test_patch_state_etag_sees_appends(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    await append(stub, md, session.id, delta_event({"x": 1}))
    error = await failure(_patch(stub, md, session.id, {"x": 2}, etag=session.etag))
    assert error.code == grpc.StatusCode.ABORTED
