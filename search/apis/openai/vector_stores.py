"""OpenAI's Vector Stores over the product's chatbots: a vector store *is* a chatbot (``vs_<id>``,
e.g. ``vs_12`` for chatbot 12; the bare id is accepted too), its files are the chatbot's
documents. ``GET /v1/vector_stores``, ``GET /v1/vector_stores/{id}`` and
``POST /v1/vector_stores/{id}/search``; the search is a thin adapter over the one pipeline (its
body becomes the ``POST /api/search`` body, parsed by ``search_arguments_parse``, answered by
``search_answer``: same results, cache, rate limit, log, analytics and A/B assignment).

Rankers: ``none`` is the product's semantic search (vectors only), ``auto`` and
``default-2024-11-15`` (and no ``ranking_options``) its hybrid search (vectors and BM25 fused,
the blend chosen per query). ``score`` is the cosine similarity (0–1); ``score_threshold`` drops
hits below it. ``rewrite_query`` is accepted; the product does not rewrite (``search_query`` is
what was searched). A list of queries is searched as one text.
"""

from __future__ import annotations

from django.db.models import Count, Max, Sum
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from knowledge.models import Document
from search import limits
from search.apis.openai.errors import OpenAIApi, openai_fail, openai_object
from search.arguments import search_arguments_parse
from search.models import SearchLog
from search.presenters import unit_score
from search.services import search_answer
from tenants.errors import DomainError, NotFound
from tenants.models import Chatbot
from tenants.selectors import chatbot_list
from tenants.serializers import query_params

PREFIX = "vs_"
SEARCH_FIELDS = ("query", "max_num_results", "filters", "ranking_options", "rewrite_query")
RANKERS = {"none": "semantic", "auto": "hybrid", "default-2024-11-15": "hybrid"}
STATUS = {"queued": "in_progress", "processing": "in_progress", "ready": "completed", "failed": "failed"}
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")


def vector_store_id(chatbot_id: int) -> str:
    return f"{PREFIX}{chatbot_id}"


def chatbot_id_of(value: str) -> int:
    raw = value[len(PREFIX) :] if value.startswith(PREFIX) else value
    if not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise NotFound(f"No vector store found with id '{value}'.", field="vector_store_id")
    return int(raw)


def file_id(document_id: int) -> str:
    """A document's id as a file id (documents uploaded through /api included)."""
    return f"file-doc-{document_id}"


def vector_store_payload(chatbot: Chatbot) -> dict:
    documents = Document.objects.filter(chatbot=chatbot)
    counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0}
    for row in documents.values("status").annotate(n=Count("id")):
        counts[STATUS.get(row["status"], "in_progress")] += row["n"]
    counts["total"] = sum(counts.values())
    usage = documents.exclude(status="failed").aggregate(total=Sum("size_bytes"))["total"] or 0
    searched = SearchLog.objects.filter(chatbot=chatbot).aggregate(last=Max("created_at"))["last"]
    return {
        "id": vector_store_id(chatbot.pk),
        "object": "vector_store",
        "created_at": int(chatbot.created_at.timestamp()),
        "name": chatbot.name,
        "description": chatbot.description or None,
        "usage_bytes": usage,
        "file_counts": counts,
        "status": "in_progress" if counts["in_progress"] else "completed",
        "last_active_at": int((searched or chatbot.created_at).timestamp()),
        "metadata": {},
        "expires_after": None,
        "expires_at": None,
    }


def _filter(node, path: str = "filters") -> dict:
    """OpenAI's ComparisonFilter / CompoundFilter as a node of the filter language."""
    if not isinstance(node, dict):
        openai_fail(path, f"'{path}' must be a ComparisonFilter or a CompoundFilter object.")
    kind = node.get("type")
    if kind in ("and", "or"):
        extra = sorted(set(node) - {"type", "filters"})
        if extra:
            openai_fail(path, f"Unknown parameter: '{path}.{extra[0]}'.")
        children = node.get("filters")
        if not isinstance(children, list) or not children:
            openai_fail(path, f"'{path}.filters' must be a non-empty array of filters.")
        return {kind: [_filter(child, f"{path}.filters[{i}]") for i, child in enumerate(children)]}
    if kind not in COMPARISONS:
        openai_fail(path, f"'{path}.type' must be one of {', '.join(COMPARISONS)}, and or or; got {kind!r}.")
    extra = sorted(set(node) - {"type", "key", "value"})
    if extra:
        openai_fail(path, f"Unknown parameter: '{path}.{extra[0]}'.")
    if not isinstance(node.get("key"), str) or not node["key"]:
        openai_fail(path, f"'{path}.key' must be an attribute name.")
    if "value" not in node:
        openai_fail(path, f"'{path}.value' is required.")
    return {"field": node["key"], "op": kind, "value": node["value"]}


