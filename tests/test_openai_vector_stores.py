"""Chatbots as OpenAI vector stores, driven by the official ``openai`` client against a live server
(pytest-django's ``live_server``; requests as the app role under row-level security; ingestion
runs the task function directly, in-process): list, retrieve and search with OpenAI's filters and
ranking options, giving the results ``POST /api/search`` gives."""

import json

import openai
import pytest

from tests.conftest import ingest, make_upload
from tests.test_dify import ROWS


@pytest.fixture
def client(openai_clients, bundle):
    return openai_clients(bundle.api_key)


@pytest.fixture
def products(bundle):
    body = "\n".join(json.dumps(r) for r in ROWS)
    return ingest(bundle, make_upload("products.jsonl", body), content_type="product")


def test_a_chatbot_is_a_vector_store(client, bundle, other_bundle, products):
    store = client.vector_stores.retrieve(f"vs_{bundle.chatbot.pk}")
    assert (
        store.id == f"vs_{bundle.chatbot.pk}" and store.object == "vector_store" and store.name == bundle.chatbot.name
    )
    assert store.file_counts.completed == 1 and store.file_counts.total == 1 and store.status == "completed"
    assert store.usage_bytes == products.size_bytes > 0
    listed = client.vector_stores.list()
    assert [s.id for s in listed.data] == [f"vs_{bundle.chatbot.pk}"]  # not the other tenant's
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(f"vs_{other_bundle.chatbot.pk}")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve("vs_nope")


def test_list_pages_with_cursors(client, bundle):
    from tenants.services import chatbot_create
    from tests.conftest import as_tenant

    with as_tenant(bundle):
        for number in range(4):
            chatbot_create(tenant=bundle.tenant, name=f"Extra {number}")
    first = client.vector_stores.list(limit=2, order="asc")
    assert len(first.data) == 2 and first.has_more is True
    everything = [s.id for s in client.vector_stores.list(limit=2, order="asc")]  # the client follows `after`
    assert len(everything) == 5 and everything == sorted(everything, key=lambda i: int(i[3:]))
    newest = client.vector_stores.list(limit=10, order="desc")
    assert [s.id for s in newest.data] == everything[::-1]
    before = client.vector_stores.list(limit=10, order="asc", before=everything[2])
    assert [s.id for s in before.data] == everything[:2]
    with pytest.raises(openai.BadRequestError) as raised:
        client.vector_stores.list(limit=101)
    assert raised.value.param == "limit"


def test_search_gives_the_search_apis_results(client, api, bundle, products):
    page = client.vector_stores.search(
        f"vs_{bundle.chatbot.pk}", query="how much is the router?", max_num_results=3,
        ranking_options={"ranker": "none"},
    )  # fmt: skip
    ours = api.post(
        "/api/search", {"query": "how much is the router?", "chatbot_id": bundle.chatbot.pk, "max_results": 3},
        format="json",
    ).json()["results"]  # fmt: skip
    hits = list(page)
    assert [h.content[0].text for h in hits] == [r["content"] for r in ours]
    assert hits[0].file_id == f"file-doc-{products.pk}" and hits[0].filename == "products.jsonl"
    assert hits[0].attributes["product"] == "router" and hits[0].score == pytest.approx(ours[0]["similarity_score"])
    hybrid = list(client.vector_stores.search(f"vs_{bundle.chatbot.pk}", query="router price"))  # ranker auto
    assert hybrid and len(hybrid) <= 10
    assert list(client.vector_stores.search(f"vs_{bundle.chatbot.pk}", query="router price",
                                            ranking_options={"score_threshold": 0.99})) == []  # fmt: skip


FILTER_CASES = [
        ({"type": "eq", "key": "product", "value": "router"}, 2),
        ({"type": "ne", "key": "product", "value": "router"}, 3),
        ({"type": "gte", "key": "year", "value": 2024}, 2),
        ({"type": "lt", "key": "year", "value": 2023}, 2),
        ({"type": "in", "key": "product", "value": ["mesh", "printer"]}, 3),
        ({"type": "nin", "key": "product", "value": ["mesh", "printer"]}, 2),
        ({"type": "and", "filters": [{"type": "eq", "key": "tier", "value": "home"},
                                     {"type": "gt", "key": "year", "value": 2023}]}, 2),  # fmt: skip
        ({"type": "or", "filters": [{"type": "eq", "key": "product", "value": "mesh"},
                                    {"type": "and", "filters": [{"type": "eq", "key": "tier", "value": "office"},
                                                                {"type": "lte", "key": "year", "value": 2021}]}]}, 2),
        ({"type": "eq", "key": "colour", "value": "red"}, 0),  # an attribute no file has: nothing, never everything
]  # fmt: skip


