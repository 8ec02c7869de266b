"""Search: semantic, keyword, hybrid, filters, conversation, caching, logging, feedback, analytics.
Celery is eager: ingestion runs the task function in-process."""

import json
import uuid

import numpy as np
import pytest
from rest_framework.test import APIClient

from search.models import SearchFeedback, SearchLog
from tenants import dbroles, redis_client
from tests.conftest import SAMPLE_FAQ_CSV, as_tenant, ingest, insert_vectors, make_upload

pytestmark = pytest.mark.django_db

PRODUCTS = [
    {
        "question": "What does the X200 router cost?",
        "answer": "The X200 router costs 89 euros.",
        "product": "router",
        "year": 2024,
        "tier": "home",
    },
    {
        "question": "How do I reset the X200 router?",
        "answer": "Hold the reset pin for ten seconds.",
        "product": "router",
        "year": 2023,
        "tier": "home",
    },
    {
        "question": "What does the P10 printer cost?",
        "answer": "The P10 printer costs 149 euros.",
        "product": "printer",
        "year": 2022,
        "tier": "office",
    },
    {
        "question": "How do I clean the P10 print head?",
        "answer": "Run the cleaning cycle from the settings menu.",
        "product": "printer",
        "year": "2021",
        "tier": "office",
    },
    {
        "question": "Does the M5 mesh kit cover a whole house?",
        "answer": "Three M5 nodes cover up to 450 square metres.",
        "product": "mesh",
        "year": 2025,
        "tier": "home",
    },
]


@pytest.fixture
def faq(bundle):
    return ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV), content_type="faq", category="help")


@pytest.fixture
def products(bundle):
    body = "\n".join(json.dumps(r) for r in PRODUCTS)
    return ingest(bundle, make_upload("products.jsonl", body), content_type="product", category="catalogue")


def search(api, chatbot_id, **body):
    return api.post("/api/search", {"chatbot_id": chatbot_id, **body}, format="json")


def test_semantic_search_finds_the_paraphrased_question(api, bundle, faq):
    response = search(api, bundle.chatbot.pk, query="I forgot my login credentials", max_results=2)
    assert response.status_code == 200, response.json()
    body = response.json()
    top = body["results"][0]
    assert top["content"].startswith("Q: How do I reset my password?")
    assert (top["document_id"], top["content_type"], top["category"]) == (faq.pk, "faq", "help")
    assert top["metadata"] == {"category": "account", "product": "web", "row": 2}
    assert 0 < top["similarity_score"] <= 1 and top["similarity_score"] > body["results"][1]["similarity_score"]
    assert body["mode"] == "semantic" and body["embedding_space"] == "local:all-MiniLM-L6-v2@1"
    assert body["effective_query"] == "I forgot my login credentials" and body["cached"] is False


def test_similarity_threshold_filters(api, bundle, faq):
    results = search(api, bundle.chatbot.pk, query="password reset", similarity_threshold=0.99).json()["results"]
    assert results == []


def test_keyword_and_hybrid(api, bundle, faq):
    keyword = search(api, bundle.chatbot.pk, query="Mastercard", mode="keyword").json()["results"]
    assert [r["metadata"]["row"] for r in keyword] == [4]
    hybrid = search(api, bundle.chatbot.pk, query="pay with Mastercard", mode="hybrid", max_results=3).json()
    top = hybrid["results"][0]
    assert top["metadata"]["row"] == 4
    assert top["keyword_rank"] == 1 and top["semantic_rank"] == 1
    weight = hybrid["semantic_weight"]
    assert 0.5 <= weight <= 1.0  # vectors lead (a clear vector answer leaves keywords next to nothing)
    assert top["fused_score"] == pytest.approx(weight * top["similarity_score"] + (1 - weight) * 1.0, abs=1e-5)
    assert all(r["similarity_score"] is not None for r in hybrid["results"])  # keyword-only hits get their cosine


def test_hybrid_leans_on_keywords_when_vectors_are_unsure(api, bundle):
    """Part numbers mean nothing to the embedding model: the best cosine is low, so the exact
    keyword match must win the blend."""
    rows = [
        {"question": f"What is part {code}?", "answer": f"Part {code} is a {thing}."}
        for code, thing in [
            ("ZK-4471", "hinge"),
            ("QX-9032", "gasket"),
            ("LM-1180", "bracket"),
            ("TR-5521", "spring"),
            ("VB-3307", "washer"),
        ]
    ]
    ingest(bundle, make_upload("parts.jsonl", "\n".join(json.dumps(r) for r in rows)), content_type="product")
    body = search(api, bundle.chatbot.pk, query="QX-9032", mode="hybrid", max_results=3).json()
    assert "QX-9032" in body["results"][0]["content"], body


def test_auto_weight_follows_vector_confidence():
    from search.selectors import Hit
    from search.services import auto_semantic_weight

    def hits(*scores):
        return [Hit(i, 1, "t", "c", "faq", "", {}, None, [], s) for i, s in enumerate(scores)]

    # confident vectors: keywords break a near-tie with up to 0.15 of a cosine unit ...
    assert auto_semantic_weight(hits(0.8, 0.8), hits(3.0)) == pytest.approx(1 / 1.15, abs=1e-4)
    # ... less the clearer the vector answer (gap 0.05: a share of 0.15/e), nothing against a clear one
    assert auto_semantic_weight(hits(0.8, 0.75), hits(3.0)) == pytest.approx(1 / (1 + 0.15 / np.e), abs=1e-4)
    assert auto_semantic_weight(hits(0.8, 0.4), hits(3.0)) == pytest.approx(1.0, abs=1e-3)
    # unsure vectors: keywords gain weight, up to an even blend
    assert auto_semantic_weight(hits(0.35, 0.35), hits(3.0)) == pytest.approx(1 / 1.575, abs=1e-4)
    assert auto_semantic_weight(hits(0.1, 0.05), hits(3.0)) == pytest.approx(0.5, abs=1e-4)
    # the chatbot's learned factor scales the keyword share
    assert auto_semantic_weight(hits(0.8, 0.8), hits(3.0), keyword_factor=2.0) == pytest.approx(1 / 1.3, abs=1e-4)
    assert (auto_semantic_weight(hits(0.8), []), auto_semantic_weight([], hits(3.0))) == (1.0, 0.0)


