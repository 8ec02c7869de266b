"""Every read of the training app, always for one tenant."""

from __future__ import annotations

import numpy as np

from tenants.errors import NotFound
from tenants.models import ApiKey, Chatbot, Tenant
from tenants.selectors import chatbot_list
from training.models import ABTest, ModelVersion, TrainingJob


def _allowed(tenant: Tenant, api_key: ApiKey | None):
    return chatbot_list(tenant=tenant, api_key=api_key).values("pk")


def training_job_get(*, tenant: Tenant, job_id, api_key: ApiKey | None = None) -> TrainingJob:
    job = (
        TrainingJob.objects.for_tenant(tenant)
        .filter(pk=job_id, chatbot__in=_allowed(tenant, api_key))
        .prefetch_related("versions")
        .first()
    )
    if job is None:
        raise NotFound("Training job not found.", field="job_id")
    return job


def training_jobs(*, tenant: Tenant, chatbot: Chatbot, limit: int = 50) -> list[TrainingJob]:
    jobs = TrainingJob.objects.for_tenant(tenant).filter(chatbot=chatbot).prefetch_related("versions")
    return list(jobs.order_by("-created_at")[:limit])


def model_version_get(*, tenant: Tenant, version_id, api_key: ApiKey | None = None) -> ModelVersion:
    version = (
        ModelVersion.objects.for_tenant(tenant)
        .filter(pk=version_id, chatbot__in=_allowed(tenant, api_key))
        .select_related("space__vectors_from", "chatbot")
        .first()
    )
    if version is None:
        raise NotFound("Model version not found.", field="version_id")
    return version


def model_versions(*, tenant: Tenant, chatbot: Chatbot) -> list[ModelVersion]:
    return list(
        ModelVersion.objects.for_tenant(tenant)
        .filter(chatbot=chatbot)
        .select_related("space__vectors_from")
        .order_by("-number")
    )


def ab_test_get(*, tenant: Tenant, chatbot: Chatbot) -> ABTest:
    """The chatbot's live A/B test, else its latest one."""
    tests = ABTest.objects.for_tenant(tenant).filter(chatbot=chatbot).select_related("variant__space", "control")
    test = tests.filter(status__in=ABTest.LIVE).first() or tests.order_by("-created_at").first()
    if test is None:
        raise NotFound("This chatbot has no A/B test; start one with POST.", field="chatbot_id")
    return test


def ab_tests(*, tenant: Tenant, chatbot: Chatbot, limit: int = 20) -> list[ABTest]:
    tests = ABTest.objects.for_tenant(tenant).filter(chatbot=chatbot).select_related("variant", "control")
    return list(tests.order_by("-created_at")[:limit])


ARM_SQL = """
SELECT l.variant,
       count(*),
       count(*) FILTER (WHERE l.result_count = 0),
       count(*) FILTER (WHERE l.result_count > 0 AND l.top_score < %(low)s),
       avg(l.top_score),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY l.took_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY l.took_ms),
       coalesce(sum(f.feedback), 0),
       coalesce(sum(f.helpful), 0)
  FROM search_searchlog l
  LEFT JOIN (SELECT search_id, count(*) AS feedback, count(*) FILTER (WHERE helpful) AS helpful
               FROM search_searchfeedback GROUP BY search_id) f ON f.search_id = l.id
 WHERE l.chatbot_id = %(chatbot)s AND l.created_at >= %(since)s AND l.created_at < %(until)s
   AND l.variant IN ('control', 'variant')
 GROUP BY l.variant
"""


def ab_test_arms(*, test: ABTest, until=None) -> dict[str, dict]:
    """Per arm (control, variant) of a test since it began to serve: searches, zero-result and
    low-score counts, mean top score, p50/p95 latency, feedback and helpful counts. Reads the
    search log as the test's tenant (row-level security applies)."""
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    arms = {name: dict(ARM_ZERO) for name in ("control", "variant")}
    if test.started_at is None:
        return arms
    until = until or test.ended_at or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            ARM_SQL,
            {"low": settings.SEARCH_LOW_SCORE, "chatbot": test.chatbot_id, "since": test.started_at, "until": until},
        )
        for name, searches, zero, low, top, p50, p95, feedback, helpful in cursor.fetchall():
            arms[name] = {
                "searches": searches,
                "zero_results": zero,
                "low_score": low,
                "mean_top_score": None if top is None else round(float(top), 4),
                "p50_ms": round(float(p50), 2),
                "p95_ms": round(float(p95), 2),
                "feedback": int(feedback),
                "helpful": int(helpful),
            }
    return arms


