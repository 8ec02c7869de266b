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
    monkeypatch.setattr("knowledge.services._enqueue", lambda job_id, tenant_id: messages.append((job_id, tenant_id)))
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
    from knowledge.services import _job_claim

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
