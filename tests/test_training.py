"""The training pipeline end to end through the API: training data from FAQ rows and uploaded
pairs, the held-out split, a real (small) fine-tune of the local model on CPU, the evaluation
gate, versions, deploy (re-embedding, then one switch), rollback, cancel, and bad input.

Jobs run as production runs them, but in-process: Celery is eager in the suite, so a job's task
function runs when the request's transaction commits (``django_capture_on_commit_callbacks``)."""

import json

import pytest
from rest_framework.test import APIClient

from tests.conftest import as_tenant, ingest, make_upload

PRODUCTS = ["router", "printer", "laptop", "phone", "tablet", "camera", "speaker", "monitor", "keyboard", "watch"]
TOPICS = [
    ("How do I reset my {p}?", "Hold the power button of the {p} for ten seconds until the light blinks twice."),
    ("What is the warranty on the {p}?", "Every {p} has a two-year warranty covering parts and repairs."),
    ("Can I return a {p} I bought online?", "Yes: an unused {p} can be returned within 30 days for a full refund."),
    ("How much does shipping a {p} cost?", "Shipping a {p} costs 4.90 euros, free above 50 euros."),
    ("Where do I find the serial number of my {p}?", "The serial number of the {p} is on a sticker underneath it."),
    ("Does the {p} work abroad?", "The {p} works in every country with a 100-240 V supply; only the plug differs."),
    (
        "How do I update the software of the {p}?",
        "Open the app, choose the {p} and press Update; it takes five minutes.",
    ),
    (
        "What do I do if my {p} is damaged on arrival?",
        "Photograph the damaged {p} and its box and send both to support.",
    ),
]


MIN_HELDOUT = 5  # for the 80-row FAQ of these tests (worker processes get it as an environment variable)


def faq_rows() -> list[dict]:
    return [{"question": q.format(p=p), "answer": a.format(p=p)} for p in PRODUCTS for q, a in TOPICS]


@pytest.fixture
def trained_bot(bundle, settings, tmp_path):
    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "versions"
    # 80 rows hold out ~16 questions by a hash of the chatbot id: a few fewer than the product's
    # 10 happen for some ids; 5 is enough to judge a test version
    settings.TRAINING_MIN_HELDOUT = MIN_HELDOUT
    body = "\n".join(json.dumps(r) for r in faq_rows())
    ingest(bundle, make_upload("faq.jsonl", body), content_type="faq")
    return bundle


def api_for(bundle):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    return client


def chunk_ids_by_question(bundle) -> dict:
    from knowledge.models import Chunk

    with as_tenant(bundle):
        rows = Chunk.objects.filter(chatbot=bundle.chatbot, kind="faq").values_list("context", "id")
        return {context.removeprefix("Q: "): chunk_id for context, chunk_id in rows}


