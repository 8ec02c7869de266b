"""A real Celery worker is killed (kill -9) in the middle of a fine-tune: the job is not left
``running``; its message is redelivered and the job restarts cleanly (training is seeded) and
succeeds, with one version."""

import json
import os
import signal

import pytest

from tests.conftest import as_tenant, ingest, make_upload
from tests.test_training import faq_rows
from tests.test_worker_kill import wait_for
from tests.worker import celery_worker, pool_children

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_kill_9_mid_training_restarts_cleanly_and_succeeds(bundle, worker_env, tmp_path):
    from training.models import ModelVersion, TrainingJob
    from training.services import training_job_start

    ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in faq_rows())), content_type="faq")
    artifacts = tmp_path / "versions"
    with celery_worker(worker_env, TRAINING_ARTIFACTS_DIR=artifacts, EMBEDDING_TORCH_THREADS=1) as worker:
        with as_tenant(bundle):  # the request's scope; the job is sent to the worker at commit
            job = training_job_start(
                tenant=bundle.tenant,
                chatbot=bundle.chatbot,
                job_type="initial_training",
                config={"batch_size": 8, "num_epochs": 3, "hard_negatives": False},
            )

        def training():
            with as_tenant(bundle):
                found = TrainingJob.objects.get(pk=job.pk)
            return found if found.stage == "training" and 2 <= found.step < found.total_steps - 3 else None

        wait_for(training, 240, "the worker never got into the middle of training")
        victims = pool_children(worker)
        assert len(victims) == 1
        os.kill(victims[0].pid, signal.SIGKILL)

        def finished():
            with as_tenant(bundle):
                found = TrainingJob.objects.get(pk=job.pk)
            return found if found.status not in ("queued", "running") else None

        done = wait_for(finished, 400, "the training job did not finish after its worker was killed")
        assert worker.poll() is None, "the worker's main process survives"
    assert done.status == "succeeded", done.error
    assert done.attempts == 2 and done.step == done.total_steps
    with as_tenant(bundle):
        (version,) = ModelVersion.objects.all()
        assert version.job_id == job.pk and version.status == "candidate"
        assert (artifacts / version.space.artifact / "config.json").is_file()
