"""Cached searches answered in front of the middleware stack and DRF.

A chatbot asks the same questions again and again; answering a cached one should cost a cache
lookup, not a full Django/DRF request. ``CachedSearchMiddleware`` (first in ``MIDDLEWARE``)
handles ``POST /api/search`` only when every part of the request is plainly valid and its result
list is in Redis: one SQL round trip checks the key (not revoked, not expired, tenant active,
chatbot scope) and reads the chatbot's content version and active space, as the full path does,
so revocation and content changes take effect on the very next request. The search is logged
and counted like any other. Anything else — a cache miss, an unusual body, a bad key — falls
through to the normal view, which answers it (and its errors) in full.
"""

from __future__ import annotations

import json
import time
import uuid

import psycopg
from django.db import connection
from django.http import HttpResponse
from django.utils import timezone

from knowledge.models import Document
from search import cache
from search.filters import search_filters_build
from search.services import MAX_CONVERSATION_TURNS, MAX_QUERY_CHARS, MODES, Turn, query_plan_build, results_cache_key
from tenants.errors import DomainError
from tenants.selectors import api_key_hash

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
    SELECT k.id, k.tenant_id, k.chatbot_id, k.last_used_at, c.content_version, s.id, s.provider, s.model_name,
           s.version
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


def cached_search_response(request) -> HttpResponse | None:
    began = time.perf_counter()
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
    key_id, tenant_id, _, last_used, content_version, space_id, provider, model_name, version = row
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
    from search.apis import hit_payload
    from search.selectors import Hit
    from search.services import search_logged

    results = [Hit(**hit) for hit in cached["results"]]
    space_key = f"{provider}:{model_name}@{version}"
    took_ms = round((time.perf_counter() - began) * 1000, 2)
    query_id = uuid.uuid4()
    search_logged(
        tenant_id=tenant_id,
        chatbot_id=args["chatbot_id"],
        space_key=space_key,
        plan=plan,
        query_id=query_id,
        mode=args["mode"],
        filters=args["filters"],
        parameters={"max_results": args["max_results"], "threshold": args["threshold"], "weight": args["weight"]},
        conversation=args["conversation"],
        results=results,
        took_ms=took_ms,
        cache_hit=True,
        strategy=cached["strategy"],
        embedding=None,
        api_key_id=key_id,
        user_id=None,
        source="api",
    )
    if last_used is None or (timezone.now() - last_used).total_seconds() > 60:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE tenants_apikey SET last_used_at = now() WHERE id = %s", [key_id])
    body = {
        "results": [hit_payload(h, args["mode"]) for h in results],
        "query_id": str(query_id),
        "took_ms": took_ms,
        "embedding_space": space_key,
        "mode": args["mode"],
        "effective_query": plan.effective_query,
        "cached": True,
        "semantic_weight": cached["weight"] if args["mode"] == "hybrid" else None,
    }
    return HttpResponse(json.dumps(body, separators=(",", ":")), content_type="application/json")


class CachedSearchMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST" and request.path_info == "/api/search":
            response = cached_search_response(request)
            if response is not None:
                return response
        return self.get_response(request)
