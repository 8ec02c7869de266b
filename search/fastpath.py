"""Chatbot searches answered in front of the middleware stack and DRF.

``POST /api/search`` is the hot path: a cached answer should cost a cache lookup, an uncached
one the embedding and the SQL, not a full Django/DRF request around them.
``SearchFastPathMiddleware`` (first in ``MIDDLEWARE``) takes a request only when every part of it
is plainly valid: one prepared SQL statement checks the key (not revoked, not expired, tenant
active, chatbot scope) and reads the chatbot's content version and active space — what the full
path reads with three queries — so revocation and content changes apply on the very next
request; then the same ``search_run`` serves it, cached or not, logged and counted. Anything
else — an unusual body, a bad key, another tenant's chatbot, a failure — falls through to the
normal view, which answers it (and its errors) in full.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import psycopg
from django.db import connection
from django.http import HttpResponse
from django.utils import timezone

from knowledge.models import Document, EmbeddingSpace
from search import cache
from search.apis import search_payload
from search.filters import search_filters_build
from search.selectors import Hit
from search.services import (
    MAX_CONVERSATION_TURNS,
    MAX_QUERY_CHARS,
    MODES,
    SearchResult,
    Turn,
    query_plan_build,
    results_cache_key,
    search_logged,
)
from tenants.errors import DomainError
from tenants.models import ApiKey, Chatbot, Tenant
from tenants.scoping import tenant_context
from tenants.selectors import api_key_hash

logger = logging.getLogger(__name__)

FIELDS = frozenset(
    {
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
    }
)
FILTER_KEYS = ("content_types", "categories", "document_ids", "metadata")
MAX_BODY = 64 * 1024

_CONTEXT_SQL = """
    SELECT k.id, k.tenant_id, k.last_used_at, c.content_version, s.id, s.provider, s.model_name, s.version,
           s.dimensions
    FROM tenants_apikey k
    JOIN tenants_tenant t ON t.id = k.tenant_id AND t.is_active
    JOIN tenants_chatbot c ON c.id = %(chatbot)s AND c.tenant_id = k.tenant_id
    JOIN knowledge_chatbotspace cs ON cs.chatbot_id = c.id AND cs.role = 'active'
    JOIN knowledge_embeddingspace s ON s.id = cs.space_id
    WHERE k.key_hash = %(hash)s AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
      AND (k.chatbot_id IS NULL OR k.chatbot_id = c.id)
"""


def _context(*, chatbot_id: int, key_hash: str):
    """The key, chatbot and space row, as a server-side prepared statement (planned once per
    connection: this query runs on every cached search)."""
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_CONTEXT_SQL, {"chatbot": chatbot_id, "hash": key_hash}, prepare=True)
        return cursor.fetchone()


def _number(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _parse(body: dict):
    """The request's search arguments if they are plainly valid, else None (the full path decides)."""
    if not isinstance(body, dict) or not body.keys() <= FIELDS:
        return None
    query, chatbot_id = body.get("query"), body.get("chatbot_id")
    if not isinstance(query, str) or not query.strip() or len(query.strip()) > MAX_QUERY_CHARS:
        return None
    if not isinstance(chatbot_id, int) or isinstance(chatbot_id, bool):
        return None
    max_results = body.get("max_results", 5)
    threshold = body.get("similarity_threshold", 0.0)
    mode = body.get("mode", "semantic")
    weight = body.get("semantic_weight")
    if not isinstance(max_results, int) or isinstance(max_results, bool) or not 1 <= max_results <= 50:
        return None
    if not _number(threshold, 0.0, 1.0) or mode not in MODES or not (weight is None or _number(weight, 0.0, 1.0)):
        return None
    turns = body.get("conversation") or []
    if not isinstance(turns, list) or len(turns) > MAX_CONVERSATION_TURNS:
        return None
    conversation = []
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or turn.keys() != {"role", "content"}
            or turn["role"] not in ("user", "assistant", "system")
            or not isinstance(turn["content"], str)
            or len(turn["content"]) > 8000
        ):
            return None
        conversation.append(Turn(role=turn["role"], content=turn["content"]))
    nested = body.get("filters") or {}
    if not isinstance(nested, dict) or not nested.keys() <= set(FILTER_KEYS):
        return None
    raw_filters = {k: body.get(k) or nested.get(k) for k in FILTER_KEYS}
    for key in ("content_types", "categories", "document_ids"):
        value = raw_filters[key]
        if value is not None and (
            not isinstance(value, list)
            or not all(isinstance(v, str if key != "document_ids" else int) and not isinstance(v, bool) for v in value)
        ):
            return None
    if raw_filters["content_types"] and not set(raw_filters["content_types"]) <= set(Document.ContentType.values):
        return None
    try:
        filters = search_filters_build(**raw_filters)
    except DomainError:
        return None
    return {
        "query": query.strip(),
        "chatbot_id": chatbot_id,
        "max_results": max_results,
        "threshold": float(threshold),
        "mode": mode,
        "weight": None if weight is None else float(weight),
        "filters": filters,
        "conversation": conversation,
    }