def test_training_data_is_collected_split_stably_and_uploaded_pairs_report_each_row(trained_bot, other_bundle):
    from training.models import TrainingPair
    from training.services import training_data_summary, training_pairs_collect

    bundle = trained_bot
    with as_tenant(bundle):
        added = training_pairs_collect(chatbot=bundle.chatbot, synthetic=False)
        assert added == {"faq": 80}
        split = dict(TrainingPair.objects.filter(chatbot=bundle.chatbot).values_list("query_key", "split"))
        assert training_pairs_collect(chatbot=bundle.chatbot, synthetic=False) == {}  # nothing new: idempotent
        assert dict(TrainingPair.objects.filter(chatbot=bundle.chatbot).values_list("query_key", "split")) == split
        summary = training_data_summary(chatbot=bundle.chatbot)
    assert summary["total"] == 80 and 5 <= summary["heldout"] <= 30, summary  # ~20 % held out, by query

    ids = chunk_ids_by_question(bundle)
    first = next(iter(ids.values()))
    lines = [
        json.dumps({"query": "my router will not start again", "chunk_id": ids["How do I reset my router?"]}),
        json.dumps({"query": "guarantee length for printers", "positive": "Every printer has a two-year warranty."}),
        json.dumps({"query": "", "chunk_id": first}),
        json.dumps({"query": "no answer given"}),
        json.dumps({"query": "someone else's chunk", "chunk_id": 10**12}),
        "{not json",
        json.dumps({"query": "my router will not start again", "chunk_id": ids["How do I reset my router?"]}),
    ]
    api = api_for(bundle)
    response = api.post(
        "/api/training/pairs",
        {"chatbot_id": bundle.chatbot.pk, "file": make_upload("pairs.jsonl", "\n".join(lines))},
        format="multipart",
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 4)
    assert [e["row"] for e in body["errors"]] == [3, 4, 5, 6]
    assert "not one of this chatbot's ready chunks" in body["errors"][2]["reason"]
    assert (
        body["data_summary"]["by_source"]["upload"]["train"] + body["data_summary"]["by_source"]["upload"]["heldout"]
        == 2
    )
    csv_body = "query,chunk_id\nhow to restart a phone," + str(ids["How do I reset my phone?"]) + "\n"
    response = api.post(
        "/api/training/pairs",
        {"chatbot_id": bundle.chatbot.pk, "file": make_upload("pairs.csv", csv_body)},
        format="multipart",
    )
    assert response.status_code == 202 and response.json()["accepted"] == 1
    # another tenant's chatbot is not found; a binary file is refused with a message
    other = api_for(other_bundle).post(
        "/api/training/pairs", {"chatbot_id": bundle.chatbot.pk, "file": make_upload("p.jsonl", lines[0])},
        format="multipart",
    )  # fmt: skip
    assert other.status_code == 404
    binary = api.post(
        "/api/training/pairs",
        {"chatbot_id": bundle.chatbot.pk, "file": make_upload("p.jsonl", b"\xff\xfe\x00\x01")},
        format="multipart",
    )
    assert binary.status_code == 400 and "UTF-8" in binary.json()["error"]["message"]


@pytest.mark.parametrize(
    "config,field",
    [
        ({"batch_size": 1}, "config.batch_size"),
        ({"batch_size": "16"}, "config.batch_size"),
        ({"num_epochs": 0}, "config.num_epochs"),
        ({"learning_rate": 1}, "config.learning_rate"),
        ({"warmup_ratio": 0.9}, "config.warmup_ratio"),
        ({"hard_negatives": "yes"}, "config.hard_negatives"),
        ({"sources": ["magic"]}, "config.sources"),
        ({"colour": 1}, "config.colour"),
    ],
)
def test_bad_training_config_is_400_naming_the_field(bundle, config, field):
    response = api_for(bundle).post(
        "/api/training/start", {"chatbot_id": bundle.chatbot.pk, "config": config}, format="json"
    )
    assert response.status_code == 400 and response.json()["error"]["field"] == field, response.json()


def test_too_little_data_is_refused_with_counts_and_where_more_comes_from(bundle):
    rows = faq_rows()[:20]
    ingest(bundle, make_upload("faq.jsonl", "\n".join(json.dumps(r) for r in rows)), content_type="faq")
    response = api_for(bundle).post("/api/training/start", {"chatbot_id": bundle.chatbot.pk}, format="json")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "Too little training data" in message and "faq" in message and "/api/training/pairs" in message
    with as_tenant(bundle):
        from training.models import TrainingJob

        assert not TrainingJob.objects.exists()  # nothing was queued


