"""The periodic sweeper (called directly) and the give-up rule for files that keep killing workers.
The sweeper reads every tenant's jobs on the maintenance connection, which sees committed rows
only: its tests are transactional."""

from datetime import timedelta

import pytest
from django.utils import timezone

from knowledge.models import IngestionJob
from knowledge.services import document_create, ingestion_job_run, ingestion_jobs_sweep
from tenants.scoping import no_tenant_context
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, make_upload

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])


@pytest.fixture
def sent(monkeypatch):
    """Messages the services would send to the broker (kept here instead: the jobs stay queued)."""
    messages = []
    sent = lambda job_id, tenant_id: messages.append((job_id, tenant_id))  # noqa: E731
    monkeypatch.setattr("knowledge.services.jobs.job_enqueue", sent)
    return messages


def queued_job(bundle, sent):
    with as_tenant(bundle):
        job = document_create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("faq.csv", SAMPLE_FAQ_CSV)
        ).job
    assert sent.pop() == (job.pk, bundle.tenant.pk)
    return job


def test_silent_processing_jobs_are_requeued_and_finish(bundle, sent):
    job = queued_job(bundle, sent)
    stale = timezone.now() - timedelta(hours=1)
    with as_tenant(bundle):
        IngestionJob.objects.filter(pk=job.pk).update(
            status="processing", lease_token="dead-worker", heartbeat_at=stale
        )
    with no_tenant_context():  # as in its beat task: the sweeper declares its own cross-tenant scope
        assert ingestion_jobs_sweep() == {"requeued_silent": 1, "requeued_lost": 0}
    assert sent == [(job.pk, bundle.tenant.pk)]
    with as_tenant(bundle):  # the re-sent message's task runs as the job's tenant
        assert ingestion_job_run(job_id=job.pk, lease_token="sweeper-message") == "ready"
        job.refresh_from_db()
        assert (job.status, job.interruptions, job.document.status) == ("ready", 1, "ready")


def test_lost_queued_jobs_are_requeued(bundle, sent):
    job = queued_job(bundle, sent)
    with as_tenant(bundle):
        IngestionJob.objects.filter(pk=job.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    with no_tenant_context():
        assert ingestion_jobs_sweep() == {"requeued_silent": 0, "requeued_lost": 1}
    assert sent == [(job.pk, bundle.tenant.pk)]
    with no_tenant_context():
        assert ingestion_jobs_sweep() == {"requeued_silent": 0, "requeued_lost": 0}  # touched, not resent at once


def test_a_file_that_kills_the_worker_every_time_fails_after_three_attempts(bundle, sent):
    from knowledge.services.jobs import job_claim as _job_claim

    job = queued_job(bundle, sent)
    with as_tenant(bundle):  # the task's scope
        for attempt in range(3):
            claimed = IngestionJob.objects.get(pk=job.pk)
            if attempt:
                assert claimed.status == "processing"
            # a worker claims the job, then dies before finishing (same redelivered message)
            assert _job_claim(job_id=job.pk, lease_token="poison") is not None
        assert _job_claim(job_id=job.pk, lease_token="poison") is None
        job.refresh_from_db()
        assert job.status == "failed" and job.attempts == 3
        assert job.error.startswith("Processing was interrupted 3 times")
        assert job.document.status == "failed" and job.document.error == job.error


@pytest.mark.worker
def test_a_job_whose_worker_waits_on_its_parser_is_not_handed_to_another(bundle, worker_env, settings):
    """A real worker process parses a 4,000-page PDF in its sandbox child, then embeds and checks
    its 400 chunks, for tens of seconds in all. With a stale age of two seconds, the sweeper (run
    here every 0.1 s) must never take the job away: the job's heartbeat thread beats whatever the
    worker is busy with. The job ends ready after exactly one attempt."""
    import random
    import time

    from tests.conftest import build_pdf
    from tests.worker import celery_worker

    settings.INGESTION_STALE_AFTER_SECONDS = 2
    rng = random.Random(7)
    words = "warranty router cable refund shipping invoice battery screen charger update firmware".split()
    pdf = build_pdf(
        [" ".join(rng.choice(words) for _ in range(12)).capitalize() + f" number {i}." for i in range(4000)]
    )
    env = {"INGESTION_STALE_AFTER_SECONDS": 2, "INGESTION_HEARTBEAT_SECONDS": 0.2, "EMBEDDING_BATCH_SIZE": 16}

    def final(job_id):
        with as_tenant(bundle):
            job = IngestionJob.objects.get(pk=job_id)
        return job if job.status in ("ready", "failed") else None

    with celery_worker(worker_env, **env):
        with as_tenant(bundle):  # a first file loads the model in the worker (no heartbeat while it loads)
            warm = document_create(
                tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("a.txt", "Hi there.")
            ).job
        while not final(warm.pk):
            time.sleep(0.1)
        with as_tenant(bundle):
            job = document_create(tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("big.pdf", pdf)).job
        sweeps, stages, deadline = [], set(), time.monotonic() + 180
        while not final(job.pk) and time.monotonic() < deadline:
            with no_tenant_context():  # as its beat task
                sweeps.append(ingestion_jobs_sweep())
            with as_tenant(bundle):
                stages.add(IngestionJob.objects.get(pk=job.pk).stage)
            time.sleep(0.1)
    job = final(job.pk)
    assert job is not None and job.status == "ready", job and job.error
    assert "parsing" in stages and len(sweeps) > 20  # the sweeper ran while the child parsed
    assert all(s["requeued_silent"] == 0 for s in sweeps), [
        (i, s) for i, s in enumerate(sweeps) if s["requeued_silent"]
    ]
    assert (job.attempts, job.interruptions) == (1, 0)