def search_response(request) -> HttpResponse | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    if not request.META.get("CONTENT_TYPE", "").startswith("application/json"):
        return None
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_BODY:
            return None
        args = _parse(json.loads(request.body))
    except ValueError:
        return None
    if args is None:
        return None
    row = _context(chatbot_id=args["chatbot_id"], key_hash=api_key_hash(parts[1]))
    if row is None:
        return None
    key_id, tenant_id, last_used, content_version, space_id, provider, model_name, version, dimensions = row
    from search.services import search_run  # looked up per call (tests patch it)

    result = _cached_result(args, row)
    if result is not None:
        _touch(key_id, last_used)
        return _json(search_payload(result))
    tenant = Tenant(pk=tenant_id)
    try:
        with tenant_context(tenant):
            result = search_run(
                tenant=tenant,
                chatbot=Chatbot(pk=args["chatbot_id"], tenant_id=tenant_id, content_version=content_version),
                space=EmbeddingSpace(
                    pk=space_id, provider=provider, model_name=model_name, version=version, dimensions=dimensions
                ),
                query=args["query"],
                max_results=args["max_results"],
                similarity_threshold=args["threshold"],
                mode=args["mode"],
                filters=args["filters"],
                conversation=args["conversation"],
                semantic_weight=args["weight"],
                api_key=ApiKey(pk=key_id, tenant_id=tenant_id),
            )
    except Exception:  # the full path runs it again and answers the error properly
        logger.warning("search fast path gave up; the full path takes over", exc_info=True)
        return None
    _touch(key_id, last_used)
    return _json(search_payload(result))


def _cached_result(args: dict, row):
    """A cached answer without the rest of ``search_run`` (the hot path of repeated questions)."""
    key_id, tenant_id, _, content_version, space_id, provider, model_name, version, _ = row
    began = time.perf_counter()
    plan = query_plan_build(query=args["query"], conversation=args["conversation"])
    key = results_cache_key(
        chatbot_id=args["chatbot_id"],
        content_version=content_version,
        space_id=space_id,
        plan=plan,
        mode=args["mode"],
        max_results=args["max_results"],
        threshold=args["threshold"],
        filters=args["filters"],
        weight=args["weight"],
    )
    cached = cache.get_json(key, "results", count_miss=False)
    if cached is None:
        return None
    results = [Hit(**hit) for hit in cached["results"]]
    result = SearchResult(
        results=results,
        took_ms=round((time.perf_counter() - began) * 1000, 2),
        embedding_space=f"{provider}:{model_name}@{version}",
        mode=args["mode"],
        query_id=uuid.uuid4(),
        effective_query=plan.effective_query,
        cache_hit=True,
        strategy=cached["strategy"],
        semantic_weight=cached["weight"] if args["mode"] == "hybrid" else None,
    )
    search_logged(
        tenant_id=tenant_id,
        chatbot_id=args["chatbot_id"],
        space_key=result.embedding_space,
        plan=plan,
        query_id=result.query_id,
        mode=args["mode"],
        filters=args["filters"],
        parameters={"max_results": args["max_results"], "threshold": args["threshold"], "weight": args["weight"]},
        conversation=args["conversation"],
        results=results,
        took_ms=result.took_ms,
        cache_hit=True,
        strategy=result.strategy,
        embedding=None,
        api_key_id=key_id,
        user_id=None,
        source="api",
    )
    return result


def _touch(key_id: int, last_used) -> None:
    if last_used is None or (timezone.now() - last_used).total_seconds() > 60:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE tenants_apikey SET last_used_at = now() WHERE id = %s", [key_id])


def _json(body: dict) -> HttpResponse:
    content = json.dumps(body, separators=(",", ":")).encode()
    response = HttpResponse(content, content_type="application/json")
    response["Content-Length"] = str(len(content))  # else the server sends it chunked
    return response


class SearchFastPathMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST" and request.path_info == "/api/search":
            response = search_response(request)
            if response is not None:
                return response
        return self.get_response(request)
