"""The vector index: Qdrant's engine in-process (default) or a Qdrant server.

Derived from Postgres and rebuildable from it; see :mod:`memory_svc.index.protocol`.
"""

from memory_svc.index.protocol import (
    Hit,
    IndexFilter,
    IndexPoint,
    SearchHits,
    VectorIndex,
    collection_name,
)

__all__ = [
    "Hit",
    "IndexFilter",
    "IndexPoint",
    "SearchHits",
    "VectorIndex",
    "collection_name",
]
