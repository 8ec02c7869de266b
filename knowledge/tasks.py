"""Celery entry points: ids in, one service call, retry policy."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from knowledge.embeddings import ProviderUnavailable


@shared_task(
    bind=True,
    name="knowledge.ingestion_job_run",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    soft_time_limit=3600,
    time_limit=3700,
)
def ingestion_job_run_task(self, *, job_id: int, tenant_id: int | None = None) -> str:
    from knowledge import services
    from tenants.scoping import tenant_context

    if tenant_id is None:
        tenant_id = services.ingestion_job_tenant_id(job_id=job_id)
        if tenant_id is None:
            return "skipped"
    with tenant_context(tenant_id):
        return _ingestion_job_run(self, services, job_id)


def _ingestion_job_run(task, services, job_id: int) -> str:
    try:
        # The Celery task id is the lease: a message redelivered after its worker died may resume.
        result = services.ingestion_job_run(job_id=job_id, lease_token=task.request.id)
        if result == "ready":
            chatbot_id = services.ingestion_job_chatbot_id(job_id=job_id)
            if chatbot_id is not None and services.vector_index_wanted(chatbot_id=chatbot_id):
                vector_indexes_optimize_task.delay(chatbot_id=chatbot_id)
        return result
    except ProviderUnavailable as exc:
        waits = services.ingestion_job_release(job_id=job_id, reason=str(exc))
        if waits == 0 or waits > settings.INGESTION_PROVIDER_MAX_WAIT_RETRIES:
            return "failed"
        raise task.retry(countdown=min(300, 5 * 2 ** (waits - 1)), max_retries=None) from None
    except OperationalError as exc:  # the database went away: try again shortly
        raise task.retry(countdown=5, max_retries=20, exc=exc) from None


@shared_task(name="knowledge.ingestion_jobs_sweep", expires=120)
def ingestion_jobs_sweep_task() -> dict:
    from knowledge.services import ingestion_jobs_sweep

    return ingestion_jobs_sweep()


@shared_task(name="knowledge.vector_indexes_optimize", expires=3000, soft_time_limit=3000, time_limit=3300)
def vector_indexes_optimize_task(*, chatbot_id: int | None = None) -> dict:
    from knowledge.services import vector_indexes_optimize

    return vector_indexes_optimize(chatbot_id=chatbot_id)


@shared_task(name="knowledge.chunk_embeddings_refresh", expires=3000, soft_time_limit=3000, time_limit=3300)
def chunk_embeddings_refresh_task(*, chatbot_id: int | None = None) -> dict:
    from knowledge.services import chunk_embeddings_refresh

    return chunk_embeddings_refresh(chatbot_id=chatbot_id)
