"""A scripted OpenAI-compatible chat-completions server: the LLM of the tests.

No LLM provider is reachable from here, so tests start this server on a free port and point
LiteLLM at it (``openai/<model>`` with ``api_base``); the code path through LiteLLM is the real
one. Each test queues the answers it wants — JSON content, malformed text, HTTP 429/500, slow
answers for timeouts — and reads back the requests that were made.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.server import GatewayServer

MODEL = "openai/scripted"


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        content: The assistant message (a JSON string for structured output, or anything).
        status: HTTP status; not 200 returns an OpenAI-style error body.
        delay_s: Wait before answering (longer than the client timeout = a timeout).
        prompt_tokens: Reported usage.
        completion_tokens: Reported usage.
    """

    content: str = "{}"
    status: int = 200
    delay_s: float = 0.0
    prompt_tokens: int = 100
    completion_tokens: int = 20

    @staticmethod
    def json(payload: Any, **kwargs: Any) -> Reply:
        """A reply whose content is ``payload`` as JSON."""
        return Reply(content=json.dumps(payload), **kwargs)


@dataclass
class ScriptedLLM:
    """The server's script and its record of requests."""

    replies: deque[Reply] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Answer when the queue is empty (benchmarks); None answers 500 "script exhausted".
    fallback: Callable[[dict[str, Any]], Reply] | None = None
    server: GatewayServer | None = None

    def push(self, *replies: Reply) -> None:
        """Queue answers, in order."""
        self.replies.extend(replies)

    @property
    def api_base(self) -> str:
        """Base URL to give LiteLLM."""
        assert self.server is not None
        return f"{self.server.url}/v1"

    async def start(self) -> ScriptedLLM:
        """Serve on a free port."""
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        self.server = GatewayServer(app, host="127.0.0.1", port=0)
        await self.server.start()
        return self

    async def stop(self) -> None:
        """Stop serving."""
        if self.server is not None:
            await self.server.stop()

    async def _chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        if self.replies:
            reply = self.replies.popleft()
        elif self.fallback is not None:
            reply = self.fallback(body)
        else:
            reply = Reply(status=500, content="script exhausted")
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return JSONResponse(
                {"error": {"message": reply.content, "type": "scripted", "code": reply.status}},
                status_code=reply.status,
            )
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                },
            }
        )
