"""gRPC channels to the upstream services: one per address, reused by every request.

Calls are generic (``channel.unary_unary(path, ...)``), so no generated stub is needed: the route
supplies the method path and its message classes. Channels are opened lazily, inside the
running event loop that grpc.aio binds them to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from gateway.routes import Route

ChannelOptions = Sequence[tuple[str, Any]]


class UpstreamPool:
    """Channels by address and multi-callables by (address, method path)."""

    def __init__(
        self, *, channel_options: ChannelOptions = (), credentials: Any | None = None
    ) -> None:
        """Creates an empty pool.

        Args:
            channel_options: gRPC channel arguments for every channel.
            credentials: ``grpc.ChannelCredentials`` for TLS channels; plaintext when None.
        """
        self._options = tuple(channel_options)
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to an address, opened on first use."""
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            else:
                channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
            self._channels[address] = channel
        return channel

    def unary_unary(self, route: Route) -> Any:
        """The cached unary multi-callable of a route."""
        return self._callable(route, streaming=False)

    def unary_stream(self, route: Route) -> Any:
        """The cached server-streaming multi-callable of a route."""
        return self._callable(route, streaming=True)

    def generic_unary(
        self,
        address: str,
        path: str,
        response_deserializer: Callable[[bytes], Message],
    ) -> Any:
        """A cached unary multi-callable for a method that is not a route (health checks)."""
        key = (address, path)
        found = self._callables.get(key)
        if found is None:
            found = self.channel(address).unary_unary(
                path,
                request_serializer=_serialize,
                response_deserializer=response_deserializer,
            )
            self._callables[key] = found
        return found

    async def close(self) -> None:
        """Closes every channel; the pool may be used again afterwards (it reopens)."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._callables.clear()
        for channel in channels:
            await channel.close()

    def _callable(self, route: Route, *, streaming: bool) -> Any:
        key = (route.upstream, route.binding.grpc_path)
        found = self._callables.get(key)
        if found is None:
            channel = self.channel(route.upstream)
            factory = channel.unary_stream if streaming else channel.unary_unary
            found = factory(
                route.binding.grpc_path,
                request_serializer=_serialize,
                response_deserializer=route.response_class.FromString,
            )
            self._callables[key] = found
        return found


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
