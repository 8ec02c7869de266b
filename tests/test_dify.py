"""Dify's External Knowledge API, ``POST /api/dify/retrieval``, driven by the exact requests Dify
sends (``api/services/external_knowledge_service.py``): ``fetch_external_knowledge_retrieval``
posts ``json.dumps({"retrieval_setting": {"top_k", "score_threshold"}, "query", "knowledge_id"})``
(plus ``metadata_condition``, its ``MetadataCondition.model_dump()``, only when there is one) with
``Content-Type: application/json`` and ``Authorization: Bearer <key>``; ``check_endpoint_and_api_key``
posts the key and no body, and refuses the endpoint on 404, 403 or 502. Requests go through
Django's test client as the app role under row-level security; ingestion runs the task function
directly (in-process)."""

import json

import pytest

from tests.conftest import ingest, make_upload

URL = "/api/dify/retrieval"

ROWS = [
    {"question": "What does the X200 router cost?", "answer": "The X200 router costs 89 euros.", "product": "router",
     "tier": "home", "year": 2024, "released": "2024-03-01", "updated": 1714521600},
    {"question": "How do I reset the X200 router?", "answer": "Hold the reset pin for ten seconds.",
     "product": "router", "tier": "home", "year": 2023, "released": "2023-06-15", "updated": 1690000000},
    {"question": "What does the P10 printer cost?", "answer": "The P10 printer costs 149 euros.",
     "product": "printer", "tier": "office", "year": 2022, "released": "2022-01-10", "updated": 1650000000},
    {"question": "How do I clean the P10 print head?", "answer": "Run the cleaning cycle from the settings menu.",
     "product": "printer", "tier": "office", "year": "2021", "released": "2021-09-01", "updated": 1640000000},
    {"question": "Does the M5 mesh kit cover a whole house?", "answer": "Three M5 nodes cover up to 450 square metres.",
     "product": "mesh", "tier": "home", "year": 2025, "released": "2025-02-01", "updated": 1740000000},
]  # fmt: skip
JAN_2024 = 1704067200  # 2024-01-01T00:00:00Z: Dify's time values are Unix timestamps


def dify_params(knowledge_id, query, *, top_k=4, score_threshold=0.0, metadata_condition=None) -> dict:
    """The request_params of fetch_external_knowledge_retrieval, in its key order."""
    params = {
        "retrieval_setting": {"top_k": top_k, "score_threshold": score_threshold},
        "query": query,
        "knowledge_id": knowledge_id,  # ExternalKnowledgeBindings.external_knowledge_id: a string
    }
    if metadata_condition:
        params["metadata_condition"] = metadata_condition
    return params


def dify_post(client, key: str | None, params: dict | None = None, *, authorization: str | None = None):
    """What Dify's process_external_api sends (data=json.dumps(params)); no params: its endpoint
    check (a POST with the Authorization header only, no body, no Content-Type)."""
    headers = {"HTTP_AUTHORIZATION": authorization if authorization is not None else f"Bearer {key}"}
    if params is None:
        return client.generic("POST", URL, b"", content_type="", **headers)
    return client.generic("POST", URL, json.dumps(params), content_type="application/json", **headers)


def condition(logical_operator: str, *conditions) -> dict:
    """MetadataCondition(...).model_dump(): each Condition as {name, comparison_operator, value}."""
    return {
        "logical_operator": logical_operator,
        "conditions": [{"name": n, "comparison_operator": op, "value": v} for n, op, v in conditions],
    }


@pytest.fixture
def products(bundle):
    body = "\n".join(json.dumps(r) for r in ROWS)
    return ingest(bundle, make_upload("products.jsonl", body), content_type="product")


def test_records_are_the_search_apis_results_in_difys_shape(bundle, api, products, client):
    knowledge_id = str(bundle.chatbot.pk)
    response = dify_post(client, bundle.api_key, dify_params(knowledge_id, "how much is the router?", top_k=3))
    assert response.status_code == 200, response.content
    records = response.json()["records"]
    ours = api.post(
        "/api/search", {"query": "how much is the router?", "chatbot_id": bundle.chatbot.pk, "max_results": 3},
        format="json",
    ).json()["results"]  # fmt: skip
    assert [r["metadata"]["chunk_id"] for r in records] == [h["chunk_id"] for h in ours]
    top = records[0]
    assert top["content"].startswith("Q: What does the X200 router cost?")
    assert top["title"] == "products.jsonl" and 0 < top["score"] <= 1
    assert top["score"] == pytest.approx(ours[0]["similarity_score"], abs=1e-6)
    assert top["metadata"]["product"] == "router" and top["metadata"]["document_id"] == products.pk
    assert all(isinstance(r["metadata"], dict) for r in records)
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)


