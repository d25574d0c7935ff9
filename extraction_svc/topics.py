"""The managed memory topics (Vertex AI Memory Bank's) and topic resolution."""

from __future__ import annotations

from collections.abc import Sequence

from contextiq.memory.v1 import memory_pb2

__all__ = ["MANAGED_TOPICS", "effective_topics"]

MANAGED_TOPICS: tuple[memory_pb2.MemoryTopic, ...] = (
    memory_pb2.MemoryTopic(
        id="USER_PERSONAL_INFO",
        type="managed",
        label="Personal information",
        description="Significant personal information about the user: names, relationships, "
        "hobbies, important dates, where they live or work.",
    ),
    memory_pb2.MemoryTopic(
        id="USER_PREFERENCES",
        type="managed",
        label="Preferences",
        description="Stated or implied likes, dislikes, preferred styles and patterns.",
    ),
    memory_pb2.MemoryTopic(
        id="KEY_CONVERSATION_DETAILS",
        type="managed",
        label="Key conversation details",
        description="Important milestones or conclusions of the dialogue: decisions taken, "
        "tasks completed, outcomes reached.",
    ),
    memory_pb2.MemoryTopic(
        id="EXPLICIT_INSTRUCTIONS",
        type="managed",
        label="Explicit instructions",
        description="Information the user explicitly asked to remember or to forget.",
    ),
)


def effective_topics(
    topics: Sequence[memory_pb2.MemoryTopic],
) -> list[memory_pb2.MemoryTopic]:
    """The topics to extract: the given ones, or the managed topics when none are given."""
    return list(topics) if topics else list(MANAGED_TOPICS)
