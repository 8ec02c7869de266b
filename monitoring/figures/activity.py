"""What a tenant's chatbots did: searches, training jobs, uploads. Every function takes
``tenant=`` and reads under its row-level security; ``chatbot`` narrows to one chatbot."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count

from chatbot_training import replicas
from knowledge.models import Chunk, Document, IngestionJob
from tenants.models import Chatbot, Tenant
from training.models import TrainingJob


def _round(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


def _scope(tenant: Tenant, chatbot: Chatbot | None, since: datetime) -> tuple[str, dict]:
    where = "tenant_id = %(tenant)s AND created_at >= %(since)s"
    args = {"tenant": tenant.pk, "since": since, "low": settings.SEARCH_LOW_SCORE}
    if chatbot is not None:
        where += " AND chatbot_id = %(chatbot)s"
        args["chatbot"] = chatbot.pk
    return where, args


def search_figures(*, tenant: Tenant, chatbot: Chatbot | None = None, since: datetime) -> dict:
    """Searches since ``since``: volume, latency percentiles, cache hit, zero-result and low-score
    rates, per chatbot and per day."""
    where, args = _scope(tenant, chatbot, since)
    figures = """count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY took_ms),
                 percentile_cont(0.95) WITHIN GROUP (ORDER BY took_ms),
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY took_ms),
                 avg(cache_hit::int), avg((result_count = 0)::int),
                 avg((result_count > 0 AND top_score < %(low)s)::int)"""

    def _read(connection):  # one snapshot, on a read replica when there is one (chatbot_training/replicas.py)
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f"SELECT {figures} FROM search_searchlog WHERE {where}", args)
            total = _summary(cursor.fetchone())
            cursor.execute(
                f"SELECT chatbot_id, {figures} FROM search_searchlog WHERE {where} GROUP BY 1 ORDER BY 2 DESC", args
            )
            per_chatbot = [{"chatbot_id": row[0], **_summary(row[1:])} for row in cursor.fetchall()]
            cursor.execute(
                f"SELECT (date_trunc('day', created_at AT TIME ZONE 'UTC'))::date, {figures} FROM search_searchlog "
                f"WHERE {where} GROUP BY 1 ORDER BY 1",
                args,
            )
            daily = [{"date": row[0].isoformat(), **_summary(row[1:])} for row in cursor.fetchall()]
            return total, per_chatbot, daily

    total, per_chatbot, daily = replicas.read(_read)
    names = dict(Chatbot.objects.for_tenant(tenant).values_list("pk", "name"))
    for row in per_chatbot:
        row["chatbot"] = names.get(row["chatbot_id"], "")
    return {**total, "per_chatbot": per_chatbot, "daily": daily}


def _summary(row) -> dict:
    searches, p50, p95, p99, hit, zero, low = row
    return {
        "searches": searches,
        "p50_ms": _round(p50, 2),
        "p95_ms": _round(p95, 2),
        "p99_ms": _round(p99, 2),
        "cache_hit_rate": _round(hit),
        "zero_result_rate": _round(zero),
        "low_score_rate": _round(low),
    }


def training_figures(*, tenant: Tenant, chatbot: Chatbot | None = None, since: datetime) -> dict:
    """Training jobs created since ``since``: by outcome and type, durations, failure rate."""
    jobs = TrainingJob.objects.for_tenant(tenant).filter(created_at__gte=since)
    if chatbot is not None:
        jobs = jobs.filter(chatbot=chatbot)
    by_status = dict(jobs.values_list("status").annotate(n=Count("pk")).order_by())
    by_type = dict(jobs.values_list("job_type").annotate(n=Count("pk")).order_by())
    finished = by_status.get("succeeded", 0) + by_status.get("failed", 0)
    with connection.cursor() as cursor:
        where = (
            "tenant_id = %(tenant)s AND created_at >= %(since)s AND started_at IS NOT NULL AND finished_at IS NOT NULL"
        )
        args = {"tenant": tenant.pk, "since": since}
        if chatbot is not None:
            where += " AND chatbot_id = %(chatbot)s"
            args["chatbot"] = chatbot.pk
        cursor.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)), "
            "avg(extract(epoch FROM finished_at - started_at)) "
            f"FROM training_trainingjob WHERE {where} AND status = 'succeeded'",
            args,
        )
        p50, p95, mean = cursor.fetchone()
    return {
        "jobs": sum(by_status.values()),
        "by_status": by_status,
        "by_type": by_type,
        "failure_rate": _round(by_status.get("failed", 0) / finished) if finished else None,
        "duration_seconds": {"p50": _round(p50, 1), "p95": _round(p95, 1), "mean": _round(mean, 1)},
        "running": by_status.get("running", 0),
        "queued": by_status.get("queued", 0),
    }


def content_figures(*, tenant: Tenant, chatbot: Chatbot | None = None, since: datetime | None = None) -> dict:
    """Documents by status and type, chunks, quality warnings; uploads (and their failure rate)
    since ``since`` when given."""
    documents = Document.objects.for_tenant(tenant)
    chunks = Chunk.objects.for_tenant(tenant)
    if chatbot is not None:
        documents, chunks = documents.filter(chatbot=chatbot), chunks.filter(chatbot=chatbot)
    by_status = dict(documents.values_list("status").annotate(n=Count("pk")).order_by())
    by_type = dict(documents.values_list("content_type").annotate(n=Count("pk")).order_by())
    warned = (
        documents.exclude(quality__warnings=[])
        .exclude(quality__warnings__isnull=True)
        .filter(quality__has_key="warnings")
    )
    figures = {
        "documents": sum(by_status.values()),
        "by_status": by_status,
        "by_type": by_type,
        "chunks": chunks.count(),
        "documents_with_warnings": warned.count(),
        "bytes": sum(documents.values_list("size_bytes", flat=True)),
    }
    if since is not None:
        recent = documents.filter(created_at__gte=since)
        uploads = recent.count()
        failed = recent.filter(status=Document.Status.FAILED).count()
        figures.update(
            {"uploads": uploads, "failed": failed, "failure_rate": _round(failed / uploads) if uploads else None}
        )
    return figures


def job_backlog(*, tenant: Tenant) -> dict:
    """The tenant's work waiting and running, per kind of job: its share of the queues."""
    ingestion = dict(
        IngestionJob.objects.for_tenant(tenant)
        .filter(status__in=[IngestionJob.Status.QUEUED, IngestionJob.Status.PROCESSING])
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    training = dict(
        TrainingJob.objects.for_tenant(tenant)
        .filter(status__in=TrainingJob.ACTIVE)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    running = (
        [
            {
                "kind": "training",
                "job_id": job.pk,
                "chatbot_id": job.chatbot_id,
                "job_type": job.job_type,
                "stage": job.stage,
                "percent": job.progress,
            }  # fmt: skip
            for job in TrainingJob.objects.for_tenant(tenant).filter(status="running").order_by("pk")[:50]
        ]
        + [
            {
                "kind": "ingestion",
                "job_id": job.pk,
                "document_id": job.document_id,
                "stage": job.stage,
                "percent": job.progress,
            }  # fmt: skip
            for job in IngestionJob.objects.for_tenant(tenant)
            .filter(status=IngestionJob.Status.PROCESSING)
            .order_by("pk")[:50]
        ]
    )
    return {
        "queued": {"ingestion": ingestion.get("queued", 0), "training": training.get("queued", 0)},
        "running": {"ingestion": ingestion.get("processing", 0), "training": training.get("running", 0)},
        "running_jobs": running,
    }