def test_score_threshold_and_top_k(bundle, products, client):
    knowledge_id = str(bundle.chatbot.pk)
    strict = dify_post(client, bundle.api_key, dify_params(knowledge_id, "router price", score_threshold=0.99))
    assert strict.status_code == 200 and strict.json() == {"records": []}
    loose = dify_post(client, bundle.api_key, dify_params(knowledge_id, "router price", top_k=2))
    assert len(loose.json()["records"]) == 2
    off = dify_post(client, bundle.api_key, dify_params(knowledge_id, "router price", top_k=10))  # threshold off: 0.0
    assert len(off.json()["records"]) == 5


CASES = [
    (condition("and", ("product", "contains", "OUT")), 2),
    (condition("and", ("product", "not contains", "r")), 1),
    (condition("and", ("product", "start with", "pri")), 2),
    (condition("and", ("product", "end with", "sh")), 1),
    (condition("and", ("product", "is", "mesh")), 1),
    (condition("and", ("product", "is not", "router")), 3),
    (condition("and", ("product", "in", ["printer", "mesh"])), 3),
    (condition("and", ("product", "not in", ["printer", "mesh"])), 2),
    (condition("and", ("product", "in", "printer, mesh")), 3),  # a comma-separated string
    (condition("and", ("discontinued", "empty", None)), 5),
    (condition("and", ("tier", "not empty", None)), 5),
    (condition("and", ("tier", "empty", None)), 0),
    (condition("and", ("year", "=", 2024)), 1),
    (condition("and", ("year", "=", "2021")), 1),  # stored as text, compared as a number
    (condition("and", ("year", "≠", 2024)), 4),
    (condition("and", ("year", ">", 2023)), 2),
    (condition("and", ("year", "<", 2023)), 2),
    (condition("and", ("year", "≥", 2024)), 2),
    (condition("and", ("year", "≤", 2022)), 2),
    (condition("and", ("released", "before", JAN_2024)), 3),  # ISO dates against a timestamp
    (condition("and", ("released", "after", "2024-06-01")), 1),
    (condition("and", ("updated", "after", JAN_2024)), 2),  # timestamps against a timestamp
    (condition("and", ("updated", "before", JAN_2024)), 3),
    (condition("and", (["product"], "is", "printer")), 2),  # the one-item list of Dify's documentation
    (condition("and", ("tier", "is", "home"), ("year", "≥", 2024)), 2),
    (condition("or", ("product", "contains", "out"), ("product", "is", "mesh")), 3),
    (condition(None, ("tier", "is", "office")), 2),  # logical_operator may be None (means and)
    (condition("and", ("colour", "is", "red")), 0),  # an attribute nobody has: nothing, never everything
    ({"logical_operator": "and", "conditions": None}, 5),
]


def test_every_metadata_operator(bundle, products, client):
    knowledge_id = str(bundle.chatbot.pk)
    for metadata_condition, expected in CASES:
        params = dify_params(knowledge_id, "price", top_k=20, metadata_condition=metadata_condition)
        response = dify_post(client, bundle.api_key, params)
        assert response.status_code == 200, (metadata_condition, response.content)
        assert len(response.json()["records"]) == expected, metadata_condition
    two = condition("and", *[("year", "≥", 2020)] * 12)  # more than the filter language's 10 per group
    response = dify_post(client, bundle.api_key, dify_params(knowledge_id, "price", top_k=20, metadata_condition=two))
    assert len(response.json()["records"]) == 5


