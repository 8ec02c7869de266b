"""The index autopilot (the ``tune`` action): recall@10 against exact search and latency of the
chatbot's HNSW walk for a ladder of ``ef_search`` values, on sampled queries; the smallest that
meets the target (with 95 % confidence) and the exact-vs-HNSW size become its ``SearchTuning``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from knowledge import vectors
from knowledge.embeddings import provider_for_space
from search.models import OptimizationRun, SearchLog, SearchTuning
from search.selectors import chunk_vectors_sample, index_bytes, semantic_hits, vector_count
from search.services.serving import serving_for
from tenants.models import Chatbot
from tenants.services import chatbot_content_changed

RECALL_AT = 10


def sample_queries(chatbot: Chatbot, serving, count: int) -> tuple[list[np.ndarray], dict]:
    """Recent logged queries (their stored vector, else embedded afresh with the serving model),
    topped up with the chatbot's own vectors when it has few logs."""
    logs = list(
        SearchLog.objects.filter(chatbot_id=chatbot.pk)
        .exclude(mode="keyword")
        .order_by("-created_at")
        .values_list("effective_query", "query", "query_embedding", "embedding_space")[: count * 3]
    )
    seen, texts, stored = set(), [], []
    for effective, query, embedding, space_key in logs:
        text = " ".join((effective or query).split()).casefold()
        if not text or text in seen:
            continue
        seen.add(text)
        if embedding is not None and space_key == serving.space.key and len(embedding) == serving.space.dimensions:
            stored.append(np.asarray(embedding, dtype=np.float32))
        else:
            texts.append(text)
        if len(stored) + len(texts) >= count:
            break
    embedded = (
        [np.asarray(v, dtype=np.float32) for v in provider_for_space(serving.space).embed(texts)] if texts else []
    )
    queries = stored + embedded
    own = count - len(queries)
    if own > 0:
        queries += off_manifold(chunk_vectors_sample(space=serving.space.store, chatbot_id=chatbot.pk, count=own),
                                 seed=chatbot.pk)  # fmt: skip
    return queries, {
        "logged": len(stored) + len(embedded),
        "own_vectors": max(len(queries) - len(stored) - len(embedded), 0),
    }


def off_manifold(stored: list, *, seed: int) -> list[np.ndarray]:
    """Stored vectors as stand-in queries, each moved off its chunk by random noise of
    ``OPTIMIZE_SELF_QUERY_NOISE`` times its length (1.0: cosine about 0.7 to its chunk, about
    where real questions meet their best answer). A chunk's own vector would be found at once, its neighbours
    with it, and would overstate the recall a narrow walk gives real queries."""
    if not stored:
        return []
    vectors = np.asarray(stored, dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal(vectors.shape).astype(np.float32)
    noise *= settings.OPTIMIZE_SELF_QUERY_NOISE / np.sqrt(vectors.shape[1])
    moved = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) + noise
    return list(moved / np.linalg.norm(moved, axis=1, keepdims=True))


def timed(fn) -> tuple[list, float]:
    began = time.perf_counter()
    hits = fn()
    return hits, (time.perf_counter() - began) * 1000


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


def measure(space, chatbot: Chatbot, queries, truths, *, ef_search: int | None) -> dict:
    """recall@10 and latency of the HNSW search at ``ef_search`` (None: exact search)."""
    recalls, times = [], []
    for vector, truth in zip(queries, truths):
        hits, took = timed(
            lambda vector=vector: semantic_hits(
                space=space,
                chatbot_id=chatbot.pk,
                vector=vector,
                limit=RECALL_AT,
                exact=ef_search is None,
                ef_search=ef_search or 0,
                max_scan_tuples=settings.SEARCH_HNSW_MAX_SCAN_TUPLES,
            )
        )
        times.append(took)
        if truth:
            recalls.append(len(truth & {h.chunk_id for h in hits}) / len(truth))
    return {
        "ef_search": ef_search,
        "recall": round(statistics.fmean(recalls), 4) if recalls else 1.0,
        # one-sided 95 % lower bound of the mean: the sample is a few hundred queries of many
        "recall_low": round(statistics.fmean(recalls) - 1.645 * statistics.stdev(recalls) / len(recalls) ** 0.5, 4)
        if len(recalls) > 1
        else 1.0,
        "p50_ms": percentile(times, 50),
        "p95_ms": percentile(times, 95),
    }


