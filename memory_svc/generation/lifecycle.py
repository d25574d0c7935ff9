"""Cancel, wait for, delete and watch operations (google.longrunning.Operations + WatchOperation).

Waiting and watching are woken by Postgres ``NOTIFY memory_operations`` (sent by every change
of an operation, in its transaction), so a change made by any replica reaches every waiter
at once. Notifications sent while the listening connection was down are lost: every waiter is
woken (re-reads its operation) when the listener (re)connects, and waiters poll quickly while
it is not listening, rarely while it is (hundreds of open waits must not each query the
database every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from google.longrunning import operations_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from ciq_runtime.db import transaction
from ciq_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from memory_svc.backend import Backend
from memory_svc.generation.accept import KIND
from memory_svc.generation.apply import finish_cancelled, metadata_of
from memory_svc.generation.states import QUEUED
from memory_svc.operations import OPERATIONS_CHANNEL, OperationStore, to_proto

__all__ = ["Lifecycle", "OperationWaiter"]

log = logging.getLogger(__name__)

#: Longest (and default) WaitOperation timeout.
MAX_WAIT_S: Final = 60.0
#: Re-read period of waiters and watchers while notifications arrive...
_POLL_LISTENING_S: Final = 15.0
#: ...and while they cannot (the listening connection is down).
_POLL_DEAF_S: Final = 1.0
_RELISTEN_S: Final = 1.0


class OperationWaiter:
    """Wakes in-process waiters when Postgres notifies a change of their operation."""

    def __init__(self, engine: Callable[[], AsyncEngine]) -> None:
        """Bind to the service's engine (open once the component started)."""
        self._engine = engine
        self._events: dict[str, set[asyncio.Event]] = {}
        self._listening = False

    @property
    def poll_s(self) -> float:
        """How long a waiter may sleep without re-reading its operation."""
        return _POLL_LISTENING_S if self._listening else _POLL_DEAF_S

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def subscribe(self, name: str) -> Iterator[asyncio.Event]:
        """An event set whenever operation ``name`` changes, while the block runs."""
        event = asyncio.Event()
        self._events.setdefault(name, set()).add(event)
        try:
            yield event
        finally:
            events = self._events.get(name)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[name]

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        for event in self._events.get(payload, ()):
            event.set()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting when the connection drops."""
        while True:
            try:
                async with self._engine().connect() as connection:
                    raw = await connection.get_raw_connection()
                    driver: Any = raw.driver_connection
                    await driver.add_listener(OPERATIONS_CHANNEL, self._notified)
                    self._listening = True
                    # Changes made while nobody listened: everyone re-reads once.
                    self._wake_all()
                    try:
                        while not driver.is_closed():
                            await asyncio.sleep(_RELISTEN_S)
                            # Keeps the connection checked: a dead one ends the loop.
                            await driver.execute("SELECT 1")
                    finally:
                        self._listening = False
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(OPERATIONS_CHANNEL, self._notified)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("operation listener lost its connection; reconnecting", exc_info=True)
                await asyncio.sleep(_RELISTEN_S)


class Lifecycle:
    """The Operations RPCs beyond get and list, plus WatchOperation."""

    def __init__(self, backend: Backend, waiter: OperationWaiter) -> None:
        """Bind to the service's resources."""
        self._b = backend
        self._waiter = waiter

    async def cancel(self, tenant_id: str, name: str) -> None:
        """Request cancellation; a queued generation ends at once as CANCELLED."""
        b = self._b
        now = b.clock()
        async with transaction(b.sessions) as session:
            row = await OperationStore.row(session, tenant_id=tenant_id, name=name, lock=True)
            if row.done:
                return
            if row.kind != KIND:
                raise FailedPrecondition(
                    f"operation {name!r} ({row.kind}) cannot be cancelled; it resumes until done",
                    reason="NOT_CANCELLABLE",
                )
            if metadata_of(row).state == QUEUED:
                await finish_cancelled(session, row, now)
            elif not row.cancel_requested:
                await OperationStore.update_row(
                    session, name=name, values={"cancel_requested": True, "updated_at": now}
                )

    async def delete(self, tenant_id: str, name: str) -> None:
        """Delete a finished operation."""
        async with transaction(self._b.sessions) as session:
            await OperationStore.delete_done(session, tenant_id=tenant_id, name=name)

    async def wait(
        self, tenant_id: str, request: operations_pb2.WaitOperationRequest, context: Any
    ) -> operations_pb2.Operation:
        """The operation once done, or as it stands when the timeout runs out."""
        timeout = MAX_WAIT_S
        if request.HasField("timeout"):
            asked = request.timeout.ToTimedelta().total_seconds()
            if asked < 0:
                raise InvalidArgument("timeout must not be negative", field="timeout")
            timeout = min(asked, MAX_WAIT_S)
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            # Answer just before the client's deadline rather than letting it expire.
            timeout = min(timeout, max(0.0, remaining - 0.2))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._waiter.subscribe(request.name) as changed:
            while True:
                changed.clear()
                async with self._b.sessions() as session:
                    operation = await OperationStore.get(
                        session, tenant_id=tenant_id, name=request.name
                    )
                left = deadline - loop.time()
                if operation.done or left <= 0:
                    return operation
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(left, self._waiter.poll_s))

    async def watch(self, tenant_id: str, name: str) -> AsyncIterator[operations_pb2.Operation]:
        """The operation now, then after every change, ending once it is done."""
        if not name:
            raise InvalidArgument("name is required", field="name")
        last_version: int | None = None
        with self._waiter.subscribe(name) as changed:
            while True:
                changed.clear()
                async with self._b.sessions() as session:
                    try:
                        row = await OperationStore.row(session, tenant_id=tenant_id, name=name)
                    except NotFound:
                        if last_version is None:
                            raise
                        return
                if row.version != last_version:
                    last_version = row.version
                    yield to_proto(row)
                if row.done:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=self._waiter.poll_s)
