"""gRPC servicer of ``contextiq.sessions.v1.SessionService``.

Thin by design: each RPC takes the caller's tenant from :func:`current_principal`, validates
the request into a command (:mod:`sessions_svc.validation`), and hands it to the repository.
Errors are domain exceptions; the error interceptor turns them into statuses.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from ciq_runtime.errors import InvalidArgument, NotFound
from ciq_runtime.pagination import encode_page_token, page_request
from ciq_runtime.principal import current_principal
from contextiq.sessions.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc
from sessions_svc import validation
from sessions_svc.stream import GONE, follow

if TYPE_CHECKING:
    from sessions_svc.component import SessionsBackend

__all__ = ["SessionServicer"]

_SESSION_ORDERS: Final = {
    "": ("created_at", True),  # newest first
    "created_at desc": ("created_at", True),
    "created_at asc": ("created_at", False),
    "created_at": ("created_at", False),  # AIP-132: ascending unless "desc"
    "updated_at desc": ("updated_at", True),
    "updated_at asc": ("updated_at", False),
    "updated_at": ("updated_at", False),
}
_EVENT_ORDERS: Final = {
    "": False,
    "sequence": False,
    "sequence asc": False,
    "sequence desc": True,
    # Events are ordered by their position; "timestamp" is accepted because clients think in
    # time, and positions follow arrival.
    "timestamp": False,
    "timestamp asc": False,
    "timestamp desc": True,
}


def _order(value: str, table: dict[str, Any]) -> Any:
    normalized = " ".join(value.lower().split())
    if normalized not in table:
        options = ", ".join(repr(k) for k in table if k)
        raise InvalidArgument(f"order_by must be one of {options}", field="order_by")
    return table[normalized]


def _after(after: list[Any] | None, size: int) -> list[Any] | None:
    """Check the shape of a decoded page token's sort key."""
    if after is not None and len(after) != size:
        raise InvalidArgument("page_token is malformed", field="page_token")
    return after


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """SessionService backed by the ``sessions`` Postgres schema."""

    def __init__(
        self,
        backend: SessionsBackend,
        *,
        max_event_bytes: int = validation.DEFAULT_MAX_EVENT_BYTES,
        stream_poll_interval_s: float = 5.0,
    ) -> None:
        """Create the servicer.

        Args:
            backend: Database resources (available once the component has started).
            max_event_bytes: Largest serialized event AppendEvent accepts.
            stream_poll_interval_s: How often an idle StreamEvents re-checks the database
                (covers hints lost with a crashed replica, and notices expiry).
        """
        self._backend = backend
        self._max_event_bytes = max_event_bytes
        self._poll_s = stream_poll_interval_s

    async def CreateSession(
        self, request: session_service_pb2.CreateSessionRequest, context: Any
    ) -> session_pb2.Session:
        """Create a session (idempotent on request_id)."""
        tenant_id = current_principal().tenant_id
        new = validation.create_session(request)
        return await self._backend.repo.create(tenant_id=tenant_id, new=new)

    async def GetSession(
        self, request: session_service_pb2.GetSessionRequest, context: Any
    ) -> session_pb2.Session:
        """The session, its merged state and the selected events."""
        tenant_id = current_principal().tenant_id
        options = validation.get_options(request)
        return await self._backend.repo.get(tenant_id=tenant_id, options=options)

    async def ListSessions(
        self, request: session_service_pb2.ListSessionsRequest, context: Any
    ) -> session_service_pb2.ListSessionsResponse:
        """Sessions newest first (by default), without events."""
        tenant_id = current_principal().tenant_id
        order = _order(request.order_by, _SESSION_ORDERS)
        shorthand: dict[str, Any] = {
            name: getattr(request, name)
            for name in ("user_id", "agent_id", "app_name")
            if getattr(request, name)
        }
        if request.parent_session_id:
            shorthand["parent_session_id"] = validation.parse_uuid(
                request.parent_session_id, field="parent_session_id"
            )
        params = {"filter": request.filter, "order_by": list(order), **shorthand}
        page = page_request(
            page_size=request.page_size, page_token=request.page_token, params=params
        )
        result = await self._backend.repo.list_sessions(
            tenant_id=tenant_id,
            filter_text=request.filter,
            shorthand=shorthand,
            order_by=order,
            size=page.size,
            after=_after(page.after, 2),
        )
        response = session_service_pb2.ListSessionsResponse(sessions=result.sessions)
        if result.next_after is not None:
            response.next_page_token = encode_page_token(
                last_sort_key=result.next_after, params=params
            )
        return response

    async def UpdateSession(
        self, request: session_service_pb2.UpdateSessionRequest, context: Any
    ) -> session_pb2.Session:
        """Change metadata, labels or expiration."""
        tenant_id = current_principal().tenant_id
        patch = validation.session_patch(request)
        return await self._backend.repo.update(tenant_id=tenant_id, patch=patch)

    async def DeleteSession(
        self, request: session_service_pb2.DeleteSessionRequest, context: Any
    ) -> session_service_pb2.DeleteSessionResponse:
        """Delete a session with its events and session-level state."""
        tenant_id = current_principal().tenant_id
        session_id = validation.parse_uuid(request.id, field="id")
        deleted = await self._backend.repo.delete(
            tenant_id=tenant_id,
            session_id=session_id,
            expected_version=validation.expected_version(request.etag),
        )
        self._backend.hub.publish(tenant_id, session_id, GONE)  # ends its live streams
        return session_service_pb2.DeleteSessionResponse(
            id=str(session_id),
            deleted_event_count=deleted.event_count,
            deleted_state_key_count=deleted.state_key_count,
        )

    async def AppendEvent(
        self, request: session_service_pb2.AppendEventRequest, context: Any
    ) -> session_pb2.Event:
        """Append an event and apply its state delta atomically."""
        tenant_id = current_principal().tenant_id
        new = validation.append_event(request, max_event_bytes=self._max_event_bytes)
        repo = self._backend.repo
        if new.partial:
            # Streaming chunks are answered, never stored (ADK); the session must still be
            # one the caller can see.
            await repo.check_visible(tenant_id=tenant_id, session_id=new.session_id)
            new.event.session_id = str(new.session_id)
            new.event.partial = True
            return new.event
        stored = await repo.append(tenant_id=tenant_id, new=new)
        self._backend.hub.publish(tenant_id, new.session_id, stored.sequence)
        return stored

    async def ListEvents(
        self, request: session_service_pb2.ListEventsRequest, context: Any
    ) -> session_service_pb2.ListEventsResponse:
        """A page of the session's events, oldest first by default."""
        tenant_id = current_principal().tenant_id
        session_id = validation.parse_uuid(request.session_id, field="session_id")
        descending = _order(request.order_by, _EVENT_ORDERS)
        params = {"session_id": str(session_id), "filter": request.filter, "desc": descending}
        after_event: uuid.UUID | None = None
        if request.after_event_id:
            if descending:
                raise InvalidArgument(
                    "after_event_id resumes in ascending order only: drop order_by or use "
                    "'sequence asc'",
                    field="after_event_id",
                )
            after_event = validation.parse_uuid(request.after_event_id, field="after_event_id")
            # A token of one resume point must not be replayed against another.
            params["after_event_id"] = str(after_event)
        page = page_request(
            page_size=request.page_size,
            page_token=request.page_token,
            params=params,
            default_size=100,
        )
        after = _after(page.after, 1)
        if after_event is not None and after is None:
            # The first page starts after the event; later pages resume from their token,
            # which already lies past it.
            after = [await self._event_position(tenant_id, session_id, after_event)]
        result = await self._backend.repo.list_events(
            tenant_id=tenant_id,
            session_id=session_id,
            filter_text=request.filter,
            descending=descending,
            size=page.size,
            after=after,
        )
        response = session_service_pb2.ListEventsResponse(events=result.events)
        if result.next_after is not None:
            response.next_page_token = encode_page_token(
                last_sort_key=result.next_after, params=params
            )
        return response

    async def _event_position(
        self, tenant_id: str, session_id: uuid.UUID, event_id: uuid.UUID
    ) -> int:
        # The session first: an unknown session is "session not found", not "event not found".
        await self._backend.repo.check_visible(tenant_id=tenant_id, session_id=session_id)
        sequence = await self._backend.repo.event_sequence(
            tenant_id=tenant_id, session_id=session_id, event_id=event_id
        )
        if sequence is None:
            raise NotFound(f"event {event_id} not found in session {session_id}")
        return sequence

    async def StreamEvents(
        self, request: session_service_pb2.StreamEventsRequest, context: Any
    ) -> AsyncIterator[session_pb2.Event]:
        """Events after ``after_event_id`` (or from now on), then new ones as they come."""
        tenant_id = current_principal().tenant_id
        session_id = validation.parse_uuid(request.session_id, field="session_id")
        after: uuid.UUID | None = None
        if request.after_event_id:
            after = validation.parse_uuid(request.after_event_id, field="after_event_id")
        events = follow(
            self._backend.repo,
            self._backend.hub,
            tenant_id=tenant_id,
            session_id=session_id,
            after_event_id=after,
            poll_interval_s=self._poll_s,
        )
        # aclosing: when the client goes away, the follower unsubscribes now, not at GC.
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def UpdateSessionState(
        self, request: session_service_pb2.UpdateSessionStateRequest, context: Any
    ) -> session_pb2.Session:
        """Change state keys without an event (PATCH with update_mask and etag)."""
        tenant_id = current_principal().tenant_id
        update = validation.state_update(request)
        return await self._backend.repo.update_state(tenant_id=tenant_id, update=update)
