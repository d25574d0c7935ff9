"""Embeddings of recently seen facts, reused between the calls of one generation job.

A job embeds its new facts for FindSimilarMemories and, moments later, the facts of its CREATE
and UPDATE actions for ApplyGeneration -- mostly the same texts. Keeping the last few thousand
vectors per process saves the second model call (milliseconds of CPU per fact with the local
model, a paid request with a remote one). Entries are keyed by model and exact text, so a hit
is the vector the model would return.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

import numpy as np

from memory_svc.backend import Backend
from memory_svc.embeddings import Vectors

__all__ = ["RecentVectors"]

_DEFAULT_SIZE: Final = 4096


class RecentVectors:
    """An LRU of embeddings in front of the backend's embedders."""

    def __init__(self, backend: Backend, *, size: int = _DEFAULT_SIZE) -> None:
        """Bind to the backend; keep at most ``size`` vectors (about 1.5 kB each at 384 dims)."""
        self._b = backend
        self._size = size
        self._entries: OrderedDict[tuple[str, str], Vectors] = OrderedDict()

    async def embed(self, model: str, texts: Sequence[str]) -> Vectors:
        """One L2-normalised vector per text (rows in order), embedding only the unseen ones."""
        # Taken before the model call: concurrent calls may evict entries meanwhile.
        known = {t: self._entries[(model, t)] for t in texts if (model, t) in self._entries}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            fresh = await self._b.embed(model, missing)
            for text, vector in zip(missing, fresh, strict=True):
                known[text] = np.asarray(vector, dtype=np.float32)
        for text in dict.fromkeys(texts):
            self._entries[(model, text)] = known[text]
            self._entries.move_to_end((model, text))
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([known[text] for text in texts])