PARTS = [
    ("ZK-4471", "hinge"),
    ("QX-9032", "gasket"),
    ("LM-1180", "bracket"),
    ("TR-5521", "spring"),
    ("VB-3307", "washer"),
]


def test_feedback_teaches_the_hybrid_blend(api, client, bundle, other_bundle):
    """Helpful results that the keyword list ranked above the vector list raise the chatbot's
    keyword factor (and unhelpful ones lower it); one vote per result of a search; the factor
    changes the blend of the next search, and only this chatbot's."""
    from search.models import SearchBlend
    from search.services import blend_keyword_factor

    rows = [
        {"question": "How do I reset my password?", "answer": "Open Settings, choose Security and press Reset."},
        {"question": "Password rules", "answer": "A password has twelve characters. Never share a password."},
        {"question": "Which cards do you take?", "answer": "Visa and Mastercard; a card payment is instant."},
        {"question": "Card fees", "answer": "A card fee of 1% applies to every card and card payment."},
        {"question": "Can I return a product?", "answer": "Yes, within 30 days of delivery."},
        {"question": "Returns of opened products", "answer": "An opened product returns for a refund less 10%."},
    ]
    ingest(bundle, make_upload("help.jsonl", "\n".join(json.dumps(r) for r in rows)), content_type="faq")

    def hybrid_search(query):
        body = search(api, bundle.chatbot.pk, query=query, mode="hybrid", max_results=5).json()
        split = [r for r in body["results"] if (r["keyword_rank"] or 99) < (r["semantic_rank"] or 99)]
        return body, split

    def feedback(body, result, helpful):
        response = api.post(
            f"/api/search/{body['query_id']}/feedback",
            {"helpful": helpful, "chunk_id": result["chunk_id"]},
            format="json",
        )
        assert response.status_code == 201, response.json()

    queries = ["password", "card payment", "return product", "share password", "card", "refund"]
    before = {query: hybrid_search(query) for query in queries}
    votes = 0
    for body, split in before.values():
        for result in split:
            feedback(body, result, True)
            feedback(body, result, True)  # the second vote on the same result does not count
            votes += 1
    assert votes >= 2, "no result the keyword list ranked above the vector list"
    after, _ = hybrid_search("card payment")
    assert after["cached"] is False  # a change of the factor renews the chatbot's cached answers
    assert after["semantic_weight"] < before["card payment"][0]["semantic_weight"]  # keywords weigh more
    with as_tenant(bundle.tenant):
        blend = SearchBlend.objects.get(chatbot=bundle.chatbot)
        bundle.chatbot.refresh_from_db()
    assert (blend.keyword_votes, blend.vector_votes) == (votes, 0)
    assert blend.keyword_factor == pytest.approx(min(2.0, (votes + 5) / 5))
    with as_tenant(bundle.tenant):
        assert blend_keyword_factor(bundle.chatbot) == pytest.approx(blend.keyword_factor)
    with as_tenant(other_bundle.tenant):
        assert not SearchBlend.objects.exists()
    # analytics say what the chatbot's feedback taught
    analytics = api.get(f"/api/search/analytics/{bundle.chatbot.pk}").json()
    assert analytics["hybrid_blend"] == {
        "keyword_votes": votes,
        "vector_votes": 0,
        "keyword_factor": pytest.approx(blend.keyword_factor, abs=1e-3),
    }
    assert client.login(username=bundle.username, password=bundle.password)
    page = client.get(f"/chatbots/{bundle.chatbot.pk}/search/analytics").content.decode()
    assert f"<b>×{round(blend.keyword_factor, 3)}</b>hybrid keyword weight ({votes} : 0 votes)" in page
    # an unhelpful result the keyword list ranked higher is a vote for the vector list
    body, split = hybrid_search("card")
    feedback(body, split[0], False)
    with as_tenant(bundle.tenant):
        assert SearchBlend.objects.values_list("keyword_votes", "vector_votes").get() == (votes, 1)


def test_keyword_search_survives_typos_with_trigrams(api, bundle, faq):
    results = search(api, bundle.chatbot.pk, query="pasword", mode="keyword").json()["results"]
    assert results and "password" in results[0]["content"].lower()


def test_hybrid_get_endpoint_and_weight(api, bundle, faq):
    url = f"/api/search/hybrid/{bundle.chatbot.pk}"
    semantic = [
        r["chunk_id"]
        for r in search(api, bundle.chatbot.pk, query="change my address", max_results=4).json()["results"]
    ]
    keyword = [
        r["chunk_id"]
        for r in search(api, bundle.chatbot.pk, query="change my address", mode="keyword", max_results=4).json()[
            "results"
        ]
    ]
    only_vectors = api.get(url, {"q": "change my address", "max_results": 4, "semantic_weight": 1}).json()
    assert [r["chunk_id"] for r in only_vectors["results"]] == semantic and only_vectors["mode"] == "hybrid"
    only_keywords = api.get(url, {"q": "change my address", "max_results": len(keyword), "semantic_weight": 0}).json()
    assert [r["chunk_id"] for r in only_keywords["results"]] == keyword
    assert api.get(url, {"q": "", "max_results": 4}).json()["error"]["field"] == "q"
    assert api.get(url, {"q": "x", "semantic_weight": 2}).json()["error"]["field"] == "semantic_weight"