def test_comparison_and_compound_filters(client, bundle, products):
    for filters, expected in FILTER_CASES:
        hits = list(client.vector_stores.search(f"vs_{bundle.chatbot.pk}", query="price", max_num_results=20,
                                                filters=filters))  # fmt: skip
        assert len(hits) == expected, filters


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"query": "x", "max_num_results": 51}, "max_num_results"),
        ({"query": "x", "ranking_options": {"ranker": "best"}}, "ranking_options.ranker"),
        ({"query": "x", "ranking_options": {"score_threshold": 2}}, "ranking_options.score_threshold"),
        ({"query": "x", "filters": {"type": "like", "key": "a", "value": 1}}, "filters"),
        ({"query": "x", "filters": {"type": "eq", "key": "a", "value": {"$gt": 1}}}, "filters"),
        ({"query": "x", "extra_body": {"colour": 1}}, "colour"),
        ({"query": ""}, "query"),
    ],
)
def test_bad_searches_are_400s_naming_the_param(client, bundle, kwargs, param):
    with pytest.raises(openai.BadRequestError) as raised:
        list(client.vector_stores.search(f"vs_{bundle.chatbot.pk}", **kwargs))
    assert raised.value.param == param and raised.value.message


def test_searches_are_logged_and_scoped(client, openai_clients, bundle, other_bundle, products):
    from search.models import SearchLog
    from tenants.services import api_key_create
    from tests.conftest import as_tenant

    list(client.vector_stores.search(f"vs_{bundle.chatbot.pk}", query="does the mesh kit cover my house?"))
    with as_tenant(bundle):
        assert SearchLog.objects.filter(chatbot=bundle.chatbot, query="does the mesh kit cover my house?").exists()
        reader = api_key_create(tenant=bundle.tenant, name="reader", scopes=["read"])
    with pytest.raises(openai.NotFoundError):
        list(client.vector_stores.search(f"vs_{other_bundle.chatbot.pk}", query="x"))
    limited = openai_clients(reader.raw_key)
    assert limited.vector_stores.retrieve(f"vs_{bundle.chatbot.pk}").id == f"vs_{bundle.chatbot.pk}"
    with pytest.raises(openai.PermissionDeniedError):
        list(limited.vector_stores.search(f"vs_{bundle.chatbot.pk}", query="x"))


def test_the_fast_path_answers_vector_store_searches_as_the_view_does(client, bundle, products, settings):
    """``search.fastpath`` answers the common request before Django (as for /api/search); what it
    cannot answer plainly (a bad body, a refused key) it leaves to the view."""
    from search import fastpath

    path = f"/v1/vector_stores/vs_{bundle.chatbot.pk}/search"
    meta = {"HTTP_AUTHORIZATION": f"Bearer {bundle.api_key}", "CONTENT_TYPE": "application/json"}
    body = {"query": "how do I reset the router?", "max_num_results": 3, "ranking_options": {"ranker": "none"}}
    status, content, _ = fastpath.search_answer(meta, json.dumps(body).encode(), path)
    fast = json.loads(content)
    view = client.vector_stores.search(f"vs_{bundle.chatbot.pk}", **body)  # answered from the cache now
    assert status == 200 and fast["object"] == "vector_store.search_results.page"
    assert [d["content"][0]["text"] for d in fast["data"]] == [h.content[0].text for h in view]
    assert fast["data"][0]["attributes"]["product"] == "router" and fast["data"][0]["filename"] == "products.jsonl"
    assert fastpath.search_answer(meta, b'{"query": "x", "max_num_results": 99}', path) is None
    assert fastpath.search_answer({**meta, "HTTP_AUTHORIZATION": "Bearer ct_nope"}, b'{"query": "x"}', path) is None
    assert fastpath.search_answer(meta, b'{"query": "x"}', "/v1/vector_stores/vs_999999/search") is None
    settings.API_RATE_LIMITS = {name: 1 for name in settings.API_RATE_LIMITS}
    status, content, retry_after = fastpath.search_answer(meta, b'{"query": "anything else"}', path)
    error = json.loads(content)["error"]
    assert (
        status == 429
        and retry_after >= 1
        and (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    )
