"""The default training job: the query encoder tuned over the chatbot's stored document vectors.

A job started without ``job_type`` on a local model trains the serving model's query side only
(the real model, on CPU, a few steps) against every stored chunk vector; its stage timings are in
its status and on the Training tab; the version deploys without re-embedding a chunk, and both
search paths then embed queries with the version's own weights over the base vectors. A hosted
model's default is the adapter. Celery is eager: a job's task runs in the test process when the
request's transaction commits (``django_capture_on_commit_callbacks``)."""

import json

import numpy as np
import pytest

from tests import test_training, test_training_adapter
from tests.conftest import as_tenant, make_upload
from tests.test_training import MIN_HELDOUT, PRODUCTS, api_for, chunk_ids_by_question

# the fixtures of those modules: an 80-row FAQ chatbot on the local model, one on a hosted model
trained_bot = test_training.trained_bot
hosted, hosted_bot = test_training_adapter.hosted, test_training_adapter.hosted_bot

BASE = "local:all-MiniLM-L6-v2@1"


def test_the_default_job_tunes_the_query_encoder_and_deploys_without_re_embedding(
    trained_bot,
    other_bundle,
    settings,
    django_capture_on_commit_callbacks,
):
    from django.test import override_settings
    from sentence_transformers import SentenceTransformer

    from knowledge.embeddings import artifact_path
    from knowledge.models import Chunk, ChunkEmbedding
    from training.models import ModelVersion

    bundle, api = trained_bot, api_for(trained_bot)
    ids = chunk_ids_by_question(bundle)
    paraphrases = [
        {"query": f"{p} keeps freezing, how to restart it", "chunk_id": ids[f"How do I reset my {p}?"]}
        for p in PRODUCTS
    ] + [{"query": f"guarantee period {p}", "chunk_id": ids[f"What is the warranty on the {p}?"]} for p in PRODUCTS]
    api.post(
        "/api/training/pairs",
        {"chatbot_id": bundle.chatbot.pk, "file": make_upload("p.jsonl", "\n".join(map(json.dumps, paraphrases)))},
        format="multipart",
    )
    with django_capture_on_commit_callbacks(execute=True):  # the eager task runs the job at commit
        started = api.post("/api/training/start", {"chatbot_id": bundle.chatbot.pk, "config": {"num_epochs": 3}},
                           format="json")  # fmt: skip
    assert started.status_code == 202, started.json()
    assert started.json()["job_type"] == "query_encoder"
    assert started.json()["config"]["learning_rate"] == 2e-4 and started.json()["config"]["batch_size"] == 32
    status = api.get(started.json()["status_url"]).json()
    assert status["status"] == "succeeded", status
    assert status["percent"] == 100 and status["stage"] == "done" and status["step"] == status["total_steps"]
    pairs = status["metrics"]["training"]["pairs"]
    assert status["total_steps"] == 3 * -(-pairs // 32)
    assert status["loss"] and status["loss"][-1][1] < status["loss"][0][1]  # it learned something
    assert set(status["stage_seconds"]) == {"collect", "mine", "train", "evaluate", "save"}, status["stage_seconds"]
    assert all(seconds >= 0 for seconds in status["stage_seconds"].values())
    assert status["stage_seconds"]["train"] > 0
    metrics = status["metrics"]
    assert metrics["query_encoder"] == {"vectors_of": BASE, "started_from": BASE, "negatives": "corpus"}
    assert metrics["candidate"]["queries"] == metrics["active"]["queries"] >= MIN_HELDOUT
    assert metrics["training"]["hard_negatives"] == 80 - 1  # every other chunk is a negative

    (version,) = api.get(f"/api/models/{bundle.chatbot.pk}").json()["versions"]
    assert version["kind"] == "query_encoder" and version["vectors_of"] == BASE
    assert version["embedding_space"] == f"local:all-MiniLM-L6-v2@c{bundle.chatbot.pk}.v1"
    assert version["size_bytes"] > 1_000_000  # the query encoder's weights

    with django_capture_on_commit_callbacks(execute=True):
        deploying = api.post(f"/api/models/{version['version_id']}/deploy", {"force": True}, format="json")
    assert deploying.status_code == 202, deploying.json()
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == version["embedding_space"] and listing["versions"][0]["status"] == "active"
    assert "deploy" in api.get(started.json()["status_url"]).json()["stage_seconds"]  # the last stage, timed
    with as_tenant(bundle):
        space = ModelVersion.objects.select_related("space").get(pk=version["version_id"]).space
        assert not ChunkEmbedding.objects.filter(space=space).exists()  # deploy re-embedded nothing
        stored = dict(ChunkEmbedding.objects.filter(space=space.store).values_list("chunk_id", "embedding"))
        assert len(stored) == Chunk.objects.count() == 80

    # both search paths embed the query with the version's own weights and search the base
    # vectors: the answer is exactly the ranking computed here with those weights
    tuned = SentenceTransformer(str(artifact_path(space.artifact)), device="cpu")
    query = "my speaker keeps freezing, how do I restart it"
    vector = tuned.encode([query], normalize_embeddings=True)[0]
    ids_ = list(stored)
    scores = np.asarray([stored[i] for i in ids_], dtype=np.float32) @ vector
    expected = [ids_[i] for i in np.argsort(-scores)[:5]]
    body = {"chatbot_id": bundle.chatbot.pk, "query": query, "mode": "semantic", "max_results": 5}
    served = api.post("/api/search", body, format="json").json()  # the fast path (middleware) answers
    assert served["embedding_space"] == version["embedding_space"]
    assert [r["chunk_id"] for r in served["results"]] == expected
    assert served["results"][0]["similarity_score"] == pytest.approx(float(np.sort(scores)[-1]), abs=1e-3)
    with override_settings(MIDDLEWARE=[m for m in settings.MIDDLEWARE if "fastpath" not in m]):  # the DRF view
        full = api.post("/api/search", {**body, "max_results": 4}, format="json").json()
    assert full["embedding_space"] == version["embedding_space"]
    assert [r["chunk_id"] for r in full["results"]] == expected[:4]
    assert api_for(other_bundle).get(started.json()["status_url"]).status_code == 404


def test_the_training_tab_starts_the_default_job_and_draws_its_stage_timings(
    trained_bot,
    client,
    django_capture_on_commit_callbacks,
):
    from training.models import TrainingJob

    bundle = trained_bot
    assert client.login(username=bundle.username, password=bundle.password)
    url = f"/chatbots/{bundle.chatbot.pk}/training/"
    page = client.get(url).content.decode()
    assert (
        '<option value="" data-batch_size="32" data-num_epochs="2" data-learning_rate="0.0002">Default: query encoder'
        in page
    )
    assert 'value="initial_training" data-batch_size="16" data-num_epochs="1" data-learning_rate="0.00002"' in page
    assert 'placeholder="0.0002"' in page  # the default job's learning rate, until another type is chosen
    client.post(f"{url}pairs", {"collect": "1"})
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"{url}start", {"job_type": "", "num_epochs": "1"})
    with as_tenant(bundle):
        job = TrainingJob.objects.get()
    assert job.status == "succeeded" and job.job_type == "query_encoder", job.error
    page = client.get(url).content.decode()
    assert 'class="stage-bar"' in page
    for stage in ("collect", "mine", "train", "evaluate", "save"):
        assert f'class="stage-{stage}"' in page and f"{stage} {job.stage_seconds[stage]} s" in page


