"""States of a memory generation (``GenerateMemoriesMetadata.state``) and their order."""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPLYING",
    "CANCELLED",
    "CONSOLIDATING",
    "DONE",
    "EXTRACTING",
    "FAILED",
    "FINAL",
    "QUEUED",
    "RANK",
    "REPORTABLE",
]

QUEUED: Final = "queued"
EXTRACTING: Final = "extracting"
CONSOLIDATING: Final = "consolidating"
APPLYING: Final = "applying"
DONE: Final = "done"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"

#: Progress only moves forward along this order.
RANK: Final = {
    QUEUED: 0,
    EXTRACTING: 1,
    CONSOLIDATING: 2,
    APPLYING: 3,
    DONE: 4,
    FAILED: 4,
    CANCELLED: 4,
}
#: States that end an operation.
FINAL: Final = frozenset({DONE, FAILED, CANCELLED})
#: States the worker may report.
REPORTABLE: Final = (EXTRACTING, CONSOLIDATING, APPLYING, DONE, FAILED)
