"""A/B tests of model versions: a variant embedded with progress, then serving its share of the
searches by sticky assignment on both search paths, answers and logs naming the arm, caches
kept per arm, the live report with its z-test, promote, stop, the beat's max-days end and
guardrails, refusals with their messages, and the dashboard page.

The variant is a query adapter trained by a real adapter job over the local model's vectors (it
trains in well under a second). Celery is eager in the suite: a job's or a test's task function
runs in the test process when the request's transaction commits
(``django_capture_on_commit_callbacks``); the beat's check is called as its task function."""

import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.test import Client, override_settings

from tests.conftest import as_tenant
from tests.test_training import MIN_HELDOUT, api_for
from tests.test_training import trained_bot as trained_bot  # a fixture

pytestmark = pytest.mark.django_db

BASE = "local:all-MiniLM-L6-v2@1"


def adapter_version(bundle, capture) -> dict:
    api = api_for(bundle)
    with capture(execute=True):
        started = api.post("/api/training/start", {"chatbot_id": bundle.chatbot.pk, "job_type": "adapter",
                                                   "config": {"seed": 3}}, format="json")  # fmt: skip
    assert started.status_code == 202, started.json()
    status = api.get(started.json()["status_url"]).json()
    assert status["status"] == "succeeded", status
    (version,) = [v for v in api.get(f"/api/models/{bundle.chatbot.pk}").json()["versions"]
                  if v["job_id"] == status["job_id"]]  # fmt: skip
    return version


def start(bundle, capture, version_id: int, **fields):
    with capture(execute=True):  # the embedding task runs at commit
        return api_for(bundle).post(
            f"/api/models/{bundle.chatbot.pk}/ab-test",
            {"variant_version_id": version_id, "force": True, **fields},
            format="json",
        )


def full_path():
    """Requests through DRF only: the search fast-path middleware left out."""
    return override_settings(MIDDLEWARE=[m for m in django_settings.MIDDLEWARE if "fastpath" not in m])


def expected_arm(bundle, user: str) -> str:
    """The arm the assignment should give a user: the bucket of the testing link's salt."""
    from knowledge.models import ChatbotSpace
    from search.services import assignment_bucket, assignment_key

    with as_tenant(bundle):
        link = ChatbotSpace.objects.get(chatbot=bundle.chatbot, role="testing")
    bucket = assignment_bucket(link.pk, assignment_key(query="ignored", user_id=user))
    return "variant" if bucket < link.traffic_percent * 100 else "control"


@pytest.fixture
def ab_bot(trained_bot, settings):  # noqa: F811 (the fixture imported above)
    settings.TRAINING_MIN_HELDOUT = MIN_HELDOUT
    return trained_bot


