"""Whatever a person types reaches no 500: every dashboard form and query parameter and every API
parameter, with values that once did (non-numeric ids, NaN/Infinity in JSON, NUL characters,
numbers past any column, digits that are not ASCII). Ingestion runs eagerly in-process."""

import json

import pytest

from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, make_upload

pytestmark = pytest.mark.django_db

TEXTS = [
    "NaN", "Infinity", "-Infinity", "-1", "0", "9" * 30, "²", "١٢", "", "   ", "\x00", "a\x00b", "x" * 5000,
    "[]", "{}", '{"a": NaN}', '{"a": Infinity}', '{"a": "\\u0000"}', '{"\\u0000": 1}', '{"a": 1e999}',
    '{"product": {"gte": NaN}}', '{"and": [' * 30 + "{}" + "]}" * 30, "null", "true", "%00", "<script>x</script>",
]  # fmt: skip
JSON_VALUES = [
    None, True, -1, 0, 10**30, -(10**30), 1e308, "", "\x00", "a\x00b", "x" * 5000, [], {}, [None],
    {"\x00": 1}, {"a": "\x00"}, {"a": {"gte": "\x00"}}, [[[[[]]]]], {"field": "a", "op": "eq", "value": "\x00"},
]  # fmt: skip


@pytest.fixture
def owner(client, bundle):
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    assert client.login(username=bundle.username, password=bundle.password)
    return client


def _document_id(bundle) -> int:
    from knowledge.models import Document

    with as_tenant(bundle):
        return Document.objects.values_list("pk", flat=True).first()


def test_named_cases_answer_readably(owner, bundle, api):
    switch = owner.post("/tenant/switch", {"tenant_id": "abc"}, follow=True)
    assert switch.status_code == 200 and "You are not a member of that tenant." in switch.content.decode()
    page = owner.get(f"/chatbots/{bundle.chatbot.pk}/search/", {"q": "pay", "metadata": '{"product": NaN}'})
    assert page.status_code == 200 and "Metadata filter must be JSON" in page.content.decode()
    found = api.post(  # NUL characters, which PostgreSQL cannot hold, are removed from JSON values and text
        "/api/search",
        {"query": "pay\x00", "chatbot_id": bundle.chatbot.pk, "metadata": {"product": "we\x00b"}},
        format="json",
    )
    assert found.status_code == 200 and found.json()["effective_query"] == "pay"
    unknown = api.post("/api/search", {"query": "pay", "chatbot_id": bundle.chatbot.pk, "maxresults": 1}, format="json")
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "maxresults"  # not silently ignored
    upload = api.post(
        "/api/upload-training-data",
        {"file": make_upload("a.txt", "Some words."), "chatbot_id": bundle.chatbot.pk, "metadata": '{"a": NaN}'},
        format="multipart",
    )
    assert upload.status_code == 400 and upload.json()["error"]["field"] == "metadata"
    faq = owner.post(f"/chatbots/{bundle.chatbot.pk}/faq", {"question": "q\x00?", "answer": "a", "days": "²"})
    assert faq.status_code == 302 and faq.url.endswith("?days=14")


