"""Structured model calls through LiteLLM: JSON-schema output, strict validation, retries.

Two kinds of failure are handled differently:

- **Provider errors** (429, 5xx, timeouts, connection errors) are retried with exponential
  backoff and jitter; when they persist the call fails with UNAVAILABLE.
- **Invalid output** (malformed JSON, a schema violation, an id the model invented) is fed
  back to the model with what was wrong, at most ``max_attempts`` times in all; then the call
  fails with UNAVAILABLE / ``LLM_OUTPUT_INVALID``. Nothing downstream ever sees unvalidated
  output.

Requests the provider refuses outright (bad key, unknown model, bad request) fail at once with
FAILED_PRECONDITION: retrying cannot fix configuration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ciq_runtime import metrics
from ciq_runtime.errors import FailedPrecondition, Unavailable
from ciq_runtime.litellm_loader import import_litellm
from ciq_runtime.logging import current_log_context
from ciq_runtime.principal import maybe_principal
from contextiq.common.v1 import common_pb2

__all__ = ["LlmClient", "OutputInvalidError", "Usage"]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("extraction_svc.llm")

_T = TypeVar("_T")


class OutputInvalidError(ValueError):
    """The model's answer does not satisfy the validator; the message is shown to the model."""


@dataclass
class Usage:
    """Tokens and cost of the calls of one piece of work (retries included)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    def add(self, other: Usage) -> None:
        """Accumulate ``other`` into this."""
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd
        self.calls += other.calls

    def to_proto(self) -> common_pb2.TokenUsage:
        """As the contract's TokenUsage."""
        return common_pb2.TokenUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            cost_usd=self.cost_usd,
            calls=self.calls,
        )


@dataclass
class Result(Generic[_T]):
    """A validated answer and what it cost."""

    value: _T
    usage: Usage = field(default_factory=Usage)


