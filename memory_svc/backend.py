"""What the memory servicers share: database, banks, embedders, keyword encoder and index."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from ciq_runtime.errors import InvalidArgument, NotFound
from memory_svc.banks import DEFAULT_BANK, BankCache, BankConfig, validate_bank_id
from memory_svc.embeddings import EmbedderRegistry, Vectors
from memory_svc.indexing import IndexSync
from memory_svc.keyword import KeywordEncoder

__all__ = ["Backend"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Backend:
    """Resources of the memory service; the database opens on start, after construction."""

    def __init__(
        self,
        *,
        sessions: Callable[[], async_sessionmaker[AsyncSession]],
        engine: Callable[[], AsyncEngine],
        banks: BankCache,
        embedders: EmbedderRegistry,
        keyword: KeywordEncoder,
        sync: IndexSync,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """Wire the resources.

        Args:
            sessions: Returns the Postgres session factory (available once started).
            engine: Returns the Postgres engine (available once started).
            banks: Bank configuration cache.
            embedders: Embedders by model name.
            keyword: BM25 encoder.
            sync: Index writer.
            clock: Current time (tests may shift it).
        """
        self._sessions = sessions
        self._engine = engine
        self._autocommit: tuple[AsyncEngine, AsyncEngine] | None = None
        self.banks = banks
        self.embedders = embedders
        self.keyword = keyword
        self.sync = sync
        self.clock = clock

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The Postgres session factory."""
        return self._sessions()

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection running each statement in its own transaction (single-statement
        writes that need no BEGIN/COMMIT round trips)."""
        engine = self._engine()
        if self._autocommit is None or self._autocommit[0] is not engine:
            # execution_options() builds a new engine facade with event hooks each call:
            # cheap once, a measurable cost per write.
            self._autocommit = (engine, engine.execution_options(isolation_level="AUTOCOMMIT"))
        async with self._autocommit[1].connect() as connection:
            yield connection

    async def bank(self, *, tenant_id: str, bank_id: str, field: str = "bank_id") -> BankConfig:
        """The bank named in a request ("default" when empty).

        Raises:
            InvalidArgument: Malformed bank id.
            NotFound: No such bank for the tenant.
        """
        bank_id = validate_bank_id(bank_id, field=field)
        bank = self.banks.cached(tenant_id, bank_id)
        if bank is None:
            async with self.sessions() as session:
                bank = await self.banks.find(session, tenant_id=tenant_id, bank_id=bank_id)
        if bank is None:
            raise NotFound(f"memory bank {bank_id!r} not found", metadata={"bank_id": bank_id})
        return bank

    async def embed(self, model: str, texts: list[str]) -> Vectors:
        """Embed texts with a bank's model."""
        return await self.embedders.get(model).embed(texts)

    async def collection(self, bank: BankConfig) -> str:
        """The index collection holding the bank's current vectors."""
        dimension = (
            bank.message.embedding_dimension
            or await self.embedders.get(bank.indexed_model).dimension()
        )
        return await self.sync.collection(bank.indexed_model, dimension)


def bank_or_default(bank_id: str) -> str:
    """The bank id of a request."""
    return bank_id or DEFAULT_BANK


def require(value: str, *, field: str) -> str:
    """A required string field."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    return value
