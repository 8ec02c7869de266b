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

from __future__ import annotations

import logging
import re
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from knowledge import vectors
from knowledge.embeddings import provider_for_space
from search.models import OptimizationRun, SearchLog, SearchTuning
from search.selectors import (
    VECTOR_TABLES,
    chunk_vectors_sample,
    index_bytes,
    semantic_hits,
    table_tuples,
    vector_count,
)
from search.services.serving import serving_for
from tenants import dbroles
from tenants.errors import Conflict, DomainError, NotFound
from tenants.models import Chatbot, Tenant
from tenants.services import chatbot_content_changed

logger = logging.getLogger(__name__)

ACTIONS = ("tune", "reindex", "vacuum", "analyze")
RECALL_AT = 10
Status = OptimizationRun.Status


def optimization_start(
    *,
    tenant: Tenant,
    chatbot: Chatbot,
    actions: list[str] | None = None,
    recall_target: float = 0.98,
    requested_by: str = "",
) -> OptimizationRun:
    """Queue an optimisation run of ``actions`` (all, in their order, by default)."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    actions = optimization_actions_parse(actions)
    optimization_runs_expire(chatbot=chatbot)
    if isinstance(recall_target, bool) or not isinstance(recall_target, int | float):
        raise DomainError("recall_target must be a number above 0.5 and at most 1.0.", field="recall_target")
    if not 0.5 < float(recall_target) <= 1.0:
        raise DomainError(
            f"recall_target must be above 0.5 and at most 1.0 (got {recall_target}); 0.98 is a good start.",
            field="recall_target",
        )
    try:
        with transaction.atomic():
            run = OptimizationRun.objects.create(
                tenant=tenant,
                chatbot=chatbot,
                actions=actions,
                recall_target=float(recall_target),
                requested_by=requested_by[:200],
                stage="Waiting for a worker",
            )
    except IntegrityError:
        raise Conflict("This chatbot already has an optimization run queued or running; wait for it to end.") from None
    transaction.on_commit(lambda: optimization_enqueue(run.pk, tenant.pk))
    return run


def optimization_actions_parse(actions) -> list[str]:
    if actions is None:
        return list(ACTIONS)
    if not isinstance(actions, list | tuple) or not actions or not all(isinstance(a, str) for a in actions):
        raise DomainError(f"actions must be a non-empty list of {', '.join(ACTIONS)}.", field="actions")
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise DomainError(
            f"Unknown action {unknown[0]!r}: actions are {', '.join(ACTIONS)}.", field="actions", code="invalid"
        )
    return [a for a in ACTIONS if a in actions]  # each once, in the order they make sense


def optimization_runs_expire(*, chatbot: Chatbot) -> int:
    """Fail the chatbot's runs whose worker went silent (no progress for
    ``OPTIMIZE_STALE_AFTER_SECONDS``; a queued run never picked up for as long), so they stop
    holding the chatbot's one live run. Called before each start (API, dashboard, nightly)."""
    stale = timezone.now() - timedelta(seconds=settings.OPTIMIZE_STALE_AFTER_SECONDS)
    live = OptimizationRun.objects.filter(chatbot_id=chatbot.pk, status__in=OptimizationRun.ACTIVE)
    silent = live.filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, created_at__lt=stale))
    return silent.update(
        status=Status.FAILED,
        finished_at=timezone.now(),
        error="The worker stopped answering while this run was queued or running; start a new run.",
    )


def optimization_enqueue(run_id: int, tenant_id: int) -> None:
    from search.tasks import optimization_run_task

    try:
        optimization_run_task.delay(run_id=run_id, tenant_id=tenant_id)  # the default (maintenance) queue
    except Exception:  # the broker is down: the nightly run finds the chatbot again
        logger.warning("optimization run %s not sent to the broker", run_id, exc_info=True)


def _claim(run_id: int) -> OptimizationRun | None:
    claimed = OptimizationRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING,
        started_at=timezone.now(),
        percent=1,
        stage="Starting",
        heartbeat_at=timezone.now(),
        attempts=F("attempts") + 1,
    )
    return OptimizationRun.objects.select_related("chatbot").get(pk=run_id) if claimed else None


def _save(run: OptimizationRun, **fields) -> None:
    fields["heartbeat_at"] = timezone.now()
    OptimizationRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(**fields)
    for name, value in fields.items():
        setattr(run, name, value)


