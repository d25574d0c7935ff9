"""The operations behind MemoryBankService: create, get, list, update and delete banks."""

from __future__ import annotations

import logging
from typing import Any, Final, cast

from google.protobuf import empty_pb2
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from ciq_runtime.db import transaction
from ciq_runtime.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ciq_runtime.pagination import encode_page_token, page_request
from contextiq.memory.v1 import memory_pb2, memory_service_pb2
from memory_svc import banks, models
from memory_svc.backend import Backend
from memory_svc.banks import (
    CONFIG_FIELDS,
    DEFAULT_BANK,
    BankConfig,
    validate_bank,
    validate_bank_id,
)
from memory_svc.embeddings import DEFAULT_MODEL
from memory_svc.index.protocol import collection_name

__all__ = ["BankOps"]

log = logging.getLogger(__name__)

_UPDATABLE: Final = frozenset(CONFIG_FIELDS)


def _etag_mismatch(bank_id: str) -> Aborted:
    return Aborted(
        "the memory bank changed since it was read; read it again and retry",
        reason="ETAG_MISMATCH",
        metadata={"bank_id": bank_id},
    )


class BankOps:
    """Bank configuration for the servicer."""

    def __init__(self, backend: Backend) -> None:
        """Bind to the service's resources."""
        self._b = backend

    async def _dimension(self, model: str, *, field: str) -> int:
        try:
            return await self._b.embedders.get(model).dimension()
        except Exception as exc:
            raise FailedPrecondition(
                f"embedding model {model!r} cannot be used: {exc}",
                reason="EMBEDDING_MODEL_UNUSABLE",
                metadata={"field": field},
            ) from exc

    async def create(
        self, tenant_id: str, request: memory_service_pb2.CreateMemoryBankRequest
    ) -> memory_pb2.MemoryBank:
        """CreateMemoryBank."""
        if not request.memory_bank_id:
            raise InvalidArgument("memory_bank_id is required", field="memory_bank_id")
        bank_id = validate_bank_id(request.memory_bank_id, field="memory_bank_id")
        message = memory_pb2.MemoryBank()
        message.CopyFrom(request.memory_bank)
        validate_bank(message, prefix="memory_bank", paths=set(CONFIG_FIELDS))
        if bank_id == DEFAULT_BANK:
            raise AlreadyExists(f"memory bank {bank_id!r} already exists")
        model = message.embedding_model or DEFAULT_MODEL
        dimension = await self._dimension(model, field="memory_bank.embedding_model")
        now = self._b.clock()
        try:
            async with transaction(self._b.sessions) as session:
                await banks.insert_bank(
                    session,
                    tenant_id=tenant_id,
                    bank_id=bank_id,
                    message=message,
                    indexed_model=model,
                    dimension=dimension,
                    now=now,
                )
        except IntegrityError:
            raise AlreadyExists(f"memory bank {bank_id!r} already exists") from None
        self._b.banks.invalidate(tenant_id, bank_id)
        return await self.get(tenant_id, bank_id)

    async def get(self, tenant_id: str, bank_id: str) -> memory_pb2.MemoryBank:
        """GetMemoryBank: ``default`` always exists."""
        if not bank_id:
            raise InvalidArgument("id is required", field="id")
        bank = await self._b.bank(tenant_id=tenant_id, bank_id=bank_id, field="id")
        return bank.message

    async def list_banks(
        self, tenant_id: str, request: memory_service_pb2.ListMemoryBanksRequest
    ) -> memory_service_pb2.ListMemoryBanksResponse:
        """ListMemoryBanks by id; includes the virtual ``default``."""
        page = page_request(page_size=request.page_size, page_token=request.page_token, params={})
        async with self._b.sessions() as session:
            stored = await banks.list_stored(session, tenant_id=tenant_id)
        all_banks: dict[str, BankConfig] = {bank.id: bank for bank in stored}
        all_banks.setdefault(DEFAULT_BANK, self._b.banks.default)
        ids = sorted(all_banks)
        if page.after is not None:
            if len(page.after) != 1 or not isinstance(page.after[0], str):
                raise InvalidArgument("page_token is malformed", field="page_token")
            ids = [bank_id for bank_id in ids if bank_id > page.after[0]]
        response = memory_service_pb2.ListMemoryBanksResponse(
            memory_banks=[all_banks[bank_id].message for bank_id in ids[: page.size]]
        )
        if len(ids) > page.size:
            response.next_page_token = encode_page_token(
                last_sort_key=[ids[page.size - 1]], params={}
            )
        return response

    async def update(
        self, tenant_id: str, request: memory_service_pb2.UpdateMemoryBankRequest
    ) -> memory_pb2.MemoryBank:
        """UpdateMemoryBank; the default bank is stored on its first change.

        A new embedding model takes effect at once for a bank without memories; otherwise
        the bank needs ReindexMemories before it serves writes and searches again.
        """
        b = self._b
        incoming = request.memory_bank
        if not incoming.id:
            raise InvalidArgument("memory_bank.id is required", field="memory_bank.id")
        bank = await b.bank(tenant_id=tenant_id, bank_id=incoming.id, field="memory_bank.id")
        if request.HasField("update_mask"):
            paths = set(request.update_mask.paths)
        else:
            paths = {d.name for d, _ in incoming.ListFields()} & _UPDATABLE
        if "*" in paths:
            paths = set(_UPDATABLE)
        unknown = sorted(paths - _UPDATABLE)
        if unknown:
            raise InvalidArgument(
                f"update_mask: {', '.join(unknown)} cannot be updated", field="update_mask"
            )
        if not paths:
            raise InvalidArgument("update_mask names no field to update", field="update_mask")
        validate_bank(incoming, prefix="memory_bank", paths=paths)
        if request.etag and request.etag != bank.message.etag:
            raise _etag_mismatch(bank.id)
        merged = memory_pb2.MemoryBank()
        merged.CopyFrom(bank.message)
        source = cast(Any, incoming)  # field names come from the mask, checked above
        target = cast(Any, merged)
        for path in paths:
            target.ClearField(path)
            if path in ("topics", "few_shot_examples", "scope_keys"):
                getattr(target, path).extend(getattr(source, path))
            elif path == "ttl_config":
                merged.ttl_config.CopyFrom(incoming.ttl_config)
            elif path in ("enable_revisions", "enable_consolidation"):
                if source.HasField(path):
                    setattr(target, path, getattr(source, path))
            else:
                setattr(target, path, getattr(source, path))
        model = merged.embedding_model or DEFAULT_MODEL
        merged.embedding_model = model
        dimension = (
            bank.message.embedding_dimension
            if model == bank.embedding_model
            else await self._dimension(model, field="memory_bank.embedding_model")
        )
        now = b.clock()
        async with transaction(b.sessions) as session:
            indexed_model = bank.indexed_model
            if model != bank.embedding_model:
                live = await banks.count_live_memories(
                    session, tenant_id=tenant_id, bank_id=bank.id
                )
                # An empty bank has nothing to re-embed: it switches right away.
                if live == 0:
                    indexed_model = model
            if bank.stored:
                changed = await banks.update_bank(
                    session,
                    tenant_id=tenant_id,
                    bank_id=bank.id,
                    message=merged,
                    indexed_model=indexed_model,
                    dimension=dimension,
                    now=now,
                    expected_version=bank.version,
                )
                if not changed:
                    raise _etag_mismatch(bank.id)
            else:
                try:
                    await banks.insert_bank(
                        session,
                        tenant_id=tenant_id,
                        bank_id=bank.id,
                        message=merged,
                        indexed_model=indexed_model,
                        dimension=dimension,
                        now=now,
                    )
                except IntegrityError:
                    raise _etag_mismatch(bank.id) from None
        b.banks.invalidate(tenant_id, bank.id)
        return await self.get(tenant_id, bank.id)

    async def delete(
        self, tenant_id: str, request: memory_service_pb2.DeleteMemoryBankRequest
    ) -> empty_pb2.Empty:
        """DeleteMemoryBank: with ``force`` its memories and their history go too."""
        b = self._b
        if not request.id:
            raise InvalidArgument("id is required", field="id")
        bank = await b.bank(tenant_id=tenant_id, bank_id=request.id, field="id")
        if bank.id == DEFAULT_BANK:
            raise FailedPrecondition("the default memory bank cannot be deleted")
        m = models.memories
        r = models.memory_revisions
        async with transaction(b.sessions) as session:
            live = await banks.count_live_memories(session, tenant_id=tenant_id, bank_id=bank.id)
            if live and not request.force:
                raise FailedPrecondition(
                    f"memory bank {bank.id!r} holds {live} memories; delete them first or "
                    "set force",
                    reason="BANK_NOT_EMPTY",
                )
            await session.execute(
                delete(m).where(m.c.tenant_id == tenant_id, m.c.bank_id == bank.id)
            )
            await session.execute(
                delete(r).where(r.c.tenant_id == tenant_id, r.c.bank_id == bank.id)
            )
            await banks.delete_bank_row(session, tenant_id=tenant_id, bank_id=bank.id)
        b.banks.invalidate(tenant_id, bank.id)
        dimension = bank.message.embedding_dimension or 384
        for model in {bank.embedding_model, bank.indexed_model}:
            name = collection_name(model, dimension)
            try:
                await b.sync.index.ensure_collection(name, dimension)
                await b.sync.index.delete_bank(name, tenant_id=tenant_id, bank_id=bank.id)
            except Exception:  # orphans are dropped at hydration and by the next reindex
                log.warning("could not drop the index points of bank %s", bank.id, exc_info=True)
        return empty_pb2.Empty()

    @staticmethod
    def not_found(bank_id: str) -> NotFound:
        """The error for a missing bank."""
        return NotFound(f"memory bank {bank_id!r} not found")