def test_a_real_fine_tune_is_judged_versioned_deployed_and_rolled_back(
    trained_bot, other_bundle, django_capture_on_commit_callbacks
):
    """Training runs the real sentence-transformers trainer on CPU (a few steps); the gate
    decides; a forced deploy re-embeds every chunk and switches both search paths at once;
    rollback brings the base model back."""
    from search import fastpath
    from training.models import ModelVersion, TrainingJob

    bundle = trained_bot
    api = api_for(bundle)
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
    before = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": "How do I reset my router?"},
                      format="json").json()  # fmt: skip
    assert before["embedding_space"] == "local:all-MiniLM-L6-v2@1"

    config = {"batch_size": 16, "num_epochs": 1, "learning_rate": 3e-5, "seed": 7}
    with django_capture_on_commit_callbacks(execute=True):  # the eager task runs the job at commit
        started = api.post(
            "/api/training/start", {"chatbot_id": bundle.chatbot.pk, "job_type": "initial_training", "config": config},
            format="json",
        )  # fmt: skip
    assert started.status_code == 202, started.json()
    job = started.json()
    assert job["status_url"] == f"/api/training/status/{job['job_id']}"
    status = api.get(job["status_url"]).json()
    assert status["status"] == "succeeded", status
    assert status["percent"] == 100 and status["stage"] == "done"
    assert status["total_steps"] >= 1 and status["step"] == status["total_steps"]
    assert status["loss"] and all(loss > 0 for _, loss in status["loss"])
    metrics = status["metrics"]
    assert metrics["candidate"]["queries"] == metrics["active"]["queries"] >= MIN_HELDOUT
    assert set(metrics["per_source"]) <= {"faq", "upload"} and "faq" in metrics["per_source"]
    assert metrics["bootstrap"]["low"] <= metrics["bootstrap"]["gain"] <= metrics["bootstrap"]["high"]
    assert metrics["training"]["pairs"] >= 50
    assert api_for(other_bundle).get(job["status_url"]).status_code == 404

    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == "local:all-MiniLM-L6-v2@1"
    (version,) = listing["versions"]
    assert version["status"] == "candidate" and version["number"] == 1 and version["size_bytes"] > 1_000_000
    assert version["embedding_space"] == f"local:all-MiniLM-L6-v2@c{bundle.chatbot.pk}.v1"
    assert isinstance(version["gate"]["passed"], bool) and version["gate"]["reason"]
    jobs = api.get(f"/api/training/jobs/{bundle.chatbot.pk}").json()
    assert [j["job_id"] for j in jobs] == [job["job_id"]] and jobs[0]["version_id"] == version["version_id"]

    deploy_url = f"/api/models/{version['version_id']}/deploy"
    if not version["gate"]["passed"]:
        refused = api.post(deploy_url, {}, format="json")
        assert refused.status_code == 409 and "force" in refused.json()["error"]["message"]
    assert api_for(other_bundle).post(deploy_url, {"force": True}, format="json").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        deploying = api.post(deploy_url, {"force": True}, format="json")
    assert deploying.status_code == 202, deploying.json()
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["versions"][0]["status"] == "active" and listing["versions"][0]["deploy_progress"] == 100
    assert listing["serving"] == version["embedding_space"]

    query = {"chatbot_id": bundle.chatbot.pk, "query": "How do I reset my router?"}
    after = api.post("/api/search", query, format="json").json()  # the fast path (middleware) answers
    assert after["embedding_space"] == version["embedding_space"]
    assert after["results"][0]["content"].startswith("Q: How do I reset my router?")
    meta = {"HTTP_AUTHORIZATION": f"Bearer {bundle.api_key}", "CONTENT_TYPE": "application/json"}
    fast = json.loads(fastpath.search_answer(meta, json.dumps({**query, "max_results": 3}).encode())[1])
    assert fast["embedding_space"] == version["embedding_space"] and not fast["cached"]
    with as_tenant(bundle):
        from knowledge.models import Chunk, ChunkEmbedding

        space_id = ModelVersion.objects.get(pk=version["version_id"]).space_id
        assert ChunkEmbedding.objects.filter(space_id=space_id).count() == Chunk.objects.count() == 80

    rolled = api.post(f"/api/models/{bundle.chatbot.pk}/rollback")
    assert rolled.status_code == 200 and rolled.json() == {"active": None, "space": "local:all-MiniLM-L6-v2@1"}
    again = api.post("/api/search", {**query, "max_results": 4}, format="json").json()
    assert again["embedding_space"] == "local:all-MiniLM-L6-v2@1"
    assert api.get(f"/api/models/{bundle.chatbot.pk}").json()["versions"][0]["status"] == "candidate"
    assert api.post(f"/api/models/{bundle.chatbot.pk}/rollback").status_code == 409  # nothing left to roll back

    # one active job per chatbot; cancel before it runs and while it runs: no version is made
    with as_tenant(bundle):
        TrainingJob.objects.create(tenant=bundle.tenant, chatbot=bundle.chatbot, config=config)
    second = api.post("/api/training/start", {"chatbot_id": bundle.chatbot.pk, "config": config}, format="json")
    assert second.status_code == 409
    with as_tenant(bundle):
        queued = TrainingJob.objects.get(status="queued")
    cancelled = api.post(f"/api/training/jobs/{queued.pk}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/api/training/jobs/{queued.pk}/cancel").status_code == 409