def ground_truth(space, chatbot, queries) -> tuple[list[set[int]], dict]:
    truths, times = [], []
    for vector in queries:
        hits, took = timed(
            lambda vector=vector: semantic_hits(
                space=space, chatbot_id=chatbot.pk, vector=vector, limit=RECALL_AT, exact=True
            )
        )
        truths.append({h.chunk_id for h in hits})
        times.append(took)
    return truths, {
        "ef_search": None,
        "recall": 1.0,
        "recall_low": 1.0,
        "p50_ms": percentile(times, 50),
        "p95_ms": percentile(times, 95),
    }


def default_ef_search(space, chatbot: Chatbot) -> tuple[int, bool]:
    own = vectors.chatbot_indexes().get(vectors.chatbot_index_name(space_id=space.pk, chatbot_id=chatbot.pk), False)
    return (settings.SEARCH_HNSW_EF_SEARCH_OWN_INDEX if own else settings.SEARCH_HNSW_EF_SEARCH), own


def tune(run: OptimizationRun, results: dict, progress: Callable) -> dict:
    chatbot = run.chatbot
    serving = serving_for(chatbot)
    space = serving.space.store
    count = vector_count(space=space, chatbot_id=chatbot.pk)
    if count == 0:
        return {"skipped": "no vectors to search yet"}
    default_ef, own_index = default_ef_search(space, chatbot)
    before_ef = serving.ef_search or default_ef
    before_exact_max = settings.SEARCH_EXACT_MAX if serving.exact_max is None else serving.exact_max
    progress(0.02, "sampling queries")
    queries, sample = sample_queries(chatbot, serving, settings.OPTIMIZE_SAMPLE_QUERIES)
    progress(0.08, f"exact search of {len(queries)} queries (ground truth)")
    truths, exact = ground_truth(space, chatbot, queries)
    ladder = sorted(set(settings.OPTIMIZE_EF_LADDER) | {before_ef})
    measured = {}
    for step, ef in enumerate(ladder):
        progress(0.1 + 0.85 * step / len(ladder), f"measuring ef_search {ef}")
        measured[ef] = measure(space, chatbot, queries, truths, ef_search=ef)
    # the smallest walk whose recall is at the target with 95 % confidence, not just on this sample
    meeting = [ef for ef in ladder if measured[ef]["recall_low"] >= run.recall_target]
    chosen = meeting[0] if meeting else ladder[-1]
    note = "" if meeting else f"no ef_search up to {ladder[-1]} reaches recall {run.recall_target}: the largest is kept"
    hnsw = measured[chosen]
    faster_by = settings.OPTIMIZE_EXACT_FASTER_BY  # at the median and at p95: one noisy figure does not decide
    exact_wins = exact["p50_ms"] <= hnsw["p50_ms"] * faster_by and exact["p95_ms"] <= hnsw["p95_ms"] * faster_by
    exact_max = max(count, settings.SEARCH_EXACT_MAX) if exact_wins else settings.SEARCH_EXACT_MAX

    def served(ef: int, limit: int) -> dict:  # what searches get: exact up to the limit, else HNSW
        figures = exact if count <= limit else measured[ef]
        return {**figures, "strategy": "exact" if count <= limit else "hnsw", "exact_max": limit}

    progress(0.97, "storing the tuning")
    with transaction.atomic():
        SearchTuning.objects.update_or_create(
            chatbot=chatbot,
            defaults={
                "tenant_id": chatbot.tenant_id,
                "ef_search": chosen,
                "exact_max": exact_max,
                "recall_target": run.recall_target,
                "measured_recall": hnsw["recall"],
                "measured_at": timezone.now(),
                "source_run": run,
            },
        )
        chatbot_content_changed(chatbot_id=chatbot.pk)  # every process's serving cache and result caches
    index = vectors.chatbot_index_name(space_id=space.pk, chatbot_id=chatbot.pk)
    size = index_bytes(index) if own_index else None
    return {
        "vectors": count,
        "queries": {"count": len(queries), **sample},
        "own_index": own_index,
        "ladder": [measured[ef] for ef in ladder],
        "exact": exact,
        "chosen": {"ef_search": chosen, "exact_max": exact_max, "exact_always": exact_wins, "note": note},
        "before": {**served(before_ef, before_exact_max), "index_bytes": size},
        "after": {**served(chosen, exact_max), "index_bytes": size},
    }
