"""Topic resolution of the extraction steps."""

from __future__ import annotations

from collections.abc import Sequence

from ciq_runtime.topics import MANAGED_TOPICS
from contextiq.memory.v1 import memory_pb2

__all__ = ["effective_topics"]


def effective_topics(
    topics: Sequence[memory_pb2.MemoryTopic],
) -> list[memory_pb2.MemoryTopic]:
    """The topics to extract: the given ones, or the managed topics when none are given."""
    return list(topics) if topics else list(MANAGED_TOPICS)
