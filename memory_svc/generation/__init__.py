"""Memory generation on the memory-service side (issue 6, DESIGN.md §5).

* :mod:`.requests` validates GenerateMemories and resolves its scope (a session source is
  looked up in SessionService with the caller's credentials);
* :mod:`.accept` writes the operation and its job (:func:`.outbox.create_with_job`) in one
  transaction, and :class:`.outbox.Relay` publishes the jobs to JetStream (``Nats-Msg-Id`` =
  operation name);
* :mod:`.apply` applies a job's consolidation actions in one idempotent transaction;
* :mod:`.similar` finds the candidates consolidation may act on (:mod:`.vectors` keeps the
  facts' embeddings for the apply that follows);
* :mod:`.watermarks` keeps, per session and scope, the newest event a generation processed;
* :mod:`.progress` records the worker's progress reports;
* :mod:`.lifecycle` serves cancel / wait / delete / watch of operations;
* :mod:`.servicer` is the MemoryJobService the worker calls; :mod:`.jobs_stream` wires it
  all into the memory component (NATS optional, connected in the background).
"""
