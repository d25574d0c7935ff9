"""Loading LiteLLM, the one way every service does it.

LiteLLM fetches its model price table from the internet at import unless told to use the copy
it bundles; with no network that costs seconds of retries. Its import also takes seconds, so
callers load it lazily (off the event loop where it matters), never at module import.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["import_litellm"]


def import_litellm() -> Any:
    """Import and return the ``litellm`` module, configured for offline use."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm
