"""A tiny OpenAI-compatible embeddings server for tests: deterministic bag-of-words vectors.

Each word is hashed to a few dimensions, so texts sharing words get similar vectors and a
search by a word finds the facts holding it -- enough to check that LiteLLM's path works end
to end without any real provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.helpers import free_port

DIMENSION = 64


def fake_vector(text: str, dimension: int = DIMENSION) -> list[float]:
    """Deterministic, L2-normalised bag-of-words vector."""
    vector = [0.0] * dimension
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        for i in range(3):
            vector[digest[i] % dimension] += 1.0 if digest[i + 3] % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class FakeEmbeddings:
    """The server's state: the calls it answered."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embeddings(self, request: Request) -> JSONResponse:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self.calls.append(list(texts))
        return JSONResponse(
            {
                "object": "list",
                "model": body.get("model", "fake"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": fake_vector(text)}
                    for i, text in enumerate(texts)
                ],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


@asynccontextmanager
async def serve_fake_embeddings() -> AsyncIterator[tuple[str, FakeEmbeddings]]:
    """Run the server on a free loopback port; yields its ``/v1`` base URL."""
    state = FakeEmbeddings()
    app = Starlette(routes=[Route("/v1/embeddings", state.embeddings, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}/v1", state
    finally:
        server.should_exit = True
        await task
