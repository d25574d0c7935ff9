"""Memory banks: per-tenant configuration of topics, examples, models, TTLs and revisions.

Every tenant has a bank ``default`` that needs no configuration: it is virtual (built from
the defaults here) until someone changes it, and then stored like any other bank.

Changing a bank's embedding model while it holds memories requires a reindex: the bank keeps
``indexed_model`` (the model the index holds vectors of), and until ReindexMemories has
re-embedded every memory, writes and searches on the bank fail with FAILED_PRECONDITION
(reason ``REINDEX_REQUIRED``). A bank without memories switches at once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, cast

from google.protobuf import json_format
from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ciq_runtime.errors import FailedPrecondition, InvalidArgument
from ciq_runtime.topics import MANAGED_TOPIC_IDS, MANAGED_TOPICS
from contextiq.memory.v1 import memory_pb2
from memory_svc import models
from memory_svc.embeddings import DEFAULT_MODEL, EmbedderRegistry

__all__ = [
    "DEFAULT_BANK",
    "BankCache",
    "BankConfig",
    "bank_from_row",
    "default_bank",
    "validate_bank",
    "validate_bank_id",
]

DEFAULT_BANK: Final = "default"
_BANK_ID_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_TOPIC_ID_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
_AUTHORS: Final = frozenset({"user", "agent", "tool", "system"})


#: MemoryBank fields stored in the ``config`` column.
CONFIG_FIELDS: Final = (
    "display_name",
    "topics",
    "few_shot_examples",
    "extraction_model",
    "embedding_model",
    "ttl_config",
    "enable_revisions",
    "scope_keys",
    "enable_consolidation",
)


@dataclass(frozen=True, slots=True)
class BankConfig:
    """A bank's effective configuration.

    Attributes:
        id: Bank id.
        message: The MemoryBank as clients see it (defaults filled in).
        stored: Whether a row exists (``default`` is virtual until changed).
        version: Row version (the etag); 0 for the virtual default.
        topic_ids: Topics memories of the bank may carry.
        scope_keys: Allowed scope keys; any when empty.
        embedding_model: The configured embedding model.
        indexed_model: The model the index holds vectors of.
        enable_revisions: Whether changes write revisions.
        create_ttl: TTL of directly created memories without their own expiration.
    """

    id: str
    message: memory_pb2.MemoryBank
    stored: bool
    version: int
    topic_ids: frozenset[str]
    scope_keys: frozenset[str]
    embedding_model: str
    indexed_model: str
    enable_revisions: bool
    create_ttl: timedelta | None
    generate_created_ttl: timedelta | None = None
    generate_updated_ttl: timedelta | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reindex_required(self) -> bool:
        """The model changed and the index does not hold its vectors yet."""
        return self.embedding_model != self.indexed_model

    def require_indexed(self) -> None:
        """Raise FAILED_PRECONDITION while a model change awaits its reindex."""
        if self.reindex_required:
            raise FailedPrecondition(
                f"memory bank {self.id!r} changed its embedding model to "
                f"{self.embedding_model!r}; run ReindexMemories before writing or searching",
                reason="REINDEX_REQUIRED",
                metadata={"bank_id": self.id},
            )


def _duration(message: Any, name: str) -> timedelta | None:
    if not message.HasField(name):
        return None
    value: timedelta = getattr(message, name).ToTimedelta()
    return value if value > timedelta(0) else None


def _build(
    bank_id: str,
    message: memory_pb2.MemoryBank,
    *,
    stored: bool,
    version: int,
    indexed_model: str,
    dimension: int,
) -> BankConfig:
    if not message.topics:
        message.topics.extend(MANAGED_TOPICS)
    if not message.embedding_model:
        message.embedding_model = DEFAULT_MODEL
    if not message.HasField("enable_revisions"):
        message.enable_revisions = True
    if not message.HasField("enable_consolidation"):
        message.enable_consolidation = True
    message.id = bank_id
    message.embedding_dimension = dimension
    message.etag = f"{version}" if stored else "0"
    ttl = message.ttl_config
    default_ttl = _duration(ttl, "default_ttl")
    return BankConfig(
        id=bank_id,
        message=message,
        stored=stored,
        version=version,
        topic_ids=frozenset(topic.id for topic in message.topics),
        scope_keys=frozenset(message.scope_keys),
        embedding_model=message.embedding_model,
        indexed_model=indexed_model,
        enable_revisions=message.enable_revisions,
        create_ttl=_duration(ttl, "create_ttl") or default_ttl,
        generate_created_ttl=_duration(ttl, "generate_created_ttl") or default_ttl,
        generate_updated_ttl=_duration(ttl, "generate_updated_ttl") or default_ttl,
    )


def default_bank(*, embedding_model: str = DEFAULT_MODEL, dimension: int = 384) -> BankConfig:
    """The virtual ``default`` bank of a tenant that never configured it."""
    message = memory_pb2.MemoryBank(display_name="Default", embedding_model=embedding_model)
    return _build(
        DEFAULT_BANK,
        message,
        stored=False,
        version=0,
        indexed_model=embedding_model,
        dimension=dimension,
    )


def bank_from_row(row: Any) -> BankConfig:
    """The BankConfig of a ``memory_banks`` row."""
    message = json_format.ParseDict(row.config, memory_pb2.MemoryBank())
    message.created_at.FromDatetime(row.created_at)
    message.updated_at.FromDatetime(row.updated_at)
    message.embedding_model = row.embedding_model
    return _build(
        row.id,
        message,
        stored=True,
        version=int(row.version),
        indexed_model=row.indexed_model,
        dimension=int(row.embedding_dimension),
    )


def config_json(message: memory_pb2.MemoryBank) -> dict[str, Any]:
    """The stored (configurable) part of a bank message as proto JSON."""
    kept: Any = memory_pb2.MemoryBank()
    source: Any = message
    for name in CONFIG_FIELDS:
        if name in ("enable_revisions", "enable_consolidation"):
            if source.HasField(name):
                setattr(kept, name, getattr(source, name))
        elif name in ("topics", "few_shot_examples", "scope_keys"):
            getattr(kept, name).extend(getattr(source, name))
        elif name == "ttl_config":
            if source.HasField(name):
                kept.ttl_config.CopyFrom(source.ttl_config)
        else:
            setattr(kept, name, getattr(source, name))
    result: dict[str, Any] = json_format.MessageToDict(kept, preserving_proto_field_name=True)
    return result


def validate_bank_id(bank_id: str, *, field: str) -> str:
    """A bank id from a request ("default" when empty).

    Raises:
        InvalidArgument: Not 1-63 lowercase letters, digits and hyphens starting with a letter.
    """
    if not bank_id:
        return DEFAULT_BANK
    if not _BANK_ID_RE.fullmatch(bank_id):
        raise InvalidArgument(
            f"{field} must be 1-63 lowercase letters, digits and hyphens, starting with a letter",
            field=field,
        )
    return bank_id


def validate_bank(message: memory_pb2.MemoryBank, *, prefix: str, paths: set[str]) -> None:
    """Check the configurable fields named in ``paths``.

    Args:
        message: The bank from the request.
        prefix: Field path prefix for errors (``"memory_bank"``).
        paths: Top-level fields being set.

    Raises:
        InvalidArgument: A topic without id, a duplicate or malformed topic id, a managed id
            used as a custom topic, a few-shot example without conversation or with an
            unknown author, a negative TTL, a blank scope key, or an unusable embedding model.
    """
    if "display_name" in paths and len(message.display_name) > 200:
        raise InvalidArgument(
            "display_name is limited to 200 characters", field=f"{prefix}.display_name"
        )
    if "topics" in paths:
        seen: set[str] = set()
        for i, topic in enumerate(message.topics):
            where = f"{prefix}.topics[{i}]"
            if not _TOPIC_ID_RE.fullmatch(topic.id):
                raise InvalidArgument(
                    "topic id must be letters, digits and underscores, starting with a letter",
                    field=f"{where}.id",
                )
            if topic.id in seen:
                raise InvalidArgument(f"topic {topic.id!r} is listed twice", field=f"{where}.id")
            seen.add(topic.id)
            kind = topic.type or ("managed" if topic.id in MANAGED_TOPIC_IDS else "custom")
            if kind not in ("managed", "custom"):
                raise InvalidArgument('type must be "managed" or "custom"', field=f"{where}.type")
            if kind == "managed" and topic.id not in MANAGED_TOPIC_IDS:
                raise InvalidArgument(
                    f"{topic.id!r} is not a managed topic ({', '.join(sorted(MANAGED_TOPIC_IDS))})",
                    field=f"{where}.id",
                )
            if kind == "custom" and topic.id in MANAGED_TOPIC_IDS:
                raise InvalidArgument(f"{topic.id!r} is a managed topic id", field=f"{where}.id")
            if kind == "custom" and not (topic.label.strip() and topic.description.strip()):
                raise InvalidArgument(
                    "a custom topic needs a label and a description", field=f"{where}.description"
                )
    if "few_shot_examples" in paths:
        for i, example in enumerate(message.few_shot_examples):
            where = f"{prefix}.few_shot_examples[{i}]"
            if not example.conversation:
                raise InvalidArgument(
                    "an example needs a conversation", field=f"{where}.conversation"
                )
            for j, turn in enumerate(example.conversation):
                if turn.author not in _AUTHORS:
                    raise InvalidArgument(
                        f"author must be one of {', '.join(sorted(_AUTHORS))}",
                        field=f"{where}.conversation[{j}].author",
                    )
                if not turn.text.strip():
                    raise InvalidArgument(
                        "text must not be empty", field=f"{where}.conversation[{j}].text"
                    )
            for j, fact in enumerate(example.generated_memories):
                if not fact.fact.strip():
                    raise InvalidArgument(
                        "fact must not be empty", field=f"{where}.generated_memories[{j}].fact"
                    )
    if "ttl_config" in paths:
        for name in ("default_ttl", "create_ttl", "generate_created_ttl", "generate_updated_ttl"):
            value = getattr(message.ttl_config, name)
            if message.ttl_config.HasField(name) and (value.seconds < 0 or value.nanos < 0):
                raise InvalidArgument(
                    f"{name} must not be negative", field=f"{prefix}.ttl_config.{name}"
                )
    if "scope_keys" in paths:
        if len(set(message.scope_keys)) != len(message.scope_keys):
            raise InvalidArgument("scope_keys are listed twice", field=f"{prefix}.scope_keys")
        if any(not key.strip() for key in message.scope_keys):
            raise InvalidArgument("scope_keys must not be blank", field=f"{prefix}.scope_keys")
    if "embedding_model" in paths and message.embedding_model:
        EmbedderRegistry.check_name(message.embedding_model, field=f"{prefix}.embedding_model")


class BankCache:
    """Reads bank configurations, caching them briefly: every write and search needs one.

    Changes made through this process invalidate the entry at once; another replica sees them
    within ``ttl_s``.
    """

    def __init__(self, *, default: BankConfig, ttl_s: float = 5.0) -> None:
        """Create the cache.

        Args:
            default: The virtual default bank.
            ttl_s: How long an entry is served without re-reading it.
        """
        self._default = default
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, BankConfig | None]] = {}

    @property
    def default(self) -> BankConfig:
        """The virtual default bank."""
        return self._default

    def cached(self, tenant_id: str, bank_id: str) -> BankConfig | None:
        """The bank if a fresh enough read is cached (no database access)."""
        entry = self._entries.get((tenant_id, bank_id))
        if entry is not None and time.monotonic() - entry[0] < self._ttl_s:
            return entry[1]
        return None

    def invalidate(self, tenant_id: str, bank_id: str) -> None:
        """Forget a bank after changing it."""
        self._entries.pop((tenant_id, bank_id), None)

    async def find(
        self, session: AsyncSession, *, tenant_id: str, bank_id: str, fresh: bool = False
    ) -> BankConfig | None:
        """The bank, or None when it does not exist (``default`` always exists)."""
        key = (tenant_id, bank_id)
        cached = self._entries.get(key)
        now = time.monotonic()
        if cached is not None and not fresh and now - cached[0] < self._ttl_s:
            return cached[1]
        row = (
            await session.execute(
                select(models.memory_banks).where(
                    models.memory_banks.c.tenant_id == tenant_id,
                    models.memory_banks.c.id == bank_id,
                )
            )
        ).one_or_none()
        bank = bank_from_row(row) if row is not None else None
        if bank is None and bank_id == DEFAULT_BANK:
            bank = self._default
        self._entries[key] = (now, bank)
        return bank


async def list_stored(session: AsyncSession, *, tenant_id: str) -> list[BankConfig]:
    """Every stored bank of the tenant, by id."""
    rows = (
        await session.execute(
            select(models.memory_banks)
            .where(models.memory_banks.c.tenant_id == tenant_id)
            .order_by(models.memory_banks.c.id)
        )
    ).all()
    return [bank_from_row(row) for row in rows]


async def insert_bank(
    session: AsyncSession,
    *,
    tenant_id: str,
    bank_id: str,
    message: memory_pb2.MemoryBank,
    indexed_model: str,
    dimension: int,
    now: datetime,
) -> None:
    """Store a new bank row."""
    await session.execute(
        insert(models.memory_banks).values(
            tenant_id=tenant_id,
            id=bank_id,
            config=config_json(message),
            embedding_model=message.embedding_model or DEFAULT_MODEL,
            embedding_dimension=dimension,
            indexed_model=indexed_model,
            created_at=now,
            updated_at=now,
            version=1,
        )
    )


async def update_bank(
    session: AsyncSession,
    *,
    tenant_id: str,
    bank_id: str,
    message: memory_pb2.MemoryBank,
    indexed_model: str,
    dimension: int,
    now: datetime,
    expected_version: int,
) -> bool:
    """Rewrite a bank row if it is still at ``expected_version``."""
    result = await session.execute(
        update(models.memory_banks)
        .where(
            models.memory_banks.c.tenant_id == tenant_id,
            models.memory_banks.c.id == bank_id,
            models.memory_banks.c.version == expected_version,
        )
        .values(
            config=config_json(message),
            embedding_model=message.embedding_model or DEFAULT_MODEL,
            embedding_dimension=dimension,
            indexed_model=indexed_model,
            updated_at=now,
            version=models.memory_banks.c.version + 1,
        )
    )
    return bool(cast("CursorResult[Any]", result).rowcount)


async def set_indexed_model(
    session: AsyncSession, *, tenant_id: str, bank_id: str, model: str, dimension: int
) -> None:
    """Record that the index now holds the bank's vectors of ``model``."""
    await session.execute(
        update(models.memory_banks)
        .where(models.memory_banks.c.tenant_id == tenant_id, models.memory_banks.c.id == bank_id)
        .values(indexed_model=model, embedding_dimension=dimension)
    )


async def delete_bank_row(session: AsyncSession, *, tenant_id: str, bank_id: str) -> None:
    """Delete a bank row."""
    await session.execute(
        delete(models.memory_banks).where(
            models.memory_banks.c.tenant_id == tenant_id, models.memory_banks.c.id == bank_id
        )
    )


async def count_live_memories(session: AsyncSession, *, tenant_id: str, bank_id: str) -> int:
    """Memories of the bank that are not deleted (expired ones included: they still exist)."""
    m = models.memories
    value = await session.scalar(
        select(func.count())
        .select_from(m)
        .where(m.c.tenant_id == tenant_id, m.c.bank_id == bank_id, m.c.deleted_at.is_(None))
    )
    return int(value or 0)
