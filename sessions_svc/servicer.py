"""gRPC servicer of ``contextiq.sessions.v1.SessionService``.

Every RPC still answers UNIMPLEMENTED, naming itself: the event log,
state and multi-agent behaviour arrive with the Sessions issue. Nothing here returns made-up
data.
"""

from __future__ import annotations

from ciq_runtime.unimplemented import answer_unimplemented
from contextiq.sessions.v1 import session_service_pb2, session_service_pb2_grpc


@answer_unimplemented(
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
    session_service_pb2_grpc.SessionServiceServicer,
)
class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    """SessionService backed by the ``sessions`` Postgres schema."""
