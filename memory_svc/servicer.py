"""gRPC servicers hosted by the memory service.

Every RPC still answers UNIMPLEMENTED, naming itself: memories,
revisions, search, banks, generation, operations and procedural memory arrive with their
issues. Nothing here returns made-up data.
"""

from __future__ import annotations

from google.longrunning import operations_pb2_grpc, operations_proto_pb2

from ciq_runtime.unimplemented import answer_unimplemented
from contextiq.memory.v1 import (
    memory_job_service_pb2,
    memory_job_service_pb2_grpc,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from contextiq.procedural.v1 import procedural_service_pb2, procedural_service_pb2_grpc


@answer_unimplemented(
    memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"],
    memory_service_pb2_grpc.MemoryServiceServicer,
)
class MemoryServicer(memory_service_pb2_grpc.MemoryServiceServicer):
    """MemoryService: memories, revisions, search and generation."""


@answer_unimplemented(
    memory_service_pb2.DESCRIPTOR.services_by_name["MemoryBankService"],
    memory_service_pb2_grpc.MemoryBankServiceServicer,
)
class MemoryBankServicer(memory_service_pb2_grpc.MemoryBankServiceServicer):
    """MemoryBankService: per-tenant bank configuration."""


@answer_unimplemented(
    memory_job_service_pb2.DESCRIPTOR.services_by_name["MemoryJobService"],
    memory_job_service_pb2_grpc.MemoryJobServiceServicer,
)
class MemoryJobServicer(memory_job_service_pb2_grpc.MemoryJobServiceServicer):
    """MemoryJobService: the internal RPCs of the generation worker."""


@answer_unimplemented(
    operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"],
    operations_pb2_grpc.OperationsServicer,
)
class OperationsServicer(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """google.longrunning.Operations over the memory service's operations table."""


@answer_unimplemented(
    procedural_service_pb2.DESCRIPTOR.services_by_name["ProceduralService"],
    procedural_service_pb2_grpc.ProceduralServiceServicer,
)
class ProceduralServicer(procedural_service_pb2_grpc.ProceduralServiceServicer):
    """ProceduralService: workflows, skills, trajectories and learning."""