def test_a_variant_is_embedded_then_serves_its_share_on_both_paths_by_sticky_assignment(
    ab_bot, other_bundle, django_capture_on_commit_callbacks
):
    from search.logbuffer import search_logs_flush
    from search.models import SearchLog

    bundle = ab_bot
    api = api_for(bundle)
    version = adapter_version(bundle, django_capture_on_commit_callbacks)
    started = start(bundle, django_capture_on_commit_callbacks, version["version_id"], traffic_percent=50,
                    min_searches=10)  # fmt: skip
    assert started.status_code == 202, started.json()
    body = started.json()
    assert body["status"] == "embedding" and body["control_space"] == BASE and body["traffic_percent"] == 50
    live = api.get(f"/api/models/{bundle.chatbot.pk}/ab-test").json()
    assert live["status"] == "running" and live["percent"] == 100 and live["started_at"]
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == BASE  # the control still serves by default
    assert {v["version_id"]: v["status"] for v in listing["versions"]}[version["version_id"]] == "testing"

    # one assignment for both paths, sticky per user; each answer names its arm and its space
    arms = {}
    query = {"chatbot_id": bundle.chatbot.pk, "query": "How do I reset my router?"}
    for n in range(40):
        user = f"user-{n}"
        fast = api.post("/api/search", {**query, "user_id": user}, format="json").json()
        with full_path():
            full = api.post("/api/search", {**query, "user_id": user, "max_results": 4}, format="json").json()
        assert fast["variant"] == full["variant"] == expected_arm(bundle, user), (user, fast, full)
        space = version["embedding_space"] if fast["variant"] == "variant" else BASE
        assert fast["embedding_space"] == full["embedding_space"] == space
        arms[user] = fast["variant"]
    assert set(arms.values()) == {"control", "variant"}
    for user, arm in list(arms.items())[:10]:  # sticky: the same user again, the same arm
        assert api.post("/api/search", {**query, "user_id": user}, format="json").json()["variant"] == arm

    # cached answers never cross arms: a query answered for the control is not a variant's cache hit
    control_user = next(u for u, a in arms.items() if a == "control")
    variant_user = next(u for u, a in arms.items() if a == "variant")
    fresh = {"chatbot_id": bundle.chatbot.pk, "query": "what is the warranty on the speaker", "max_results": 3}
    first = api.post("/api/search", {**fresh, "user_id": control_user}, format="json").json()
    other_arm = api.post("/api/search", {**fresh, "user_id": variant_user}, format="json").json()
    again = api.post("/api/search", {**fresh, "user_id": variant_user}, format="json").json()
    assert not first["cached"] and first["variant"] == "control"
    assert not other_arm["cached"] and other_arm["variant"] == "variant"
    assert again["cached"] and again["variant"] == "variant"
    assert again["embedding_space"] == version["embedding_space"]
    # no user or conversation: the normalised query decides, the same on both paths
    by_query = api.post("/api/search", {**fresh, "query": "  What is the WARRANTY on the speaker "}, format="json")
    with full_path():
        by_query_full = api.post("/api/search", {**fresh, "query": "what is the warranty on the speaker"},
                                 format="json")  # fmt: skip
    assert by_query.json()["variant"] == by_query_full.json()["variant"]
    by_conversation = [
        api.post("/api/search", {**fresh, "query": q, "conversation_id": "conv-7"}, format="json").json()["variant"]
        for q in ("router reset", "speaker warranty", "refund for a lamp")
    ]
    assert len(set(by_conversation)) == 1  # a conversation stays in one arm whatever it asks

    # every log row records its arm
    search_logs_flush()
    with as_tenant(bundle):
        logged = set(SearchLog.objects.filter(chatbot=bundle.chatbot).values_list("variant", flat=True))
    assert logged == {"control", "variant"}

    # another tenant sees nothing of it, and a chatbot without a test answers variant null
    other = api_for(other_bundle)
    assert other.get(f"/api/models/{bundle.chatbot.pk}/ab-test").status_code == 404
    plain = other.post("/api/search", {"chatbot_id": other_bundle.chatbot.pk, "query": "hello"}, format="json")
    assert plain.status_code == 200 and plain.json()["variant"] is None


