"""Ingestion jobs as state machines: created and enqueued on commit, claimed under a lease,
kept alive by a heartbeat, released, failed with a reason, and swept when a worker vanished."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from knowledge.models import (
    Document,
    IngestionJob,
)
from tenants.scoping import cross_tenant_context, tenant_context

logger = logging.getLogger(__name__)


Status = Document.Status


Stage = IngestionJob.Stage


EMBED_PROGRESS_FROM, EMBED_PROGRESS_TO = 10, 95


class LeaseLost(Exception):
    """Another worker owns the job now, or the document was deleted: stop quietly."""


def job_create(document: Document) -> IngestionJob:
    job = IngestionJob.objects.create(tenant_id=document.tenant_id, document=document)
    job_id, tenant_id = job.pk, job.tenant_id
    transaction.on_commit(lambda: job_enqueue(job_id, tenant_id))
    return job


def job_enqueue(job_id: int, tenant_id: int) -> None:
    """Send the job's message. If the broker (Redis) is down the upload still stands: the job is
    committed as ``queued`` and the sweeper sends it again once the broker is back."""
    from knowledge.tasks import ingestion_job_run_task

    try:
        ingestion_job_run_task.delay(job_id=job_id, tenant_id=tenant_id)
    except Exception:  # kombu's OperationalError and friends: nothing is lost, only delayed
        logger.warning("could not queue ingestion job %s (broker unavailable); the sweeper will", job_id, exc_info=True)


def _stale_before():
    return timezone.now() - timedelta(seconds=settings.INGESTION_STALE_AFTER_SECONDS)


def job_claim(*, job_id: int, lease_token: str) -> IngestionJob | None:
    """Take the job if it is queued, was ours (a redelivered message after our worker died),
    or its worker stopped sending heartbeats. Fails it after too many interruptions."""
    with transaction.atomic():
        job = IngestionJob.objects.select_for_update().select_related("document").filter(pk=job_id).first()
        if job is None or job.status in (Status.READY, Status.FAILED):
            return None
        if job.status == Status.PROCESSING:
            ours = job.lease_token == lease_token
            stale = job.heartbeat_at is None or job.heartbeat_at < _stale_before()
            if not ours and not stale:
                return None
            job.interruptions += 1
            if job.interruptions >= settings.INGESTION_MAX_ATTEMPTS:
                job_fail(
                    job,
                    f"Processing was interrupted {job.interruptions} times (the worker crashed or was "
                    "stopped while handling this file), so it was given up. The file may be too large "
                    "or malformed; check it and reprocess.",
                )
                return None
        now = timezone.now()
        job.status = Status.PROCESSING
        job.attempts += 1
        job.lease_token = lease_token
        job.heartbeat_at = now
        job.started_at = job.started_at or now
        job.stage = Stage.PARSING
        job.error = ""
        job.save()
        Document.objects.filter(pk=job.document_id).update(status=Status.PROCESSING, error="", updated_at=now)
        return job


def heartbeat(job: IngestionJob, **fields) -> None:
    fields["heartbeat_at"] = timezone.now()
    fields["updated_at"] = fields["heartbeat_at"]
    if not IngestionJob.objects.filter(pk=job.pk, lease_token=job.lease_token, status=Status.PROCESSING).update(
        **fields
    ):
        raise LeaseLost()
    for name, value in fields.items():
        setattr(job, name, value)


class Pulse:
    """The job's heartbeat from a thread of its own while the job runs, whatever the worker's
    main thread is doing (waiting on the parsing child, loading the model, a long embedding batch
    or SQL statement): a job whose worker is alive is never stale, so the sweeper never hands it
    to a second worker. The beat is conditional on the lease, and stops once the job is done or
    another worker holds it. (Progress and the lease check stay with ``heartbeat``.)"""

    def __init__(self, job, *, running: str = Status.PROCESSING, every: float | None = None):
        """``job``: an ingestion job, or any job row with ``lease_token``, ``status`` and
        ``heartbeat_at`` (training jobs beat with it too), running while ``status`` is ``running``."""
        import threading

        self.model, self.running = type(job), running
        self.every = every or settings.INGESTION_HEARTBEAT_SECONDS
        self.job_id, self.lease, self.tenant_id = job.pk, job.lease_token, job.tenant_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"job-{job.pk}-heartbeat", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        from django.db import connections

        try:
            with tenant_context(self.tenant_id):
                while not self.stopped.wait(self.every):
                    beating = self.model.objects.filter(
                        pk=self.job_id, lease_token=self.lease, status=self.running
                    ).update(heartbeat_at=timezone.now())
                    if not beating:
                        return
        except Exception:  # a missed beat is only a missed beat; the job's own work reports errors
            logger.debug("heartbeat of job %s stopped", self.job_id, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connections


def job_fail(job: IngestionJob, reason: str) -> None:
    now = timezone.now()
    IngestionJob.objects.filter(pk=job.pk).update(
        status=Status.FAILED, error=reason, lease_token="", finished_at=now, updated_at=now
    )
    Document.objects.filter(pk=job.document_id).update(status=Status.FAILED, error=reason, updated_at=now)
    logger.info("ingestion job %s failed: %s", job.pk, reason)


def ingestion_job_release(*, job_id: int, reason: str) -> int:
    """Hand a job back to the queue to wait for the embedding provider; returns how often it waited."""
    with transaction.atomic():
        job = IngestionJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status in (Status.READY, Status.FAILED):
            return 0
        job.provider_waits += 1
        if job.provider_waits > settings.INGESTION_PROVIDER_MAX_WAIT_RETRIES:
            job_fail(job, f"The embedding provider stayed unavailable after {job.provider_waits - 1} retries: {reason}")
            return job.provider_waits
        job.status = Status.QUEUED
        job.stage = Stage.PROVIDER_WAIT
        job.lease_token = ""
        job.error = reason
        job.save()
        Document.objects.filter(pk=job.document_id).update(status=Status.QUEUED, updated_at=timezone.now())
        return job.provider_waits


def ingestion_jobs_sweep() -> dict:
    """Re-queue jobs whose worker went silent or whose message was lost; the claim then counts
    the interruption and gives up after INGESTION_MAX_ATTEMPTS. Nothing stays 'processing'."""
    stale = _stale_before()
    with cross_tenant_context("ingestion-sweeper"):
        silent = list(
            IngestionJob.objects.filter(status=Status.PROCESSING)
            .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))
            .values_list("id", "tenant_id")
        )
        lost = list(
            IngestionJob.objects.filter(status=Status.QUEUED, updated_at__lt=stale).values_list("id", "tenant_id")
        )
        for job_id, tenant_id in silent + lost:
            IngestionJob.objects.filter(pk=job_id).update(updated_at=timezone.now())
            job_enqueue(job_id, tenant_id)
    return {"requeued_silent": len(silent), "requeued_lost": len(lost)}


def ingestion_job_chatbot_id(*, job_id: int) -> int | None:
    return IngestionJob.objects.filter(pk=job_id).values_list("document__chatbot_id", flat=True).first()


def ingestion_job_tenant_id(*, job_id: int) -> int | None:
    """The job's tenant, for a task message sent before messages carried it (the one lookup a
    task makes before it knows its tenant)."""
    with cross_tenant_context("ingestion-task-tenant"):
        return IngestionJob.objects.filter(pk=job_id).values_list("tenant_id", flat=True).first()
