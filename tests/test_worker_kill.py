"""A real Celery worker process is killed (kill -9) in the middle of a document; the job is
redelivered and finishes with exactly the right chunks — none lost, none duplicated."""

import os
import signal
import time

import pytest

from knowledge.models import Chunk, ChunkEmbedding, Document, IngestionJob
from knowledge.parsers import parse_file
from knowledge.preparation import ChunkingPlan, prepare
from tests.conftest import LONG_TEXT, as_tenant, make_upload
from tests.worker import celery_worker, pool_children

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BIG_TEXT = "\n\n".join(LONG_TEXT.replace("Section", f"Part {n} section") for n in range(4))


def expected_chunks(text: str, chatbot) -> list[str]:
    parsed = parse_file(text.encode(), "handbook.txt")
    plan = ChunkingPlan(max_tokens=min(chatbot.chunk_size, 254), overlap=chatbot.chunk_overlap)
    return [d.text for d in prepare(parsed, plan).drafts]


def wait_for(predicate, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(message)


def test_kill_9_mid_document_then_exact_chunk_set(bundle, worker_env):
    from knowledge.services import document_create

    with celery_worker(worker_env, EMBEDDING_BATCH_SIZE=4) as worker:
        with as_tenant(bundle):  # the upload request's scope
            result = document_create(
                tenant=bundle.tenant, chatbot=bundle.chatbot, upload=make_upload("handbook.txt", BIG_TEXT)
            )
        job_id = result.job.pk

        def mid_embedding():
            with as_tenant(bundle):
                job = IngestionJob.objects.get(pk=job_id)
            return job if job.stage == "embedding" and 8 <= job.chunks_done < job.chunks_total - 20 else None

        job = wait_for(mid_embedding, 120, "the worker never got into the middle of embedding")
        victims = pool_children(worker)
        assert len(victims) == 1
        os.kill(victims[0].pid, signal.SIGKILL)
        killed_at = job.chunks_done

        def finished():
            with as_tenant(bundle):
                job = IngestionJob.objects.get(pk=job_id)
            return job if job.status in ("ready", "failed") else None

        job = wait_for(finished, 240, "the job did not finish after the worker was killed")
        assert worker.poll() is None, "the worker's main process survives and keeps serving"

    with as_tenant(bundle):
        document = Document.objects.get(pk=result.document.pk)
        chunks = list(Chunk.objects.filter(document=document).order_by("position").values_list("position", "text"))
        per_chunk = list(ChunkEmbedding.objects.filter(chunk__document=document).values_list("chunk_id", flat=True))
        chunk_ids = list(Chunk.objects.filter(document=document).values_list("id", flat=True))
    assert (job.status, document.status) == ("ready", "ready"), job.error
    assert job.interruptions == 1 and job.attempts == 2
    expected = expected_chunks(BIG_TEXT, bundle.chatbot)
    assert [text for _, text in chunks] == expected
    assert [position for position, _ in chunks] == list(range(len(expected)))
    assert document.chunk_count == len(expected) > killed_at
    assert sorted(per_chunk) == sorted(chunk_ids)