def test_failed_and_other_tenants_content_is_never_returned(api, bundle, other_bundle, faq):
    ingest(other_bundle, make_upload("theirs.txt", "How do I reset my password? Call the Globex hotline."))
    results = search(api, bundle.chatbot.pk, query="reset password Globex hotline", max_results=10).json()["results"]
    assert results and all(r["document_id"] == faq.pk for r in results)
    assert search(api, other_bundle.chatbot.pk, query="password").status_code == 404
    assert api.get(f"/api/search/hybrid/{other_bundle.chatbot.pk}", {"q": "password"}).status_code == 404
    assert api.get(f"/api/search/analytics/{other_bundle.chatbot.pk}").status_code == 404


@pytest.mark.parametrize(
    "filters,questions",
    [
        ({"content_types": ["product"]}, 5),
        ({"content_types": ["faq"]}, 3),
        ({"categories": ["catalogue"]}, 5),
        ({"metadata": {"product": "router"}}, 2),
        ({"metadata": {"field": "product", "op": "ne", "value": "router"}}, 3),
        ({"metadata": {"product": {"in": ["printer", "mesh"]}}}, 3),
        ({"metadata": {"product": {"nin": ["printer", "mesh"]}}}, 2),
        ({"metadata": {"year": {"gte": 2024}}}, 2),
        ({"metadata": {"year": {"lt": 2023}}}, 2),  # "2021" stored as text still compares as a number
        ({"metadata": {"product": {"contains": "OUT"}}}, 2),  # text operators ignore case
        ({"metadata": {"product": {"not_contains": "r"}}}, 1),
        ({"metadata": {"tier": {"starts_with": "Off"}}}, 2),
        ({"metadata": {"product": {"ends_with": "er"}}}, 4),
        ({"metadata": {"product": {"starts_with": "%"}}}, 0),  # data, not a LIKE pattern
        ({"metadata": {"tier": {"exists": True}}}, 5),
        ({"metadata": {"tier": {"exists": False}}}, 0),
        ({"metadata": {"discontinued": {"exists": False}}}, 5),
        (
            {
                "metadata": {
                    "and": [
                        {"field": "tier", "op": "eq", "value": "home"},
                        {"field": "year", "op": "lte", "value": 2024},
                    ]
                }
            },
            2,
        ),
        (
            {
                "metadata": {
                    "or": [
                        {"field": "product", "op": "eq", "value": "mesh"},
                        {"field": "year", "op": "eq", "value": 2022},
                    ]
                }
            },
            2,
        ),
    ],
)
def test_filters(api, bundle, faq, products, filters, questions):
    if "metadata" in filters:
        filters = {**filters, "categories": ["catalogue"]}  # the FAQ rows have a "product" column too
    body = search(api, bundle.chatbot.pk, query="price", max_results=20, filters=filters).json()
    assert len(body["results"]) == questions, body
    nested_and_top_level = search(api, bundle.chatbot.pk, query="price", max_results=20, **filters).json()
    assert nested_and_top_level["results"] == body["results"]


def test_document_filter_and_each_mode_respects_filters(api, bundle, faq, products):
    for mode in ("semantic", "keyword", "hybrid"):
        results = search(
            api,
            bundle.chatbot.pk,
            query="cost price reset",
            mode=mode,
            max_results=20,
            filters={"document_ids": [faq.pk]},
        ).json()["results"]
        assert results and {r["document_id"] for r in results} == {faq.pk}, mode


@pytest.mark.parametrize(
    "metadata,message",
    [
        ({"year": {"between": [1, 2]}}, "unknown operator"),
        ({"field": "year", "op": "eq", "value": 1, "x": 2}, "unknown key"),
        ({"field": "year", "op": "approx", "value": 1}, "unknown operator"),
        ({"product": {"in": "router"}}, "non-empty list"),
        ({"and": []}, "a list of 1 to 10 filters"),
        ({"product": "web", "or": [{"tier": "home"}]}, "not a metadata field here"),
        ({"product": {"$eq": "web"}}, "unknown operator"),
        ({"product": "x" * 1001}, "at most 1000 characters"),
        ({"year": {"gt": [1]}}, "number or a string"),
    ],
)
def test_bad_metadata_filters_are_400_with_a_message(api, bundle, metadata, message):
    response = search(api, bundle.chatbot.pk, query="x", filters={"metadata": metadata})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "filters.metadata" and message in error["message"]


CENTRES = np.random.default_rng(0).standard_normal((48, 384))


def clustered_vectors(rng, count: int) -> np.ndarray:
    """Embedding-like vectors: topics (cluster centres) plus noise, unit length."""
    vectors = CENTRES[rng.integers(0, len(CENTRES), count)] + 0.8 * rng.standard_normal((count, 384))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _insert_random_vectors(chatbot, count: int, seed: int) -> None:
    """Bulk rows straight in SQL, as the chatbot's tenant: a ready document, ``count`` chunks and
    clustered 384-d vectors."""
    with as_tenant(chatbot.tenant_id):
        _insert_vectors_as_tenant(chatbot, count, seed)


def _insert_vectors_as_tenant(chatbot, count: int, seed: int) -> None:
    insert_vectors(chatbot, clustered_vectors(np.random.default_rng(seed), count), title=f"random-{count}")


