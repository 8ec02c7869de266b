"""Continuous learning: settings through the API and the dashboard (with refusals), the beat's
check waiting with its reason, starting a job on new training signal, the gate deciding, and a
second run judged on the first run's held-out questions plus the new ones, reported apart.

Celery is eager: the beat's task is called as its function, and the job it starts runs in the
test process when the transaction commits (``django_capture_on_commit_callbacks``). The gate's
required gain is set out of reach here, so its refusal is certain (the passing path, with an
automatic A/B test, is in tests/test_abtest_shared.py on BANKING77)."""

import json

import pytest
from django.test import Client

from tests.conftest import as_tenant
from tests.test_training import MIN_HELDOUT, api_for
from tests.test_training import trained_bot as trained_bot  # a fixture

pytestmark = pytest.mark.django_db


def test_settings_are_read_and_changed_through_the_api_and_the_dashboard(trained_bot, other_bundle):
    bundle = trained_bot
    api = api_for(bundle)
    url = f"/api/models/{bundle.chatbot.pk}/continuous-learning"
    first = api.get(url).json()
    assert first["enabled"] is False and first["min_new_pairs"] == 50 and first["job_type"] == "query_encoder"
    assert first["auto_deploy"] is True and first["auto_ab_percent"] == 0 and first["last_outcome"] == ""
    for body, field in [
        ({"min_new_pairs": 0}, "min_new_pairs"),
        ({"auto_ab_percent": 51}, "auto_ab_percent"),
        ({"enabled": "yes"}, "enabled"),
        ({"min_days_between": -1}, "min_days_between"),
        ({"job_type": "initial_training"}, "job_type"),
        ({"schedule": "daily"}, "schedule"),
    ]:
        refused = api.put(url, body, format="json")
        assert refused.status_code == 400 and field in json.dumps(refused.json()), (body, refused.json())
    changed = api.put(url, {"enabled": True, "min_new_pairs": 5, "auto_ab_percent": 20}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["enabled"] and changed.json()["min_new_pairs"] == 5
    assert changed.json()["auto_ab_percent"] == 20
    assert api.get(url).json()["min_days_between"] == 7  # untouched fields keep their values
    assert api_for(other_bundle).get(url).status_code == 404
    assert api_for(other_bundle).put(url, {"enabled": False}, format="json").status_code == 404

    client = Client()
    assert client.login(username=bundle.username, password=bundle.password)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/training/")
    assert b"Continuous learning" in page.content and b'id="chart-history"' in page.content
    bad = client.post(f"/chatbots/{bundle.chatbot.pk}/training/continuous", {"enabled": "on", "min_new_pairs": "lots"},
                      follow=True)  # fmt: skip
    assert b"Min new pairs must be a number" in bad.content
    saved = client.post(f"/chatbots/{bundle.chatbot.pk}/training/continuous",
                        {"min_new_pairs": "9", "job_type": "adapter", "auto_deploy": "on"}, follow=True)  # fmt: skip
    assert b"Continuous learning is off." in saved.content
    after = api.get(url).json()
    assert not after["enabled"] and after["min_new_pairs"] == 9 and after["job_type"] == "adapter"


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # the beat reads across tenants
def test_the_beat_waits_starts_a_run_on_new_feedback_and_the_gate_decides(
    trained_bot, settings, django_capture_on_commit_callbacks
):
    from training.models import ModelVersion
    from training.tasks import continuous_learning_task

    settings.TRAINING_MIN_HELDOUT = MIN_HELDOUT
    settings.TRAINING_MIN_GAIN = 1.0  # out of reach: every version is refused, certainly
    bundle = trained_bot
    api = api_for(bundle)
    url = f"/api/models/{bundle.chatbot.pk}/continuous-learning"
    assert continuous_learning_task() == {"chatbots": 0, "started": 0}  # nobody opted in
    api.put(url, {"enabled": True, "min_new_pairs": 5, "min_days_between": 0, "job_type": "adapter"}, format="json")

    with django_capture_on_commit_callbacks(execute=True):  # the job it starts runs at commit
        assert continuous_learning_task() == {"chatbots": 1, "started": 1}
    state = api.get(url).json()
    assert state["last_job"]["status"] == "succeeded", state
    assert state["last_outcome"].startswith("Version 1 refused by the gate (nDCG@10 gain")
    assert state["last_outcome"].endswith("nothing changed.")
    assert state["new_pairs_since_last_version"] == 0
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == "local:all-MiniLM-L6-v2@1"  # nothing changed
    assert [v["status"] for v in listing["versions"]] == ["candidate"]
    assert listing["versions"][0]["metrics"]["candidate"]["queries"] >= MIN_HELDOUT

    assert continuous_learning_task() == {"chatbots": 1, "started": 0}
    assert api.get(url).json()["last_outcome"] == (
        "Waiting: 0 new training pairs since the last version; 5 start a run."
    )

    # feedback arrives: searches a chatbot user found answered, each with the chunk that did it
    questions = [f"my {p} will not turn on at all, what now" for p in ("router", "camera", "lamp")] + [
        f"can I send the {p} back for my money" for p in ("speaker", "router", "watch")
    ]
    for question in questions:
        answer = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": question}, format="json").json()
        vote = {"helpful": True, "chunk_id": answer["results"][0]["chunk_id"]}
        assert api.post(f"/api/search/{answer['query_id']}/feedback", vote, format="json").status_code == 201
    with django_capture_on_commit_callbacks(execute=True):
        assert continuous_learning_task() == {"chatbots": 1, "started": 1}
    state = api.get(url).json()
    assert state["last_outcome"].startswith("Version 2 refused by the gate"), state
    with as_tenant(bundle):
        first, second = ModelVersion.objects.order_by("number")
        assert second.data_summary["by_source"]["feedback"]["train"] + \
            second.data_summary["by_source"]["feedback"]["heldout"] == len(questions)  # fmt: skip
    # the second run is judged on the first run's held-out questions, and any new ones apart
    comparable = second.metrics["comparable"]
    assert comparable["previous_version"] == 1
    assert comparable["previous_questions"]["candidate"]["queries"] == first.metrics["candidate"]["queries"]
    assert comparable["previous_questions"]["active"] == first.metrics["active"]  # same questions, same base
    assert second.metrics["candidate"]["queries"] == (
        first.metrics["candidate"]["queries"] + comparable["new_questions"]["candidate"]["queries"]
    )
    history = api.get(f"/api/models/{bundle.chatbot.pk}").json()["history"]
    assert [h["number"] for h in history] == [1, 2] and history[1]["comparable"]["previous_version"] == 1
    assert history[0]["gate"]["passed"] is False and history[0]["ndcg_10"] is not None

    # min_days_between and a running A/B test make it wait, with the reason
    api.put(url, {"min_days_between": 2}, format="json")
    continuous_learning_task()
    assert api.get(url).json()["last_outcome"].startswith("Waiting: the last run was")


def test_the_playground_thumbs_and_the_gap_inbox_shortcut_feed_training(
    trained_bot, django_capture_on_commit_callbacks
):
    from search.models import SearchFeedback
    from training.models import TrainingPair

    bundle = trained_bot
    client = Client()
    assert client.login(username=bundle.username, password=bundle.password)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "reset the router", "compare": "semantic,hybrid"})
    assert page.status_code == 200 and b'aria-label="Helpful"' in page.content
    text = page.content.decode()
    query_id = text.split('name="query_id" value="')[1].split('"')[0]
    chunk_id = int(text.split('name="chunk_id" value="')[1].split('"')[0])
    voted = client.post(f"/chatbots/{bundle.chatbot.pk}/search/feedback",
                        {"query_id": query_id, "chunk_id": chunk_id, "helpful": "0", "back": "?q=reset+the+router"},
                        follow=True)  # fmt: skip
    assert b"marked not helpful" in voted.content and voted.redirect_chain[-1][0].endswith("?q=reset+the+router")
    wrong = client.post(f"/chatbots/{bundle.chatbot.pk}/search/feedback",
                        {"query_id": query_id, "chunk_id": 99999999, "helpful": "1"}, follow=True)  # fmt: skip
    assert b"not among this search" in wrong.content
    with as_tenant(bundle):
        feedback = SearchFeedback.objects.get()
        assert feedback.chunk_id == chunk_id and not feedback.helpful

    # a knowledge gap answered with the FAQ shortcut, then "this answered it"
    api = api_for(bundle)
    gap = "does the toaster come in blue"
    for _ in range(2):
        api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": gap, "similarity_threshold": 0.9},
                 format="json")  # fmt: skip
    analytics = client.get(f"/chatbots/{bundle.chatbot.pk}/search/analytics")
    assert gap.encode() in analytics.content and b"This answered it" not in analytics.content
    with django_capture_on_commit_callbacks(execute=True):  # the FAQ document is processed at commit
        client.post(f"/chatbots/{bundle.chatbot.pk}/faq", {"question": gap, "answer": "Yes: blue, red and white."})
    analytics = client.get(f"/chatbots/{bundle.chatbot.pk}/search/analytics").content.decode()
    assert "This answered it" in analytics
    form = analytics.split('class="gap-answered"')[1].split("</form>")[0]
    answer_chunk = int(form.split('name="chunk_id" value="')[1].split('"')[0])
    queries = [part.split('"')[0] for part in form.split('name="queries" value="')[1:]]
    assert gap in queries
    done = client.post(f"/chatbots/{bundle.chatbot.pk}/gap-answered", {"chunk_id": answer_chunk, "queries": queries},
                       follow=True)  # fmt: skip
    assert b"training pairs added" in done.content
    with as_tenant(bundle):
        pairs = TrainingPair.objects.filter(source="feedback", chunk_id=answer_chunk)
        assert gap in set(pairs.values_list("query", flat=True))
    nothing = client.post(f"/chatbots/{bundle.chatbot.pk}/gap-answered", {"queries": queries}, follow=True)
    assert b"Choose the answer that answered it" in nothing.content
