"""The managed memory topics (Vertex AI Memory Bank's), one definition for every service.

The memory service shows them in every bank that configures no topics; the extraction service
gives them to the model when a request names none. Both read this tuple, so a bank's topics and
the prompt's can never drift apart.
"""

from __future__ import annotations

from typing import Final

from contextiq.memory.v1 import memory_pb2

__all__ = ["MANAGED_TOPICS", "MANAGED_TOPIC_IDS"]

MANAGED_TOPICS: Final[tuple[memory_pb2.MemoryTopic, ...]] = (
    memory_pb2.MemoryTopic(
        id="USER_PERSONAL_INFO",
        type="managed",
        label="User personal info",
        description="Significant personal information about the user: names, relationships, "
        "hobbies, important dates, where they live or work.",
    ),
    memory_pb2.MemoryTopic(
        id="USER_PREFERENCES",
        type="managed",
        label="User preferences",
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

MANAGED_TOPIC_IDS: Final = frozenset(topic.id for topic in MANAGED_TOPICS)
