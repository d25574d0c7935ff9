"""MemoryService, MemoryBankService, ProceduralService and the long-running Operations.

Layout:

* :mod:`~memory_svc.servicer` -- thin gRPC servicers; :mod:`~memory_svc.component` wires
  them to Postgres, the vector index, the embedders and the background loops.
* :mod:`~memory_svc.memories` -- create / get / list / update / delete / rollback / purge and
  revisions; :mod:`~memory_svc.search` -- hybrid search (now and ``as_of``);
  :mod:`~memory_svc.bank_ops` and :mod:`~memory_svc.banks` -- bank configuration;
  :mod:`~memory_svc.reindex` and :mod:`~memory_svc.operations` -- ReindexMemories as a
  long-running operation; :mod:`~memory_svc.sweeper` -- the TTL sweeper.
* :mod:`~memory_svc.validation`, :mod:`~memory_svc.scopes`, :mod:`~memory_svc.filters` --
  everything checked before any write; :mod:`~memory_svc.repository` and
  :mod:`~memory_svc.models` -- the SQL (schema ``memory``); :mod:`~memory_svc.convert` --
  rows to messages.
* :mod:`~memory_svc.embeddings` (local ONNX model, LiteLLM), :mod:`~memory_svc.keyword`
  (BM25 sparse vectors), :mod:`~memory_svc.fusion` (weighted RRF), :mod:`~memory_svc.index`
  (embedded Qdrant engine or a Qdrant server) and :mod:`~memory_svc.indexing` (keeping the
  index in step with Postgres, the source of truth).
"""
