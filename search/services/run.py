"""One search, start to end: validated arguments, the cached answer or the work, the log row."""

from __future__ import annotations

import functools
import json
import time
import uuid
from dataclasses import asdict, dataclass

from django.conf import settings

from chatbot_training import replicas
from knowledge.models import EmbeddingSpace
from search import cache
from search.filters import SearchFilters
from search.logbuffer import cached_get_logged
from search.metrics import CACHE_EVENTS
from search.models import SearchLog
from search.selectors import (
    NO_FILTERS,
    Hit,
    chunk_cosines,
    content_caught_up,
    keyword_hits,
    query_lexemes,
)
from search.services.logs import search_count, search_log_row, search_logged
from search.services.planning import (
    MAX_CONVERSATION_TURNS,
    MAX_QUERY_CHARS,
    MODES,
    QueryPlan,
    Turn,
    query_plan_build,
    query_vector,
)
from search.services.ranking import _semantic_search, _term_statistics, auto_semantic_weight, fuse, top_cosine
from search.services.serving import Serving, assignment_key, serving_for
from tenants import inputs
from tenants.errors import DomainError, NotFound
from tenants.models import ApiKey, Chatbot, Tenant


@dataclass
class SearchResult:
    results: list[Hit]
    took_ms: float
    embedding_space: str
    mode: str
    query_id: uuid.UUID
    effective_query: str
    cache_hit: bool = False
    strategy: str = ""
    semantic_weight: float | None = None
    variant: str | None = None  # while an A/B test runs: "control" or "variant"


def _validate(query: str, mode: str, conversation) -> str:
    query = inputs.text(query or "", field="query").strip()
    for turn in conversation or ():
        inputs.text(turn.content, field="conversation", label="a conversation turn")
    if not query:
        raise DomainError("query must not be empty.", field="query")
    if len(query) > MAX_QUERY_CHARS:
        raise DomainError(f"query must be at most {MAX_QUERY_CHARS} characters.", field="query")
    if mode not in MODES:
        raise DomainError(f"mode must be one of {', '.join(MODES)}.", field="mode")
    if conversation and len(conversation) > MAX_CONVERSATION_TURNS:
        raise DomainError(f"conversation holds at most {MAX_CONVERSATION_TURNS} turns.", field="conversation")
    return query