ARM_ZERO = {
    "searches": 0,
    "zero_results": 0,
    "low_score": 0,
    "mean_top_score": None,
    "p50_ms": None,
    "p95_ms": None,
    "feedback": 0,
    "helpful": 0,
}


def evaluation_series(*, tenant: Tenant, chatbot: Chatbot, limit: int = 120) -> list[dict]:
    """The chatbot's nightly evaluations, oldest first (the last ``limit``)."""
    from training.models import Evaluation

    rows = (
        Evaluation.objects.for_tenant(tenant)
        .filter(chatbot=chatbot)
        .order_by("-measured_at")
        .values(
            "measured_at",
            "space_key",
            "version_id",
            "queries",
            "ndcg_10",
            "mrr_10",
            "recall_10",
            "baseline_ndcg_10",
            "note",
        )[:limit]  # fmt: skip
    )
    return list(reversed(rows))


def evaluation_latest(*, tenant: Tenant, chatbot: Chatbot) -> dict | None:
    """The last nightly figure and what the serving version measured before (its baseline)."""
    from training.models import Evaluation

    last = (
        Evaluation.objects.for_tenant(tenant)
        .filter(chatbot=chatbot, ndcg_10__isnull=False)
        .order_by("-measured_at")
        .first()
    )
    if last is None:
        return None
    return {"ndcg": last.ndcg_10, "deployed_ndcg": last.baseline_ndcg_10, "measured_at": last.measured_at,
            "space": last.space_key, "queries": last.queries}  # fmt: skip


def training_corpus(*, chatbot: Chatbot) -> tuple[list[int], list[str]]:
    """(chunk ids, texts as the index embeds them) of the chatbot's ready chunks in id order: the
    corpus hard-negative mining and evaluation search. All of the chatbot's chunks against its
    documents in one hash join (``knowledge/plans.py``), whatever the estimates: the ORM join it
    replaces looked each chunk's document up in a nested loop whose inner scan a new tenant's
    one-row estimates choose by tie-break (1,600 rows, 3.1 ms for 800 chunks in
    tests/search/test_plans.py's database; pinned, 861 rows, 1.0 ms)."""
    from django.db import connection, transaction

    from knowledge.chunking import embedding_text
    from knowledge.plans import plan_pinned

    with transaction.atomic(), connection.cursor() as cursor:
        plan_pinned(cursor)
        cursor.execute(
            """
            SELECT c.id, c.text, c.context FROM knowledge_chunk c
            JOIN knowledge_document d ON d.id = c.document_id
            WHERE c.chatbot_id = %(chatbot)s AND d.chatbot_id = %(chatbot)s AND d.status = 'ready'
            ORDER BY c.id
            """,
            {"chatbot": chatbot.pk},
        )
        rows = cursor.fetchall()
    return [row[0] for row in rows], [embedding_text(text, context) for _, text, context in rows]


def training_corpus_vectors(*, chatbot: Chatbot, space, ids: list[int]) -> np.ndarray | None:
    """The stored vectors of ``ids`` (the chatbot's chunks) in ``space`` (its store), in order;
    None if any is missing. One read of the chatbot's vectors in the space through the (space,
    chatbot) index, matched to ``ids`` here, instead of every chunk id sent as ``IN (...)`` (a
    50,000-id statement for a big chatbot)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT chunk_id, embedding::real[] FROM knowledge_chunkembedding WHERE space_id = %s AND chatbot_id = %s",
            [space.store.pk, chatbot.pk],
        )
        found = dict(cursor.fetchall())
    if any(i not in found for i in ids):
        return None
    return np.asarray([found[i] for i in ids], dtype=np.float32)