def test_every_dashboard_form_and_parameter(owner, bundle, run_jobs):
    document = _document_id(bundle)
    chatbot = bundle.chatbot.pk
    forms = [
        ("post", "/tenant/switch", ["tenant_id"], {}),
        ("post", "/keys/", ["name", "chatbot", "scopes"], {"name": "k", "scopes": ["search"]}),
        ("get", "/audit/", ["action"], {}),
        (
            "get",
            f"/chatbots/{chatbot}/search/",
            ["q", "max_results", "content_type", "category", "metadata", "conversation", "compare"],
            {"q": "pay"},
        ),  # fmt: skip
        ("get", f"/chatbots/{chatbot}/search/analytics", ["days"], {}),
        ("get", f"/chatbots/{chatbot}/search/export.csv", ["days"], {}),
        ("post", f"/chatbots/{chatbot}/faq", ["question", "answer", "category", "days"], {"answer": "a"}),
        ("get", f"/documents/{document}/", ["page"], {}),
        ("post", f"/chatbots/{chatbot}/upload", ["content_type", "category", "metadata", "title", "replace"], {}),
        ("post", "/login/", ["username", "password"], {"username": "x", "password": "y"}),
    ]
    statuses = {}
    with run_jobs():
        for method, url, fields, base in forms:
            for field in fields:
                for value in TEXTS:
                    data = {**base, field: value}
                    if url.endswith("/upload"):
                        data["files"] = make_upload("n.txt", "Opening hours are nine to five.")
                    response = getattr(owner, method)(url, data)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    body = b"".join(response.streaming_content) if response.streaming else response.content
                    assert response.status_code < 500, (url, field, value[:40], body[:300])
    assert statuses.get(200, 0) > 100, statuses


def _send(api, method, url, body, fmt):
    return getattr(api, method)(url, body, format=fmt) if body is not None else getattr(api, method)(url)


def test_every_api_parameter(api, bundle, settings):
    settings.API_RATE_LIMITS = {"standard": 10**6}
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq")
    document, chatbot = _document_id(bundle), bundle.chatbot.pk
    search = api.post("/api/search", {"query": "pay", "chatbot_id": chatbot}, format="json").json()
    query_params = [
        (f"/api/training-data/{chatbot}", ["status"]),
        (f"/api/documents/{document}", ["page", "page_size"]),
        (f"/api/search/hybrid/{chatbot}", ["q", "max_results", "semantic_weight"]),
        (f"/api/search/analytics/{chatbot}", ["days"]),
        (f"/api/search/logs/{chatbot}.csv", ["days"]),
    ]
    for url, fields in query_params:
        for field in fields:
            for value in TEXTS:
                response = api.get(url, {"q": "pay", field: value})
                assert response.status_code < 500, (url, field, value[:40], response.content[:300])
    bodies = [
        (
            "/api/search",
            {"query": "pay", "chatbot_id": chatbot},
            [
                "query",
                "chatbot_id",
                "max_results",
                "similarity_threshold",
                "mode",
                "semantic_weight",
                "filters",
                "content_types",
                "categories",
                "document_ids",
                "metadata",
                "conversation",
            ],
        ),  # fmt: skip
        (f"/api/search/{search['query_id']}/feedback", {"helpful": True}, ["helpful", "chunk_id", "comment"]),
    ]
    for url, base, fields in bodies:
        for field in fields:
            for value in [*JSON_VALUES, *TEXTS]:
                response = api.post(url, {**base, field: value}, format="json")
                assert response.status_code < 500, (url, field, repr(value)[:60], response.content[:300])
            for nested in (["filters", "metadata"], ["conversation", 0, "content"], ["filters", "categories", 0]):
                body = json.loads(json.dumps(base))
                if nested[0] == "conversation":
                    body["conversation"] = [{"role": "user", "content": "\x00"}]
                elif nested[1] == "categories":
                    body["filters"] = {"categories": ["\x00"]}
                else:
                    body["filters"] = {"metadata": {"a": {"gte": "\x00"}}}
                assert api.post(url, body, format="json").status_code < 500
    raw = '{"query": "pay", "chatbot_id": ' + str(chatbot) + ', "metadata": {"a": NaN}}'  # not JSON: a parse error
    response = api.post("/api/search", raw, content_type="application/json")
    assert response.status_code == 400
    for field in ["chatbot_id", "content_type", "title", "category", "user_id", "metadata", "replace"]:
        for value in TEXTS:
            response = api.post(
                "/api/upload-training-data",
                {"file": make_upload("n.txt", "Words."), "chatbot_id": chatbot, field: value},
                format="multipart",
            )
            assert response.status_code < 500, (field, value[:40], response.content[:300])