def test_the_report_counts_feedback_per_arm_and_promote_switches_at_once(ab_bot, django_capture_on_commit_callbacks):
    from knowledge.models import ChunkEmbedding

    bundle = ab_bot
    api = api_for(bundle)
    version = adapter_version(bundle, django_capture_on_commit_callbacks)
    assert start(bundle, django_capture_on_commit_callbacks, version["version_id"], traffic_percent=50,
                 min_searches=10).status_code == 202  # fmt: skip
    query = {"chatbot_id": bundle.chatbot.pk, "query": "How do I reset my lamp?"}
    given = {"control": [0, 0], "variant": [0, 0]}
    for n in range(60):
        answer = api.post("/api/search", {**query, "user_id": f"u{n}"}, format="json").json()
        helpful = answer["variant"] == "variant" or n % 3 == 0  # the variant's users are happier
        vote = {"helpful": helpful, "chunk_id": answer["results"][0]["chunk_id"]}
        feedback = api.post(f"/api/search/{answer['query_id']}/feedback", vote, format="json")
        assert feedback.status_code in (200, 201), feedback.json()
        given[answer["variant"]][0] += 1
        given[answer["variant"]][1] += helpful
    report = api.get(f"/api/models/{bundle.chatbot.pk}/ab-test").json()["report"]
    for arm in ("control", "variant"):
        numbers = report["arms"][arm]
        assert numbers["searches"] == numbers["feedback"] == given[arm][0]
        assert numbers["helpful"] == given[arm][1]
        assert numbers["zero_result_rate"] == 0 and numbers["p95_ms"] >= numbers["p50_ms"] > 0
        assert numbers["mean_top_score"] > 0.5
    assert report["test"].startswith("two-proportion z-test")
    control_rate = given["control"][1] / given["control"][0]
    assert report["difference"] == pytest.approx(1 - control_rate, abs=1e-3)
    assert report["p_value"] < 0.05 and report["significant"] and report["winner"] == "variant"
    assert report["verdict"].startswith(f"variant +{100 * (1 - control_rate):.1f} pp helpful, p ")
    assert "60 searches" in report["verdict"]

    # deploy and rollback wait for the test
    refused = api.post(f"/api/models/{version['version_id']}/deploy", {"force": True}, format="json")
    assert refused.status_code == 409 and "testing" in refused.json()["error"]["message"]
    again = start(bundle, django_capture_on_commit_callbacks, version["version_id"])
    assert again.status_code == 409 and "already running" in again.json()["error"]["message"]

    with as_tenant(bundle):
        vectors_before = ChunkEmbedding.objects.filter(chatbot=bundle.chatbot).count()
    promoted = api.post(f"/api/models/{bundle.chatbot.pk}/ab-test/promote")
    assert promoted.status_code == 200, promoted.json()
    assert promoted.json()["status"] == "promoted" and "variant +" in promoted.json()["reason"]
    with as_tenant(bundle):
        assert ChunkEmbedding.objects.filter(chatbot=bundle.chatbot).count() == vectors_before  # nothing re-embedded
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == version["embedding_space"]
    assert {v["version_id"]: v["status"] for v in listing["versions"]}[version["version_id"]] == "active"
    after = api.post("/api/search", {**query, "user_id": "u1"}, format="json").json()
    assert after["embedding_space"] == version["embedding_space"] and after["variant"] is None
    ended = api.get(f"/api/models/{bundle.chatbot.pk}/ab-test").json()
    assert ended["status"] == "promoted" and ended["report"]["arms"]["variant"]["searches"] == given["variant"][0]
    assert api.post(f"/api/models/{bundle.chatbot.pk}/ab-test/stop").status_code == 409  # nothing runs now