def vector_store_search_body(body, *, chatbot_id: int) -> dict:
    """``POST /v1/vector_stores/{id}/search`` as the body of ``POST /api/search``."""
    body = openai_object(body, SEARCH_FIELDS)
    query = body.get("query")
    if isinstance(query, list):
        if not query or len(query) > 10 or not all(isinstance(q, str) for q in query):
            openai_fail("query", "'query' must be a string or an array of 1 to 10 strings.")
        query = " ".join(query)
    if not isinstance(query, str):
        openai_fail("query", "'query' must be a string or an array of strings.")
    count = body.get("max_num_results", 10)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limits.MAX_RESULTS[1]:
        openai_fail("max_num_results", f"'max_num_results' must be an integer from 1 to {limits.MAX_RESULTS[1]}.")
    ranking = body.get("ranking_options") or {}
    if not isinstance(ranking, dict) or set(ranking) - {"ranker", "score_threshold"}:
        openai_fail("ranking_options", "'ranking_options' takes 'ranker' and 'score_threshold'.")
    ranker = ranking.get("ranker", "auto")
    if ranker not in RANKERS:
        openai_fail("ranking_options.ranker", f"'ranker' must be one of {', '.join(RANKERS)}.")
    rewrite = body.get("rewrite_query", False)
    if not isinstance(rewrite, bool):
        openai_fail("rewrite_query", "'rewrite_query' must be a boolean.")
    search = {"query": query, "chatbot_id": chatbot_id, "max_results": count, "mode": RANKERS[ranker]}
    if ranking.get("score_threshold") is not None:
        search["similarity_threshold"] = ranking["score_threshold"]  # its range: the one parser's
    if body.get("filters") is not None:
        search["filters"] = {"metadata": _filter(body["filters"])}
    return search


def _param(exc: DomainError) -> DomainError:
    """The one parser's field names in OpenAI's words."""
    names = {"similarity_threshold": "ranking_options.score_threshold", "max_results": "max_num_results",
             "filters.metadata": "filters"}  # fmt: skip
    if exc.field in names:
        exc.field = names[exc.field]
    return exc


def search_results_payload(result) -> dict:
    data = []
    for hit in result.results:
        data.append({
            "file_id": file_id(hit.document_id),
            "filename": hit.filename or hit.title,
            "score": unit_score(hit),
            "attributes": {**hit.document_metadata, **(hit.metadata or {})},
            "content": [{"type": "text", "text": hit.content}],
        })  # fmt: skip
    return {"object": "vector_store.search_results.page", "search_query": [result.effective_query], "data": data,
            "has_more": False, "next_page": None}  # fmt: skip


class VectorStoreListApi(OpenAIApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="openai_vector_stores_list", responses={200: OpenApiTypes.OBJECT},
                   tags=["openai"])  # fmt: skip
    def get(self, request):
        params = query_params(request)
        limit = params.get("limit", "20")
        if not str(limit).isdigit() or not 1 <= int(limit) <= 100:
            raise DomainError("'limit' must be an integer from 1 to 100.", field="limit")
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise DomainError("'order' must be 'asc' or 'desc'.", field="order")
        chatbots = chatbot_list(tenant=self.tenant, api_key=self.api_key).order_by("pk" if order == "asc" else "-pk")
        for cursor, forward in (("after", True), ("before", False)):
            if params.get(cursor):
                pk = chatbot_id_of(params[cursor])
                ahead = forward == (order == "asc")
                chatbots = chatbots.filter(pk__gt=pk) if ahead else chatbots.filter(pk__lt=pk)
        page = list(chatbots[: int(limit) + 1])
        more, page = len(page) > int(limit), page[: int(limit)]
        data = [vector_store_payload(c) for c in page]
        return Response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": more})  # fmt: skip


class VectorStoreApi(OpenAIApi):
    scopes = {"get": "read"}

    @extend_schema(operation_id="openai_vector_stores_retrieve", responses={200: OpenApiTypes.OBJECT},
                   tags=["openai"])  # fmt: skip
    def get(self, request, vector_store_id: str):
        chatbot = self._chatbot(vector_store_id)
        return Response(vector_store_payload(chatbot))

    def _chatbot(self, vector_store_id: str) -> Chatbot:
        try:
            return self.get_chatbot(chatbot_id_of(vector_store_id))
        except NotFound:
            raise NotFound(f"No vector store found with id '{vector_store_id}'.", field="vector_store_id") from None


class VectorStoreSearchApi(OpenAIApi):
    scopes = {"post": "search"}
    parser_classes = [JSONParser]
    throttle_classes = []  # the pipeline counts the key's rate limit itself

    @extend_schema(operation_id="openai_vector_stores_search", request=OpenApiTypes.OBJECT,
                   responses={200: OpenApiTypes.OBJECT}, tags=["openai"])  # fmt: skip
    def post(self, request, vector_store_id: str):
        chatbot_id = chatbot_id_of(vector_store_id)
        try:
            args = search_arguments_parse(vector_store_search_body(request.data, chatbot_id=chatbot_id))
            result = search_answer(principal=self.principal, args=args)
        except NotFound as exc:
            if exc.field == "chatbot_id":
                raise NotFound(f"No vector store found with id '{vector_store_id}'.", field="vector_store_id") from None
            raise
        except DomainError as exc:
            raise _param(exc) from None
        return Response(search_results_payload(result))