def test_filtered_vector_search_keeps_recall_in_a_shared_table(bundle, other_bundle, settings):
    """A small chatbot beside a big one in the same space: the HNSW walk (forced by a low
    SEARCH_EXACT_MAX) must still return the true nearest neighbours, also under a metadata filter."""
    from search.filters import search_filters_build
    from search.selectors import semantic_hits
    from search.services import _semantic_search
    from tenants.services import chatbot_create

    with as_tenant(other_bundle):
        big = chatbot_create(tenant=other_bundle.tenant, name="Big")
    _insert_random_vectors(big, 3000, 1)
    _insert_random_vectors(bundle.chatbot, 300, 2)
    from knowledge.services import chatbot_space_ensure_active

    settings.SEARCH_EXACT_MAX = 10
    rng = np.random.default_rng(3)
    recalls = []
    with as_tenant(bundle):  # the search selectors, as the tenant's request runs them
        space = chatbot_space_ensure_active(chatbot=bundle.chatbot).space
        for filters in (search_filters_build(), search_filters_build(metadata={"parity": 1})):
            for _ in range(10):
                vector = clustered_vectors(rng, 1)[0]
                exact = semantic_hits(
                    space=space, chatbot_id=bundle.chatbot.pk, vector=vector, limit=10, filters=filters, exact=True
                )
                found, strategy = _semantic_search(
                    space=space, chatbot=bundle.chatbot, vector=vector, limit=10, filters=filters
                )
                assert strategy == "hnsw" and len(found) == 10
                if filters.metadata:
                    assert all(h.metadata["parity"] == 1 for h in found)
                recalls.append(len({h.chunk_id for h in found} & {h.chunk_id for h in exact}) / 10)
    assert np.mean(recalls) >= 0.95, recalls


def test_hnsw_path_uses_the_space_index_and_exact_path_does_not(bundle):
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import space_index_name
    from search.selectors import NO_FILTERS, semantic_plan

    _insert_random_vectors(bundle.chatbot, 3000, 3)
    with as_tenant(bundle):
        space = chatbot_space_ensure_active(chatbot=bundle.chatbot).space
        plans = {
            exact: semantic_plan(
                space=space, chatbot_id=bundle.chatbot.pk, vector=[0.01] * 384, limit=5, filters=NO_FILTERS, exact=exact
            )
            for exact in (False, True)
        }
    assert space_index_name(space) in plans[False], plans[False]
    assert space_index_name(space) not in plans[True], plans[True]


def _chatbot_index_recall(space, chatbot, rng) -> float:
    from search.selectors import NO_FILTERS, semantic_hits
    from search.services import _semantic_search

    recalls = []
    for _ in range(10):  # in the chatbot's tenant scope (the caller's)
        vector = clustered_vectors(rng, 1)[0]
        exact = semantic_hits(
            space=space, chatbot_id=chatbot.pk, vector=vector, limit=10, filters=NO_FILTERS, exact=True
        )
        found, strategy = _semantic_search(space=space, chatbot=chatbot, vector=vector, limit=10, filters=NO_FILTERS)
        assert strategy == "hnsw"
        recalls.append(len({h.chunk_id for h in found} & {h.chunk_id for h in exact}) / 10)
    return float(np.mean(recalls))


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])
def test_big_chatbots_get_their_own_vector_index_built_concurrently(bundle, other_bundle, settings):
    """The optimiser (called directly, outside a transaction: CREATE/DROP INDEX CONCURRENTLY) gives
    each chatbot above VECTOR_CHATBOT_INDEX_MIN a partial HNSW index, the planner uses it for that
    chatbot's searches, and it is dropped again when the chatbot shrinks."""
    from knowledge.models import Document
    from knowledge.services import chatbot_space_ensure_active, vector_index_wanted, vector_indexes_optimize
    from knowledge.vectors import chatbot_index_name, chatbot_indexes, space_index_name
    from search.selectors import NO_FILTERS, semantic_plan
    from tenants.services import chatbot_create

    settings.VECTOR_CHATBOT_INDEX_MIN = 400
    settings.SEARCH_EXACT_MAX = 10
    with as_tenant(other_bundle):
        big = chatbot_create(tenant=other_bundle.tenant, name="Big")
    with as_tenant(bundle):
        small = chatbot_create(tenant=bundle.tenant, name="Small")
    _insert_random_vectors(big, 2000, 1)
    _insert_random_vectors(bundle.chatbot, 600, 2)
    _insert_random_vectors(small, 100, 3)
    with as_tenant(bundle):  # as the ingestion task asks after a document
        space = chatbot_space_ensure_active(chatbot=bundle.chatbot).space
        assert vector_index_wanted(chatbot_id=bundle.chatbot.pk) and not vector_index_wanted(chatbot_id=small.pk)

    done = vector_indexes_optimize()  # as its beat task: no scope of its own
    names = {bot.pk: chatbot_index_name(space_id=space.pk, chatbot_id=bot.pk) for bot in (big, bundle.chatbot, small)}
    assert sorted(done["created"]) == sorted([names[big.pk], names[bundle.chatbot.pk]])
    assert chatbot_indexes() == {names[big.pk]: True, names[bundle.chatbot.pk]: True}
    with as_tenant(bundle):
        assert not vector_index_wanted(chatbot_id=bundle.chatbot.pk)
    assert vector_indexes_optimize() == {"created": [], "dropped": [], "rebuilt": []}  # idempotent

    with dbroles.owner_connect() as owner:  # only the table's owner may ANALYZE it
        owner.execute("ANALYZE knowledge_chunkembedding")
    with as_tenant(bundle):
        plan = semantic_plan(
            space=space, chatbot_id=bundle.chatbot.pk, vector=[0.01] * 384, limit=5, filters=NO_FILTERS, exact=False
        )
        assert names[bundle.chatbot.pk] in plan and space_index_name(space) not in plan, plan
        assert _chatbot_index_recall(space, bundle.chatbot, np.random.default_rng(4)) >= 0.95
        Document.objects.filter(chatbot=bundle.chatbot).delete()  # the chatbot shrinks to nothing
    done = vector_indexes_optimize()
    assert done["dropped"] == [names[bundle.chatbot.pk]]
    assert chatbot_indexes() == {names[big.pk]: True}


