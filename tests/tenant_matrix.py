"""The tenant matrix: a reusable harness proving that one tenant never reaches another's data.

A service's isolation test declares, per resource type, how tenant A creates an object and
which calls tenant B makes with A's id, over gRPC and over REST. The harness runs every case
and checks that B gets NOT_FOUND (or PERMISSION_DENIED) for direct access, and that listings,
searches, operations and streams run as B never contain A's id anywhere in the reply.

Usage (see tests/integration/auth/test_tenant_matrix.py)::

    CASES = [
        Case("api_key", "get", get_as_b, lambda id_: ("GET", f"/api/v1/api-keys/{id_}", None)),
        Case("api_key", "list", list_as_b, lambda id_: ("GET", "/api/v1/api-keys", None),
             kind=LEAK),
    ]

    @pytest.mark.parametrize("case", CASES, ids=Case.name)
    async def test_grpc(case, ...): await case.check_grpc(channel, foreign_id, bearer("tenant-b"))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from google.protobuf import json_format
from google.protobuf.message import Message

Metadata = tuple[tuple[str, str], ...]
GrpcCall = Callable[[grpc.aio.Channel, str, Metadata], Awaitable[Any]]
RestCall = Callable[[str], tuple[str, str, dict[str, Any] | None]]

#: Direct access to a foreign object: must fail as if it did not exist (or be forbidden).
DENY = "deny"
#: A call that succeeds for B (list, search, stream) but must not mention A's object.
LEAK = "leak"

DENIED_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED})
DENIED_HTTP = frozenset({404, 403})


@dataclass(frozen=True)
class Case:
    """One cross-tenant probe.

    Attributes:
        resource: The resource type ("session", "memory", "api_key", ...).
        action: What B tries ("get", "update", "delete", "list", "search", "stream", ...).
        via_grpc: Makes the call as B over gRPC with A's id; returns the reply (or an iterable of
            replies for streams, already collected).
        via_rest: The same call over REST: (method, path, json body or None).
        kind: DENY or LEAK.
    """

    resource: str
    action: str
    via_grpc: GrpcCall
    via_rest: RestCall | None = None
    kind: str = DENY
    allowed: frozenset[grpc.StatusCode] = field(default=DENIED_CODES)

    @staticmethod
    def name(case: Case) -> str:
        """pytest id."""
        return f"{case.resource}-{case.action}"

    async def check_grpc(self, channel: grpc.aio.Channel, foreign_id: str, as_b: Metadata) -> None:
        """Run the gRPC probe and assert isolation."""
        failure: grpc.aio.AioRpcError | None = None
        try:
            reply = await self.via_grpc(channel, foreign_id, as_b)
        except grpc.aio.AioRpcError as error:
            failure = error
        if failure is not None:
            assert self.kind == DENY, f"{self.name(self)}: {failure.code()} {failure.details()}"
            assert failure.code() in self.allowed, f"{self.name(self)}: got {failure.code()}"
            return
        assert self.kind == LEAK, f"{self.name(self)}: tenant B reached tenant A's object"
        assert foreign_id not in _text(reply), f"{self.name(self)}: A's id leaked to B"

    async def check_rest(
        self, http: httpx.AsyncClient, foreign_id: str, as_b: dict[str, str]
    ) -> None:
        """Run the REST probe and assert isolation."""
        assert self.via_rest is not None
        method, path, body = self.via_rest(foreign_id)
        response = await http.request(method, path, json=body, headers=as_b)
        if self.kind == DENY:
            assert response.status_code in DENIED_HTTP, (
                f"{self.name(self)}: HTTP {response.status_code} {response.text[:200]}"
            )
            assert response.json()["error"]["code"] in {"NOT_FOUND", "PERMISSION_DENIED"}
            return
        assert response.status_code == 200, f"{self.name(self)}: {response.text[:200]}"
        assert foreign_id not in response.text, f"{self.name(self)}: A's id leaked to B"


def _text(reply: Any) -> str:
    if isinstance(reply, Message):
        return json_format.MessageToJson(reply)
    if isinstance(reply, list | tuple):
        return "\n".join(_text(item) for item in reply)
    return str(reply)