def optimization_run(*, run_id: int) -> str:
    """Run a queued run to its end (in the run's tenant scope); returns its final status, or
    ``skipped`` when it is not queued (already taken, or done)."""
    run = _claim(run_id)
    if run is None:
        return "skipped"
    results: dict = {}
    action = ""
    try:
        for number, action in enumerate(run.actions):
            low, high = 1 + 98 * number // len(run.actions), 1 + 98 * (number + 1) // len(run.actions)

            def progress(fraction: float, stage: str, *, action=action, low=low, high=high) -> None:
                percent = low + int((high - low) * min(max(fraction, 0.0), 1.0))
                _save(run, percent=percent, stage=f"{action}: {stage}"[:200])

            progress(0.0, "starting")
            results[action] = ACTION_RUNNERS[action](run, results, progress)
            _save(run, results=results, percent=high)
    except DomainError as exc:
        _finish(run, Status.FAILED, results, error=exc.message)
        return Status.FAILED
    except Exception as exc:
        logger.exception("optimization run %s failed", run_id)
        _finish(run, Status.FAILED, results, error=f"{action} failed: {type(exc).__name__}: {exc}"[:2000])
        return Status.FAILED
    _finish(run, Status.SUCCEEDED, results, percent=100, stage="Done")
    return Status.SUCCEEDED


def _finish(run: OptimizationRun, status: str, results: dict, **fields) -> None:
    OptimizationRun.objects.filter(pk=run.pk).update(
        status=status, results=results, finished_at=timezone.now(), **fields
    )


# --- tune: the index autopilot -------------------------------------------------------------------


def _queries(chatbot: Chatbot, serving, count: int) -> tuple[list[np.ndarray], dict]:
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
        queries += _off_manifold(chunk_vectors_sample(space=serving.space.store, chatbot_id=chatbot.pk, count=own),
                                 seed=chatbot.pk)  # fmt: skip
    return queries, {
        "logged": len(stored) + len(embedded),
        "own_vectors": max(len(queries) - len(stored) - len(embedded), 0),
    }


def _off_manifold(stored: list, *, seed: int) -> list[np.ndarray]:
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


def _timed(fn) -> tuple[list, float]:
    began = time.perf_counter()
    hits = fn()
    return hits, (time.perf_counter() - began) * 1000


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


def _measure(space, chatbot: Chatbot, queries, truths, *, ef_search: int | None) -> dict:
    """recall@10 and latency of the HNSW search at ``ef_search`` (None: exact search)."""
    recalls, times = [], []
    for vector, truth in zip(queries, truths):
        hits, took = _timed(
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
        "p50_ms": _percentile(times, 50),
        "p95_ms": _percentile(times, 95),
    }


def _ground_truth(space, chatbot, queries) -> tuple[list[set[int]], dict]:
    truths, times = [], []
    for vector in queries:
        hits, took = _timed(
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
        "p50_ms": _percentile(times, 50),
        "p95_ms": _percentile(times, 95),
    }


def _default_ef(space, chatbot: Chatbot) -> tuple[int, bool]:
    own = vectors.chatbot_indexes().get(vectors.chatbot_index_name(space_id=space.pk, chatbot_id=chatbot.pk), False)
    return (settings.SEARCH_HNSW_EF_SEARCH_OWN_INDEX if own else settings.SEARCH_HNSW_EF_SEARCH), own


def _tune(run: OptimizationRun, results: dict, progress: Callable) -> dict:
    chatbot = run.chatbot
    serving = serving_for(chatbot)
    space = serving.space.store
    count = vector_count(space=space, chatbot_id=chatbot.pk)
    if count == 0:
        return {"skipped": "no vectors to search yet"}
    default_ef, own_index = _default_ef(space, chatbot)
    before_ef = serving.ef_search or default_ef
    before_exact_max = settings.SEARCH_EXACT_MAX if serving.exact_max is None else serving.exact_max
    progress(0.02, "sampling queries")
    queries, sample = _queries(chatbot, serving, settings.OPTIMIZE_SAMPLE_QUERIES)
    progress(0.08, f"exact search of {len(queries)} queries (ground truth)")
    truths, exact = _ground_truth(space, chatbot, queries)
    ladder = sorted(set(settings.OPTIMIZE_EF_LADDER) | {before_ef})
    measured = {}
    for step, ef in enumerate(ladder):
        progress(0.1 + 0.85 * step / len(ladder), f"measuring ef_search {ef}")
        measured[ef] = _measure(space, chatbot, queries, truths, ef_search=ef)
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