@pytest.mark.django_db(transaction=True, databases=["default", "maintenance"])
def test_ingesting_past_the_threshold_builds_the_chatbots_index(bundle, settings):
    """The ingestion task (run eagerly in-process) asks for the index once the chatbot is big
    enough; the optimiser task counts every tenant's vectors on the maintenance connection."""
    from knowledge.services import chatbot_space_ensure_active
    from knowledge.vectors import chatbot_index_name, chatbot_indexes

    settings.VECTOR_CHATBOT_INDEX_MIN = 2  # the FAQ has 3 rows
    with as_tenant(bundle):
        space = chatbot_space_ensure_active(chatbot=bundle.chatbot).space
    ingest(bundle, make_upload("faq.csv", SAMPLE_FAQ_CSV))
    assert chatbot_indexes()[chatbot_index_name(space_id=space.pk, chatbot_id=bundle.chatbot.pk)] is True


def test_conversation_keeps_the_subject_of_earlier_turns(api, bundle, products):
    conversation = [
        {"role": "user", "content": "I'm interested in the X200 router for my flat."},
        {"role": "assistant", "content": "Good choice, it covers most flats."},
    ]
    alone = search(api, bundle.chatbot.pk, query="And how much does that cost?", max_results=1).json()
    aware = search(
        api, bundle.chatbot.pk, query="And how much does that cost?", max_results=1, conversation=conversation
    ).json()
    assert "X200 router costs" in aware["results"][0]["content"]
    assert "x200" in aware["effective_query"] and "router" in aware["effective_query"]
    assert aware["results"][0]["chunk_id"] != alone["results"][0]["chunk_id"] or "X200" not in alone["effective_query"]
    keyword = search(
        api,
        bundle.chatbot.pk,
        query="And how much does that cost?",
        mode="keyword",
        max_results=1,
        conversation=conversation,
    ).json()
    assert "X200 router costs" in keyword["results"][0]["content"]
    bad = search(api, bundle.chatbot.pk, query="x", conversation=[{"role": "robot", "content": "hi"}])
    assert bad.status_code == 400 and bad.json()["error"]["field"].startswith("conversation")


def test_results_are_cached_and_invalidated_when_content_changes(api, bundle, faq):
    first = search(api, bundle.chatbot.pk, query="How can I pay?", max_results=3).json()
    again = search(api, bundle.chatbot.pk, query="  how can I   PAY? ", max_results=3).json()
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["results"] == first["results"] and again["query_id"] != first["query_id"]
    ingest(bundle, make_upload("pay.txt", "You can pay with PayPal, bank transfer or Apple Pay."))
    fresh = search(api, bundle.chatbot.pk, query="How can I pay?", max_results=3).json()
    assert fresh["cached"] is False and any("PayPal" in r["content"] for r in fresh["results"])
    with as_tenant(bundle):
        logs = list(SearchLog.objects.filter(chatbot=bundle.chatbot).order_by("id"))
    assert [log.cache_hit for log in logs] == [False, True, False]


def test_search_works_uncached_when_redis_is_down(api, bundle, faq, settings, tmp_path):
    settings.REDIS_URL = f"unix://{tmp_path}/no-redis.sock"
    settings.REDIS_TIMEOUT = 0.05
    redis_client.reset()
    try:
        for _ in range(2):
            body = search(api, bundle.chatbot.pk, query="How can I pay?", max_results=3).json()
            assert body["results"] and body["cached"] is False
    finally:
        redis_client.reset()


def test_every_search_is_logged(api, bundle, faq):
    body = search(
        api, bundle.chatbot.pk, query="refund", mode="hybrid", max_results=2, filters={"categories": ["help"]}
    ).json()
    with as_tenant(bundle):
        log = SearchLog.objects.select_related("api_key").get(query_id=body["query_id"])
    assert (log.tenant_id, log.chatbot_id, log.api_key.prefix, log.query, log.mode) == (
        bundle.tenant.pk,
        bundle.chatbot.pk,
        bundle.api_key[:12],
        "refund",
        "hybrid",
    )
    assert log.filters == {"categories": ["help"]} and log.result_count == 2 and log.cache_hit is False
    assert log.top_score == pytest.approx(max(r["similarity_score"] or 0 for r in body["results"]), abs=1e-5)
    assert log.took_ms > 0 and log.embedding_space == "local:all-MiniLM-L6-v2@1" and log.strategy == "exact"
    assert log.result_chunk_ids == [r["chunk_id"] for r in body["results"]]


