"""The search optimizer (search/services/optimize/): the index autopilot on a hard and an easy
chatbot, reindex and vacuum upkeep, its API and its dashboard page.

Celery runs eagerly in tests: starting a run enqueues on commit, and the task function runs
in-process (``optimization_run`` is also called directly where a test needs the run's outcome).
Vectors are inserted straight into the chunk and vector tables (no model), as in test_search.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests.conftest import across_tenants, as_tenant, insert_vectors

DB = pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])


def _insert_vectors(chatbot, vectors: np.ndarray, *, document_title: str = "vectors") -> int:
    return insert_vectors(chatbot, vectors, title=document_title)[0]


def near_duplicates(seed: int, count: int, *, clusters: int, spread: float) -> np.ndarray:
    """Unit vectors in tight clusters: many near-duplicates, hard for a narrow HNSW walk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, 384))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, 384)) / np.sqrt(384)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _analyze_tables() -> None:
    from tenants import dbroles

    with dbroles.owner_connect() as owner:  # statistics for the planner, as autovacuum would gather them
        owner.execute("ANALYZE knowledge_chunkembedding")
        owner.execute("ANALYZE knowledge_chunk")


def _big_chatbot(bundle, vectors: np.ndarray) -> None:
    """The bundle's chatbot with ``vectors`` and an HNSW index of its own (as ingestion asks)."""
    from knowledge.services import vector_indexes_optimize
    from knowledge.vectors import chatbot_indexes

    _insert_vectors(bundle.chatbot, vectors)
    assert vector_indexes_optimize(chatbot_id=bundle.chatbot.pk)["created"]
    assert all(chatbot_indexes().values())
    _analyze_tables()


def _serving(bundle):
    from search.services.serving import serving_for
    from tenants.models import Chatbot

    with as_tenant(bundle):
        return serving_for(Chatbot.objects.get(pk=bundle.chatbot.pk))  # its current content version


@pytest.fixture
def quick(settings):
    settings.OPTIMIZE_SAMPLE_QUERIES = 40
    settings.OPTIMIZE_EF_LADDER = [10, 20, 40, 100, 200, 400, 800]
    settings.OPTIMIZE_EXACT_FASTER_BY = 0.0  # never "exact always": these tests are about the HNSW walk
    return settings


def _start(bundle, **kwargs):
    from search.models import OptimizationRun
    from search.services.optimize import optimization_start

    with as_tenant(bundle):  # outside a transaction: the on-commit enqueue runs the task eagerly, in-process
        run = optimization_start(tenant=bundle.tenant, chatbot=bundle.chatbot, requested_by="test", **kwargs)
        return OptimizationRun.objects.get(pk=run.pk)


