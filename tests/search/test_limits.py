"""One table of search limits (search/limits.py): the parser, the OpenAPI schema and the
serializers all state the same numbers, and the parser's edges are exactly the table's."""

import pytest
from drf_spectacular.generators import SchemaGenerator

from search import limits
from search.arguments import search_arguments_parse
from tenants.errors import DomainError


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def test_the_schema_states_the_tables_limits(schema):
    request = schema["components"]["schemas"]["SearchRequestRequest"]["properties"]
    assert request["query"]["maxLength"] == limits.QUERY_MAX_CHARS
    assert (request["max_results"]["minimum"], request["max_results"]["maximum"]) == limits.MAX_RESULTS
    assert request["max_results"]["default"] == limits.DEFAULT_MAX_RESULTS
    threshold = request["similarity_threshold"]
    assert (threshold["minimum"], threshold["maximum"]) == limits.THRESHOLD
    weight = request["semantic_weight"]
    assert (weight["minimum"], weight["maximum"]) == limits.SEMANTIC_WEIGHT
    assert request["mode"]["default"] == limits.DEFAULT_MODE
    assert request["conversation"]["maxItems"] == limits.CONVERSATION_MAX_TURNS
    assert request["user_id"]["maxLength"] == request["conversation_id"]["maxLength"] == limits.CALLER_ID_MAX_CHARS
    for name, most in limits.LIST_MAX_ITEMS.items():
        assert request[name]["maxItems"] == most, name
    assert request["categories"]["items"]["maxLength"] == limits.CATEGORY_MAX_CHARS
    turn = schema["components"]["schemas"]["ConversationTurnRequest"]["properties"]
    assert turn["content"]["maxLength"] == limits.TURN_MAX_CHARS
    assert set(schema["components"]["schemas"]["ModeEnum"]["enum"]) == set(limits.MODES)
    filters = schema["components"]["schemas"]["SearchFiltersRequest"]["properties"]
    for name, most in limits.LIST_MAX_ITEMS.items():
        assert filters[name]["maxItems"] == most, name
    hybrid = {p["name"]: p["schema"] for p in schema["paths"]["/api/search/hybrid/{chatbot_id}"]["get"]["parameters"]}
    assert hybrid["q"]["maxLength"] == limits.QUERY_MAX_CHARS
    assert (hybrid["max_results"]["minimum"], hybrid["max_results"]["maximum"]) == limits.MAX_RESULTS


def _refused(body) -> str:
    with pytest.raises(DomainError) as refused:
        search_arguments_parse(body)
    return refused.value.field


def test_the_parser_accepts_each_limit_and_refuses_one_past_it():
    base = {"query": "hours", "chatbot_id": 1}
    low, high = limits.MAX_RESULTS
    assert search_arguments_parse({**base, "max_results": high}).max_results == high
    assert search_arguments_parse({**base, "max_results": low}).max_results == low
    assert _refused({**base, "max_results": high + 1}) == "max_results"
    assert _refused({**base, "max_results": low - 1}) == "max_results"
    assert search_arguments_parse({**base, "query": "q" * limits.QUERY_MAX_CHARS}).query
    assert _refused({**base, "query": "q" * (limits.QUERY_MAX_CHARS + 1)}) == "query"
    assert _refused({**base, "similarity_threshold": limits.THRESHOLD[1] + 0.01}) == "similarity_threshold"
    assert _refused({**base, "semantic_weight": limits.SEMANTIC_WEIGHT[0] - 0.01}) == "semantic_weight"
    turn = {"role": "user", "content": "x"}
    assert len(search_arguments_parse({**base, "conversation": [turn] * limits.CONVERSATION_MAX_TURNS}).conversation)
    assert _refused({**base, "conversation": [turn] * (limits.CONVERSATION_MAX_TURNS + 1)}) == "conversation"
    long_turn = {"role": "user", "content": "x" * (limits.TURN_MAX_CHARS + 1)}
    assert _refused({**base, "conversation": [long_turn]}) == "conversation.0.content"
    caller = "u" * limits.CALLER_ID_MAX_CHARS
    assert search_arguments_parse({**base, "user_id": caller}).end_user == caller
    assert _refused({**base, "conversation_id": caller + "u"}) == "conversation_id"
    most = limits.LIST_MAX_ITEMS["document_ids"]
    assert _refused({**base, "document_ids": list(range(1, most + 2))}) == "document_ids"
    assert _refused({**base, "filters": {"categories": ["c"] * (limits.LIST_MAX_ITEMS["categories"] + 1)}}) == (
        "filters.categories"
    )
    assert search_arguments_parse(base).mode == limits.DEFAULT_MODE