def test_feedback(api, bundle, other_bundle, faq):
    body = search(api, bundle.chatbot.pk, query="refund", max_results=2).json()
    url = f"/api/search/{body['query_id']}/feedback"
    chunk = body["results"][0]["chunk_id"]
    response = api.post(url, {"helpful": True, "chunk_id": chunk}, format="json")
    assert response.status_code == 201 and response.json()["chunk_id"] == chunk
    assert api.post(url, {"helpful": False}, format="json").status_code == 201
    assert api.post(url, {"helpful": True, "chunk_id": 999999}, format="json").json()["error"]["field"] == "chunk_id"
    assert api.post(url, {}, format="json").json()["error"]["field"] == "helpful"
    foreign = APIClient()
    foreign.credentials(HTTP_AUTHORIZATION=f"Bearer {other_bundle.api_key}")
    assert foreign.post(url, {"helpful": True}, format="json").status_code == 404
    assert (
        api.post(
            "/api/search/00000000-0000-0000-0000-000000000000/feedback", {"helpful": True}, format="json"
        ).status_code
        == 404
    )
    with as_tenant(bundle):
        assert SearchFeedback.objects.filter(search__query_id=body["query_id"]).count() == 2


def test_analytics_and_knowledge_gaps(api, bundle, faq):
    for query in ["How can I pay?", "How can I pay?", "refund"]:
        search(api, bundle.chatbot.pk, query=query)
    for query in ["Do you ship to Mars?", "Can you deliver to planet Mars?", "zzqx"]:
        search(api, bundle.chatbot.pk, query=query, similarity_threshold=0.9)  # nothing this close: zero results
    last = search(api, bundle.chatbot.pk, query="refund", max_results=1).json()
    api.post(f"/api/search/{last['query_id']}/feedback", {"helpful": True}, format="json")
    body = api.get(f"/api/search/analytics/{bundle.chatbot.pk}", {"days": 3}).json()
    assert body["searches"] == 7 and body["zero_result_queries"] == 3
    assert body["zero_result_rate"] == pytest.approx(3 / 7, abs=1e-3)
    assert body["latency_ms"]["p50"] > 0 and body["latency_ms"]["p95"] >= body["latency_ms"]["p50"]
    assert body["cache_hit_rate"] == pytest.approx(1 / 7, abs=1e-3)  # the repeated "How can I pay?"
    assert body["top_queries"][0]["query"] in ("how can i pay?", "refund") and body["top_queries"][0]["count"] == 2
    assert body["feedback"] == {
        "count": 1,
        "helpful": 1,
        "not_helpful": 0,
        "helpful_rate": 1.0,
        "feedback_rate": pytest.approx(1 / 7, abs=1e-3),
    }
    assert len(body["daily"]) == 3 and body["daily"][-1]["searches"] == 7
    gaps = body["knowledge_gaps"]
    mars = [g for g in gaps if "Mars" in g["query"]]
    assert (
        len(mars) == 1
        and mars[0]["count"] == 2
        and set(mars[0]["examples"]) == {"Do you ship to Mars?", "Can you deliver to planet Mars?"}
    )
    assert api.get(f"/api/search/analytics/{bundle.chatbot.pk}", {"days": 0}).json()["error"]["field"] == "days"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"query": ""}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"query": "ok", "max_results": 51}, "max_results"),
        ({"query": "ok", "similarity_threshold": 1.5}, "similarity_threshold"),
        ({"query": "ok", "mode": "magic"}, "mode"),
        ({"query": "ok", "filters": {"content_types": ["nope"]}}, "filters"),
        ({"query": "ok", "conversation": "hello"}, "conversation"),
    ],
)
def test_bad_requests_name_the_field(api, bundle, body, field):
    response = search(api, bundle.chatbot.pk, **body)
    assert response.status_code == 400 and response.json()["error"]["field"].startswith(field)


def test_unauthenticated_search_is_refused(bundle):
    assert APIClient().post("/api/search", {"query": "x", "chatbot_id": bundle.chatbot.pk}).status_code in (401, 403)


def test_logs_are_queued_in_redis_and_written_in_batches(api, bundle, faq, settings):
    """The production path: searches queue their log rows; feedback and analytics flush first,
    and the flush task writes the rest (called directly here)."""
    from search.logbuffer import search_logs_flush
    from search.tasks import search_logs_flush_task

    settings.SEARCH_LOG_BUFFER = True
    search_logs_flush()
    first = search(api, bundle.chatbot.pk, query="How can I pay?").json()
    search(api, bundle.chatbot.pk, query="refund")
    with as_tenant(bundle):
        assert not SearchLog.objects.filter(chatbot=bundle.chatbot).exists()  # queued, not yet written
    response = api.post(f"/api/search/{first['query_id']}/feedback", {"helpful": True}, format="json")
    assert response.status_code == 201  # feedback found the queued search
    with as_tenant(bundle):
        assert SearchLog.objects.filter(chatbot=bundle.chatbot).count() == 2
    search(api, bundle.chatbot.pk, query="change address")
    assert api.get(f"/api/search/analytics/{bundle.chatbot.pk}").json()["searches"] == 3
    search(api, bundle.chatbot.pk, query="delivery")
    assert search_logs_flush_task() == 1
    with as_tenant(bundle):
        log = SearchLog.objects.select_related("api_key").get(query="delivery")
    assert log.api_key.prefix == bundle.api_key[:12] and log.result_count == 3 and log.took_ms > 0


def test_logs_are_written_directly_when_redis_is_down(api, bundle, faq, settings, tmp_path):
    settings.SEARCH_LOG_BUFFER = True
    settings.REDIS_URL = f"unix://{tmp_path}/no-redis.sock"
    settings.REDIS_TIMEOUT = 0.05
    redis_client.reset()
    try:
        body = search(api, bundle.chatbot.pk, query="How can I pay?").json()
        with as_tenant(bundle):
            assert SearchLog.objects.filter(query_id=body["query_id"]).exists()
    finally:
        redis_client.reset()


