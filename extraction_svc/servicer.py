"""gRPC servicer of ``contextiq.extraction.v1.ExtractionService``.

Extract and Consolidate still answer UNIMPLEMENTED, naming themselves: the
LiteLLM calls arrive with the memory-generation issue. Nothing here returns made-up data.
"""

from __future__ import annotations

from ciq_runtime.unimplemented import answer_unimplemented
from contextiq.extraction.v1 import extraction_service_pb2, extraction_service_pb2_grpc


@answer_unimplemented(
    extraction_service_pb2.DESCRIPTOR.services_by_name["ExtractionService"],
    extraction_service_pb2_grpc.ExtractionServiceServicer,
)
class ExtractionServicer(extraction_service_pb2_grpc.ExtractionServiceServicer):
    """ExtractionService: the two model steps of memory generation."""