# --- reindex ---------------------------------------------------------------------------------------


def expected_index_bytes(*, count: int, dimensions: int, m: int = 16) -> int:
    """About what a freshly built HNSW index (m = 16) of ``count`` vectors takes: each element's
    vector and its neighbour lists (2m on layer 0, a few above), on 8 kB pages."""
    per_vector = 4 * dimensions + 8 + 6 * (2 * m + m // 2) + 48
    return (count * per_vector * 8192) // 7800 + 2 * 8192


def _reindex(run: OptimizationRun, results: dict, progress: Callable) -> dict:
    chatbot = run.chatbot
    serving = serving_for(chatbot)
    space = serving.space.store
    name = vectors.chatbot_index_name(space_id=space.pk, chatbot_id=chatbot.pk)
    indexes = vectors.chatbot_indexes()
    count = vector_count(space=space, chatbot_id=chatbot.pk)
    if name not in indexes:
        return {"rebuilt": False, "skipped": f"searched exactly: no index of its own ({count} vectors)"}
    tuning = SearchTuning.objects.filter(chatbot_id=chatbot.pk).first()
    ef = tuning.ef_search if tuning else _default_ef(space, chatbot)[0]
    progress(0.05, "measuring recall")
    tuned = results.get("tune", {}).get("ladder")
    if tuned:
        recall = next(row["recall"] for row in tuned if row["ef_search"] == ef)
        queries = truths = None
    else:
        queries, _ = _queries(chatbot, serving, min(settings.OPTIMIZE_SAMPLE_QUERIES, 100))
        truths, _ = _ground_truth(space, chatbot, queries)
        recall = _measure(space, chatbot, queries, truths, ef_search=ef)["recall"]
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
        after["recall_after"] = _measure(space, chatbot, queries, truths, ef_search=ef)["recall"]
    return {"rebuilt": True, "reason": "; ".join(reasons), "bytes_before": size_before, **figures, **after}


# --- vacuum ----------------------------------------------------------------------------------------


def _vacuum(run: OptimizationRun, results: dict, progress: Callable) -> dict:
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


def _analyze(run: OptimizationRun, results: dict, progress: Callable) -> dict:
    try:
        from search.services.analysis import vector_analysis
    except ImportError:
        return {"skipped": "analysis not available"}
    serving = serving_for(run.chatbot)

    def callback(percent: float, stage: str = "analysing vectors") -> None:  # its progress(percent, stage)
        progress(float(percent) / 100, str(stage))

    return vector_analysis(chatbot=run.chatbot, space=serving.space, progress=callback)


ACTION_RUNNERS: dict[str, Callable[[OptimizationRun, dict, Callable], dict]] = {
    "tune": _tune,
    "reindex": _reindex,
    "vacuum": _vacuum,
    "analyze": _analyze,
}


# --- nightly -------------------------------------------------------------------------------------


def optimization_nightly() -> dict:
    """Start a run with the default actions for every chatbot with vectors (beat, once a day);
    chatbots with a live run are skipped."""
    from tenants.scoping import cross_tenant_context, tenant_context

    with cross_tenant_context("search-optimize-nightly"):
        bots = sorted({bot for _, bot in vectors.vector_counts()})
        tenants = dict(Chatbot.objects.filter(pk__in=bots).values_list("pk", "tenant_id"))
        live = set(
            OptimizationRun.objects.filter(status__in=OptimizationRun.ACTIVE).values_list("chatbot_id", flat=True)
        )
    started, skipped = [], []
    for bot_id in bots:
        if bot_id in live or bot_id not in tenants:
            skipped.append(bot_id)
            continue
        with tenant_context(tenants[bot_id]):
            chatbot = Chatbot.objects.select_related("tenant").get(pk=bot_id)
            try:
                optimization_start(tenant=chatbot.tenant, chatbot=chatbot, requested_by="nightly")
                started.append(bot_id)
            except Conflict:
                skipped.append(bot_id)
    return {"started": started, "skipped": skipped}


def optimization_run_tenant_id(*, run_id: int) -> int | None:
    from tenants.scoping import cross_tenant_context

    with cross_tenant_context("search-optimization-lookup"):
        return OptimizationRun.objects.filter(pk=run_id).values_list("tenant_id", flat=True).first()