def test_cached_searches_take_the_fast_path_and_stay_correct(api, bundle, faq, settings, django_assert_max_num_queries):
    """A repeated search is answered in front of DRF with one SQL query (key, chatbot, space),
    same body, logged; a revoked key or changed content is seen on the very next request."""
    from tenants.services import api_key_revoke

    settings.SEARCH_LOG_BUFFER = True
    body = {"query": "How can I pay?", "max_results": 2, "mode": "hybrid", "filters": {"categories": ["help"]}}
    first = search(api, bundle.chatbot.pk, **body).json()
    with django_assert_max_num_queries(1):
        again = search(api, bundle.chatbot.pk, **body).json()
    assert again["cached"] is True and again["results"] == first["results"]
    assert {k: v for k, v in again.items() if k not in ("query_id", "took_ms", "cached")} == {
        k: v for k, v in first.items() if k not in ("query_id", "took_ms", "cached")
    }
    feedback = api.post(f"/api/search/{again['query_id']}/feedback", {"helpful": True}, format="json")
    assert feedback.status_code == 201  # the fast path's search was logged
    with as_tenant(bundle):
        log = SearchLog.objects.select_related("api_key").get(query_id=again["query_id"])
        first_strategy = SearchLog.objects.get(query_id=first["query_id"]).strategy
    assert log.cache_hit and log.api_key.prefix == bundle.api_key[:12] and log.filters == {"categories": ["help"]}
    # queued in the same Redis round trip as the cached read, completed from the answer when written
    assert log.result_chunk_ids == [r["chunk_id"] for r in again["results"]] and log.result_count == 2
    assert log.top_score == pytest.approx(max(r["similarity_score"] for r in again["results"]), abs=1e-5)
    assert log.strategy == first_strategy != ""

    ingest(bundle, make_upload("pay.txt", "You can also pay with PayPal."))
    assert search(api, bundle.chatbot.pk, **body).json()["cached"] is False  # new content version
    from tenants.models import ApiKey

    with as_tenant(bundle):
        api_key_revoke(tenant=bundle.tenant, api_key_id=ApiKey.objects.get(prefix=bundle.api_key[:12]).pk)
    assert search(api, bundle.chatbot.pk, **body).status_code == 401


def test_fast_path_leaves_errors_to_the_full_path(api, bundle, other_bundle, faq):
    search(api, bundle.chatbot.pk, query="How can I pay?")
    assert search(api, other_bundle.chatbot.pk, query="How can I pay?").status_code == 404
    assert (
        search(api, bundle.chatbot.pk, query="How can I pay?", max_results=0).json()["error"]["field"] == "max_results"
    )
    assert search(api, bundle.chatbot.pk, query="How can I pay?", filters={"content_types": ["x"]}).status_code == 400


def test_log_flush_survives_rows_whose_key_or_chatbot_is_gone(bundle, other_bundle, faq, settings):
    """A key revoked-and-deleted or a chatbot deleted between a search and the flush must not
    block the queue: the row is kept without the key, or dropped with its chatbot."""
    from search.logbuffer import search_log_enqueue, search_logs_flush
    from tenants.models import ApiKey

    settings.SEARCH_LOG_BUFFER = True
    search_logs_flush()
    with as_tenant(bundle):
        key = ApiKey.objects.get(prefix=bundle.api_key[:12])
    base = {
        "query": "q",
        "mode": "semantic",
        "took_ms": 1.0,
        "embedding_space": "s",
        "created_at": "2026-11-24T10:00:00+00:00",
    }
    rows = [
        {
            **base,
            "tenant_id": bundle.tenant.pk,
            "chatbot_id": bundle.chatbot.pk,
            "api_key_id": key.pk,
            "query_id": str(uuid.uuid4()),
        },
        {
            **base,
            "tenant_id": other_bundle.tenant.pk,
            "chatbot_id": other_bundle.chatbot.pk,
            "query_id": str(uuid.uuid4()),
        },
        {**base, "tenant_id": bundle.tenant.pk, "chatbot_id": bundle.chatbot.pk, "query_id": str(uuid.uuid4())},
    ]
    for row in rows:
        search_log_enqueue(row)
    with as_tenant(bundle):
        key.delete()
    with as_tenant(other_bundle):
        other_bundle.chatbot.delete()
    search_logs_flush()  # each row is written as its own tenant
    ids = [r["query_id"] for r in rows]
    with as_tenant(bundle):
        written = list(SearchLog.objects.filter(query_id__in=ids))
    with as_tenant(other_bundle):
        assert not SearchLog.objects.filter(query_id__in=ids).exists()
    assert sorted(str(log.query_id) for log in written) == sorted([rows[0]["query_id"], rows[2]["query_id"]])
    assert all(log.api_key_id is None for log in written)
    assert search_logs_flush() == 0  # nothing left behind


def test_fast_path_hands_failures_to_the_full_path(api, bundle, faq, monkeypatch):
    """Uncached searches also take the fast path; if it fails (here its access read, through the
    cache's seam), the full view answers with the same pipeline."""
    from search import access

    def broken(**kwargs):
        raise RuntimeError("boom")

    access.access_cache.clear()
    monkeypatch.setattr(access.access_cache, "query", broken)  # the fast path's own access read only
    response = search(api, bundle.chatbot.pk, query="How can I pay?")
    assert response.status_code == 200 and response.json()["results"]
    assert response.json()["cached"] is False