def test_cancel_while_running_stops_within_a_step_and_makes_no_version(trained_bot, monkeypatch):
    from training.models import ModelVersion, TrainingJob
    from training.services import training_job_run

    bundle = trained_bot
    with as_tenant(bundle):
        from training.services import training_pairs_collect

        training_pairs_collect(chatbot=bundle.chatbot)
        job = TrainingJob.objects.create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, config={"batch_size": 8, "num_epochs": 2}
        )

        def cancel_soon():  # the cancel arrives while the job trains (after its first beat)
            TrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)

        from training.services import trainer

        real = trainer.fine_tune

        def fine_tune(model, **kwargs):
            on_progress = kwargs.pop("on_progress")
            calls = {"n": 0}

            def progress(p):
                calls["n"] += 1
                if calls["n"] == 2:
                    cancel_soon()
                return on_progress(p)

            return real(model, on_progress=progress, **kwargs)

        monkeypatch.setattr(trainer, "fine_tune", fine_tune)  # to cancel at a known step
        assert training_job_run(job_id=job.pk) == "cancelled"
        job.refresh_from_db()
        assert job.status == "cancelled" and "no version" in job.error
        assert 1 <= job.step < job.total_steps
        assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    "job_type, stage",
    [
        ("initial_training", "collecting"),
        ("initial_training", "mining"),
        ("initial_training", "evaluating"),
        ("initial_training", "saving"),
        ("adapter", "mining"),
        ("adapter", "evaluating"),
        ("adapter", "saving"),
        ("query_encoder", "mining"),
        ("query_encoder", "training"),
        ("query_encoder", "saving"),
    ],
)
def test_cancel_in_each_stage_ends_the_job_cancelled_with_no_version_left(
    trained_bot, monkeypatch, django_capture_on_commit_callbacks, job_type, stage
):
    """The cancel arrives just as the job enters ``stage`` (the API sets the same flag); the job
    ends at its next check, and a version saved meanwhile is removed with its files."""
    from training.models import ModelVersion, TrainingJob
    from training.services import jobs, training_job_run, training_pairs_collect

    bundle = trained_bot
    with as_tenant(bundle):
        training_pairs_collect(chatbot=bundle.chatbot)
        job = TrainingJob.objects.create(
            tenant=bundle.tenant,
            chatbot=bundle.chatbot,
            job_type=job_type,
            config={"batch_size": 32, "num_epochs": 0.5},
            cancel_requested=stage == "collecting",
        )
        real = jobs._beat

        def beat(running, **fields):
            real(running, **fields)
            if fields.get("stage") == stage:
                TrainingJob.objects.filter(pk=running.pk).update(cancel_requested=True)

        monkeypatch.setattr(jobs, "_beat", beat)
        with django_capture_on_commit_callbacks(execute=True):  # the files go when the removal commits
            assert training_job_run(job_id=job.pk) == "cancelled"
        job.refresh_from_db()
        label = dict(TrainingJob.Stage.choices)[stage].lower()
        assert job.status == "cancelled" and job.error == f"Cancelled while {label}; no version was made.", job.error
        assert not ModelVersion.objects.exists()
        from knowledge.models import EmbeddingSpace

        assert not EmbeddingSpace.objects.filter(tenant=bundle.tenant).exists()
    from django.conf import settings

    versions = settings.TRAINING_ARTIFACTS_DIR
    assert not versions.exists() or not [p for p in versions.rglob("v*") if p.is_dir()]


