"""A chatbot's search optimisation run: the index autopilot and the upkeep of its vectors.

``optimization_start`` queues a run (one live run per chatbot); ``optimization_run`` (the
``search.optimization_run`` task) claims it with a conditional UPDATE and does its actions in
order, each writing what it measured before and after into ``results``:

- ``tune``: recall@10 (against exact search) and p50/p95 latency of the chatbot's HNSW search for
  a ladder of ``hnsw.ef_search`` values, on up to ``OPTIMIZE_SAMPLE_QUERIES`` recent logged
  queries (else the chatbot's own vectors as queries). Keeps the smallest ef_search that meets
  the recall target (the largest if none does), and searches the chatbot exactly always when
  exact search is no slower; stored as its ``SearchTuning``, read by every search through
  ``serving_for`` (the content version is bumped, so every process and cache follows).
- ``reindex``: ``REINDEX INDEX CONCURRENTLY`` of the chatbot's own HNSW index when recall at the
  tuned ef_search is below target, the vector table holds many dead tuples or the index is
  bloated.
- ``vacuum``: ``VACUUM (ANALYZE)`` of the vector and chunk tables past a dead-tuple share.
- ``analyze``: the vector analysis (``search.services.analysis.vector_analysis``).
"""

from search.services.optimize.runs import (
    ACTIONS,
    optimization_actions_parse,
    optimization_nightly,
    optimization_run,
    optimization_run_tenant_id,
    optimization_runs_expire,
    optimization_start,
)
from search.services.optimize.upkeep import expected_index_bytes

__all__ = [
    "ACTIONS",
    "expected_index_bytes",
    "optimization_actions_parse",
    "optimization_nightly",
    "optimization_run",
    "optimization_run_tenant_id",
    "optimization_runs_expire",
    "optimization_start",
]