FILTERS_ACCEPTED = [
    {"product": "router"},
    {"field": "product", "op": "ne", "value": "router"},
    {"field": "product", "op": "eq"},
    {"product": {"in": ["printer", "mesh"]}, "year": {"gte": 2024, "lt": 2026}},
    {"and": [{"field": "tier", "op": "eq", "value": "home"}, {"or": [{"year": 2024}, {"year": {"lte": "2021"}}]}]},
    {"product": True, "discontinued": None},
    {"product": {"contains": "out", "not_contains": "x"}, "tier": {"exists": True}},
    {"field": "product", "op": "starts_with", "value": "ro"},
]
FILTERS_REFUSED = [
    {},
    {"": None, "product": True},
    {"year": {"between": [1, 2]}},
    {"field": "year", "op": "eq", "value": 1, "x": 2},
    {"product": {"in": "router"}},
    {"and": []},
    {"and": [{"a": 1}] * 11},
    {"year": {"gt": [1]}},
    {"year": {"gt": True}},
    {"product": "web", "or": [{"tier": "home"}]},
    {"and": "x"},
    {"product": {"$eq": "web"}},
    {"product": {}},
    {"product": "x" * 1001},
    {"field": "", "op": "eq", "value": 1},
    {"product": {"contains": ""}},
    {"product": {"ends_with": 5}},
    {"tier": {"exists": "yes"}},
]


def test_the_schema_states_the_filter_language_exactly(api):
    """What the OpenAPI schema says a metadata filter is, the server accepts, and nothing else
    (checked here on examples; schemathesis checks it on generated ones in bench/schema_fuzz.py)."""
    import jsonschema

    from search.filters import search_filters_build
    from tenants.errors import DomainError

    schema = api.get("/api/schema/?format=json").json()
    assert schema["openapi"].startswith("3.1")
    root = {"$ref": "#/components/schemas/MetadataFilter", "components": schema["components"]}
    validator = jsonschema.Draft202012Validator(root)
    for metadata in FILTERS_ACCEPTED:
        assert validator.is_valid(metadata), metadata
        search_filters_build(metadata=metadata)
    for metadata in FILTERS_REFUSED:
        assert not validator.is_valid(metadata), metadata
        if metadata:  # an empty filter is no filter to the service; the API refuses it
            with pytest.raises(DomainError):
                search_filters_build(metadata=metadata)


SAME_REQUESTS = [
    {"query": "How can I pay?"},
    {"query": "  reset my password  ", "max_results": 2.0, "mode": "hybrid"},
    {"query": "refund", "mode": "keyword", "similarity_threshold": 0, "semantic_weight": None},
    {"query": "card fee", "mode": "hybrid", "semantic_weight": 0.3, "filters": {"content_types": ["faq"]}},
    {"query": "pay\x00ment", "categories": ["help"], "filters": None, "document_ids": None},
    {"query": "and how much?", "conversation": [{"role": "user", "content": "Which cards do you take?"}]},
    {"query": "x", "filters": {"metadata": {"product": {"in": ["a", "b"]}}}, "conversation": None},
]
BAD_REQUESTS = [
    {"query": "ok", "max_results": "5"},
    {"query": "ok", "max_results": True},
    {"query": "ok", "similarity_threshold": 2},
    {"query": "   "},
    {"query": "ok", "mode": None},
    {"query": "ok", "colour": "blue"},
    {"query": "ok", "filters": {"colour": ["blue"]}},
    {"query": "ok", "filters": {"metadata": {}}},
    {"query": "ok", "categories": [" "]},
    {"query": "ok", "document_ids": [0]},
    {"query": "ok", "conversation": [{"role": "bot", "content": "hi"}]},
    {"query": "ok", "conversation": [{"role": "user"}]},
    {"query": "ok", "filters": {"metadata": {"year": {"between": [1, 2]}}}},
]


def test_both_search_paths_answer_the_same_requests_the_same_way(bundle, faq, settings):
    """The fast path (``search_answer``, as the middleware and the WSGI wrapper call it) and the
    DRF view (the middleware taken out) parse with one parser and answer from one cached-answer
    function: the same request gets the same answer, fresh or cached, and a request one path
    refuses the other refuses with the same message (the fast path hands it to the full path)."""
    from django.test import override_settings

    from search import fastpath
    from tenants.services import chatbot_content_changed

    def cache_clear():  # a new content version: no answer cached for it yet
        with as_tenant(bundle):
            chatbot_content_changed(chatbot_id=bundle.chatbot.pk)

    def fast(body):
        meta = {"HTTP_AUTHORIZATION": f"Bearer {bundle.api_key}", "CONTENT_TYPE": "application/json"}
        return fastpath.search_answer(meta, json.dumps(body).encode())

    def full(body):
        without = [m for m in settings.MIDDLEWARE if "fastpath" not in m]
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}")
        with override_settings(MIDDLEWARE=without):
            return client.post("/api/search", body, format="json")

    def answer(payload):
        return {k: v for k, v in payload.items() if k not in ("query_id", "took_ms", "cached")}

    for request in SAME_REQUESTS:
        body = {"chatbot_id": bundle.chatbot.pk, **request}
        for first, second in ((fast, full), (full, fast)):  # each path fresh, then the other cached
            cache_clear()
            one, two = first(body), second(body)
            one = json.loads(one[1]) if isinstance(one, tuple) else one.json()
            two = json.loads(two[1]) if isinstance(two, tuple) else two.json()
            assert (one["cached"], two["cached"]) == (False, True), request
            assert answer(one) == answer(two), request
    for request in BAD_REQUESTS:
        body = {"chatbot_id": bundle.chatbot.pk, **request}
        assert fast(body) is None, request  # not answered here: the full path answers the error
        refused = full(body)
        through_both = APIClient(HTTP_AUTHORIZATION=f"Bearer {bundle.api_key}").post("/api/search", body, format="json")
        assert refused.status_code == through_both.status_code == 400, (request, refused.json())
        assert refused.json() == through_both.json(), request
