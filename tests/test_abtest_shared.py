"""A/B tests under simulated live traffic on real customer queries: BANKING77 from
../shared/datasets/faq (skipped in a clone without it).

Continuous learning closes the loop on a bank's FAQ: the beat's check finds the uploaded pairs,
starts a query-adapter job, the gate passes it (it is truly better on held-out queries) and an A/B
test at 50% starts by itself. Simulated users then ask real queries no job saw, each question once
by a user the test assigns to the control and once by one it assigns to the variant (so both arms
see the same questions), and mark a search helpful when its first result is the question's
article. The better variant reaches significance and is promoted. An equal pair (a variant whose
adapter changes nothing) under the same traffic does not reach significance.

Celery is eager: the beat's task is called as its function and what it starts runs in the test
process at commit (``django_capture_on_commit_callbacks``)."""

import numpy as np
import pytest

from tests.conftest import as_tenant
from tests.test_training import api_for
from tests.test_training_shared import PER_INTENT, banking77, faq_bot

pytestmark = [pytest.mark.django_db, pytest.mark.shared]

QUERIES_PER_INTENT = 20  # unseen queries per intent asked by the simulated users


def arm_users(bundle, count: int) -> tuple[list[str], list[str]]:
    """``count`` user ids the running test assigns to the control and ``count`` to the variant."""
    from knowledge.models import ChatbotSpace
    from search.services import assignment_bucket, assignment_key

    with as_tenant(bundle):
        link = ChatbotSpace.objects.get(chatbot=bundle.chatbot, role="testing")
    control, variant, n = [], [], 0
    while len(control) < count or len(variant) < count:
        user = f"customer-{n}"
        n += 1
        is_variant = assignment_bucket(link.pk, assignment_key(query="", user_id=user)) < link.traffic_percent * 100
        (variant if is_variant else control).append(user)
    return control[:count], variant[:count]


def simulate(bundle, questions: list[tuple[str, int]]) -> dict:
    """Each question asked once in each arm; feedback: helpful when the first result is its article."""
    api = api_for(bundle)
    control, variant = arm_users(bundle, len(questions))
    seen = {"control": 0, "variant": 0}
    for (question, article), users in zip(questions, zip(control, variant, strict=True), strict=True):
        for user in users:
            response = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": question, "user_id": user,
                                                "max_results": 3}, format="json")  # fmt: skip
            assert response.status_code == 200, response.json()
            answer = response.json()
            seen[answer["variant"]] += 1
            top = answer["results"][0]["chunk_id"]
            vote = {"helpful": top == article, "chunk_id": top}
            assert api.post(f"/api/search/{answer['query_id']}/feedback", vote, format="json").status_code == 201
    assert seen == {"control": len(questions), "variant": len(questions)}  # the assignment held
    return api.get(f"/api/models/{bundle.chatbot.pk}/ab-test").json()


