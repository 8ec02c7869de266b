"""Upkeep actions of an optimization run: ``reindex`` (a chatbot's own HNSW index, rebuilt
concurrently when recall, dead rows or bloat call for it), ``vacuum`` (the vector and chunk
tables past a dead-tuple share) and ``analyze`` (the vector analysis)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from django.conf import settings

from knowledge import vectors
from search.models import OptimizationRun, SearchTuning
from search.selectors import VECTOR_TABLES, index_bytes, table_tuples, vector_count
from search.services.optimize.tune import default_ef_search, ground_truth, measure, sample_queries
from search.services.serving import serving_for
from tenants import dbroles

# --- reindex ---------------------------------------------------------------------------------------


def expected_index_bytes(*, count: int, dimensions: int, m: int = 16) -> int:
    """About what a freshly built HNSW index (m = 16) of ``count`` vectors takes: each element's
    vector and its neighbour lists (2m on layer 0, a few above), on 8 kB pages."""
    per_vector = 4 * dimensions + 8 + 6 * (2 * m + m // 2) + 48
    return (count * per_vector * 8192) // 7800 + 2 * 8192


def reindex(run: OptimizationRun, results: dict, progress: Callable) -> dict:
    chatbot = run.chatbot
    serving = serving_for(chatbot)
    space = serving.space.store
    name = vectors.chatbot_index_name(space_id=space.pk, chatbot_id=chatbot.pk)
    indexes = vectors.chatbot_indexes()
    count = vector_count(space=space, chatbot_id=chatbot.pk)
    if name not in indexes:
        return {"rebuilt": False, "skipped": f"searched exactly: no index of its own ({count} vectors)"}
    tuning = SearchTuning.objects.filter(chatbot_id=chatbot.pk).first()
    ef = tuning.ef_search if tuning else default_ef_search(space, chatbot)[0]
    progress(0.05, "measuring recall")
    tuned = results.get("tune", {}).get("ladder")
    if tuned:
        recall = next(row["recall"] for row in tuned if row["ef_search"] == ef)
        queries = truths = None
    else:
        queries, _ = sample_queries(chatbot, serving, min(settings.OPTIMIZE_SAMPLE_QUERIES, 100))
        truths, _ = ground_truth(space, chatbot, queries)
        recall = measure(space, chatbot, queries, truths, ef_search=ef)["recall"]
    table = table_tuples(tables=("knowledge_chunkembedding",)).get("knowledge_chunkembedding", {})
    size_before = index_bytes(name) or 0
    expected = expected_index_bytes(count=count, dimensions=int(space.dimensions))
    bloat = round(size_before / expected, 2) if expected else 0.0
    reasons = []
    if not indexes[name]:
        reasons.append("the index is invalid (an interrupted build)")
    if recall < run.recall_target:
        reasons.append(f"recall {recall} at ef_search {ef} is below the target {run.recall_target}")
    if table.get("dead_share", 0) > settings.OPTIMIZE_REINDEX_DEAD_SHARE:
        reasons.append(f"{table['dead_share']:.0%} of the vector table's rows are dead")
    if bloat > settings.OPTIMIZE_REINDEX_BLOAT:
        reasons.append(f"the index is {bloat}x the size expected for {count} vectors")
    figures = {"index": name, "vectors": count, "expected_bytes": expected, "bloat": bloat, "recall_before": recall}
    figures["dead_share"] = table.get("dead_share")
    if not reasons:
        return {"rebuilt": False, "reason": "not needed", "bytes_before": size_before, **figures}
    progress(0.3, "rebuilding the index concurrently")
    if not re.fullmatch(vectors.CHATBOT_INDEX_PATTERN, name):
        raise ValueError(f"not a chatbot vector index: {name!r}")
    began = time.perf_counter()
    with dbroles.owner_connect() as owner:  # searches go on; not inside a transaction
        owner.execute(f"REINDEX INDEX CONCURRENTLY {name}")
    seconds = round(time.perf_counter() - began, 2)
    after = {"bytes_after": index_bytes(name), "seconds": seconds}
    if queries is not None:
        progress(0.9, "measuring recall again")
        after["recall_after"] = measure(space, chatbot, queries, truths, ef_search=ef)["recall"]
    return {"rebuilt": True, "reason": "; ".join(reasons), "bytes_before": size_before, **figures, **after}


# --- vacuum ----------------------------------------------------------------------------------------


def vacuum(run: OptimizationRun, results: dict, progress: Callable) -> dict:
    before = table_tuples()
    due = [t for t in VECTOR_TABLES if before.get(t, {}).get("dead_share", 0) > settings.OPTIMIZE_VACUUM_DEAD_SHARE]
    if not due:
        return {"vacuumed": [], "reason": "no table past the dead-tuple share", "before": before, "after": before}
    for number, table in enumerate(due):
        progress(number / len(due), f"VACUUM (ANALYZE) {table}")
        with dbroles.owner_connect() as owner:  # only the owner may vacuum; never in a transaction
            owner.execute(f"VACUUM (ANALYZE) {table}")  # a name from VECTOR_TABLES only
    after = table_tuples()
    return {"vacuumed": due, "threshold": settings.OPTIMIZE_VACUUM_DEAD_SHARE, "before": before, "after": after}


# --- analyze ---------------------------------------------------------------------------------------


def analyze(run: OptimizationRun, results: dict, progress: Callable) -> dict:
    try:
        from search.services.analysis import vector_analysis
    except ImportError:
        return {"skipped": "analysis not available"}
    serving = serving_for(run.chatbot)

    def callback(percent: float, stage: str = "analysing vectors") -> None:  # its progress(percent, stage)
        progress(float(percent) / 100, str(stage))

    return vector_analysis(chatbot=run.chatbot, space=serving.space, progress=callback)
