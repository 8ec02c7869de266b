"""A real Celery worker is killed (kill -9) in the middle of a fine-tune: the job is not left
``running``; its message is redelivered and the job restarts cleanly (training is seeded) and
succeeds, with one version."""

import json
import os
import signal

import pytest

from tests.conftest import as_tenant, ingest, make_upload
from tests.test_training import MIN_HELDOUT, faq_rows
from tests.test_worker_kill import wait_for
from tests.worker import celery_worker, pool_children

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_kill_9_mid_training_restarts_cleanly_and_succeeds(bundle, worker_env, tmp_path):
    from training.models import ModelVersion, TrainingJob
    from training.services import training_job_start

    ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in faq_rows())), content_type="faq")
    artifacts = tmp_path / "versions"
    with celery_worker(
        worker_env, TRAINING_ARTIFACTS_DIR=artifacts, EMBEDDING_TORCH_THREADS=1, TRAINING_MIN_HELDOUT=MIN_HELDOUT
    ) as worker:
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


@pytest.mark.django_db(transaction=True)
def test_deploy_switches_at_once_while_searches_run(bundle, settings, tmp_path):
    """Searches run in a thread of their own (as another web worker) through a whole deploy:
    every answer is a 200 from exactly one space, the base model's until the switch and the new
    version's from then on (never back), and none while the new space is half built."""
    import threading

    from rest_framework.test import APIClient

    from training.models import ModelVersion, TrainingJob
    from training.services import model_version_deploy, training_job_run, training_pairs_collect

    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "versions"
    settings.TRAINING_MIN_HELDOUT = MIN_HELDOUT
    settings.EMBEDDING_BATCH_SIZE = 16  # many small batches: searches meet the space half built
    ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in faq_rows())), content_type="faq")
    with as_tenant(bundle):
        training_pairs_collect(chatbot=bundle.chatbot)
        job = TrainingJob.objects.create(tenant=bundle.tenant, chatbot=bundle.chatbot, config={"num_epochs": 0.3})
        assert training_job_run(job_id=job.pk) == "succeeded"
        version = ModelVersion.objects.select_related("space").get()
        new_space = version.space.key
    answers: list[tuple[int, str, int]] = []
    stop = threading.Event()

    def searching():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
        n = 0
        while not stop.is_set():
            n += 1
            body = {"chatbot_id": bundle.chatbot.pk, "query": f"how do I reset my router {n}", "max_results": 3}
            response = client.post("/api/search", body, format="json")
            answers.append((response.status_code, response.json().get("embedding_space", ""),
                            len(response.json().get("results", []))))  # fmt: skip
        from django.db import connections

        connections.close_all()

    thread = threading.Thread(target=searching)
    thread.start()
    try:
        with as_tenant(bundle):
            # eager Celery: the deploy task (re-embedding, then the switch) runs here at commit
            model_version_deploy(tenant=bundle.tenant, version=version, force=True)
            assert ModelVersion.objects.get(pk=version.pk).status == "active"
        for _ in range(200):  # a few answers after the switch
            if sum(1 for _, space, _ in answers if space == new_space) >= 5:
                break
            threading.Event().wait(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert answers and all(status == 200 and count == 3 for status, _, count in answers), answers[:5]
    spaces = [space for _, space, _ in answers]
    assert set(spaces) <= {"local:all-MiniLM-L6-v2@1", new_space}
    switched = spaces.index(new_space)
    assert all(space == new_space for space in spaces[switched:])  # never back to the old space