def test_the_training_tab_starts_a_job_shows_its_result_and_deploys_and_rolls_back(
    trained_bot, client, django_capture_on_commit_callbacks
):
    """The dashboard on the same services: data counts, the start form (a bad value gets a
    readable message, nothing is queued), the job's outcome, the versions table, deploy, rollback."""
    from django.contrib.messages import get_messages

    from training.models import ModelVersion, TrainingJob

    bundle = trained_bot
    assert client.login(username=bundle.username, password=bundle.password)
    url = f"/chatbots/{bundle.chatbot.pk}/training/"
    assert 'href="' + url + '"' in client.get(f"/chatbots/{bundle.chatbot.pk}/").content.decode()
    page = client.get(url).content.decode()
    assert 'id="data-sources"' in page and 'id="start-training"' in page and "No training jobs yet" in page

    response = client.post(f"{url}pairs", {"collect": "1"})
    assert response.status_code == 302
    assert "Collected 80 new pairs" in " ".join(str(m) for m in get_messages(response.wsgi_request))

    response = client.post(f"{url}start", {"job_type": "initial_training", "batch_size": "lots", "num_epochs": "1"})
    assert "Batch size must be a number." in [str(m) for m in get_messages(response.wsgi_request)]
    with as_tenant(bundle):
        assert not TrainingJob.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            f"{url}start",
            {"job_type": "initial_training", "batch_size": "16", "num_epochs": "1", "learning_rate": "3e-5"},
        )
    page = client.get(url).content.decode()
    with as_tenant(bundle):
        job = TrainingJob.objects.get()
        version = ModelVersion.objects.get()
        space_key = version.space.key
    assert job.status == "succeeded" and job.requested_by == bundle.username
    assert f'data-version="{version.pk}" data-status="candidate"' in page and 'class="deploy"' in page

    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/training/versions/{version.pk}/deploy", {"force": "on"})
    page = client.get(url).content.decode()
    assert f'data-version="{version.pk}" data-status="active"' in page
    assert f'<b id="serving">{space_key}</b>' in page
    response = client.post(f"{url}rollback")
    assert "serves again" in " ".join(str(m) for m in get_messages(response.wsgi_request))
    assert '<b id="serving">local:all-MiniLM-L6-v2@1</b>' in client.get(url).content.decode()


def test_disk_trouble_while_saving_fails_the_job_with_a_reason_and_makes_no_version(trained_bot, settings, tmp_path):
    from training.models import ModelVersion, TrainingJob
    from training.services import training_job_run, training_pairs_collect

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the artifacts directory should be")
    settings.TRAINING_ARTIFACTS_DIR = blocker / "versions"  # every write under it fails, as on a full disk
    bundle = trained_bot
    with as_tenant(bundle):
        training_pairs_collect(chatbot=bundle.chatbot)
        job = TrainingJob.objects.create(tenant=bundle.tenant, chatbot=bundle.chatbot, config={"num_epochs": 0.2})
        assert training_job_run(job_id=job.pk) == "failed"
        job.refresh_from_db()
        assert job.status == "failed" and job.error.startswith("Could not write the model"), job.error
        assert not ModelVersion.objects.exists()
        assert not TrainingJob.objects.filter(status__in=["queued", "running"]).exists()


def test_a_corrupt_artifact_fails_its_deploy_and_the_active_model_keeps_serving(
    trained_bot, django_capture_on_commit_callbacks
):
    from knowledge.embeddings import artifact_path
    from training.models import ModelVersion, TrainingJob
    from training.services import training_job_run, training_pairs_collect

    bundle = trained_bot
    api = api_for(bundle)
    with as_tenant(bundle):
        training_pairs_collect(chatbot=bundle.chatbot)
        job = TrainingJob.objects.create(tenant=bundle.tenant, chatbot=bundle.chatbot, config={"num_epochs": 0.2})
        training_job_run(job_id=job.pk)
        version = ModelVersion.objects.select_related("space").get()
        folder = artifact_path(version.space.artifact)
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a model")
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/models/{version.pk}/deploy", {"force": True}, format="json").status_code == 202
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["versions"][0]["status"] == "failed" and "cannot be loaded" in listing["versions"][0]["error"]
    assert listing["serving"] == "local:all-MiniLM-L6-v2@1"
    search = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": "reset my router"}, format="json")
    assert search.status_code == 200 and search.json()["embedding_space"] == "local:all-MiniLM-L6-v2@1"
    again = api.post(f"/api/models/{version.pk}/deploy", {"force": True}, format="json")
    assert again.status_code == 409 and "failed" in again.json()["error"]["message"]


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # the sweeper's own role
def test_the_sweeper_resends_a_silent_job_and_gives_up_after_the_attempts(bundle, settings):
    """The sweep finds silent jobs across tenants (maintenance role) and sends each again; with
    eager Celery the resent task runs at once, in this process."""
    from datetime import timedelta

    from django.utils import timezone

    from training.models import TrainingJob
    from training.services import training_jobs_sweep

    settings.TRAINING_MIN_PAIRS = 10**6  # the resent job runs (eager) and fails for lack of data: it ran
    long_ago = timezone.now() - timedelta(hours=1)
    with as_tenant(bundle):
        silent = TrainingJob.objects.create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, status="running", heartbeat_at=long_ago, attempts=1
        )
    assert training_jobs_sweep() == {"resent": 1, "failed": 0}
    with as_tenant(bundle):
        silent.refresh_from_db()
        assert silent.status == "failed" and "Too little training data" in silent.error and silent.attempts == 2
        worn = TrainingJob.objects.create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, status="running", heartbeat_at=long_ago, attempts=3
        )
    assert training_jobs_sweep() == {"resent": 0, "failed": 1}
    with as_tenant(bundle):
        worn.refresh_from_db()
        assert worn.status == "failed" and "stopped 3 times" in worn.error