def low_dimensional(seed: int, count: int, *, dims: int = 6) -> np.ndarray:
    """Unit vectors spanning only a few directions of the 384 (text embeddings have a low
    intrinsic dimension; this is the extreme): an easy graph for HNSW."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((384, dims)))
    vectors = (rng.standard_normal((count, dims)) + 3.0 * np.eye(dims)[0]) @ basis.T
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@DB
def test_autopilot_raises_recall_on_a_hard_chatbot_and_searches_use_the_new_ef_search(bundle, quick):
    """Near-random 384-d vectors: the default walk (ef_search 100 on the chatbot's own index)
    misses neighbours; the run finds the smallest ef_search that meets 0.99 and serving uses it."""
    from search.models import SearchTuning

    _big_chatbot(bundle, near_duplicates(1, 4000, clusters=4000, spread=4.0))
    before = _serving(bundle)
    assert before.ef_search is None and before.exact_max is None  # the settings' defaults

    run = _start(bundle, actions=["tune"], recall_target=0.99)

    assert run.status == "succeeded", run.error
    tune = run.results["tune"]
    assert tune["own_index"] is True and tune["queries"] == {"count": 40, "logged": 0, "own_vectors": 40}
    assert tune["before"]["ef_search"] == 100 and tune["before"]["strategy"] == "hnsw"
    assert tune["before"]["recall"] < 0.99, tune["ladder"]
    chosen = tune["chosen"]["ef_search"]
    assert chosen > 100 and tune["after"]["recall"] >= 0.99 and tune["after"]["ef_search"] == chosen
    smaller = [row for row in tune["ladder"] if row["ef_search"] < chosen]
    assert tune["after"]["recall_low"] >= 0.99  # at the target with 95 % confidence, the smallest that is
    assert smaller and all(row["recall_low"] < 0.99 for row in smaller)
    with as_tenant(bundle):
        tuning = SearchTuning.objects.get(chatbot=bundle.chatbot)
    assert (tuning.ef_search, tuning.exact_max, tuning.source_run_id) == (chosen, 1500, run.pk)
    assert tuning.measured_recall == tune["after"]["recall"]
    after = _serving(bundle)  # the content version moved: every process reads the tuning again
    assert (after.ef_search, after.exact_max) == (chosen, 1500)


@DB
def test_autopilot_lowers_ef_search_on_an_easy_chatbot_without_losing_recall(bundle, quick):
    """Vectors of few directions: a narrow walk already finds every neighbour."""
    from search.models import SearchLog
    from search.selectors import NO_FILTERS
    from search.services import _semantic_search

    vectors = low_dimensional(2, 2000)
    _big_chatbot(bundle, vectors)
    space = _serving(bundle).space
    with as_tenant(bundle):  # knowledge-gap searches keep their query vector: tuning reuses it
        SearchLog.objects.bulk_create(
            SearchLog(tenant=bundle.tenant, chatbot=bundle.chatbot, query=f"gap {i}", mode="semantic", took_ms=1.0,
                      embedding_space=space.key, query_embedding=list(vectors[i] + 0.01))
            for i in range(12)
        )  # fmt: skip
    run = _start(bundle, actions=["tune"])  # recall target 0.98
    assert run.status == "succeeded", run.error
    tune = run.results["tune"]
    assert tune["queries"] == {"count": 40, "logged": 12, "own_vectors": 28}
    assert tune["chosen"]["ef_search"] < tune["before"]["ef_search"] == 100
    assert tune["after"]["recall"] >= 0.98 and tune["chosen"]["note"] == ""
    serving = _serving(bundle)
    assert serving.ef_search == tune["chosen"]["ef_search"]
    with as_tenant(bundle):  # a search with the serving tuning walks HNSW and finds its 10 hits
        hits, strategy = _semantic_search(space=serving.space, chatbot=bundle.chatbot, vector=[1.0] + [0.0] * 383,
                                          limit=10, filters=NO_FILTERS, ef_search=serving.ef_search,
                                          exact_max=serving.exact_max)  # fmt: skip
    assert strategy == "hnsw" and len(hits) == 10


@DB
def test_vacuum_records_dead_tuples_before_and_after(bundle, quick):
    from knowledge.models import Document

    settings = quick
    settings.OPTIMIZE_VACUUM_DEAD_SHARE = 0.05
    keep = _insert_vectors(bundle.chatbot, near_duplicates(3, 200, clusters=5, spread=0.5), document_title="keep")
    _insert_vectors(bundle.chatbot, near_duplicates(4, 400, clusters=5, spread=0.5), document_title="drop")
    with as_tenant(bundle):
        Document.objects.filter(chatbot=bundle.chatbot).exclude(pk=keep).delete()  # 400 chunks and vectors
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")  # the deletes reach the statistics now

    run = _start(bundle, actions=["vacuum"])

    assert run.status == "succeeded", run.error
    vacuum = run.results["vacuum"]
    assert vacuum["vacuumed"] == ["knowledge_chunkembedding", "knowledge_chunk"]
    for table in vacuum["vacuumed"]:
        assert vacuum["before"][table]["dead_tuples"] >= 400, vacuum
        assert vacuum["after"][table]["dead_tuples"] < vacuum["before"][table]["dead_tuples"]
        assert vacuum["after"][table]["last_vacuum"] is not None
    again = _start(bundle, actions=["vacuum"])  # nothing dead now: nothing to do
    assert again.results["vacuum"]["vacuumed"] == []


@DB
def test_reindex_skips_a_small_chatbot_and_the_run_records_every_action(bundle, quick, client):
    """A chatbot below the own-index size is searched exactly: reindex has nothing to rebuild;
    analyze calls the vector analysis (or says it is not there yet)."""
    _insert_vectors(bundle.chatbot, near_duplicates(5, 50, clusters=5, spread=0.5))
    run = _start(bundle)  # every action
    assert run.status == "succeeded", run.error
    assert run.actions == ["tune", "reindex", "vacuum", "analyze"] and run.percent == 100
    assert run.results["reindex"]["rebuilt"] is False
    assert run.results["reindex"]["skipped"].startswith("searched exactly")
    assert run.results["tune"]["after"]["strategy"] == "exact" and run.results["tune"]["after"]["recall"] == 1.0
    assert set(run.results) == {"tune", "reindex", "vacuum", "analyze"}
    assert isinstance(run.results["analyze"], dict) and run.results["analyze"]  # the analysis report, or why not
    assert client.login(username=bundle.username, password=bundle.password)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/optimize/").content.decode()
    assert f'data-run="{run.pk}"' in page and "searched exactly" in page
    if "skipped" not in run.results["analyze"]:  # the analysis helper's report is shown on the page
        assert 'id="vector-analysis-report"' in page


@DB
def test_reindex_rebuilds_an_index_below_the_recall_target(bundle, quick):
    from knowledge.vectors import chatbot_index_name
    from search.selectors import index_bytes

    quick.OPTIMIZE_EF_LADDER = [10]  # tuning cannot reach the target: the rebuild is asked for
    quick.SEARCH_HNSW_EF_SEARCH_OWN_INDEX = 10  # (the current setting is measured too)
    _big_chatbot(bundle, near_duplicates(6, 1600, clusters=1600, spread=4.0))
    run = _start(bundle, actions=["tune", "reindex"], recall_target=1.0)
    assert run.status == "succeeded", run.error
    assert "no ef_search up to 10" in run.results["tune"]["chosen"]["note"]
    reindex = run.results["reindex"]
    assert reindex["rebuilt"] is True and "below the target" in reindex["reason"]
    with as_tenant(bundle):
        name = chatbot_index_name(space_id=_serving(bundle).space.pk, chatbot_id=bundle.chatbot.pk)
        assert reindex["index"] == name and reindex["bytes_after"] == index_bytes(name) > 0


# --- API -----------------------------------------------------------------------------------------


def test_api_starts_a_run_and_refuses_bad_input_a_second_run_and_other_tenants(api, bundle, other_bundle):
    """In a test transaction the on-commit enqueue does not fire: the run stays queued (live)."""
    from tenants.services import api_key_create

    started = api.post(f"/api/optimize/{bundle.chatbot.pk}", {"actions": ["vacuum", "tune"], "recall_target": 0.95},
                       format="json")  # fmt: skip
    assert started.status_code == 202, started.content
    run = started.json()
    assert run["status"] == "queued" and run["actions"] == ["tune", "vacuum"] and run["recall_target"] == 0.95
    assert run["percent"] == 0 and run["results"] == {} and run["status_url"] == f"/api/optimize/runs/{run['run_id']}"
    assert run["tuning"] == {"tuned": False, "ef_search": None, "exact_max": 1500, "recall_target": None,
                             "measured_recall": None, "measured_at": None, "source_run_id": None}  # fmt: skip

    again = api.post(f"/api/optimize/{bundle.chatbot.pk}", {}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    for body, field in [({"actions": ["defrag"]}, "actions"), ({"recall_target": 0.5}, "recall_target"),
                        ({"recall_target": 1.01}, "recall_target"), ({"recall_target": "high"}, "recall_target"),
                        ({"actions": []}, "actions"), ({"speed": 1}, None)]:  # fmt: skip
        bad = api.post(f"/api/optimize/{bundle.chatbot.pk}", body, format="json")
        assert bad.status_code == 400, (body, bad.content)
        assert field is None or bad.json()["error"]["field"].startswith(field), bad.json()

    overview = api.get(f"/api/optimize/{bundle.chatbot.pk}").json()
    assert [r["run_id"] for r in overview["runs"]] == [run["run_id"]]
    assert overview["tuning"]["tuned"] is False and overview["tuning"]["exact_max"] == 1500
    assert api.get(run["status_url"]).json()["run_id"] == run["run_id"]

    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_bundle.api_key}")
    assert other.get(run["status_url"]).status_code == 404
    assert other.get(f"/api/optimize/{bundle.chatbot.pk}").status_code == 404
    assert other.post(f"/api/optimize/{bundle.chatbot.pk}", {}, format="json").status_code == 404

    with as_tenant(bundle):
        reader = api_key_create(tenant=bundle.tenant, name="reader", scopes=("read",))
    read_only = APIClient()
    read_only.credentials(HTTP_AUTHORIZATION=f"Bearer {reader.raw_key}")
    assert read_only.get(f"/api/optimize/{bundle.chatbot.pk}").status_code == 200
    refused = read_only.post(f"/api/optimize/{bundle.chatbot.pk}", {}, format="json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"


# --- Dashboard -----------------------------------------------------------------------------------


@DB
def test_dashboard_page_renders_for_a_viewer_and_its_form_starts_a_run_for_an_owner(client, bundle):
    from django.contrib.auth import get_user_model

    from search.models import OptimizationRun
    from tenants.services import member_add

    viewer = get_user_model().objects.create_user("opt-viewer", password="pw-viewer-1")
    with as_tenant(bundle):
        member_add(tenant=bundle.tenant, user=viewer, role="viewer")
    client.force_login(viewer)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/optimize/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Not tuned yet" in html and 'id="chart-opt-recall"' in html and 'id="opt-start"' not in html
    refused = client.post(f"/chatbots/{bundle.chatbot.pk}/optimize/", {"actions": ["vacuum"]}, follow=True)
    assert "Your role is &#x27;viewer&#x27;" in refused.content.decode()
    with across_tenants():
        assert not OptimizationRun.objects.exists()
    chatbot_page = client.get(f"/chatbots/{bundle.chatbot.pk}/").content.decode()
    assert f"/chatbots/{bundle.chatbot.pk}/optimize/" in chatbot_page

    assert client.login(username=bundle.username, password=bundle.password)
    done = client.post(f"/chatbots/{bundle.chatbot.pk}/optimize/", {"actions": ["vacuum"], "recall_target": "0.97"},
                       follow=True)  # fmt: skip
    assert done.status_code == 200 and "is queued" in done.content.decode()
    with across_tenants():
        run = OptimizationRun.objects.get()
    assert (run.actions, run.recall_target, run.requested_by) == (["vacuum"], 0.97, bundle.username)
    assert run.status == "succeeded"  # eager Celery ran it after the request's commit
    assert f'data-run="{run.pk}"' in done.content.decode()


def test_a_run_whose_worker_went_silent_stops_holding_the_chatbot(bundle, settings):
    """A run still 'running' with no progress for OPTIMIZE_STALE_AFTER_SECONDS is failed with a
    readable reason when the next run starts; a live one still refuses a second (409)."""
    from datetime import timedelta

    from django.utils import timezone

    from search.models import OptimizationRun
    from search.services.optimize import optimization_start
    from tenants.errors import Conflict

    with as_tenant(bundle):
        old = timezone.now() - timedelta(seconds=settings.OPTIMIZE_STALE_AFTER_SECONDS + 60)
        stuck = OptimizationRun.objects.create(
            tenant=bundle.tenant, chatbot=bundle.chatbot, actions=["tune"], status="running", heartbeat_at=old
        )
        fresh = optimization_start(tenant=bundle.tenant, chatbot=bundle.chatbot, requested_by="test")
        stuck.refresh_from_db()
        assert stuck.status == "failed" and "stopped answering" in stuck.error and stuck.finished_at
        assert fresh.status == "queued"
        with pytest.raises(Conflict):
            optimization_start(tenant=bundle.tenant, chatbot=bundle.chatbot, requested_by="test")
        assert OptimizationRun.objects.filter(chatbot=bundle.chatbot).count() == 2


@DB
def test_nightly_starts_a_run_for_every_chatbot_with_vectors_but_one_already_live(bundle, other_bundle, quick):
    """The beat task (called directly, as beat's worker would: no scope of its own) looks across
    tenants; each run it starts executes eagerly in its chatbot's tenant scope."""
    from search.models import OptimizationRun
    from search.tasks import optimize_nightly_task
    from tenants.services import chatbot_create

    with as_tenant(bundle):
        empty = chatbot_create(tenant=bundle.tenant, name="Empty")
    _insert_vectors(bundle.chatbot, near_duplicates(7, 30, clusters=3, spread=0.5))
    _insert_vectors(other_bundle.chatbot, near_duplicates(8, 30, clusters=3, spread=0.5))
    with as_tenant(other_bundle):
        live = OptimizationRun.objects.create(
            tenant=other_bundle.tenant, chatbot=other_bundle.chatbot, actions=["tune"]
        )

    done = optimize_nightly_task()

    assert done == {"started": [bundle.chatbot.pk], "skipped": [other_bundle.chatbot.pk]}
    with across_tenants():
        runs = {run.chatbot_id: run for run in OptimizationRun.objects.exclude(pk=live.pk)}
    assert list(runs) == [bundle.chatbot.pk] and empty.pk not in runs
    assert runs[bundle.chatbot.pk].status == "succeeded" and runs[bundle.chatbot.pk].requested_by == "nightly"


@DB
def test_a_failing_action_fails_the_run_with_a_readable_reason_and_stores_no_tuning(bundle, quick):
    """pgvector refuses an ef_search above 1000: the run records failed, says which action and
    why, and keeps the chatbot's searches on their settings (no tuning row, no version bump)."""
    from search.models import SearchTuning
    from tenants.models import Chatbot

    quick.OPTIMIZE_EF_LADDER = [5000]
    _insert_vectors(bundle.chatbot, near_duplicates(9, 40, clusters=3, spread=0.5))
    with as_tenant(bundle):
        version = Chatbot.objects.get(pk=bundle.chatbot.pk).content_version
    run = _start(bundle, actions=["tune", "vacuum"])
    assert run.status == "failed" and run.finished_at is not None
    assert run.error.startswith("tune failed: ") and "hnsw.ef_search" in run.error, run.error
    assert run.results == {} and run.percent < 100
    with as_tenant(bundle):
        assert not SearchTuning.objects.exists()
        assert Chatbot.objects.get(pk=bundle.chatbot.pk).content_version == version