class LlmClient:
    """Makes validated structured calls to any LiteLLM model."""

    def __init__(
        self,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_attempts: int = 3,
        provider_attempts: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        """Create the client.

        Args:
            api_base: OpenAI-compatible base URL (local servers); None uses the provider's.
            api_key: Key passed to the provider; None lets LiteLLM read the provider's env var.
            timeout_s: Deadline of one call.
            max_attempts: Calls allowed when the output is invalid.
            provider_attempts: Calls allowed when the provider fails transiently.
            backoff_s: First backoff delay; doubles per retry, with jitter.
        """
        self._api_base = api_base
        self._api_key = api_key
        self._timeout = timeout_s
        self._max_attempts = max_attempts
        self._provider_attempts = provider_attempts
        self._backoff = backoff_s
        self._module: Any = None

    def warm_up(self) -> None:
        """Import LiteLLM now (seconds), so the first request does not pay for it."""
        if self._module is None:
            self._module = import_litellm()

    async def complete_json(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        validate: Callable[[Any], _T],
    ) -> Result[_T]:
        """Ask for JSON matching ``schema`` and return it validated.

        Args:
            model: LiteLLM model name ("openai/gpt-4o-mini", "anthropic/…", "ollama/…").
            messages: The conversation: system + user messages.
            schema_name: Name of the JSON schema given to the model.
            schema: The JSON schema of the answer.
            validate: Turns the parsed JSON into the result or raises :class:`OutputInvalidError`.

        Returns:
            The validated value and the usage of every call made.

        Raises:
            Unavailable: The provider kept failing, or the output stayed invalid.
            FailedPrecondition: The provider refused the request (key, model, request).
        """
        self.warm_up()
        # One span for the whole structured call (validation retries included); each provider
        # call below it gets its own "chat <model>" span.
        with _tracer.start_as_current_span(
            f"llm {schema_name}",
            attributes={
                "gen_ai.request.model": model,
                "contextiq.llm.operation": schema_name,
                **_context_ids(),
            },
        ) as span:
            usage = Usage()
            try:
                return await self._complete_json(
                    model, messages, schema_name, schema, validate, usage
                )
            finally:
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
                span.set_attribute("contextiq.llm.calls", usage.calls)

    async def _complete_json(
        self,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        validate: Callable[[Any], _T],
        usage: Usage,
    ) -> Result[_T]:
        conversation = list(messages)
        problem = ""
        for attempt in range(1, self._max_attempts + 1):
            content = await self._call(model, conversation, schema_name, schema, usage)
            try:
                value = validate(json.loads(content))
            except json.JSONDecodeError as exc:
                problem = f"the answer is not valid JSON ({exc.msg} at position {exc.pos})"
            except OutputInvalidError as exc:
                problem = str(exc)
            else:
                return Result(value=value, usage=usage)
            trace.get_current_span().add_event(
                "output rejected", {"attempt": attempt, "problem": problem[:300]}
            )
            log.warning(
                "model output rejected (attempt %d/%d): %s",
                attempt,
                self._max_attempts,
                problem,
                extra={"model": model, "attempt": attempt},
            )
            conversation += [
                {"role": "assistant", "content": content[:4000]},
                {
                    "role": "user",
                    "content": f"That answer was rejected: {problem}. Answer again with only "
                    "JSON that follows the schema and the rules.",
                },
            ]
        raise Unavailable(
            f"the model {model} returned invalid output {self._max_attempts} times; "
            f"last problem: {problem}",
            reason="LLM_OUTPUT_INVALID",
            metadata={"model": model},
        )

    async def _call(
        self,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        usage: Usage,
    ) -> str:
        litellm = self._module
        transient = (
            litellm.RateLimitError,
            litellm.Timeout,
            litellm.APIConnectionError,
            litellm.ServiceUnavailableError,
            litellm.InternalServerError,
            litellm.BadGatewayError,
        )
        refused = (
            litellm.AuthenticationError,
            litellm.BadRequestError,
            litellm.NotFoundError,
            litellm.PermissionDeniedError,
        )
        last: Exception | None = None
        for attempt in range(1, self._provider_attempts + 1):
            try:
                response = await self._traced_completion(
                    litellm, model, messages, schema_name, schema, attempt
                )
            except transient as exc:
                last = exc
                usage.calls += 1
                if attempt == self._provider_attempts:
                    break
                delay = self._backoff * 2 ** (attempt - 1) * (0.5 + random.random())  # noqa: S311
                log.warning(
                    "model provider failed (%s), retrying in %.2fs",
                    type(exc).__name__,
                    delay,
                    extra={"model": model, "attempt": attempt},
                )
                await asyncio.sleep(delay)
                continue
            except refused as exc:
                raise FailedPrecondition(
                    f"the model provider refused the request for {model}: "
                    f"{_short(exc)}; check CONTEXTIQ_LLM_MODEL and the provider's API key",
                    reason="LLM_REQUEST_REFUSED",
                    metadata={"model": model},
                ) from None
            usage.calls += 1
            usage.prompt_tokens += int(getattr(response.usage, "prompt_tokens", 0) or 0)
            usage.completion_tokens += int(getattr(response.usage, "completion_tokens", 0) or 0)
            usage.cost_usd += _cost(litellm, response)
            content = response.choices[0].message.content
            return str(content or "")
        raise Unavailable(
            f"the model provider for {model} kept failing: {_short(last)}",
            reason="LLM_UNAVAILABLE",
            metadata={"model": model},
        )

    async def _traced_completion(
        self,
        litellm: Any,
        model: str,
        messages: list[dict[str, str]],
        schema_name: str,
        schema: dict[str, Any],
        attempt: int,
    ) -> Any:
        """One provider call in a CLIENT span, counted in the LLM metrics."""
        with _tracer.start_as_current_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "contextiq.llm.operation": schema_name,
                "contextiq.llm.attempt": attempt,
                **_context_ids(),
            },
            # Recorded below with the error type only: a provider's message may quote the
            # request (and so the conversation).
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            started = time.perf_counter()
            try:
                response = await litellm.acompletion(
                    model=model,
                    messages=messages,
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": schema_name, "schema": schema, "strict": True},
                    },
                    temperature=0,
                    timeout=self._timeout,
                    api_base=self._api_base,
                    api_key=self._api_key,
                    num_retries=0,
                )
            except Exception as exc:
                error = type(exc).__name__
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR, error))
                metrics.llm_call(
                    model=model,
                    operation=schema_name,
                    error=error,
                    seconds=time.perf_counter() - started,
                )
                raise
            prompt = int(getattr(response.usage, "prompt_tokens", 0) or 0)
            completion = int(getattr(response.usage, "completion_tokens", 0) or 0)
            span.set_attribute("gen_ai.usage.input_tokens", prompt)
            span.set_attribute("gen_ai.usage.output_tokens", completion)
            if getattr(response, "model", None):
                span.set_attribute("gen_ai.response.model", str(response.model))
            metrics.llm_call(
                model=model,
                operation=schema_name,
                prompt_tokens=prompt,
                completion_tokens=completion,
                seconds=time.perf_counter() - started,
            )
            return response


def _context_ids() -> dict[str, str]:
    """The request's or job's ids (tenant, session, operation) as span attributes."""
    fields = current_log_context()
    ids = {
        f"contextiq.{key}": str(fields[key])
        for key in ("tenant_id", "session_id", "operation_name", "bank_id")
        if fields.get(key)
    }
    principal = maybe_principal()
    if principal is not None:
        ids.setdefault("contextiq.tenant_id", principal.tenant_id)
    return ids


def _cost(litellm: Any, response: Any) -> float:
    """The call's cost in USD; 0 for a model without a known price (cost is informative)."""
    # LiteLLM prices every response while handling it and keeps the figure in the response's
    # hidden params (None when the model has no price): reuse it rather than price it twice.
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict) and "response_cost" in hidden:
        cost = hidden["response_cost"]
        return float(cost) if isinstance(cost, int | float) else 0.0
    try:
        return float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # noqa: BLE001 - unknown models have no price; cost is informative only
        return 0.0


def _short(exc: Exception | None) -> str:
    text = str(exc or "unknown error").replace("\n", " ")
    return text[:300]