def unseen_questions(bundle, intents: dict) -> list[tuple[str, int]]:
    from knowledge.models import Chunk

    with as_tenant(bundle):
        chunks = list(Chunk.objects.filter(chatbot=bundle.chatbot).order_by("id").values_list("id", flat=True))
    article = dict(zip(intents, chunks, strict=True))
    start = 1 + PER_INTENT
    return [(q, article[intent]) for intent, qs in intents.items() for q in qs[start : start + QUERIES_PER_INTENT]]


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # the beat reads across tenants
def test_continuous_learning_starts_an_ab_test_the_better_variant_wins_and_an_equal_pair_does_not(
    bundle, other_bundle, settings, tmp_path, django_capture_on_commit_callbacks, monkeypatch
):
    from knowledge.adapters import QueryAdapter
    from knowledge.models import ChatbotSpace
    from training.models import TrainingJob
    from training.services import data
    from training.services.versions import model_version_create
    from training.tasks import continuous_learning_task

    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "versions"
    settings.API_RATE_LIMITS = {**settings.API_RATE_LIMITS, "standard": 1_000_000}  # thousands of simulated users
    # The held-out split hashes the chatbot id with each question; ids depend on what ran before in
    # this test database (one per xdist worker), so the split is pinned to chatbot 1's
    split = data.heldout_for
    monkeypatch.setattr(data, "heldout_for", lambda chatbot_id, query_key: split(1, query_key))
    intents = banking77()
    faq_bot(bundle, intents)
    api = api_for(bundle)
    url = f"/api/models/{bundle.chatbot.pk}/continuous-learning"
    api.put(url, {"enabled": True, "job_type": "adapter", "min_new_pairs": 100, "min_days_between": 0,
                  "auto_ab_percent": 50}, format="json")  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        assert continuous_learning_task()["started"] == 1
    state = api.get(url).json()
    assert "passed the gate" in state["last_outcome"] and "A/B test at 50% started" in state["last_outcome"], state
    test = api.get(f"/api/models/{bundle.chatbot.pk}/ab-test").json()
    assert test["status"] == "running" and test["traffic_percent"] == 50 and test["control_space"].endswith("@1")

    questions = unseen_questions(bundle, intents)
    assert len(questions) == 77 * QUERIES_PER_INTENT
    report = simulate(bundle, questions)["report"]
    control, variant = report["arms"]["control"], report["arms"]["variant"]
    assert control["feedback"] == variant["feedback"] == len(questions)
    assert variant["helpful_rate"] > control["helpful_rate"], report
    assert report["significant"] and report["winner"] == "variant" and report["p_value"] < 0.05, report
    assert report["verdict"].startswith("variant +") and report["verdict"].endswith("the variant is better.")
    print(f"better pair: control {control['helpful_rate']}, variant {variant['helpful_rate']}: {report['verdict']}")
    promoted = api.post(f"/api/models/{bundle.chatbot.pk}/ab-test/promote")
    assert promoted.status_code == 200 and promoted.json()["status"] == "promoted"
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    (version,) = listing["versions"]
    assert version["status"] == "active" and listing["serving"] == version["embedding_space"]
    (timeline,) = listing["history"]
    assert timeline["ab_tests"][0]["status"] == "promoted" and timeline["ab_tests"][0]["p_value"] < 0.05

    # the equal pair: a variant whose adapter moves no query (its up-projection is zero)
    faq_bot(other_bundle, intents)
    other = api_for(other_bundle)
    with as_tenant(other_bundle):
        base = ChatbotSpace.objects.select_related("space").get(chatbot=other_bundle.chatbot, role="active").space
        job = TrainingJob.objects.create(tenant=other_bundle.tenant, chatbot=other_bundle.chatbot,
                                         job_type="adapter", status="succeeded")  # fmt: skip
        zero = QueryAdapter(np.eye(base.dimensions, 8, dtype=np.float32), np.zeros((8, base.dimensions), np.float32))
        same = model_version_create(
            job=job,
            metrics={"bootstrap": {"gain": 0.0, "low": 0.0, "high": 0.0}, "per_source": {}},
            save=lambda folder: zero.save(folder, vectors_of=base.key),
            workdir=tmp_path,
            vectors_from=base,
        )
    body = {"variant_version_id": same.pk, "traffic_percent": 50, "min_searches": 100, "force": True}
    with django_capture_on_commit_callbacks(execute=True):
        started = other.post(f"/api/models/{other_bundle.chatbot.pk}/ab-test", body, format="json")
    assert started.status_code == 202, started.json()
    equal = simulate(other_bundle, unseen_questions(other_bundle, intents)[:300])["report"]
    assert equal["difference"] == 0 and not equal["significant"] and equal["winner"] is None, equal
    print(f"equal pair: {equal['verdict']}")
    assert "no significant difference yet" in equal["verdict"] and equal["searches_still_needed"] > 0, equal