def test_a_hosted_models_default_job_is_the_adapter(hosted_bot):
    from training.models import TrainingJob

    started = api_for(hosted_bot).post("/api/training/start", {"chatbot_id": hosted_bot.chatbot.pk}, format="json")
    assert started.status_code == 202, started.json()
    assert started.json()["job_type"] == "adapter" and started.json()["config"]["learning_rate"] == 1e-3
    with as_tenant(hosted_bot):
        assert TrainingJob.objects.get().job_type == "adapter"


def test_each_query_is_contrasted_with_the_corpus_minus_its_other_answers():
    """The rows a pair is ranked against and the rows masked for it: the same question's other
    answers and copies of an answer's text are no negatives; answers given as text are added once."""
    from training.services.data import PairSet
    from training.services.runs.frozen import _contrast, _Inputs

    class Base:
        def embed(self, texts):
            return [[1.0, 0.0]] * len(texts)

    corpus_texts = ["reset: hold the button", "warranty: two years", "reset: hold the button", "shipping: 4.90"]
    data = _Inputs(train=None, held=None, active_space=None, store=None, base=Base(), corpus_ids=[10, 11, 12, 13],
                   corpus_texts=corpus_texts, corpus=np.eye(4, 2, dtype=np.float32),
                   row_of={10: 0, 11: 1, 12: 2, 13: 3})  # fmt: skip
    train = PairSet(
        anchors=["How do I reset?", "how do i  RESET?", "Warranty?", "Refunds?"],
        positives=["reset: hold the button", "warranty: two years", "warranty: two years", "refunds within 30 days"],
        negatives=[None, None, "a text negative", None],
        chunk_ids=[10, 11, 11, None],
        sources=["faq"] * 4,
        created=[None] * 4,
    )
    candidates, targets, masked = _contrast(train, data)
    assert candidates.shape == (6, 2)  # the corpus, then the text answer and the text negative
    assert targets == [0, 1, 1, 4]
    assert masked[0] == [1, 2]  # the question's other answer, and the copy of its own answer
    assert masked[1] == [0, 2]
    assert masked[2] == [] and masked[3] == []


def test_past_the_cap_a_step_ranks_against_a_sample_that_keeps_each_answer_and_its_masks():
    import torch

    from training.services.query_encoder import _negatives

    corpus = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 2)
    targets = torch.tensor([5, 999])
    masked = [[6, 7], []]
    whole, wanted, drop = _negatives(corpus, targets, masked, cap=5000, generator=torch.Generator().manual_seed(1))
    assert whole.shape[0] == 1000 and wanted.tolist() == [5, 999] and drop == ([0, 0], [6, 7])
    sample, wanted, drop = _negatives(corpus, targets, masked, cap=50, generator=torch.Generator().manual_seed(1))
    assert 50 <= sample.shape[0] <= 52
    assert sample[wanted, 0].tolist() == [5.0, 999.0]  # each query's answer is in the sample, where it says
    assert all(sample[c, 0].item() in (6.0, 7.0) and r == 0 for r, c in zip(*drop))  # masks follow their rows
