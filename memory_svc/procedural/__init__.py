"""Procedural memory: workflows, versioned skills, trajectories, hybrid search over them,
skill candidates and learning from trajectories.

Hosted by the memory service (it shares its embedders, vector index and fusion) with its own
Postgres schema ``procedural`` and Alembic history.

Layout: :mod:`~memory_svc.procedural.component` wires the parts;
:mod:`~memory_svc.procedural.servicer` is the thin gRPC servicer;
:mod:`~memory_svc.procedural.store` the standard methods of workflows, skills and
trajectories; :mod:`~memory_svc.procedural.candidates` skill candidates;
:mod:`~memory_svc.procedural.search` SearchProcedural; :mod:`~memory_svc.procedural.indexing`
the vector index side; :mod:`~memory_svc.procedural.validation`,
:mod:`~memory_svc.procedural.listing` (filters, pages), :mod:`~memory_svc.procedural.convert`
(rows to messages) and :mod:`~memory_svc.procedural.models` (tables).
"""
