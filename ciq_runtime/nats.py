"""NATS and JetStream helpers: connecting, declaring streams and consumers, protobuf messages.

Slow work travels as protobuf messages on a WorkQueue stream with one durable pull consumer
per job type (STYLE.md, "Workers"). Publishers set ``Nats-Msg-Id`` so that JetStream drops
duplicates inside the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.client import Server as NatsServer
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from ciq_runtime import telemetry
from ciq_runtime.errors import Unavailable
from ciq_runtime.settings import redact_url

__all__ = [
    "MESSAGE_TYPE_HEADER",
    "MSG_ID_HEADER",
    "MessageDecodeError",
    "connect_nats",
    "decode_proto",
    "ensure_pull_consumer",
    "ensure_stream",
    "publish_proto",
]

log = logging.getLogger(__name__)

#: JetStream's de-duplication header.
MSG_ID_HEADER = "Nats-Msg-Id"
#: Full protobuf name of the payload, checked by :func:`decode_proto`.
MESSAGE_TYPE_HEADER = "Ciq-Message-Type"

# JetStream API error code for "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058
# Pause between two attempts of the initial connection: short, because in tests and in the
# embedded stack the server is usually seconds (not minutes) from ready.
_INITIAL_RETRY_WAIT_S = 0.2
# Reconnect backoff after a connection was lost: exponential from the first value, capped.
_RECONNECT_BACKOFF_S = (0.25, 10.0)

_M = TypeVar("_M", bound=Message)


class MessageDecodeError(ValueError):
    """A JetStream message does not hold the expected protobuf: a poison message to ``term()``."""


async def connect_nats(
    url: str,
    *,
    name: str,
    connect_timeout: float = 5.0,
    max_reconnect_attempts: int = -1,
) -> Client:
    """Connect to NATS, retrying until ``connect_timeout``, and keep reconnecting afterwards.

    Once connected, a lost connection is retried with jittered exponential backoff (0.25 s
    doubling up to 10 s), forever by default; publishes made meanwhile are buffered by the
    client. Errors and disconnections are logged, never raised into the caller.

    Args:
        url: ``nats://host:port``, or several separated by commas (a cluster).
        name: Connection name shown by the NATS server's monitoring.
        connect_timeout: Deadline for the first connection, in seconds.
        max_reconnect_attempts: Reconnect attempts per server after a loss; -1 means forever.

    Returns:
        The connected client; ``await nc.drain()`` on shutdown.

    Raises:
        Unavailable: If no server accepted the connection before ``connect_timeout``.
    """
    nc = Client()
    connected = False
    shown_url = redact_url(url, mask_username_only=True)

    async def on_error(exc: Exception) -> None:
        # Refused attempts while first connecting are expected (server still starting).
        level = logging.WARNING if connected else logging.DEBUG
        log.log(level, "NATS error on %s: %r", name, exc, extra={"nats_url": shown_url})

    async def on_disconnected() -> None:
        # Also called by close()/drain(), which are not worth a warning.
        if connected and not nc.is_closed:
            log.warning("NATS connection %s lost; reconnecting", name)

    async def on_reconnected() -> None:
        log.info("NATS connection %s re-established", name)

    async def on_closed() -> None:
        log.info("NATS connection %s closed", name)

    try:
        async with asyncio.timeout(connect_timeout):
            await nc.connect(
                servers=[part.strip() for part in url.split(",") if part.strip()],
                name=name,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
                # nats-py declares these as int but uses them as asyncio timeouts.
                connect_timeout=max(1, math.ceil(connect_timeout)),
                reconnect_time_wait=_INITIAL_RETRY_WAIT_S,  # type: ignore[arg-type]
                max_reconnect_attempts=max_reconnect_attempts,
                reconnect_to_server_handler=_backoff,
            )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        await nc.close()
        raise Unavailable(
            f"cannot connect to NATS at {shown_url} within {connect_timeout:g}s: "
            "check that nats-server is running with JetStream and NATS_URL is right",
            reason="NATS_UNAVAILABLE",
        ) from exc
    connected = True
    return nc


def _backoff(servers: list[NatsServer], _info: dict[str, Any]) -> tuple[NatsServer, float]:
    """Pick the server tried least, and how long to wait before trying it."""
    server = min(servers, key=lambda s: s.reconnects)
    first, cap = _RECONNECT_BACKOFF_S
    delay = min(cap, first * 2 ** min(server.reconnects, 16))
    # Jitter keeps a fleet of workers from reconnecting in lock-step after a NATS restart.
    return server, delay * random.uniform(0.5, 1.0)  # noqa: S311 - not cryptographic


async def ensure_stream(
    js: JetStreamContext,
    *,
    name: str,
    subjects: list[str],
    retention: Literal["workqueue", "limits"],
    max_age_s: float | None = None,
    duplicate_window_s: float = 120.0,
) -> None:
    """Create a file-backed JetStream stream, or update it to this configuration.

    Safe to call from every process at every start, concurrently. Settings the call does not
    manage (replicas, limits set by an operator) are left as they are.

    Args:
        js: JetStream context.
        name: Stream name.
        subjects: Subjects the stream captures.
        retention: ``"workqueue"`` (a message is gone once acked: jobs) or ``"limits"``.
        max_age_s: Discard messages older than this; ``None`` keeps them (subject to limits).
        duplicate_window_s: How long ``Nats-Msg-Id`` values are remembered for de-duplication.

    Raises:
        nats.js.errors.APIError: If JetStream refuses the configuration (e.g. a change of
            retention that it does not allow on an existing stream).
    """
    wanted = {
        "subjects": list(subjects),
        "retention": RetentionPolicy(retention),
        "storage": StorageType.FILE,
        "max_age": max_age_s or 0.0,
        "duplicate_window": duplicate_window_s,
    }
    try:
        current = (await js.stream_info(name)).config
    except NotFoundError:
        try:
            await js.add_stream(StreamConfig(name=name, **wanted))  # type: ignore[arg-type]
            log.info("created JetStream stream %s", name, extra={"stream": name})
            return
        except BadRequestError as exc:
            # Another process created it between our two calls; fall through to compare.
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            current = (await js.stream_info(name)).config
    if _stream_matches(current, wanted):
        return
    await js.update_stream(current.evolve(**wanted))
    log.info("updated JetStream stream %s", name, extra={"stream": name})


def _stream_matches(current: StreamConfig, wanted: Mapping[str, object]) -> bool:
    return (
        sorted(current.subjects or []) == sorted(wanted["subjects"])  # type: ignore[call-overload]
        and current.retention == wanted["retention"]
        and current.storage == wanted["storage"]
        and math.isclose(current.max_age or 0.0, wanted["max_age"])  # type: ignore[arg-type]
        and math.isclose(current.duplicate_window, wanted["duplicate_window"])  # type: ignore[arg-type]
    )


async def ensure_pull_consumer(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subject: str,
    ack_wait_s: float,
    max_deliver: int,
    backoff_s: list[float] | None = None,
    max_ack_pending: int = 1000,
) -> None:
    """Create a durable pull consumer with explicit acks, or update it to this configuration.

    Args:
        js: JetStream context.
        stream: The stream to consume.
        durable: Durable consumer name (one per job type).
        filter_subject: Subject (pattern) the consumer receives.
        ack_wait_s: How long a delivered message may stay unacked before redelivery; keep it
            above the job's p99 and send ``in_progress()`` heartbeats for long jobs.
        max_deliver: Deliveries before JetStream gives up on a message.
        backoff_s: Ack wait of each successive delivery, the last one repeating (JetStream
            replaces ``ack_wait`` with ``backoff_s[0]`` when a backoff is set). Every entry
            must be at least ``ack_wait_s`` (or a job still running would be redelivered) and
            there must be fewer entries than ``max_deliver``.
        max_ack_pending: Most messages delivered but not yet acked, across all workers.

    Raises:
        ValueError: If ``backoff_s`` breaks the rules above.
        nats.js.errors.APIError: If JetStream refuses the configuration.
    """
    if backoff_s:
        if min(backoff_s) < ack_wait_s:
            raise ValueError(
                f"every backoff_s entry must be >= ack_wait_s ({ack_wait_s:g}s): JetStream "
                "uses the backoff as the ack wait of each delivery"
            )
        if max_deliver > 0 and len(backoff_s) >= max_deliver:
            raise ValueError("backoff_s must have fewer entries than max_deliver")
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=filter_subject,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        backoff=list(backoff_s) if backoff_s else None,
        max_ack_pending=max_ack_pending,
    )
    # The durable-create API creates the consumer or, if it exists, applies the changes the
    # server allows (ack_wait, max_deliver, backoff, filter, limits); the same config is a no-op.
    await js.add_consumer(stream, config)


async def publish_proto(
    js: JetStreamContext,
    subject: str,
    message: Message,
    *,
    msg_id: str,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 - forwarded to nats-py's own request timeout
) -> PubAck:
    """Publish a protobuf message to JetStream and wait for the stream's acknowledgement.

    Args:
        js: JetStream context.
        subject: Subject to publish on.
        message: The payload.
        msg_id: De-duplication id (``Nats-Msg-Id``), e.g. the operation id: a retried publish
            of the same job inside the stream's duplicate window is stored once.
        headers: Extra headers; ``msg_id`` wins over a ``Nats-Msg-Id`` here. A ``traceparent``
            here (saved with :func:`ciq_runtime.telemetry.inject` when the job was accepted)
            makes the publish span part of that trace; else the current trace is used.
        timeout: Seconds to wait for the acknowledgement.

    Returns:
        The acknowledgement; ``ack.duplicate`` is true when the id was already stored.

    Raises:
        nats.errors.TimeoutError: If no acknowledgement arrived in time (retry with the same id).
        nats.js.errors.NoStreamResponseError: If no stream captures ``subject``.
    """
    all_headers = {
        **(headers or {}),
        MESSAGE_TYPE_HEADER: message.DESCRIPTOR.full_name,
        MSG_ID_HEADER: msg_id,
    }
    # A PRODUCER span, child of the trace in ``headers`` (an outbox row) or of the current one;
    # its context replaces any traceparent in the headers, so the consumer continues the trace.
    with telemetry.publish_span(subject, all_headers, msg_id=msg_id):
        return await js.publish(
            subject, message.SerializeToString(), timeout=timeout, headers=all_headers
        )


def decode_proto(msg: Msg, cls: type[_M]) -> _M:
    """Parse a message published by :func:`publish_proto`.

    Args:
        msg: The received message.
        cls: The expected protobuf class.

    Returns:
        The parsed message.

    Raises:
        MessageDecodeError: If the payload is not a ``cls`` (wrong type header or bytes that do
            not parse); retrying cannot help, so the caller should ``term()`` the message.
    """
    expected = cls.DESCRIPTOR.full_name
    declared = (msg.headers or {}).get(MESSAGE_TYPE_HEADER)
    if declared is not None and declared != expected:
        raise MessageDecodeError(f"message on {msg.subject} is a {declared}, expected {expected}")
    try:
        return cls.FromString(msg.data)
    except DecodeError as exc:
        raise MessageDecodeError(f"message on {msg.subject} is not a valid {expected}") from exc