def test_difys_endpoint_check_gets_400_and_errors_have_difys_codes(bundle, other_bundle, products, client):
    from tenants.services import api_key_create
    from tests.conftest import as_tenant

    check = dify_post(client, bundle.api_key)
    assert check.status_code == 400 and check.json()["error_code"] == 400  # Dify accepts the endpoint
    assert "knowledge_id" in check.json()["error_msg"]
    params = dify_params(str(bundle.chatbot.pk), "router price")
    for authorization in ("", "Token abc", f"Bearer {bundle.api_key} extra", "Bearer"):
        response = dify_post(client, None, params, authorization=authorization)
        assert (response.status_code, response.json()["error_code"]) == (403, 1001), authorization
    wrong = dify_post(client, "ct_not_a_key", params)
    assert (wrong.status_code, wrong.json()["error_code"]) == (403, 1002)
    assert dify_post(client, "ct_not_a_key").status_code == 403  # Dify's check refuses a bad key
    with as_tenant(bundle):
        reader = api_key_create(tenant=bundle.tenant, name="read only", scopes=["read"])
    refused = dify_post(client, reader.raw_key, params)
    assert (refused.status_code, refused.json()["error_code"]) == (403, 1002)
    for knowledge_id in (str(other_bundle.chatbot.pk), "999999", "abc", "", None, True):
        response = dify_post(client, bundle.api_key, {**params, "knowledge_id": knowledge_id})
        expected = (400, 400) if knowledge_id in ("", None) else (404, 2001)
        assert (response.status_code, response.json()["error_code"]) == expected, knowledge_id
    assert dify_post(client, other_bundle.api_key, params).status_code == 404  # another tenant's key


@pytest.mark.parametrize(
    "change,message",
    [
        ({"query": ""}, "query"),
        ({"query": None}, "query"),
        ({"retrieval_setting": {"top_k": 0, "score_threshold": 0.0}}, "top_k"),
        ({"retrieval_setting": {"top_k": 51, "score_threshold": 0.0}}, "top_k"),
        ({"retrieval_setting": {"top_k": "4", "score_threshold": 0.0}}, "top_k"),
        ({"retrieval_setting": {"top_k": 4, "score_threshold": 1.5}}, "score_threshold"),
        ({"retrieval_setting": "x"}, "retrieval_setting"),
        ({"metadata_condition": condition("and", ("product", "like", "r"))}, "comparison_operator"),
        ({"metadata_condition": condition("xor", ("product", "is", "r"))}, "logical_operator"),
        ({"metadata_condition": condition("and", ("year", ">", "soon"))}, "number"),
        ({"metadata_condition": condition("and", ("product", "contains", ""))}, "non-empty string"),
        ({"metadata_condition": condition("and", (["a", "b"], "is", "r"))}, "name"),
        ({"metadata_condition": condition("and", ("product", "in", []))}, "list of values"),
        ({"metadata_condition": "product = r"}, "metadata_condition"),
        ({"metadata_condition": {"logical_operator": "and", "conditions": "x"}}, "conditions"),
        ({"metadata_condition": {"logical_operator": "", "conditions": []}}, "logical_operator"),
        ({"metadata_condition": {"conditions": [], "extra": 1}}, "Unknown key"),
        ({"metadata_condition": {"conditions": [{"name": "a", "comparison_operator": "is"}]}}, "needs a value"),
        (
            {"metadata_condition": {"conditions": [{"name": "a", "comparison_operator": "is", "value": 1, "x": 2}]}},
            "Unknown key",
        ),  # fmt: skip
        ({"metadata_condition": condition("and", ("year", ">", "1e5"))}, "number"),
        ({"metadata_condition": condition("and", ("product", "in", ["a", ""]))}, "list of values"),
        ({"unexpected": 1}, "Unknown field"),
    ],
)
def test_bad_requests_are_400_with_a_message(bundle, client, change, message):
    params = {**dify_params(str(bundle.chatbot.pk), "router price"), **change}
    response = dify_post(client, bundle.api_key, params)
    assert response.status_code == 400, response.content
    assert response.json()["error_code"] == 400 and message in response.json()["error_msg"]


def test_a_body_that_is_not_json_is_400(bundle, client):
    response = client.generic(
        "POST", URL, b"{not json", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}"
    )
    assert response.status_code == 400 and response.json()["error_code"] == 400


def test_retrievals_are_logged_like_searches(bundle, products, client):
    from search.models import SearchLog
    from tests.conftest import as_tenant

    dify_post(client, bundle.api_key, dify_params(str(bundle.chatbot.pk), "does the mesh kit cover my house?"))
    with as_tenant(bundle):
        log = SearchLog.objects.get(query="does the mesh kit cover my house?")
    assert log.chatbot_id == bundle.chatbot.pk and log.result_count >= 1
