"""Render finished spans as an indented tree (for the trace test's output and the docs)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan

_SHOWN_ATTRIBUTES = (
    "contextiq.tenant_id",
    "contextiq.session_id",
    "contextiq.operation_name",
    "contextiq.job",
    "contextiq.job.outcome",
    "contextiq.llm.operation",
    "gen_ai.request.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "rpc.grpc.status_code",
    "http.response.status_code",
)


def _label(span: ReadableSpan) -> str:
    kind = span.kind.name
    attrs = span.attributes or {}
    shown = [f"{key.rsplit('.', 1)[-1] if key.startswith('gen_ai.usage') else key}={attrs[key]!s}"
             for key in _SHOWN_ATTRIBUTES if key in attrs]  # fmt: skip
    service = str(span.resource.attributes.get("service.name", ""))
    scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
    text = f"{span.name} [{kind}] ({scope}{', ' + service if service else ''})"
    return text + (f"  {' '.join(shown)}" if shown else "")


def render_tree(spans: Sequence[ReadableSpan], *, collapse_db: bool = True) -> str:
    """The spans of one trace as an indented tree, children in start order.

    Args:
        spans: The finished spans (of one trace).
        collapse_db: Show runs of sibling database statements as one line with a count.

    Returns:
        The tree, one span per line.
    """
    ids = {span.context.span_id for span in spans}
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children[parent if parent in ids else None].append(span)
    for group in children.values():
        group.sort(key=lambda s: s.start_time or 0)

    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        lines.append("  " * depth + _label(span))
        kids = children.get(span.context.span_id, [])
        index = 0
        while index < len(kids):
            kid = kids[index]
            is_db = kid.instrumentation_scope is not None and (
                kid.instrumentation_scope.name == "ciq_runtime.db"
            )
            if collapse_db and is_db and not children.get(kid.context.span_id):
                run = 1
                while (
                    index + run < len(kids)
                    and kids[index + run].instrumentation_scope is not None
                    and kids[index + run].instrumentation_scope.name == "ciq_runtime.db"  # type: ignore[union-attr]
                    and not children.get(kids[index + run].context.span_id)
                ):
                    run += 1
                names = sorted({k.name for k in kids[index : index + run]})
                lines.append("  " * (depth + 1) + f"db: {run} statement(s) ({', '.join(names)})")
                index += run
                continue
            walk(kid, depth + 1)
            index += 1

    for root in children.get(None, []):
        walk(root, 0)
    return "\n".join(lines)