def test_stop_keeps_the_control_and_bad_requests_are_refused_with_a_message(
    ab_bot, other_bundle, django_capture_on_commit_callbacks
):
    bundle = ab_bot
    api = api_for(bundle)
    url = f"/api/models/{bundle.chatbot.pk}/ab-test"
    assert api.get(url).status_code == 404
    assert api.post(f"{url}/promote").status_code == 409
    version = adapter_version(bundle, django_capture_on_commit_callbacks)
    for body, status, text in [
        ({"variant_version_id": version["version_id"], "traffic_percent": 0}, 400, "traffic_percent"),
        ({"variant_version_id": version["version_id"], "traffic_percent": 51}, 400, "traffic_percent"),
        ({"variant_version_id": version["version_id"], "traffic_percent": "10"}, 400, "traffic_percent"),
        ({"variant_version_id": version["version_id"], "max_days": 0}, 400, "max_days"),
        ({"variant_version_id": version["version_id"], "colour": "red"}, 400, "colour"),
        ({}, 400, "variant_version_id"),
        ({"variant_version_id": 99999999}, 404, "not found"),
    ]:
        answer = api.post(url, body, format="json")
        assert answer.status_code == status, (body, answer.json())
        assert text in json.dumps(answer.json()), (body, answer.json())
    # another tenant's chatbot, or this version through another tenant's key: not found
    assert api_for(other_bundle).post(url, {"variant_version_id": version["version_id"]}, format="json").status_code \
        == 404  # fmt: skip
    other_url = f"/api/models/{other_bundle.chatbot.pk}/ab-test"
    assert api_for(other_bundle).post(other_url, {"variant_version_id": version["version_id"]},
                                      format="json").status_code == 404  # fmt: skip
    if not version["gate"]["passed"]:
        refused = api.post(url, {"variant_version_id": version["version_id"]}, format="json")
        assert refused.status_code == 409 and "force" in refused.json()["error"]["message"]

    assert start(bundle, django_capture_on_commit_callbacks, version["version_id"], traffic_percent=30).status_code \
        == 202  # fmt: skip
    stopped = api.post(f"{url}/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    listing = api.get(f"/api/models/{bundle.chatbot.pk}").json()
    assert listing["serving"] == BASE
    assert {v["version_id"]: v["status"] for v in listing["versions"]}[version["version_id"]] == "candidate"
    for n in range(20):
        answer = api.post("/api/search", {"chatbot_id": bundle.chatbot.pk, "query": "router", "user_id": f"u{n}"},
                          format="json").json()  # fmt: skip
        assert answer["variant"] is None and answer["embedding_space"] == BASE
    # the version can be tested again, and deployed
    assert start(bundle, django_capture_on_commit_callbacks, version["version_id"]).status_code == 202
    assert api.post(f"{url}/stop").status_code == 200


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])  # the beat reads across tenants
def test_the_beat_ends_a_test_at_max_days_and_a_guardrail_stops_a_worse_variant(
    ab_bot, settings, django_capture_on_commit_callbacks
):
    from django.utils import timezone

    from search.models import SearchLog
    from tenants.models import AuditEvent
    from training.models import ABTest
    from training.tasks import ab_tests_check_task

    bundle = ab_bot
    api = api_for(bundle)
    version = adapter_version(bundle, django_capture_on_commit_callbacks)
    assert start(bundle, django_capture_on_commit_callbacks, version["version_id"], max_days=3).status_code == 202
    assert ab_tests_check_task() == {"running": 1, "ended": 0, "guardrail": 0}
    with as_tenant(bundle):
        ABTest.objects.filter(chatbot=bundle.chatbot).update(started_at=timezone.now() - timedelta(days=3, minutes=1))
    assert ab_tests_check_task() == {"running": 0, "ended": 1, "guardrail": 0}
    ended = api.get(f"/api/models/{bundle.chatbot.pk}/ab-test").json()
    assert ended["status"] == "ended" and "after 3 days" in ended["reason"]
    assert api.get(f"/api/models/{bundle.chatbot.pk}").json()["serving"] == BASE

    # a variant that finds nothing for many more searches than the control: stopped, with an alert
    settings.AB_GUARDRAIL_MIN_SEARCHES = 50
    assert start(bundle, django_capture_on_commit_callbacks, version["version_id"]).status_code == 202
    with as_tenant(bundle):  # the traffic the test saw, as the search log holds it
        test = ABTest.objects.get(chatbot=bundle.chatbot, status="running")
        now = timezone.now()
        SearchLog.objects.bulk_create(
            SearchLog(
                tenant=bundle.tenant,
                chatbot=bundle.chatbot,
                query=f"q{n}",
                mode="semantic",
                took_ms=12,
                embedding_space=BASE if arm == "control" else version["embedding_space"],
                variant=arm,
                result_count=0 if arm == "variant" and n % 2 else 5,
                top_score=0.7,
                created_at=now,
            )  # fmt: skip
            for arm in ("control", "variant")
            for n in range(80)
        )
    report = api.get(f"/api/models/{bundle.chatbot.pk}/ab-test").json()["report"]
    assert report["arms"]["variant"]["zero_result_rate"] == 0.5 and report["arms"]["control"]["zero_result_rate"] == 0
    assert "zero-result rate" in report["guardrail"]
    assert ab_tests_check_task() == {"running": 0, "ended": 0, "guardrail": 1}
    with as_tenant(bundle):
        test.refresh_from_db()
        assert test.status == "guardrail" and "zero-result rate 50.0%" in test.reason
        assert AuditEvent.objects.filter(action="abtest.guardrail").exists()
    assert api.get(f"/api/models/{bundle.chatbot.pk}").json()["serving"] == BASE


