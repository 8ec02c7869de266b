"""Nightly retrieval evaluation: the serving version measured on the chatbot's held-out questions
(the service called directly, and the beat task's function under its cross-tenant scope), its
figure checked against searches through the API, stored as a series, shown in the analytics API
and exported to /metrics."""

from __future__ import annotations

import math

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.conftest import as_tenant
from tests.test_prometheus import sample
from tests.test_training import trained_bot as trained_bot  # noqa: F401 (fixture)


def api_for(bundle) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
    return client


def ndcg_through_search(bundle, questions) -> float:
    """nDCG@10 of the held-out questions as a chatbot sees it: exact semantic search via the API."""
    api, total = api_for(bundle), 0.0
    for text, relevant in questions:
        body = {"chatbot_id": bundle.chatbot.pk, "query": text, "max_results": 10, "mode": "semantic"}
        ranked = [hit["chunk_id"] for hit in api.post("/api/search", body, format="json").json()["results"]]
        dcg = sum(1 / math.log2(rank + 2) for rank, chunk in enumerate(ranked) if chunk in relevant)
        total += dcg / sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant), 10)))
    return total / len(questions)


def test_the_nightly_figure_is_what_search_gives(trained_bot, settings):  # noqa: F811
    from training.models import TrainingPair
    from training.services import evaluation_run, training_pairs_collect

    settings.API_RATE_LIMITS = {**settings.API_RATE_LIMITS, "standard": 100_000}
    bundle = trained_bot
    with as_tenant(bundle):
        training_pairs_collect(chatbot=bundle.chatbot, llm=False)
        first = evaluation_run(chatbot=bundle.chatbot)
        held: dict[str, set] = {}
        for pair in TrainingPair.objects.filter(chatbot=bundle.chatbot, split="heldout", chunk__isnull=False):
            held.setdefault(" ".join(pair.query.casefold().split()), (pair.query, set()))[1].add(pair.chunk_id)
    assert first.note == "" and first.queries == len(held) >= 5
    assert 0 < first.ndcg_10 <= 1 and 0 < first.recall_10 <= 1
    assert first.baseline_ndcg_10 == first.ndcg_10  # the base model's first measurement is its baseline
    assert first.space_key == "local:all-MiniLM-L6-v2@1" and first.version is None
    assert first.ndcg_10 == pytest.approx(ndcg_through_search(bundle, list(held.values())), abs=0.03)

    with as_tenant(bundle):
        second = evaluation_run(chatbot=bundle.chatbot)
    assert second.baseline_ndcg_10 == first.ndcg_10 and second.ndcg_10 == pytest.approx(first.ndcg_10, abs=1e-6)

    series = api_for(bundle).get(f"/api/analytics/{bundle.chatbot.pk}").json()["training"]
    assert [row["ndcg_10"] for row in series["evaluations"]] == [first.ndcg_10, second.ndcg_10]
    assert series["evaluation"]["ndcg"] == second.ndcg_10 and series["evaluation"]["deployed_ndcg"] == first.ndcg_10


def test_too_few_held_out_questions_is_a_note_not_a_number(bundle):
    from training.services import evaluation_run

    with as_tenant(bundle):
        record = evaluation_run(chatbot=bundle.chatbot)
    assert record.ndcg_10 is None and "held-out questions" in record.note


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])
def test_the_beat_task_measures_every_chatbot_with_held_out_questions(trained_bot, other_bundle, settings):  # noqa: F811
    """The beat task's function, called directly (it opens its own cross-tenant scope)."""
    from monitoring.metrics import STATE
    from training.models import Evaluation
    from training.services import training_pairs_collect
    from training.tasks import evaluations_nightly_task

    settings.METRICS_GAUGES_TTL = 0
    STATE.forget()  # an earlier scrape in this process kept its figures for the default TTL
    with as_tenant(trained_bot):
        training_pairs_collect(chatbot=trained_bot.chatbot, llm=False)
    result = evaluations_nightly_task()
    assert (result["chatbots"], result["measured"]) == (1, 1)
    with as_tenant(trained_bot):
        records = list(Evaluation.objects.filter(chatbot=trained_bot.chatbot))
    with as_tenant(other_bundle):
        assert not Evaluation.objects.filter(chatbot=other_bundle.chatbot).exists()  # no held-out questions
    assert records and all(r.ndcg_10 is not None for r in records)
    text = Client().get("/metrics").content.decode()
    assert (
        sample(text, "chatbot_evaluation_ndcg", chatbot=trained_bot.chatbot.pk, status="nightly") == records[-1].ndcg_10
    )