def search_run(
    *,
    tenant: Tenant,
    chatbot: Chatbot,
    query: str,
    max_results: int = 5,
    similarity_threshold: float = 0.0,
    mode: str = "semantic",
    filters: SearchFilters = NO_FILTERS,
    conversation: list[Turn] | None = None,
    semantic_weight: float | None = None,
    api_key: ApiKey | None = None,
    user=None,
    source: str = SearchLog.Source.API,
    log: bool = True,
    use_cache: bool = True,
    serving: Serving | None = None,
    cache_checked: bool = False,
    end_user: str | None = None,
    conversation_id: str | None = None,
) -> SearchResult:
    """Runs one search and logs it. ``semantic_weight`` (hybrid only): 0 = keyword only,
    1 = vectors only, ``None`` = chosen per query (see ``auto_semantic_weight``). ``serving``:
    what ``serving_for`` said (the caller asked already, with the same assignment);
    ``cache_checked``: the caller found no cached answer a moment ago (the fast path), so it is
    not read again. ``end_user`` / ``conversation_id``: who is asking, for a sticky A/B variant."""
    if chatbot.tenant_id != tenant.pk:
        raise NotFound("Chatbot not found.", field="chatbot_id")
    query = _validate(query, mode, conversation)
    began = time.perf_counter()
    serving = serving or serving_for(
        chatbot, assignment=assignment_key(query=query, user_id=end_user, conversation_id=conversation_id)
    )
    space = serving.space
    plan = query_plan_build(query=query, conversation=conversation)
    request = CachedSearch(
        tenant_id=tenant.pk,
        chatbot_id=chatbot.pk,
        content_version=chatbot.content_version,
        space=space,
        plan=plan,
        mode=mode,
        max_results=max_results,
        threshold=similarity_threshold,
        filters=filters,
        weight=semantic_weight,
        conversation=conversation,
        api_key_id=api_key.pk if api_key is not None else None,
        user_id=user.pk if user is not None and user.is_authenticated else None,
        source=source,
        variant=serving.variant,
    )
    if use_cache and not cache_checked:
        cached, _ = search_cached(request, began=began, log=log)
        if cached is not None:
            return cached
    # Read from a replica only once it has replayed this content version: the answer, and the
    # cache entry keyed on that version, then hold the newest content (else from the primary).
    with replicas.caught_up(content_caught_up(chatbot_id=chatbot.pk, content_version=chatbot.content_version)):
        weight = semantic_weight
        strategy = ""
        semantic: list[Hit] = []
        keyword: list[Hit] = []
        vector = None
        fetch = max_results if mode == "semantic" else max(max_results * 4, 40)
        if mode in ("semantic", "hybrid"):
            vector = query_vector(space, plan)
            semantic, strategy = _semantic_search(
                space=space.store,
                chatbot=chatbot,
                vector=vector,
                limit=fetch,
                filters=filters,
                ef_search=serving.ef_search,  # the chatbot's tuning (search/services/optimize/), if any
                exact_max=serving.exact_max,
            )
        if mode in ("keyword", "hybrid"):
            stats, frequencies = _term_statistics(chatbot, query_lexemes(plan.effective_query))
            keyword = keyword_hits(
                chatbot_id=chatbot.pk,
                query=plan.effective_query,
                limit=fetch,
                filters=filters,
                stats=stats,
                frequencies=frequencies,
            )
        if mode == "semantic":
            results = semantic
        elif mode == "keyword":
            results = keyword[:max_results]
        else:
            if weight is None:
                weight = auto_semantic_weight(semantic, keyword, serving.keyword_factor)
            known = {hit.chunk_id for hit in semantic}
            cosines = chunk_cosines(
                space=space.store, chunk_ids=[h.chunk_id for h in keyword if h.chunk_id not in known], vector=vector
            )
            results = fuse(semantic, keyword, limit=fetch, semantic_weight=weight, cosines=cosines)
        if similarity_threshold > 0 and mode != "keyword":
            results = [h for h in results if h.score is not None and h.score >= similarity_threshold]
    results = results[:max_results]
    if use_cache:
        cache.set_json(
            request.key,
            {"results": [asdict(h) for h in results], "strategy": strategy, "weight": weight},
            settings.SEARCH_RESULTS_CACHE_TTL,
        )
    took_ms = round((time.perf_counter() - began) * 1000, 2)
    query_id = uuid.uuid4()
    if log:
        top = top_cosine(results, mode)
        embedding = None
        if not results or (top is not None and top < settings.SEARCH_LOW_SCORE):  # a gap keeps its vector
            embedding = vector if vector is not None else query_vector(space, plan)
        search_logged(
            **request.log_fields(query_id),
            results=results,
            took_ms=took_ms,
            cache_hit=False,
            strategy=strategy,
            embedding=embedding,
        )
    return SearchResult(
        results=results,
        took_ms=took_ms,
        embedding_space=space.key,
        mode=mode,
        query_id=query_id,
        effective_query=plan.effective_query,
        cache_hit=False,
        strategy=strategy,
        semantic_weight=weight if mode == "hybrid" else None,
        variant=serving.variant,
    )


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


@dataclass(frozen=True)
class RateCheck:
    """A request not yet counted against its key's rate limit (``tenants.ratelimit``)."""

    key: str
    limit: int
    ttl: int
    retry_after: int


class Throttled(Exception):
    def __init__(self, retry_after: int):
        self.retry_after = retry_after


def search_cached(request: CachedSearch, *, began: float, log: bool = True, rate: RateCheck | None = None):
    """``(result, counted)``: the search's cached answer, logged and counted like any search, or
    ``(None, counted)``. The one cached-answer branch of both search paths. With ``rate`` (the
    fast path: the request is not counted against its key's limit yet) and buffered logs, one
    Redis round trip counts it, reads the answer and queues its log row; ``counted`` says that
    happened, and ``Throttled`` is raised when the key is over its limit."""
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