def test_assignment_is_sticky_and_balanced_over_ten_thousand_keys():
    from search.services import assignment_bucket, assignment_key

    for percent in (1, 10, 25, 50):
        for salt in (1, 77):
            keys = [assignment_key(query="q", user_id=f"user-{n}") for n in range(10_000)]
            share = sum(assignment_bucket(salt, k) < percent * 100 for k in keys) / len(keys)
            assert abs(share - percent / 100) <= 0.02, (percent, salt, share)
    assert assignment_bucket(5, "u:a") == assignment_bucket(5, "u:a")
    assert assignment_key(query="  Reset  my ROUTER ") == assignment_key(query="reset my router")
    assert assignment_key(query="x", user_id="7", conversation_id="c") == "u:7"
    assert assignment_key(query="x", conversation_id="c") == "c:c"


def test_the_z_test_and_the_sample_size_match_textbook_values():
    from training.services.abtests import _two_proportions, feedback_needed

    # 60/100 vs 75/100: pooled p 0.675, z = 0.15 / 0.06624 = 2.2646, two-sided p = 0.02354
    assert _two_proportions(60, 100, 75, 100) == pytest.approx(0.02354, abs=1e-4)
    assert _two_proportions(50, 100, 50, 100) == pytest.approx(1.0)
    assert _two_proportions(0, 0, 5, 10) is None
    # 50% vs 55% at alpha 0.05 and power 0.8: 1,565 per arm (the usual normal-approximation formula)
    assert feedback_needed(0.5, 0.55, alpha=0.05, power=0.8) == pytest.approx(1565, abs=2)


def test_the_dashboard_page_starts_shows_and_stops_a_test(ab_bot, django_capture_on_commit_callbacks):
    from training.models import ABTest

    bundle = ab_bot
    version = adapter_version(bundle, django_capture_on_commit_callbacks)
    client = Client()
    assert client.login(username=bundle.username, password=bundle.password)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/ab-test/")
    assert page.status_code == 200 and b"Start an A/B test" in page.content
    assert f'value="{version["version_id"]}"'.encode() in page.content
    bad = client.post(f"/chatbots/{bundle.chatbot.pk}/ab-test/start", {"variant_version_id": version["version_id"],
                      "traffic_percent": "eighty"}, follow=True)  # fmt: skip
    assert b"Traffic percent must be a whole number" in bad.content
    too_much = {"variant_version_id": version["version_id"], "traffic_percent": "80"}
    out_of_range = client.post(f"/chatbots/{bundle.chatbot.pk}/ab-test/start", too_much, follow=True)
    assert b"traffic_percent must be a whole number from 1 to 50" in out_of_range.content
    with django_capture_on_commit_callbacks(execute=True):
        started = client.post(f"/chatbots/{bundle.chatbot.pk}/ab-test/start",
                              {"variant_version_id": version["version_id"], "traffic_percent": "20", "force": "on"},
                              follow=True)  # fmt: skip
    assert started.status_code == 200 and b"A/B test of version" in started.content
    assert b"Version %d vs the control" % version["number"] in started.content
    assert b"chart-helpful" in started.content and b"Promote the variant" in started.content
    assert b"No feedback on both arms yet" in started.content
    stopped = client.post(f"/chatbots/{bundle.chatbot.pk}/ab-test/stop", follow=True)
    assert b"A/B test stopped" in stopped.content and b"Start an A/B test" in stopped.content
    with as_tenant(bundle):
        assert ABTest.objects.get().status == "stopped"
    training = client.get(f"/chatbots/{bundle.chatbot.pk}/training/")
    assert b'id="ab-link"' in training.content
