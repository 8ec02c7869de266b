"""A search as its cached answer and its log row see it, and the one cached-answer branch."""

from __future__ import annotations

import functools
import json
import time
import uuid
from dataclasses import dataclass

from django.conf import settings

from knowledge.models import EmbeddingSpace
from search import cache
from search.arguments import SearchArguments
from search.filters import SearchFilters
from search.logbuffer import cached_get_logged
from search.metrics import CACHE_EVENTS
from search.selectors import Hit
from search.services.logs import search_count, search_log_row, search_logged
from search.services.planning import QueryPlan, Turn, query_plan_build
from search.services.result import SearchResult
from search.services.serving import Serving
from tenants.errors import Throttled
from tenants.principal import SearchPrincipal
from tenants.ratelimit import RateCheck


@dataclass(frozen=True)
class CachedSearch:
    """A search as its cached answer and its log row see it."""

    tenant_id: int
    chatbot_id: int
    content_version: int
    space: EmbeddingSpace
    plan: QueryPlan
    mode: str
    max_results: int
    threshold: float
    filters: SearchFilters
    weight: float | None
    conversation: list[Turn] | None
    api_key_id: int | None
    user_id: int | None
    source: str
    variant: str | None = None

    @functools.cached_property
    def key(self) -> str:
        return results_cache_key(
            chatbot_id=self.chatbot_id,
            content_version=self.content_version,
            space_id=self.space.pk,
            plan=self.plan,
            mode=self.mode,
            max_results=self.max_results,
            threshold=self.threshold,
            filters=self.filters,
            weight=self.weight,
        )

    def log_fields(self, query_id) -> dict:
        return {
            "tenant_id": self.tenant_id,
            "chatbot_id": self.chatbot_id,
            "space_key": self.space.key,
            "plan": self.plan,
            "query_id": query_id,
            "mode": self.mode,
            "filters": self.filters,
            "parameters": {"max_results": self.max_results, "threshold": self.threshold, "weight": self.weight},
            "conversation": self.conversation,
            "api_key_id": self.api_key_id,
            "user_id": self.user_id,
            "source": self.source,
            "variant": self.variant,
        }


def cached_search_build(
    *, chatbot, args: SearchArguments, serving: Serving, principal: SearchPrincipal | None
) -> CachedSearch:
    """The one place a search's cache key and log fields are assembled from its arguments."""
    conversation = list(args.conversation)
    return CachedSearch(
        tenant_id=chatbot.tenant_id,
        chatbot_id=chatbot.pk,
        content_version=chatbot.content_version,
        space=serving.space,
        plan=query_plan_build(query=args.query, conversation=conversation),
        mode=args.mode,
        max_results=args.max_results,
        threshold=args.threshold,
        filters=args.filters,
        weight=args.weight,
        conversation=conversation,
        api_key_id=principal.api_key_id if principal is not None else None,
        user_id=principal.user_id if principal is not None else None,
        source=principal.source if principal is not None else "api",
        variant=serving.variant,
    )


def search_cached(request: CachedSearch, *, began: float, log: bool = True, rate: RateCheck | None = None):
    """``(result, counted)``: the search's cached answer, logged and counted like any search, or
    ``(None, counted)``. The one cached-answer branch of the search pipeline. With ``rate`` (the
    request is not counted against its key's limit yet) and buffered logs, one Redis round trip
    counts it, reads the answer and queues its log row; ``counted`` says that happened, and
    ``Throttled`` is raised when the key is over its limit."""
    query_id = uuid.uuid4()
    counted = queued = False
    took_ms = None
    if rate is not None and log and settings.SEARCH_LOG_BUFFER:
        # took_ms of such an answer covers the work before its one Redis round trip
        took_ms = round((time.perf_counter() - began) * 1000, 2)
        head = search_log_row(
            **request.log_fields(query_id), results=None, took_ms=took_ms, cache_hit=True, strategy="", embedding=None
        )
        outcome = cached_get_logged(request.key, head, rate_key=rate.key, rate_limit=rate.limit, rate_ttl=rate.ttl)
        cached = None
        if outcome is not None:
            allowed, raw = outcome
            if not allowed:
                raise Throttled(rate.retry_after)
            counted, queued = True, raw is not None
            cached = json.loads(raw) if raw is not None else None
            if cached is None:
                CACHE_EVENTS.labels("results", "miss").inc()
    else:
        cached = cache.get_json(request.key, "results")
    if cached is None:
        return None, counted
    if queued:
        CACHE_EVENTS.labels("results", "hit").inc()
    results = [Hit(**hit) for hit in cached["results"]]
    if took_ms is None:
        took_ms = round((time.perf_counter() - began) * 1000, 2)
    result = SearchResult(
        results=results,
        took_ms=took_ms,
        embedding_space=request.space.key,
        mode=request.mode,
        query_id=query_id,
        effective_query=request.plan.effective_query,
        cache_hit=True,
        strategy=cached["strategy"],
        semantic_weight=cached["weight"] if request.mode == "hybrid" else None,
        variant=request.variant,
    )
    if queued:
        search_count(mode=request.mode, cache_hit=True, strategy=result.strategy, took_ms=took_ms, empty=not results)
    elif log:
        search_logged(
            **request.log_fields(query_id),
            results=results,
            took_ms=took_ms,
            cache_hit=True,
            strategy=result.strategy,
            embedding=None,
        )
    return result, counted


def results_cache_key(
    *, chatbot_id: int, content_version: int, space_id: int, plan: QueryPlan, mode: str, max_results: int,
    threshold: float, filters: SearchFilters, weight: float | None,
) -> str:  # fmt: skip
    parameters = {
        "q": [[cache.normalise_query(t), w] for t, w in plan.weighted_texts],
        "mode": mode,
        "max_results": max_results,
        "threshold": float(threshold),
        "filters": filters.as_dict(),
        "weight": None if weight is None else float(weight),
    }
    return cache.results_key(
        chatbot_id=chatbot_id, content_version=content_version, space_id=space_id, parameters=parameters
    )