def test_every_training_api_answers_404_for_another_tenants_objects(trained_bot, other_bundle):
    from training.models import TrainingJob

    bundle = trained_bot
    with as_tenant(bundle):
        job = TrainingJob.objects.create(tenant=bundle.tenant, chatbot=bundle.chatbot, config={})
    other = api_for(other_bundle)
    chatbot = bundle.chatbot.pk
    assert other.get(f"/api/training/jobs/{chatbot}").status_code == 404
    assert other.get(f"/api/training/status/{job.pk}").status_code == 404
    assert other.post(f"/api/training/jobs/{job.pk}/cancel").status_code == 404
    assert other.get(f"/api/models/{chatbot}").status_code == 404
    assert other.post(f"/api/models/{chatbot}/rollback").status_code == 404
    assert other.post("/api/training/start", {"chatbot_id": chatbot}, format="json").status_code == 404
    with as_tenant(bundle):
        job.refresh_from_db()
        assert job.status == "queued" and not job.cancel_requested  # untouched


class FakeChat:
    """A local HTTP server speaking the chat-completions API: a question per passage, then errors."""

    def __init__(self, answers: int):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                if len(server.requests) > answers:
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode())
                    return
                passage = body["messages"][-1]["content"]
                product = next((p for p in PRODUCTS if p in passage), "thing")
                payload = {
                    "id": f"chat-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f'"What should I do about my {product}?"'},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_llm_written_questions_through_the_openai_client_against_a_local_server(trained_bot, settings):
    """With a key and a model configured, each chunk is sent once to the chat-completions API and
    its question becomes an ``llm`` pair; when the server starts failing the round stops with its
    reason and the other sources are collected all the same."""
    from training.models import TrainingPair
    from training.services import training_pairs_collect

    fake = FakeChat(answers=5)
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL, settings.OPENAI_MAX_RETRIES = "sk-test", fake.url, 0
    settings.TRAINING_LLM_MODEL, settings.TRAINING_LLM_QUESTIONS = "gpt-test-mini", 8
    bundle = trained_bot
    try:
        with as_tenant(bundle):
            added = training_pairs_collect(chatbot=bundle.chatbot, synthetic=False)
            llm = list(TrainingPair.objects.filter(chatbot=bundle.chatbot, source="llm").select_related("chunk"))
    finally:
        fake.close()
    assert added["faq"] == 80 and added["llm"] == 5
    assert "LLM questions stopped after 5" in added["llm_problem"]
    assert len(fake.requests) == 6 and {r["model"] for r in fake.requests} == {"gpt-test-mini"}
    assert all(r["path"] == "/v1/chat/completions" for r in fake.requests)
    for pair in llm:
        assert pair.query.startswith("What should I do about my ") and pair.chunk.text in [
            r["messages"][-1]["content"] for r in fake.requests
        ]
        assert pair.query.split()[-1].rstrip("?") in pair.chunk.text  # the question is about its own chunk
    with as_tenant(bundle):  # a chunk is asked once: a second round asks only the others
        fake = FakeChat(answers=100)
        settings.OPENAI_BASE_URL = fake.url
        try:
            again = training_pairs_collect(chatbot=bundle.chatbot, synthetic=False)
        finally:
            fake.close()
        asked = {r["messages"][-1]["content"] for r in fake.requests}
        assert again.get("llm", 0) <= 8 and not asked & {p.chunk.text for p in llm}
